//! Parsing of `P.requests` bodies (docs/contract.md §3) into typed requests: parse
//! once, at the edge; everything after this works with values that cannot be
//! wrong. A body that does not parse is `invalid_request` and dead-lettered.

use chrono::{Duration, NaiveDate};
use serde::Deserialize;
use serde_json::Value;

use crate::domain::{Channel, LineItem, Money, NewOrder, OrderId, RefundId, RequestId};

pub const MAX_ITEMS: usize = 100;
/// A week: far beyond any checkout, short of a number that overflows a timestamp.
pub const MAX_PAY_TIMEOUT_S: i64 = 7 * 24 * 3600;

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    PlaceOrder(PlaceOrder),
    PaymentRequest {
        order_id: OrderId,
        amount: Money,
        payment_method: Channel,
    },
    CancelOrder {
        order_id: OrderId,
        reason: String,
    },
    ShipOrder {
        order_id: OrderId,
        carrier: Option<String>,
        tracking_no: Option<String>,
    },
    ConfirmReceipt {
        order_id: OrderId,
    },
    Refund {
        order_id: OrderId,
        amount: Money,
        reason: String,
        refund_id: Option<RefundId>,
    },
    ReconRun {
        channel: Channel,
        date: NaiveDate,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlaceOrder {
    pub order_id: Option<OrderId>,
    pub user_id: String,
    pub items: Vec<LineItem>,
    pub payment_method: Channel,
    /// `None`: the configured `orders.pay_timeout`.
    pub pay_timeout: Option<Duration>,
}

impl PlaceOrder {
    pub fn into_new_order(self, default_timeout: Duration) -> NewOrder {
        NewOrder {
            order_id: self.order_id.unwrap_or_else(OrderId::generate),
            user_id: self.user_id,
            items: self.items,
            payment_method: self.payment_method,
            pay_timeout: self.pay_timeout.unwrap_or(default_timeout),
        }
    }
}

impl Request {
    pub fn type_name(&self) -> &'static str {
        match self {
            Request::PlaceOrder(_) => "order.place",
            Request::PaymentRequest { .. } => "payment.request",
            Request::CancelOrder { .. } => "order.cancel",
            Request::ShipOrder { .. } => "order.ship",
            Request::ConfirmReceipt { .. } => "order.confirm_receipt",
            Request::Refund { .. } => "refund.request",
            Request::ReconRun { .. } => "recon.run",
        }
    }

    pub fn order_id(&self) -> Option<OrderId> {
        match self {
            Request::PlaceOrder(p) => p.order_id,
            Request::PaymentRequest { order_id, .. }
            | Request::CancelOrder { order_id, .. }
            | Request::ShipOrder { order_id, .. }
            | Request::ConfirmReceipt { order_id }
            | Request::Refund { order_id, .. } => Some(*order_id),
            Request::ReconRun { .. } => None,
        }
    }
}

/// A parsed envelope: the request plus what identifies it.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<T> {
    pub request_id: RequestId,
    pub kind: String,
    /// sha256 of the canonical `{type, data}`: the same request_id with a
    /// different digest is `request_id_reused`. `sent_at` is left out on
    /// purpose: a sender that republishes stamps a new one.
    pub digest: Vec<u8>,
    pub body: T,
}

/// Why a body is not a valid request, and the request id if one could be read
/// (so the sender can be told with `request.rejected`).
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub request_id: Option<RequestId>,
    pub request_type: Option<String>,
    pub message: String,
}

fn invalid(raw: &serde_json::Map<String, Value>, message: impl Into<String>) -> Invalid {
    Invalid {
        request_id: raw
            .get("request_id")
            .and_then(Value::as_str)
            .and_then(|s| RequestId::parse(s).ok()),
        request_type: readable_type(raw.get("type").and_then(Value::as_str)),
        message: message.into(),
    }
}

/// The type as the rejection may repeat it (it is stored as text).
fn readable_type(kind: Option<&str>) -> Option<String> {
    kind.filter(|k| !k.contains('\0')).map(str::to_string)
}

