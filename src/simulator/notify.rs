//! Asynchronous notifications (docs/gateways.md A3, B3): built once, re-signed on
//! every attempt (so a re-send hours later still carries a fresh timestamp),
//! re-sent on the gateway's schedule until acknowledged. WeChat Pay counts
//! 200/204 within 5 s as acknowledged; Alipay only the body `success`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;

use crate::domain::{format_signed_yuan, Channel};
use crate::gateway::crypto::{aes_256_gcm_encrypt, random_nonce};

use super::alipay_proto::{self, buyer_id, seller_id};
use super::state::{local_cn, rfc3339_cn, Delivery, Payment, Refund, TradeStatus};
use super::wechat_auth::SCHEME;
use super::wechat_pay::transaction_json;
use super::Ctx;

/// What is sent; the signature is added per attempt.
#[derive(Debug, Clone)]
enum Outgoing {
    /// The JSON envelope, byte-identical on every attempt.
    Wechat(String),
    /// Form fields without `sign` and `notify_time`.
    Alipay(Vec<(String, String)>),
}

pub fn wechat_payment(ctx: &Arc<Ctx>, p: &Payment) {
    let resource = transaction_json(ctx, p, Utc::now()).to_string();
    match wechat_envelope(
        ctx,
        "TRANSACTION.SUCCESS",
        "支付成功",
        "transaction",
        &resource,
    ) {
        Ok(body) => start(
            ctx,
            p,
            "TRANSACTION.SUCCESS",
            &p.notify_url,
            Outgoing::Wechat(body),
        ),
        Err(e) => tracing::error!(error = %e, "cannot encrypt a notification"),
    }
}

pub fn wechat_refund(ctx: &Arc<Ctx>, p: &Payment, r: &Refund) {
    let paid = p.paid_amount().fen();
    let resource = json!({
        "mchid": ctx.settings.wechat_mchid, "out_trade_no": p.out_trade_no,
        "transaction_id": p.transaction_id, "out_refund_no": r.out_refund_no,
        "refund_id": r.refund_id, "refund_status": "SUCCESS",
        "success_time": rfc3339_cn(r.created_at), "create_time": rfc3339_cn(r.created_at),
        "user_received_account": "支付用户零钱", "channel": "ORIGINAL", "funds_account": "AVAILABLE",
        "amount": {"total": paid, "refund": r.amount.fen(), "payer_total": paid,
                   "payer_refund": r.amount.fen()},
    })
    .to_string();
    match wechat_envelope(ctx, "REFUND.SUCCESS", "退款成功", "refund", &resource) {
        Ok(body) => start(
            ctx,
            p,
            "REFUND.SUCCESS",
            &r.notify_url,
            Outgoing::Wechat(body),
        ),
        Err(e) => tracing::error!(error = %e, "cannot encrypt a notification"),
    }
}

fn wechat_envelope(
    ctx: &Ctx,
    event_type: &str,
    summary: &str,
    original_type: &str,
    resource: &str,
) -> Result<String, crate::gateway::crypto::CryptoError> {
    let nonce = random_nonce(12);
    let ciphertext = aes_256_gcm_encrypt(
        ctx.keys.wechat_apiv3_key.as_bytes(),
        nonce.as_bytes(),
        original_type.as_bytes(),
        resource.as_bytes(),
    )?;
    let id = format!("EV-{}", &ctx.ids.token()[..30]);
    Ok(json!({
        "id": id, "create_time": rfc3339_cn(Utc::now()), "resource_type": "encrypt-resource",
        "event_type": event_type, "summary": summary,
        "resource": {"original_type": original_type, "algorithm": "AEAD_AES_256_GCM",
                     "ciphertext": ciphertext, "associated_data": original_type, "nonce": nonce},
    })
    .to_string())
}

