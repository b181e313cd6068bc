//! WeChat Pay API v3 (docs/gateways.md A4): prepay, query, close, refund, refund
//! query; bills are in `wechat_bill.rs`. Every call is authenticated first
//! and every answer is signed (`wechat_auth.rs`).
//!
//! Choices where the real gateway is unconfirmed (docs/gateways.md Part F):
//! - closing (or re-preparing) a paid order answers 403 `TRADE_ERROR`
//!   "订单已支付" (`ORDERPAID` is the APIv2 code; the v3 one is unknown);
//! - closing an already closed order answers 204 again;
//! - a repeated prepay is "the same" when amount and trade type (and JSAPI
//!   openid) match; it then answers the same `code_url` / `prepay_id`;
//! - refunds succeed at once: the create answer says `SUCCESS` and a
//!   `REFUND.SUCCESS` notification follows.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{Response, StatusCode};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::domain::{Channel, Money};

use super::calls::CallLabel;
use super::state::{rfc3339_cn, Payment, TradeStatus};
use super::wechat_auth::{self as auth, error, param_error, signed_json};
use super::{wechat_bill, wechat_refund, Ctx};

const MAX_BODY: usize = 1 << 20;

pub async fn entry(State(ctx): State<Arc<Ctx>>, req: Request) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let failure = || {
        error(
            &ctx,
            StatusCode::INTERNAL_SERVER_ERROR,
            "SYSTEM_ERROR",
            "系统错误",
        )
    };
    // Read before the fault decision, so the call log can name the payment.
    let Ok(body) = to_bytes(body, MAX_BODY).await else {
        return param_error(&ctx, "body", "请求体过大或无法读取");
    };
    let segments: Vec<String> = parts
        .uri
        .path()
        .trim_start_matches("/v3/")
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let label = CallLabel::wechat(parts.method.as_str(), &segs, &body);
    let call = async {
        let uri = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        let header = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let now = Utc::now();
        if let Err(e) = auth::verify_request(
            header,
            parts.method.as_str(),
            uri,
            &body,
            &auth::Merchant {
                mchid: &ctx.settings.wechat_mchid,
                serial_no: &ctx.settings.wechat_merchant_serial_no,
                key: &ctx.keys.wechat_merchant_public,
            },
            now,
        ) {
            return auth::sign_error(&ctx, &e);
        }
        let query: HashMap<String, String> =
            serde_urlencoded::from_str(parts.uri.query().unwrap_or("")).unwrap_or_default();
        let host = parts
            .headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("127.0.0.1");
        let method = parts.method.as_str();
        match (method, segs.as_slice()) {
            ("POST", ["pay", "transactions", kind @ ("native" | "jsapi")]) => {
                prepay(&ctx, kind, &body, now)
            }
            ("GET", ["pay", "transactions", "out-trade-no", otn]) => {
                query_order(&ctx, &query, now, |store| {
                    store.payment(Channel::WechatPay, otn).cloned()
                })
            }
            ("GET", ["pay", "transactions", "id", tid]) => {
                query_order(&ctx, &query, now, |store| {
                    store.by_transaction_id(Channel::WechatPay, tid).cloned()
                })
            }
            ("POST", ["pay", "transactions", "out-trade-no", otn, "close"]) => {
                close(&ctx, otn, &body, now)
            }
            ("POST", ["refund", "domestic", "refunds"]) => wechat_refund::refund(&ctx, &body, now),
            ("GET", ["refund", "domestic", "refunds", orn]) => {
                wechat_refund::query_refund(&ctx, orn)
            }
            ("GET", ["bill", "tradebill"]) => wechat_bill::trade_bill(&ctx, &query, host, now),
            ("GET", ["billdownload", "file"]) => wechat_bill::download(&ctx, &query, now),
            _ => error(&ctx, StatusCode::NOT_FOUND, "NOT_FOUND", "请求的资源不存在"),
        }
    };
    ctx.guarded(Channel::WechatPay, label, failure, call).await
}

#[derive(Deserialize)]
struct PrepayBody {
    appid: String,
    mchid: String,
    description: String,
    out_trade_no: String,
    notify_url: String,
    amount: AmountIn,
    payer: Option<Payer>,
    time_expire: Option<String>,
}