/// What can still be read of a body that is not JSON a `Value` can hold,
/// e.g. one with a number like `1e400` (out of range for a float) or nested
/// deeper than the parser's limit: serde skips the other fields without
/// converting their numbers or building their nesting, so the sender can
/// still be told with `request.rejected`. One pass per field, so an
/// ill-typed `type` does not hide a good `request_id`.
#[derive(Deserialize)]
struct HeadId {
    request_id: Option<String>,
}

#[derive(Deserialize)]
struct HeadType {
    #[serde(rename = "type")]
    kind: Option<String>,
}

fn unreadable(body: &[u8], message: String) -> Invalid {
    let id = serde_json::from_slice::<HeadId>(body).ok();
    let kind = serde_json::from_slice::<HeadType>(body).ok();
    Invalid {
        request_id: id
            .and_then(|h| h.request_id)
            .and_then(|s| RequestId::parse(&s).ok()),
        request_type: readable_type(kind.as_ref().and_then(|h| h.kind.as_deref())),
        message,
    }
}

/// PostgreSQL text and jsonb cannot hold U+0000; a request carrying it
/// anywhere is invalid here rather than a database error later.
fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Longest `request_id` of a `P.notifications` envelope: the contract asks
/// only for "any unique string"; the bound keeps a hostile one out of the inbox.
pub const MAX_NOTIFICATION_ID_CHARS: usize = 512;

/// Parses the outer envelope of `P.requests` (request ids of 1–64 characters).
pub fn parse_envelope(body: &[u8]) -> Result<Envelope<Value>, Invalid> {
    let env = parse_envelope_with(body, RequestId::parse)?;
    // JSON can only spell U+0000 as an escape: look for one before walking.
    if body.windows(6).any(|w| w == b"\\u0000") && (env.kind.contains('\0') || has_nul(&env.body)) {
        return Err(Invalid {
            request_id: Some(env.request_id),
            request_type: readable_type(Some(&env.kind)),
            message: "strings must not contain U+0000".into(),
        });
    }
    Ok(env)
}

/// Parses the outer envelope of `P.notifications`.
pub fn parse_notification_envelope(body: &[u8]) -> Result<Envelope<Value>, Invalid> {
    parse_envelope_with(body, |s| {
        RequestId::parse_up_to(s, MAX_NOTIFICATION_ID_CHARS)
    })
}

fn parse_envelope_with(
    body: &[u8],
    parse_id: impl Fn(&str) -> Result<RequestId, crate::domain::BadRequestId>,
) -> Result<Envelope<Value>, Invalid> {
    let raw: Value = serde_json::from_slice(body)
        .map_err(|e| unreadable(body, format!("body is not JSON: {e}")))?;
    let Value::Object(mut map) = raw else {
        return Err(Invalid {
            request_id: None,
            request_type: None,
            message: "body is not a JSON object".into(),
        });
    };
    let request_id = match map.get("request_id") {
        Some(Value::String(s)) => parse_id(s).map_err(|e| invalid(&map, e.to_string()))?,
        Some(_) => return Err(invalid(&map, "request_id must be a string")),
        None => return Err(invalid(&map, "missing field request_id")),
    };
    let kind = match map.get("type") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(invalid(&map, "missing or non-string field type")),
    };
    if let Some(sent_at) = map.get("sent_at") {
        let ok = sent_at
            .as_str()
            .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok());
        if !ok {
            return Err(invalid(&map, "sent_at must be an RFC 3339 time"));
        }
    }
    if !matches!(map.get("data"), Some(Value::Object(_))) {
        return Err(invalid(&map, "missing or non-object field data"));
    }
    // Taken out rather than copied: this is every request.
    let data = map.remove("data").unwrap_or_default();
    let digest = digest_of(&kind, &data);
    Ok(Envelope {
        request_id,
        kind,
        digest,
        body: data,
    })
}