/// The fields shared by payment and refund notifications of one trade.
fn alipay_trade_fields(ctx: &Ctx, p: &Payment) -> Vec<(String, String)> {
    let paid = p.paid_amount().to_yuan_string();
    let paid_at = p.paid.map(|(_, at)| at).unwrap_or(p.created_at);
    let fund_bill = format!(r#"[{{"amount":"{paid}","fundChannel":"ALIPAYACCOUNT"}}]"#);
    let app_id = ctx.settings.alipay_app_id.clone();
    [
        ("notify_type", "trade_status_sync".to_string()),
        (
            "notify_id",
            format!("{}{}", paid_at.format("%Y%m%d"), &ctx.ids.token()[..24]),
        ),
        ("app_id", app_id.clone()),
        ("auth_app_id", app_id),
        ("charset", "utf-8".to_string()),
        ("version", "1.0".to_string()),
        ("sign_type", "RSA2".to_string()),
        ("trade_no", p.transaction_id.clone().unwrap_or_default()),
        ("out_trade_no", p.out_trade_no.clone()),
        ("buyer_id", buyer_id(&p.out_trade_no)),
        ("buyer_logon_id", "159****5620".to_string()),
        ("seller_id", seller_id(ctx)),
        ("total_amount", paid.clone()),
        ("receipt_amount", paid.clone()),
        ("invoice_amount", paid.clone()),
        ("buyer_pay_amount", paid),
        ("point_amount", "0.00".to_string()),
        ("subject", p.description.clone()),
        ("gmt_create", local_cn(p.scanned_at.unwrap_or(p.created_at))),
        ("gmt_payment", local_cn(paid_at)),
        ("fund_bill_list", fund_bill),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

pub fn alipay_payment(ctx: &Arc<Ctx>, p: &Payment) {
    let mut fields = alipay_trade_fields(ctx, p);
    fields.push(("trade_status".into(), "TRADE_SUCCESS".into()));
    start(
        ctx,
        p,
        "TRADE_SUCCESS",
        &p.notify_url,
        Outgoing::Alipay(fields),
    );
}

/// A partial refund keeps the trade `TRADE_SUCCESS`; the one that empties it
/// closes it (`TRADE_CLOSED`). `p` already includes `r`.
pub fn alipay_refund(ctx: &Arc<Ctx>, p: &Payment, r: &Refund) {
    let mut fields = alipay_trade_fields(ctx, p);
    let full = matches!(p.status(Utc::now()), TradeStatus::Refunded { full: true });
    let status = if full {
        "TRADE_CLOSED"
    } else {
        "TRADE_SUCCESS"
    };
    fields.push(("trade_status".into(), status.into()));
    fields.push(("refund_fee".into(), p.refunded().to_yuan_string()));
    fields.push(("out_biz_no".into(), r.out_refund_no.clone()));
    fields.push((
        "gmt_refund".into(),
        format!(
            "{}.{:03}",
            local_cn(r.created_at),
            r.created_at.timestamp_subsec_millis()
        ),
    ));
    if full {
        fields.push(("gmt_close".into(), local_cn(r.created_at)));
    }
    let kind = format!("{status}/refund {}", format_signed_yuan(r.amount.fen(), 2));
    start(ctx, p, &kind, &r.notify_url, Outgoing::Alipay(fields));
}

fn start(ctx: &Arc<Ctx>, p: &Payment, kind: &str, url: &str, outgoing: Outgoing) {
    let index = {
        let mut store = ctx.store();
        let Some(stored) = store.payment_mut(p.channel, &p.out_trade_no) else {
            return;
        };
        stored.deliveries.push(Delivery {
            kind: kind.to_string(),
            url: url.to_string(),
            attempts: 0,
            acknowledged: false,
            last_status: None,
        });
        stored.deliveries.len() - 1
    };
    let schedule = match p.channel {
        Channel::WechatPay => ctx.wechat_notify_retry.clone(),
        Channel::Alipay => ctx.alipay_notify_retry.clone(),
    };
    let task_ctx = ctx.clone();
    let (channel, otn, url) = (p.channel, p.out_trade_no.clone(), url.to_string());
    ctx.tasks.spawn(async move {
        for attempt in 0..=schedule.len() {
            if attempt > 0 && !task_ctx.sleep(schedule[attempt - 1]).await {
                return;
            }
            let (status, acked) = send_once(&task_ctx, &url, &outgoing, false).await;
            if let Some(d) = task_ctx
                .store()
                .payment_mut(channel, &otn)
                .and_then(|p| p.deliveries.get_mut(index))
            {
                d.attempts += 1;
                d.last_status = status;
                d.acknowledged = acked;
            }
            if acked {
                return;
            }
            tracing::debug!(notify.url = %url, attempt, ?status, "notification not acknowledged");
        }
        tracing::warn!(notify.url = %url, out_trade_no = %otn, "notification never acknowledged; giving up");
    });
}

/// One attempt: the HTTP status (None when no answer) and whether it counts
/// as an acknowledgement. `probe` replaces the signature with an invalid
/// `WECHATPAY/SIGNTEST/` one (WeChat) or a forged one (Alipay).
async fn send_once(ctx: &Ctx, url: &str, outgoing: &Outgoing, probe: bool) -> (Option<u16>, bool) {
    let request = match outgoing {
        Outgoing::Wechat(body) => {
            let ts = Utc::now().timestamp().to_string();
            let nonce = random_nonce(32);
            let message = format!("{ts}\n{nonce}\n{body}\n");
            let signature = match probe {
                true => format!("WECHATPAY/SIGNTEST/{}", random_nonce(64)),
                false => match ctx
                    .keys
                    .wechat_platform_private
                    .sign_sha256_base64(message.as_bytes())
                {
                    Ok(s) => s,
                    Err(_) => return (None, false),
                },
            };
            ctx.http
                .post(url)
                .header("content-type", "application/json")
                .header("wechatpay-timestamp", ts)
                .header("wechatpay-nonce", nonce)
                .header("wechatpay-signature", signature)
                .header("wechatpay-serial", &ctx.settings.wechat_platform_serial)
                .header("wechatpay-signature-type", SCHEME)
                .header("request-id", format!("08{}-0", random_nonce(40)))
                .body(body.clone())
        }
        Outgoing::Alipay(fields) => {
            let mut fields = fields.clone();
            fields.push(("notify_time".into(), local_cn(Utc::now())));
            let sign = match alipay_proto::sign_v1(ctx, &fields) {
                Ok(s) if !probe => s,
                Ok(s) => s.chars().rev().collect(),
                Err(_) => return (None, false),
            };
            fields.push(("sign".into(), sign));
            fields.retain(|(_, v)| !v.is_empty());
            let body = serde_urlencoded::to_string(&fields).unwrap_or_default();
            ctx.http
                .post(url)
                .header(
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                )
                .body(body)
        }
    };
    let response = match request.timeout(Duration::from_secs(5)).send().await {
        Ok(r) => r,
        Err(_) => return (None, false),
    };
    let status = response.status().as_u16();
    let acked = match outgoing {
        Outgoing::Wechat(_) => status == 200 || status == 204,
        Outgoing::Alipay(_) => response.text().await.is_ok_and(|t| t == "success"),
    };
    (Some(status), acked)
}

/// `POST /sim/probe`: sends one deliberately invalid notification (for a
/// made-up order) and reports how the receiver answered. A receiver that
/// verifies answers 4xx/5xx (WeChat Pay) or anything but `success` (Alipay).
pub async fn probe(ctx: &Ctx, channel: Channel, url: &str) -> (Option<u16>, bool) {
    let now = Utc::now();
    let p = Payment {
        channel,
        out_trade_no: format!("SIGNTEST{}", &ctx.ids.token()[..16]),
        total: crate::domain::Money::from_fen(1).unwrap_or_default(),
        description: "SIGNTEST".into(),
        notify_url: url.into(),
        trade_type: "NATIVE".into(),
        openid: None,
        prepay: String::new(),
        created_at: now,
        expires_at: None,
        scanned_at: Some(now),
        transaction_id: Some(ctx.ids.wechat_transaction(now)),
        paid: crate::domain::Money::from_fen(1).ok().map(|m| (m, now)),
        closed_at: None,
        refunds: Vec::new(),
        deliveries: Vec::new(),
    };
    let outgoing = match channel {
        Channel::WechatPay => {
            let resource = transaction_json(ctx, &p, now).to_string();
            match wechat_envelope(
                ctx,
                "TRANSACTION.SUCCESS",
                "支付成功",
                "transaction",
                &resource,
            ) {
                Ok(body) => Outgoing::Wechat(body),
                Err(_) => return (None, false),
            }
        }
        Channel::Alipay => {
            let mut fields = alipay_trade_fields(ctx, &p);
            fields.push(("trade_status".into(), "TRADE_SUCCESS".into()));
            Outgoing::Alipay(fields)
        }
    };
    send_once(ctx, url, &outgoing, true).await
}