#[derive(Deserialize)]
struct AmountIn {
    total: i64,
    currency: Option<String>,
}

#[derive(Deserialize)]
struct Payer {
    openid: String,
}

/// The body as `T`; the error text goes into a `PARAM_ERROR` answer.
pub fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

pub fn valid_out_no(text: &str, max: usize, extra: &str) -> bool {
    (1..=max).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-*".contains(c) || extra.contains(c))
}

fn prepay(ctx: &Ctx, kind: &str, body: &[u8], now: DateTime<Utc>) -> Response<Body> {
    let req: PrepayBody = match parse(body) {
        Ok(r) => r,
        Err(e) => return param_error(ctx, "body", &e),
    };
    if req.mchid != ctx.settings.wechat_mchid || req.appid != ctx.settings.wechat_appid {
        return error(
            ctx,
            StatusCode::BAD_REQUEST,
            "APPID_MCHID_NOT_MATCH",
            "appid和mch_id不匹配",
        );
    }
    if req.description.is_empty() || req.description.chars().count() > 127 {
        return param_error(ctx, "description", "长度应为1到127个字符");
    }
    if req.out_trade_no.len() < 6 || !valid_out_no(&req.out_trade_no, 32, "") {
        return param_error(ctx, "out_trade_no", "应为6到32位数字、大小写字母、_-*");
    }
    if !(req.notify_url.starts_with("http://") || req.notify_url.starts_with("https://")) {
        return param_error(ctx, "notify_url", "应为http或https地址");
    }
    let total = match Money::from_fen(req.amount.total) {
        Ok(m) if !m.is_zero() => m,
        _ => return param_error(ctx, "amount.total", "应为大于0的整数（分）"),
    };
    if req.amount.currency.as_deref().is_some_and(|c| c != "CNY") {
        return param_error(ctx, "amount.currency", "仅支持CNY");
    }
    let trade_type = kind.to_ascii_uppercase();
    let openid = req.payer.map(|p| p.openid);
    if trade_type == "JSAPI" && openid.as_deref().is_none_or(str::is_empty) {
        return param_error(ctx, "payer.openid", "JSAPI下单必须提供openid");
    }
    let expires_at = match req.time_expire.as_deref().map(DateTime::parse_from_rfc3339) {
        None => None,
        Some(Ok(t)) => Some(t.with_timezone(&Utc)),
        Some(Err(_)) => return param_error(ctx, "time_expire", "应为RFC3339格式时间"),
    };
    let key = (Channel::WechatPay, req.out_trade_no.clone());
    let mut store = ctx.store();
    if let Some(existing) = store.payments.get(&key) {
        match existing.status(now) {
            TradeStatus::Closed => {
                return error(ctx, StatusCode::BAD_REQUEST, "ORDER_CLOSED", "订单已关闭")
            }
            TradeStatus::Paid | TradeStatus::Refunded { .. } => {
                return error(ctx, StatusCode::FORBIDDEN, "TRADE_ERROR", "订单已支付")
            }
            TradeStatus::NotPaid => {}
        }
        if existing.total != total || existing.trade_type != trade_type || existing.openid != openid
        {
            return error(
                ctx,
                StatusCode::FORBIDDEN,
                "OUT_TRADE_NO_USED",
                "商户订单号重复",
            );
        }
        return signed_json(
            ctx,
            StatusCode::OK,
            &prepay_answer(&existing.trade_type, &existing.prepay),
        );
    }
    let prepay = match trade_type.as_str() {
        "JSAPI" => format!("wx{}{}", now.format("%d%H%M%S"), &ctx.ids.token()[..24]),
        _ => format!("weixin://wxpay/bizpayurl?pr={}", &ctx.ids.token()[..16]),
    };
    let answer = prepay_answer(&trade_type, &prepay);
    store.payments.insert(
        key,
        Payment {
            channel: Channel::WechatPay,
            out_trade_no: req.out_trade_no,
            total,
            description: req.description,
            notify_url: req.notify_url,
            trade_type,
            openid,
            prepay,
            created_at: now,
            expires_at,
            scanned_at: None,
            transaction_id: None,
            paid: None,
            closed_at: None,
            refunds: Vec::new(),
            deliveries: Vec::new(),
        },
    );
    drop(store);
    signed_json(ctx, StatusCode::OK, &answer)
}