/// Parses a `P.requests` body completely.
pub fn parse_request(body: &[u8]) -> Result<Envelope<Request>, Invalid> {
    let env = parse_envelope(body)?;
    let fail = |message: String| Invalid {
        request_id: Some(env.request_id.clone()),
        request_type: readable_type(Some(&env.kind)),
        message,
    };
    let request = parse_data(&env.kind, &env.body).map_err(fail)?;
    Ok(Envelope {
        request_id: env.request_id,
        kind: env.kind,
        digest: env.digest,
        body: request,
    })
}

fn parse_data(kind: &str, data: &Value) -> Result<Request, String> {
    fn from<T: for<'de> Deserialize<'de>>(data: &Value) -> Result<T, String> {
        T::deserialize(data).map_err(|e| e.to_string())
    }
    Ok(match kind {
        "order.place" => Request::PlaceOrder(parse_place(from(data)?)?),
        "payment.request" => {
            let d: PaymentData = from(data)?;
            Request::PaymentRequest {
                order_id: d.order_id,
                amount: d.amount,
                payment_method: d.payment_method,
            }
        }
        "order.cancel" => {
            let d: CancelData = from(data)?;
            Request::CancelOrder {
                order_id: d.order_id,
                reason: d.reason,
            }
        }
        "order.ship" => {
            let d: ShipData = from(data)?;
            Request::ShipOrder {
                order_id: d.order_id,
                carrier: d.carrier,
                tracking_no: d.tracking_no,
            }
        }
        "order.confirm_receipt" => Request::ConfirmReceipt {
            order_id: from::<OrderOnly>(data)?.order_id,
        },
        "refund.request" => {
            let d: RefundData = from(data)?;
            if d.amount.is_zero() {
                return Err("amount must be greater than 0".into());
            }
            Request::Refund {
                order_id: d.order_id,
                amount: d.amount,
                reason: d.reason,
                refund_id: d.refund_id.map(RefundId),
            }
        }
        "recon.run" => {
            let d: ReconData = from(data)?;
            let date = NaiveDate::parse_from_str(&d.date, "%Y-%m-%d")
                .map_err(|_| format!("date {:?} is not YYYY-MM-DD", d.date))?;
            Request::ReconRun {
                channel: d.channel,
                date,
            }
        }
        other => return Err(format!("unknown request type {other:?}")),
    })
}

fn parse_place(d: PlaceData) -> Result<PlaceOrder, String> {
    if d.currency != "CNY" {
        return Err(format!("currency must be CNY, got {:?}", d.currency));
    }
    if d.items.is_empty() || d.items.len() > MAX_ITEMS {
        return Err(format!(
            "items must hold 1 to {MAX_ITEMS} entries, got {}",
            d.items.len()
        ));
    }
    let mut items = Vec::with_capacity(d.items.len());
    for (i, item) in d.items.into_iter().enumerate() {
        if item.quantity < 1 || item.quantity > i64::from(u32::MAX) {
            return Err(format!(
                "items[{i}].quantity must be at least 1, got {}",
                item.quantity
            ));
        }
        let unit_price =
            Money::from_fen(item.unit_price).map_err(|e| format!("items[{i}].unit_price: {e}"))?;
        items.push(LineItem {
            product_id: item.product_id,
            quantity: item.quantity as u32,
            unit_price,
        });
    }
    // The total is checked here, at the edge: an overflowing or zero total is
    // an invalid request (dead-lettered), not a business rejection.
    let mut total = Money::ZERO;
    for item in &items {
        total = item
            .unit_price
            .checked_mul(item.quantity)
            .and_then(|line| total.checked_add(line))
            .map_err(|e| format!("total_amount: {e}"))?;
    }
    if total.is_zero() {
        return Err("total_amount must be greater than 0".into());
    }
    let pay_timeout = match d.pay_timeout_s {
        None => None,
        Some(s) if (1..=MAX_PAY_TIMEOUT_S).contains(&s) => Some(Duration::seconds(s)),
        Some(s) => {
            return Err(format!(
                "pay_timeout_s must be 1 to {MAX_PAY_TIMEOUT_S}, got {s}"
            ))
        }
    };
    Ok(PlaceOrder {
        order_id: d.order_id.map(OrderId),
        user_id: d.user_id,
        items,
        payment_method: d.payment_method,
        pay_timeout,
    })
}

