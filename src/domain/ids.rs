//! Typed identifiers: an `OrderId` cannot be confused with a refund id, and a
//! `RequestId` is known to be 1–64 characters once it exists.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderId(pub Uuid);

impl OrderId {
    /// A new id for an order the request did not name. Time-ordered (UUIDv7,
    /// 74 random bits): new orders land at the end of the primary-key index
    /// instead of on a random page of it, which every `order.place` pays.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// The merchant order number sent to gateways: the UUID's 32 lowercase hex
    /// digits. Fits both gateways' alphabets and WeChat's 32-character limit.
    pub fn out_trade_no(self) -> String {
        self.0.simple().to_string()
    }

    pub fn from_out_trade_no(text: &str) -> Option<Self> {
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Uuid::parse_str(text).ok().map(Self)
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for OrderId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RefundId(pub Uuid);

impl RefundId {
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    /// `out_refund_no` / `out_request_no` at the gateway: stable per refund, so
    /// every retry of one refund is the same refund to the gateway.
    pub fn out_refund_no(self) -> String {
        self.0.simple().to_string()
    }
}

impl fmt::Display for RefundId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The sender's idempotency key: 1–64 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct RequestId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("request_id is empty, too long (requests: 1 to 64 characters) or holds U+0000")]
pub struct BadRequestId;

impl RequestId {
    pub fn parse(text: &str) -> Result<Self, BadRequestId> {
        Self::parse_up_to(text, 64)
    }

    /// A non-empty id of at most `max` characters (`parse` is the requests'
    /// 1–64; notification ids are only required to be unique). U+0000 is
    /// refused too: the id is stored as PostgreSQL text, which cannot hold it.
    pub fn parse_up_to(text: &str, max: usize) -> Result<Self, BadRequestId> {
        let chars = text.chars().count();
        if chars == 0 || chars > max || text.contains('\0') {
            return Err(BadRequestId);
        }
        Ok(Self(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        RequestId::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_trade_no_round_trips() {
        let id = OrderId::generate();
        let otn = id.out_trade_no();
        assert_eq!(otn.len(), 32);
        assert_eq!(otn, otn.to_lowercase());
        assert_eq!(OrderId::from_out_trade_no(&otn), Some(id));
        assert_eq!(OrderId::from_out_trade_no("ORDER1"), None);
    }

    #[test]
    fn request_id_bounds() {
        assert!(RequestId::parse("").is_err());
        assert!(RequestId::parse(&"x".repeat(65)).is_err());
        assert!(RequestId::parse(&"x".repeat(64)).is_ok());
        assert!(RequestId::parse("a\0b").is_err());
    }
}
