//! Alipay asynchronous notifications (docs/gateways.md B3): a form POST signed by
//! the V1 rule. Verified first; then the app id; then the trade status.

use std::collections::BTreeMap;

use super::model::beijing_time;
use super::sign;
use super::AlipayConfig;
use crate::domain::Money;
use crate::gateway::{Notification, NotificationError, RefundState};

fn malformed(what: impl std::fmt::Display) -> NotificationError {
    NotificationError::Malformed(what.to_string())
}

pub(super) fn verify(
    config: &AlipayConfig,
    body: &[u8],
) -> Result<Notification, NotificationError> {
    // The form is URL-decoded before verification (V1 step 1). Alipay sends
    // the charset we asked for, utf-8.
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        // Two values for one key would let a forger choose which one we act on.
        if fields.insert(k.to_string(), v.to_string()).is_some() {
            return Err(malformed(format_args!("duplicate field {k}")));
        }
    }
    let signature = fields
        .get("sign")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| NotificationError::BadSignature("no sign".into()))?;
    if let Some(kind) = fields.get("sign_type") {
        if kind != "RSA2" {
            return Err(NotificationError::BadSignature(format!(
                "sign_type {kind:?} is not RSA2"
            )));
        }
    }
    let content = sign::sign_content(
        fields.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &["sign", "sign_type"],
    );
    if !config
        .alipay_public_key
        .verify_sha256_base64(content.as_bytes(), signature)
    {
        return Err(NotificationError::BadSignature(
            "signature does not verify".into(),
        ));
    }

    let field = |name: &str| {
        fields
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let required = |name: &str| {
        field(name)
            .map(str::to_string)
            .ok_or_else(|| malformed(format_args!("missing {name}")))
    };
    match field("app_id") {
        Some(app) if app == config.app_id => {}
        other => {
            return Err(NotificationError::WrongMerchant(format!(
                "app_id {:?}",
                other.unwrap_or("")
            )))
        }
    }
    let yuan = |name: &str| {
        let text = required(name)?;
        Money::parse_yuan(&text).map_err(|e| malformed(format_args!("{name}: {e}")))
    };
    let status = field("trade_status").unwrap_or("");
    let is_refund = field("out_biz_no").is_some() && field("refund_fee").is_some();
    match status {
        // A refund notifies with the trade's status after it: TRADE_SUCCESS
        // after a partial refund, TRADE_CLOSED after a full one.
        "TRADE_SUCCESS" | "TRADE_FINISHED" | "TRADE_CLOSED" if is_refund => {
            // refund_fee is the trade's cumulative refund, not this refund's
            // amount; check it parses, but report no amount for the refund.
            yuan("refund_fee")?;
            Ok(Notification::Refund {
                out_trade_no: required("out_trade_no")?,
                out_refund_no: required("out_biz_no")?,
                gateway_refund_id: None,
                amount: None,
                state: RefundState::Succeeded,
            })
        }
        "TRADE_SUCCESS" | "TRADE_FINISHED" => {
            let paid = required("gmt_payment")?;
            let paid_at = beijing_time(&paid)
                .ok_or_else(|| malformed(format_args!("gmt_payment {paid:?}")))?;
            Ok(Notification::Payment {
                out_trade_no: required("out_trade_no")?,
                transaction_id: required("trade_no")?,
                amount: yuan("total_amount")?,
                paid_at,
            })
        }
        other => Ok(Notification::Ignored(format!("trade_status {other}"))),
    }
}
