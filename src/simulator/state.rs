//! The simulator's memory: prepared payments, their refunds, bill download
//! tokens, notification deliveries. It lives for the life of the process.
//! One mutex guards it; no `.await` ever happens while it is held.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, FixedOffset, NaiveDate, SecondsFormat, Utc};
use serde::Serialize;

use crate::domain::{Channel, Money};

/// Both gateways count business days and print local times in Beijing time.
pub fn beijing() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("+08:00 is a valid offset")
}

/// RFC 3339 with the +08:00 offset, seconds precision (WeChat's times).
pub fn rfc3339_cn(at: DateTime<Utc>) -> String {
    at.with_timezone(&beijing())
        .to_rfc3339_opts(SecondsFormat::Secs, false)
}

/// `yyyy-MM-dd HH:mm:ss` in Beijing time (Alipay's times, both bills).
pub fn local_cn(at: DateTime<Utc>) -> String {
    at.with_timezone(&beijing())
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

pub fn business_day(at: DateTime<Utc>) -> NaiveDate {
    at.with_timezone(&beijing()).date_naive()
}

#[derive(Debug, Clone)]
pub struct Refund {
    pub out_refund_no: String,
    pub refund_id: String,
    pub amount: Money,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    pub notify_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TradeStatus {
    /// Prepared, not paid (WeChat NOTPAY, Alipay WAIT_BUYER_PAY once scanned).
    NotPaid,
    Paid,
    /// Paid, then refunded in part (`false`) or in full (`true`).
    Refunded {
        full: bool,
    },
    Closed,
}

#[derive(Debug, Clone)]
pub struct Payment {
    pub channel: Channel,
    pub out_trade_no: String,
    /// What the merchant prepared.
    pub total: Money,
    pub description: String,
    pub notify_url: String,
    /// WeChat `NATIVE` / `JSAPI`; Alipay `precreate`.
    pub trade_type: String,
    pub openid: Option<String>,
    /// `code_url`, `prepay_id` or `qr_code`: what a repeated prepay answers again.
    pub prepay: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Alipay: the trade exists only from the buyer's scan on.
    pub scanned_at: Option<DateTime<Utc>>,
    pub transaction_id: Option<String>,
    /// What the buyer actually paid (differs from `total` when tampered) and when.
    pub paid: Option<(Money, DateTime<Utc>)>,
    pub closed_at: Option<DateTime<Utc>>,
    pub refunds: Vec<Refund>,
    pub deliveries: Vec<Delivery>,
}

impl Payment {
    pub fn status(&self, now: DateTime<Utc>) -> TradeStatus {
        if let Some((paid, _)) = self.paid {
            let refunded = self.refunded();
            return match refunded.is_zero() {
                true => TradeStatus::Paid,
                false => TradeStatus::Refunded {
                    full: refunded >= paid,
                },
            };
        }
        let expired = self.expires_at.is_some_and(|at| at <= now);
        if self.closed_at.is_some() || expired {
            TradeStatus::Closed
        } else {
            TradeStatus::NotPaid
        }
    }

    pub fn refunded(&self) -> Money {
        self.refunds.iter().fold(Money::ZERO, |acc, r| {
            acc.checked_add(r.amount).unwrap_or(acc)
        })
    }

    /// What can still be refunded: nothing unless paid.
    pub fn refundable(&self) -> Money {
        match self.paid {
            Some((paid, _)) => paid.checked_sub(self.refunded()).unwrap_or(Money::ZERO),
            None => Money::ZERO,
        }
    }

    pub fn paid_amount(&self) -> Money {
        self.paid.map(|(m, _)| m).unwrap_or(self.total)
    }
}

/// One notification and how its delivery went, for `GET /sim/payments/…`.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub kind: String,
    pub url: String,
    pub attempts: u32,
    pub acknowledged: bool,
    pub last_status: Option<u16>,
}

/// A bill frozen when its download URL was issued, so the bytes downloaded
/// are the bytes whose digest was announced.
#[derive(Debug, Clone)]
pub struct BillFile {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    pub file_name: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Default)]
pub struct Store {
    pub payments: HashMap<(Channel, String), Payment>,
    pub by_transaction: HashMap<(Channel, String), String>,
    /// WeChat refunds are looked up by `out_refund_no` alone.
    pub wechat_refunds: HashMap<String, String>,
    /// Download links by the SHA-256 of their token (see `put_bill`).
    bills: HashMap<Vec<u8>, BillFile>,
}