fn prepay_answer(trade_type: &str, prepay: &str) -> Value {
    match trade_type {
        "JSAPI" => json!({ "prepay_id": prepay }),
        _ => json!({ "code_url": prepay }),
    }
}

/// The transaction object of a query answer and of a payment notification.
pub fn transaction_json(ctx: &Ctx, p: &Payment, now: DateTime<Utc>) -> Value {
    let (state, desc) = match p.status(now) {
        TradeStatus::NotPaid => ("NOTPAY", "订单未支付"),
        TradeStatus::Paid => ("SUCCESS", "支付成功"),
        TradeStatus::Refunded { .. } => ("REFUND", "转入退款"),
        TradeStatus::Closed => ("CLOSED", "已关闭"),
    };
    let mut v = json!({
        "appid": ctx.settings.wechat_appid, "mchid": ctx.settings.wechat_mchid,
        "out_trade_no": p.out_trade_no, "trade_type": p.trade_type,
        "trade_state": state, "trade_state_desc": desc, "attach": "",
        "amount": {"total": p.paid_amount().fen(), "currency": "CNY", "payer_currency": "CNY"},
        "promotion_detail": [],
    });
    if let (Some((paid, at)), Some(tid)) = (p.paid, p.transaction_id.as_ref()) {
        v["transaction_id"] = json!(tid);
        v["bank_type"] = json!("OTHERS");
        v["success_time"] = json!(rfc3339_cn(at));
        v["payer"] = json!({"openid": openid_of(p)});
        v["amount"]["payer_total"] = json!(paid.fen());
    }
    v
}

/// The buyer's openid: the JSAPI payer, or a stable made-up one for Native.
pub fn openid_of(p: &Payment) -> String {
    p.openid.clone().unwrap_or_else(|| {
        let digest = crate::gateway::crypto::sha1_hex(p.out_trade_no.as_bytes());
        format!("oUpF8u{}", &digest[..22])
    })
}

fn query_order(
    ctx: &Ctx,
    query: &HashMap<String, String>,
    now: DateTime<Utc>,
    find: impl FnOnce(&super::state::Store) -> Option<Payment>,
) -> Response<Body> {
    match query.get("mchid") {
        None => return param_error(ctx, "mchid", "缺少参数"),
        Some(m) if *m != ctx.settings.wechat_mchid => {
            return error(
                ctx,
                StatusCode::BAD_REQUEST,
                "MCH_NOT_EXISTS",
                "商户号不存在",
            )
        }
        Some(_) => {}
    }
    let found = find(&ctx.store());
    match found {
        Some(p) => signed_json(ctx, StatusCode::OK, &transaction_json(ctx, &p, now)),
        None => error(ctx, StatusCode::NOT_FOUND, "ORDER_NOT_EXIST", "订单不存在"),
    }
}

#[derive(Deserialize)]
struct CloseBody {
    mchid: String,
}

fn close(ctx: &Ctx, otn: &str, body: &[u8], now: DateTime<Utc>) -> Response<Body> {
    let req: CloseBody = match parse(body) {
        Ok(r) => r,
        Err(e) => return param_error(ctx, "body", &e),
    };
    if req.mchid != ctx.settings.wechat_mchid {
        return error(
            ctx,
            StatusCode::BAD_REQUEST,
            "MCH_NOT_EXISTS",
            "商户号不存在",
        );
    }
    let mut store = ctx.store();
    let Some(p) = store.payment_mut(Channel::WechatPay, otn) else {
        return error(ctx, StatusCode::NOT_FOUND, "ORDER_NOT_EXIST", "订单不存在");
    };
    match p.status(now) {
        TradeStatus::Paid | TradeStatus::Refunded { .. } => {
            error(ctx, StatusCode::FORBIDDEN, "TRADE_ERROR", "订单已支付")
        }
        TradeStatus::Closed => auth::signed(ctx, StatusCode::NO_CONTENT, Vec::new()),
        TradeStatus::NotPaid => {
            p.closed_at = Some(now);
            auth::signed(ctx, StatusCode::NO_CONTENT, Vec::new())
        }
    }
}
