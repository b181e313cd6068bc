//! The gateways: one trait, one adapter per real protocol. A gateway's own
//! formats (yuan strings, header names, bill columns) live only in its adapter;
//! the rest of the program sees `Money`, `OrderId` and the types below.
//!
//! Errors are classified once, here, at the failure site: `is_retryable` and
//! `is_unknown_outcome` decide what the worker does next.

pub mod alipay;
pub mod bill;
pub mod crypto;
pub mod factory;
mod http_client;
pub mod wechat_pay;

use std::collections::HashMap;
use std::path::Path;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use crate::domain::{Channel, Money};

/// What a prepay asks the gateway for. `out_trade_no` is the idempotency key:
/// every retry of one order's prepay sends the same one.
#[derive(Debug, Clone)]
pub struct PrepayRequest {
    pub out_trade_no: String,
    pub amount: Money,
    pub description: String,
    pub notify_url: String,
    pub expires_at: DateTime<Utc>,
}

/// The channel's payment instrument, as the contract's `data.prepay`:
/// WeChat Pay `{"code_url": …}`, Alipay `{"qr_code": …}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub prepay: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TradeState {
    /// Paid (WeChat SUCCESS, Alipay TRADE_SUCCESS / TRADE_FINISHED).
    Paid,
    /// Paid, then (partly or fully) refunded (WeChat REFUND, Alipay TRADE_CLOSED after payment).
    Refunded,
    /// Waiting for the buyer (NOTPAY, USERPAYING, WAIT_BUYER_PAY).
    NotPaid,
    /// Closed without payment (CLOSED, REVOKED, PAYERROR, TRADE_CLOSED unpaid).
    Closed,
    /// The gateway has no such trade (ORDER_NOT_EXIST, ACQ.TRADE_NOT_EXIST).
    NotFound,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentStatus {
    pub state: TradeState,
    pub transaction_id: Option<String>,
    /// The amount the gateway says was paid (or is due, when unpaid).
    pub amount: Option<Money>,
    pub paid_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseOutcome {
    /// The payment is closed (or never existed): the buyer can no longer pay.
    Closed,
    /// The buyer paid before the close: the order must become paid instead.
    AlreadyPaid(PaymentStatus),
}

#[derive(Debug, Clone)]
pub struct RefundRequest {
    pub out_trade_no: String,
    pub out_refund_no: String,
    pub amount: Money,
    /// The original order total (WeChat requires it).
    pub total: Money,
    pub reason: String,
    pub notify_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundState {
    Succeeded,
    /// Accepted, result not known yet: learn it from a notification or query.
    Processing,
    /// Refused or closed for good; the text says why.
    Failed(String),
    /// The gateway has no such refund (a query before the refund was accepted).
    NotFound,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundStatus {
    pub state: RefundState,
    pub gateway_refund_id: Option<String>,
    pub amount: Option<Money>,
}

/// What the bill download wrote: the file in the gateway's own format
/// (WeChat Pay: gzip or plain CSV; Alipay: the zip), plus the digest the
/// gateway announced for the uncompressed content, to check before parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadedBill {
    pub expected_sha1: Option<String>,
}

/// The largest notification body accepted, at the HTTP edge and again on
/// `P.notifications`. Real ones are a few KiB (WeChat Pay: one encrypted
/// transaction; Alipay: one form of ~30 fields); 64 KiB leaves room for
/// long `attach`/`body` fields while keeping a hostile sender from making
/// the worker hash, verify and queue megabytes per request.
pub const MAX_NOTIFICATION_BODY_BYTES: usize = 64 * 1024;

/// A verified, decrypted notification, reduced to what the worker acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    Payment {
        out_trade_no: String,
        transaction_id: String,
        amount: Money,
        paid_at: DateTime<Utc>,
    },
    Refund {
        out_trade_no: String,
        out_refund_no: String,
        gateway_refund_id: Option<String>,
        amount: Option<Money>,
        state: RefundState,
    },
    /// Verified, but nothing to act on (e.g. Alipay WAIT_BUYER_PAY); the text says what it was.
    Ignored(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotificationError {
    #[error("signature verification failed: {0}")]
    BadSignature(String),
    #[error("timestamp outside the 5-minute window")]
    StaleTimestamp,
    #[error("resource decryption failed")]
    Decryption,
    #[error("notification is for another merchant or app: {0}")]
    WrongMerchant(String),
    #[error("malformed notification: {0}")]
    Malformed(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// Timeout, connection reset, 5xx, or a response we could not trust: the
    /// call may or may not have taken effect. Query before deciding.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// Definitely not processed (connect refused, rate limited): safe to retry.
    #[error("transient: {0}")]
    Transient(String),
    /// A final business answer (e.g. ORDER_CLOSED, ACQ.TRADE_HAS_SUCCESS): never retried.
    #[error("{code}: {message}")]
    Business { code: String, message: String },
    /// There is no bill for that day.
    #[error("no bill for that day")]
    NoBill,
    /// Misconfiguration or a protocol violation on our side; retrying will not help.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl GatewayError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, GatewayError::Unknown(_) | GatewayError::Transient(_))
    }

    pub fn is_unknown_outcome(&self) -> bool {
        matches!(self, GatewayError::Unknown(_))
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::Unknown(_) => "unknown",
            GatewayError::Transient(_) => "transient",
            GatewayError::Business { .. } => "business",
            GatewayError::NoBill => "no_bill",
            GatewayError::Protocol(_) => "protocol",
        }
    }
}

/// HTTP header names lower-cased, values as received.
pub type Headers = HashMap<String, String>;

#[async_trait]
pub trait Gateway: Send + Sync {
    fn channel(&self) -> Channel;

    async fn prepay(&self, req: &PrepayRequest) -> Result<Prepared, GatewayError>;

    async fn query(&self, out_trade_no: &str) -> Result<PaymentStatus, GatewayError>;

    /// Closes an unpaid payment. Any answer other than a clean close is
    /// settled by a query inside the adapter, so "already paid" is reported
    /// as `AlreadyPaid` whatever error code the gateway used for it.
    async fn close(&self, out_trade_no: &str) -> Result<CloseOutcome, GatewayError>;

    async fn refund(&self, req: &RefundRequest) -> Result<RefundStatus, GatewayError>;

    async fn query_refund(
        &self,
        out_trade_no: &str,
        out_refund_no: &str,
    ) -> Result<RefundStatus, GatewayError>;

    /// Downloads the trade bill of `date` (the gateway's business day) into `dest`.
    async fn download_bill(
        &self,
        date: NaiveDate,
        dest: &Path,
    ) -> Result<DownloadedBill, GatewayError>;

    /// Verifies (signature, timestamp window, merchant/app id) and decodes a
    /// notification exactly as received over HTTP. `now` is passed in so tests
    /// can check the window deterministically.
    fn verify_notification(
        &self,
        headers: &Headers,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Notification, NotificationError>;
}