impl Store {
    pub fn payment(&self, channel: Channel, out_trade_no: &str) -> Option<&Payment> {
        self.payments.get(&(channel, out_trade_no.to_string()))
    }

    pub fn payment_mut(&mut self, channel: Channel, out_trade_no: &str) -> Option<&mut Payment> {
        self.payments.get_mut(&(channel, out_trade_no.to_string()))
    }

    pub fn by_transaction_id(&self, channel: Channel, transaction_id: &str) -> Option<&Payment> {
        let otn = self
            .by_transaction
            .get(&(channel, transaction_id.to_string()))?;
        self.payment(channel, otn)
    }

    /// Payments and refunds of one channel, for the bills.
    pub fn channel_payments(&self, channel: Channel) -> Vec<&Payment> {
        let mut list: Vec<&Payment> = self
            .payments
            .values()
            .filter(|p| p.channel == channel)
            .collect();
        list.sort_by(|a, b| (a.created_at, &a.out_trade_no).cmp(&(b.created_at, &b.out_trade_no)));
        list
    }

    /// Drops download tokens past their validity so the map stays small.
    pub fn sweep_bills(&mut self, now: DateTime<Utc>) {
        self.bills.retain(|_, b| b.expires_at > now);
    }

    /// A download token is a capability, so it is kept only as its SHA-256:
    /// a lookup compares digests, and how long that takes tells a guesser
    /// nothing about the token itself (a map keyed by the token would
    /// compare the secret with `==`).
    pub fn put_bill(&mut self, token: &str, file: BillFile) {
        self.bills.insert(token_digest(token), file);
    }

    /// The file behind `token` while its link is valid.
    pub fn bill(&self, token: &str, now: DateTime<Utc>) -> Option<BillFile> {
        self.bills
            .get(&token_digest(token))
            .filter(|b| b.expires_at > now)
            .cloned()
    }
}

fn token_digest(token: &str) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

/// Unique gateway-style numbers: a per-process counter plus the date keeps
/// them unique and shaped like the real ones (digits only, fixed length).
#[derive(Debug, Default)]
pub struct IdMint {
    seq: AtomicU64,
}

impl IdMint {
    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn digits(&self, prefix: &str, now: DateTime<Utc>, tail: usize) -> String {
        let date = now.with_timezone(&beijing()).format("%Y%m%d");
        let seq = self.next();
        let random: u64 = rand::random::<u64>() % 10_000;
        let tail_value = format!("{random:04}{seq:0>width$}", width = tail.saturating_sub(4));
        format!("{prefix}{date}{tail_value}")
    }

    /// 28 digits like `4200001234202401011234567890`.
    pub fn wechat_transaction(&self, now: DateTime<Utc>) -> String {
        self.digits("4200001234", now, 10)
    }

    /// 29 digits like `50300001234202401010000000001`.
    pub fn wechat_refund(&self, now: DateTime<Utc>) -> String {
        self.digits("50300001234", now, 10)
    }

    /// 28 digits like `2024010122001400000000000001`.
    pub fn alipay_trade(&self, now: DateTime<Utc>) -> String {
        let date = now.with_timezone(&beijing()).format("%Y%m%d");
        format!("{date}22001400{:012}", self.next())
    }

    /// A random lower-case hex token (download links, notification ids).
    pub fn token(&self) -> String {
        format!(
            "{:016x}{:016x}{:08x}",
            rand::random::<u64>(),
            rand::random::<u64>(),
            self.next()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ids_have_the_real_shapes() {
        let mint = IdMint::default();
        let now = Utc.with_ymd_and_hms(2024, 1, 1, 4, 0, 0).unwrap();
        let t = mint.wechat_transaction(now);
        assert_eq!(t.len(), 28, "{t}");
        assert!(t.starts_with("420000123420240101"));
        assert_eq!(mint.wechat_refund(now).len(), 29);
        assert_eq!(mint.alipay_trade(now).len(), 28);
        assert_ne!(mint.wechat_transaction(now), t);
    }

    #[test]
    fn business_day_is_beijing_time() {
        let late_utc = Utc.with_ymd_and_hms(2024, 1, 1, 16, 30, 0).unwrap();
        assert_eq!(business_day(late_utc).to_string(), "2024-01-02");
        assert_eq!(rfc3339_cn(late_utc), "2024-01-02T00:30:00+08:00");
        assert_eq!(local_cn(late_utc), "2024-01-02 00:30:00");
    }
}
