//! WeChat Pay's JSON, and its translation into the gateway types. Field sets
//! follow docs/gateways.md A3/A4; everything we do not act on is ignored.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::Money;
use crate::gateway::{PaymentStatus, RefundState, RefundStatus, TradeState};

#[derive(Debug, Serialize)]
pub(super) struct NativePrepay<'a> {
    pub appid: &'a str,
    pub mchid: &'a str,
    pub description: &'a str,
    pub out_trade_no: &'a str,
    pub time_expire: String,
    pub notify_url: &'a str,
    pub amount: Amount,
}

#[derive(Debug, Serialize)]
pub(super) struct Amount {
    pub total: i64,
    pub currency: &'static str,
}

#[derive(Debug, Serialize)]
pub(super) struct CreateRefund<'a> {
    pub out_trade_no: &'a str,
    pub out_refund_no: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub reason: &'a str,
    /// Optional at WeChat; an empty one would be refused as PARAM_ERROR.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub notify_url: &'a str,
    pub amount: RefundAmountRequest,
}

#[derive(Debug, Serialize)]
pub(super) struct RefundAmountRequest {
    pub refund: i64,
    pub total: i64,
    pub currency: &'static str,
}

#[derive(Debug, Deserialize)]
pub(super) struct PrepayAnswer {
    pub code_url: String,
}

/// A transaction: the query answer and the decrypted payment notification.
#[derive(Debug, Deserialize)]
pub(super) struct Transaction {
    pub mchid: Option<String>,
    pub appid: Option<String>,
    pub out_trade_no: Option<String>,
    pub transaction_id: Option<String>,
    pub trade_state: Option<String>,
    pub success_time: Option<String>,
    pub amount: Option<TransactionAmount>,
}

#[derive(Debug, Deserialize)]
pub(super) struct TransactionAmount {
    pub total: Option<i64>,
}

/// A refund: the create/query answer (`status`) and the decrypted refund
/// notification (`refund_status`).
#[derive(Debug, Deserialize)]
pub(super) struct Refund {
    pub mchid: Option<String>,
    pub out_trade_no: Option<String>,
    pub out_refund_no: Option<String>,
    pub refund_id: Option<String>,
    pub status: Option<String>,
    pub refund_status: Option<String>,
    pub amount: Option<RefundAmount>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RefundAmount {
    pub refund: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub(super) struct TradeBill {
    pub hash_type: Option<String>,
    pub hash_value: Option<String>,
    pub download_url: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct ApiError {
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// Why a verified answer could not be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum ModelError {
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("unknown {field} {value:?}")]
    UnknownValue { field: &'static str, value: String },
    #[error("bad amount {0}")]
    Amount(i64),
    #[error("bad time {0:?}")]
    Time(String),
}

pub(super) fn fen(value: i64) -> Result<Money, ModelError> {
    Money::from_fen(value).map_err(|_| ModelError::Amount(value))
}

pub(super) fn time(text: &str) -> Result<DateTime<Utc>, ModelError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ModelError::Time(text.to_string()))
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

impl Transaction {
    pub(super) fn to_status(&self) -> Result<PaymentStatus, ModelError> {
        let state_text = non_empty(&self.trade_state).ok_or(ModelError::Missing("trade_state"))?;
        let state = match state_text {
            "SUCCESS" => TradeState::Paid,
            "REFUND" => TradeState::Refunded,
            // ACCEPT: received, waiting for the debit (wechatpay-java only).
            "NOTPAY" | "USERPAYING" | "ACCEPT" => TradeState::NotPaid,
            "CLOSED" | "REVOKED" | "PAYERROR" => TradeState::Closed,
            other => {
                return Err(ModelError::UnknownValue {
                    field: "trade_state",
                    value: other.to_string(),
                })
            }
        };
        let amount = match self.amount.as_ref().and_then(|a| a.total) {
            Some(total) => Some(fen(total)?),
            None => None,
        };
        let paid_at = match non_empty(&self.success_time) {
            Some(t) => Some(time(t)?),
            None => None,
        };
        Ok(PaymentStatus {
            state,
            transaction_id: non_empty(&self.transaction_id).map(str::to_string),
            amount,
            paid_at,
        })
    }
}

impl Refund {
    pub(super) fn to_status(&self) -> Result<RefundStatus, ModelError> {
        let text = non_empty(&self.status)
            .or(non_empty(&self.refund_status))
            .ok_or(ModelError::Missing("status"))?;
        let state = refund_state(text)?;
        let amount = match self.amount.as_ref().and_then(|a| a.refund) {
            Some(v) => Some(fen(v)?),
            None => None,
        };
        Ok(RefundStatus {
            state,
            gateway_refund_id: non_empty(&self.refund_id).map(str::to_string),
            amount,
        })
    }
}

/// ABNORMAL is not final (it can still succeed after manual handling), so it
/// is "processing"; CLOSED is the refund failing for good.
pub(super) fn refund_state(text: &str) -> Result<RefundState, ModelError> {
    Ok(match text {
        "SUCCESS" => RefundState::Succeeded,
        "PROCESSING" | "ABNORMAL" => RefundState::Processing,
        "CLOSED" => RefundState::Failed("CLOSED: the refund was closed by WeChat Pay".into()),
        other => {
            return Err(ModelError::UnknownValue {
                field: "refund status",
                value: other.to_string(),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(state: &str) -> Transaction {
        serde_json::from_str(&format!(
            r#"{{"trade_state":"{state}","transaction_id":"42","success_time":"2024-01-01T12:00:00+08:00","amount":{{"total":100}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn trade_states() {
        for (text, state) in [
            ("SUCCESS", TradeState::Paid),
            ("REFUND", TradeState::Refunded),
            ("NOTPAY", TradeState::NotPaid),
            ("USERPAYING", TradeState::NotPaid),
            ("CLOSED", TradeState::Closed),
            ("REVOKED", TradeState::Closed),
            ("PAYERROR", TradeState::Closed),
        ] {
            assert_eq!(tx(text).to_status().unwrap().state, state, "{text}");
        }
        assert!(tx("WHATEVER").to_status().is_err());
        let s = tx("SUCCESS").to_status().unwrap();
        assert_eq!(s.amount, Some(Money::from_fen(100).unwrap()));
        assert_eq!(s.paid_at.unwrap().to_rfc3339(), "2024-01-01T04:00:00+00:00");
        let neg: Transaction =
            serde_json::from_str(r#"{"trade_state":"SUCCESS","amount":{"total":-1}}"#).unwrap();
        assert_eq!(neg.to_status(), Err(ModelError::Amount(-1)));
    }

    #[test]
    fn refund_states() {
        assert_eq!(refund_state("SUCCESS"), Ok(RefundState::Succeeded));
        assert_eq!(refund_state("ABNORMAL"), Ok(RefundState::Processing));
        assert_eq!(refund_state("PROCESSING"), Ok(RefundState::Processing));
        assert!(matches!(refund_state("CLOSED"), Ok(RefundState::Failed(_))));
        assert!(refund_state("NOPE").is_err());
    }
}