#[derive(Deserialize)]
struct PlaceData {
    user_id: String,
    items: Vec<ItemData>,
    currency: String,
    payment_method: Channel,
    order_id: Option<uuid::Uuid>,
    pay_timeout_s: Option<i64>,
}

#[derive(Deserialize)]
struct ItemData {
    product_id: String,
    quantity: i64,
    unit_price: i64,
}

#[derive(Deserialize)]
struct PaymentData {
    order_id: OrderId,
    amount: Money,
    payment_method: Channel,
}

#[derive(Deserialize)]
struct CancelData {
    order_id: OrderId,
    reason: String,
}

#[derive(Deserialize)]
struct ShipData {
    order_id: OrderId,
    carrier: Option<String>,
    tracking_no: Option<String>,
}

#[derive(Deserialize)]
struct OrderOnly {
    order_id: OrderId,
}

#[derive(Deserialize)]
struct RefundData {
    order_id: OrderId,
    amount: Money,
    reason: String,
    refund_id: Option<uuid::Uuid>,
}

#[derive(Deserialize)]
struct ReconData {
    channel: Channel,
    date: String,
}

/// sha256 over a canonical rendering (object keys sorted at every level), so
/// the digest does not depend on the sender's key order or whitespace.
fn digest_of(kind: &str, data: &Value) -> Vec<u8> {
    let mut text = String::with_capacity(256);
    text.push_str("{\"data\":");
    canonical(data, &mut text);
    text.push_str(",\"type\":");
    canonical(&Value::String(kind.to_string()), &mut text);
    text.push('}');
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes())
        .as_ref()
        .to_vec()
}

/// Compact JSON with object keys in byte order, whatever order the sender
/// used. serde_json's map (no `preserve_order`) is ordered by key already,
/// so its compact serialization is canonical.
fn canonical(v: &Value, out: &mut String) {
    // Writing a Value into a String cannot fail.
    if let Ok(text) = serde_json::to_string(v) {
        out.push_str(&text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first implementation (sort the keys by hand); digests in inboxes
    /// written by it must stay equal.
    fn reference_canonical(v: &Value, out: &mut String) {
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    reference_canonical(&map[k], out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    reference_canonical(item, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }

    #[test]
    fn digest_is_that_of_the_canonical_type_and_data() {
        let bodies = [
            r#"{"z":1,"a":[{"y":"\u00e9\"\\","b":null},2.5,-3,true],"m":{"k2":{},"k1":[]}}"#,
            r#"{"user_id":"用户","items":[{"unit_price":1999,"quantity":2,"product_id":"p\n1"}]}"#,
            r#"{}"#,
        ];
        for body in bodies {
            let data: Value = serde_json::from_str(body).unwrap();
            let mut text = String::new();
            reference_canonical(
                &serde_json::json!({"type": "order.place", "data": data}),
                &mut text,
            );
            let expected = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
            assert_eq!(
                digest_of("order.place", &data),
                expected.as_ref().to_vec(),
                "{body}"
            );
        }
    }

    #[test]
    fn notification_ids_may_be_longer_than_request_ids() {
        let id = "n".repeat(100);
        let body =
            serde_json::json!({"type": "gateway.notification", "request_id": id, "data": {}})
                .to_string();
        assert!(parse_envelope(body.as_bytes()).is_err());
        let env = parse_notification_envelope(body.as_bytes()).expect("long id accepted");
        assert_eq!(env.request_id.as_str(), id);
        let empty = r#"{"type": "gateway.notification", "request_id": "", "data": {}}"#;
        assert!(parse_notification_envelope(empty.as_bytes()).is_err());
    }
}
