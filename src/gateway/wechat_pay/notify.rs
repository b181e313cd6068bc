//! WeChat Pay notifications (docs/gateways.md A3): verify the headers' signature
//! over the raw body, then the timestamp window, then decrypt the resource,
//! then check it is ours. Nothing in the body is believed before that.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::model::{self, Refund, Transaction};
use super::sign::{self, VerifyError};
use super::WechatPayConfig;
use crate::gateway::crypto::aes_256_gcm_decrypt;
use crate::gateway::{Headers, Notification, NotificationError};

#[derive(Debug, Deserialize)]
struct Envelope {
    event_type: String,
    resource: Resource,
}

#[derive(Debug, Deserialize)]
struct Resource {
    algorithm: String,
    ciphertext: String,
    nonce: String,
    #[serde(default)]
    associated_data: Option<String>,
}

fn malformed(what: impl std::fmt::Display) -> NotificationError {
    NotificationError::Malformed(what.to_string())
}

pub(super) fn verify(
    config: &WechatPayConfig,
    headers: &Headers,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Notification, NotificationError> {
    // Header names arrive lower-cased from our ingress but as WeChat spells
    // them in a queued message (docs/contract.md §3.8): look them up either way.
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    sign::verify_platform_signature(
        header,
        body,
        &config.platform_public_key,
        &config.platform_serial,
        now,
    )
    .map_err(|e| match e {
        VerifyError::Stale => NotificationError::StaleTimestamp,
        other => NotificationError::BadSignature(other.to_string()),
    })?;

    let envelope: Envelope = serde_json::from_slice(body).map_err(malformed)?;
    if envelope.resource.algorithm != "AEAD_AES_256_GCM" {
        return Err(malformed(format_args!(
            "unsupported resource algorithm {:?}",
            envelope.resource.algorithm
        )));
    }
    let plain = aes_256_gcm_decrypt(
        config.apiv3_key.as_bytes(),
        envelope.resource.nonce.as_bytes(),
        envelope
            .resource
            .associated_data
            .as_deref()
            .unwrap_or("")
            .as_bytes(),
        &envelope.resource.ciphertext,
    )
    .map_err(|_| NotificationError::Decryption)?;

    match envelope.event_type.as_str() {
        "TRANSACTION.SUCCESS" => payment(config, &plain),
        t if t.starts_with("REFUND.") => refund(config, &plain),
        other => Ok(Notification::Ignored(format!("event_type {other}"))),
    }
}

fn check_merchant(
    config: &WechatPayConfig,
    mchid: Option<&str>,
    appid: Option<&str>,
) -> Result<(), NotificationError> {
    if let Some(m) = mchid {
        if m != config.mchid {
            return Err(NotificationError::WrongMerchant(format!("mchid {m}")));
        }
    }
    if let Some(a) = appid {
        if a != config.appid {
            return Err(NotificationError::WrongMerchant(format!("appid {a}")));
        }
    }
    Ok(())
}

fn payment(config: &WechatPayConfig, plain: &[u8]) -> Result<Notification, NotificationError> {
    let tx: Transaction = serde_json::from_slice(plain).map_err(malformed)?;
    // A payment resource always names its merchant; one without is not ours to trust.
    if tx.mchid.is_none() {
        return Err(NotificationError::WrongMerchant("no mchid".into()));
    }
    check_merchant(config, tx.mchid.as_deref(), tx.appid.as_deref())?;
    if tx.trade_state.as_deref() != Some("SUCCESS") {
        return Ok(Notification::Ignored(format!(
            "TRANSACTION.SUCCESS with trade_state {:?}",
            tx.trade_state
        )));
    }
    let required = |v: Option<String>, name: &str| {
        v.filter(|s| !s.is_empty())
            .ok_or_else(|| malformed(format_args!("missing {name}")))
    };
    let total = tx
        .amount
        .as_ref()
        .and_then(|a| a.total)
        .ok_or_else(|| malformed("missing amount.total"))?;
    let amount = model::fen(total).map_err(malformed)?;
    let success_time = required(tx.success_time, "success_time")?;
    let paid_at = model::time(&success_time).map_err(malformed)?;
    Ok(Notification::Payment {
        out_trade_no: required(tx.out_trade_no, "out_trade_no")?,
        transaction_id: required(tx.transaction_id, "transaction_id")?,
        amount,
        paid_at,
    })
}

fn refund(config: &WechatPayConfig, plain: &[u8]) -> Result<Notification, NotificationError> {
    let refund: Refund = serde_json::from_slice(plain).map_err(malformed)?;
    // Refund resources may omit mchid (wechatpay-java's model has none).
    check_merchant(config, refund.mchid.as_deref(), None)?;
    let status = refund.to_status().map_err(malformed)?;
    let required = |v: Option<String>, name: &str| {
        v.filter(|s| !s.is_empty())
            .ok_or_else(|| malformed(format_args!("missing {name}")))
    };
    Ok(Notification::Refund {
        out_trade_no: required(refund.out_trade_no, "out_trade_no")?,
        out_refund_no: required(refund.out_refund_no, "out_refund_no")?,
        gateway_refund_id: status.gateway_refund_id,
        amount: status.amount,
        state: status.state,
    })
}
