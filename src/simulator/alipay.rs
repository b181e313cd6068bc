//! Alipay's `gateway.do` (docs/gateways.md B2): precreate, query, close, refund,
//! refund query, bill download URL. Envelope and signatures: `alipay_proto.rs`.
//!
//! Like the real gateway, a precreated payment is not yet a trade: query and
//! close answer `ACQ.TRADE_NOT_EXIST` until the buyer scans (`/sim/scan`, or
//! `/sim/pay`, which scans and pays). A "closed" precreate is therefore still
//! payable — the paid-after-cancel case the worker must report.
//! Choices where the real gateway is unconfirmed: closing a paid trade
//! answers `ACQ.TRADE_HAS_SUCCESS`, closing a closed one succeeds again,
//! refunds above what remains answer `ACQ.REFUND_AMT_NOT_EQUAL_TOTAL`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Response};
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{json, Value};

use crate::domain::{Channel, Money};

use super::alipay_proto::{
    self as proto, brace_free, buyer_id, node_name, parse_amount, success, Failure, Node,
};
use super::calls::CallLabel;
use super::state::{business_day, local_cn, Payment, Refund, Store, TradeStatus};
use super::{alipay_bill, notify, Ctx};

/// Alipay's upper limit, 100 000 000.00 yuan.
const MAX_AMOUNT_FEN: i64 = 10_000_000_000;

pub async fn entry_get(
    State(ctx): State<Arc<Ctx>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response<Body> {
    handle(ctx, query.unwrap_or_default(), Bytes::new(), headers).await
}

pub async fn entry_post(
    State(ctx): State<Arc<Ctx>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    handle(ctx, query.unwrap_or_default(), body, headers).await
}

async fn handle(ctx: Arc<Ctx>, query: String, body: Bytes, headers: HeaderMap) -> Response<Body> {
    let params = proto::merge_params(&query, &body);
    let method = params.get("method").cloned().unwrap_or_default();
    let name = match method.as_str() {
        "" => "error_response".to_string(),
        m => node_name(m),
    };
    let label = CallLabel::alipay(&method, params.get("biz_content").map(String::as_str));
    let failure = || proto::respond(&ctx, &name, &Failure::unavailable().node());
    let call = async {
        let node = match proto::verify_request(
            &params,
            &ctx.settings.alipay_app_id,
            &ctx.keys.alipay_app_public,
        ) {
            Err(f) => f.node(),
            Ok(()) => {
                let host = headers
                    .get("host")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("127.0.0.1");
                dispatch(&ctx, &method, &params, host).unwrap_or_else(|f| f.node())
            }
        };
        let name = match node.get("sub_code").and_then(Value::as_str) {
            Some("isv.invalid-method") => "error_response".to_string(),
            _ => name.clone(),
        };
        proto::respond(&ctx, &name, &node)
    };
    ctx.guarded(Channel::Alipay, label, failure, call).await
}

fn dispatch(
    ctx: &Arc<Ctx>,
    method: &str,
    params: &BTreeMap<String, String>,
    host: &str,
) -> Result<Node, Failure> {
    let biz: Value = match params.get("biz_content") {
        None => json!({}),
        Some(text) => serde_json::from_str(text).map_err(|_| {
            Failure::invalid("isv.invalid-biz-content", "biz_content不是合法的JSON")
        })?,
    };
    let now = Utc::now();
    match method {
        "alipay.trade.precreate" => precreate(ctx, params, &biz, now),
        "alipay.trade.query" => query(ctx, &biz, now),
        "alipay.trade.close" => close(ctx, &biz, now),
        "alipay.trade.refund" => refund(ctx, &biz, now),
        "alipay.trade.fastpay.refund.query" => refund_query(ctx, &biz),
        "alipay.data.dataservice.bill.downloadurl.query" => bill_url(ctx, &biz, host, now),
        _ => Err(Failure::invalid("isv.invalid-method", "不存在的方法名")),
    }
}

fn text<'a>(biz: &'a Value, name: &str) -> Option<&'a str> {
    biz.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn valid_out_no(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn precreate(
    ctx: &Ctx,
    params: &BTreeMap<String, String>,
    biz: &Value,
    now: DateTime<Utc>,
) -> Result<Node, Failure> {
    let otn = text(biz, "out_trade_no").ok_or_else(|| Failure::missing("out_trade_no"))?;
    if !valid_out_no(otn) {
        return Err(Failure::business(
            "ACQ.INVALID_PARAMETER",
            "out_trade_no不合法",
        ));
    }
    let subject = text(biz, "subject").ok_or_else(|| Failure::missing("subject"))?;
    let total = biz
        .get("total_amount")
        .ok_or_else(|| Failure::missing("total_amount"))
        .and_then(|v| {
            parse_amount(v)
                .ok_or_else(|| Failure::business("ACQ.INVALID_PARAMETER", "total_amount不合法"))
        })?;
    if total.is_zero() || total.fen() > MAX_AMOUNT_FEN {
        return Err(Failure::business(
            "ACQ.TOTAL_FEE_EXCEED",
            "订单金额超过限额",
        ));
    }
    let mut store = ctx.store();
    let key = (Channel::Alipay, otn.to_string());
    if let Some(existing) = store.payments.get(&key) {
        return match existing.status(now) {
            TradeStatus::Paid | TradeStatus::Refunded { .. } => {
                Err(Failure::business("ACQ.TRADE_HAS_SUCCESS", "交易已被支付"))
            }
            TradeStatus::Closed => Err(Failure::business("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")),
            TradeStatus::NotPaid if existing.total != total => Err(Failure::business(
                "ACQ.CONTEXT_INCONSISTENT",
                "交易信息被篡改",
            )),
            TradeStatus::NotPaid => Ok(precreated(&existing.out_trade_no, &existing.prepay)),
        };
    }
    let qr = format!("https://qr.alipay.com/bax0{}", &ctx.ids.token()[..20]);
    let node = precreated(otn, &qr);
    store.payments.insert(
        key,
        Payment {
            channel: Channel::Alipay,
            out_trade_no: otn.to_string(),
            total,
            description: subject.to_string(),
            notify_url: params.get("notify_url").cloned().unwrap_or_default(),
            trade_type: "precreate".into(),
            openid: None,
            prepay: qr,
            created_at: now,
            expires_at: None,
            scanned_at: None,
            transaction_id: None,
            paid: None,
            closed_at: None,
            refunds: Vec::new(),
            deliveries: Vec::new(),
        },
    );
    Ok(node)
}

fn precreated(otn: &str, qr: &str) -> Node {
    let mut node = success();
    node.insert("out_trade_no".into(), otn.into());
    node.insert("qr_code".into(), qr.into());
    node
}

/// The trade named by `out_trade_no` or `trade_no`, if the buyer has scanned.
fn trade<'s>(store: &'s mut Store, biz: &Value) -> Result<&'s mut Payment, Failure> {
    let otn = match (text(biz, "out_trade_no"), text(biz, "trade_no")) {
        (Some(otn), _) => otn.to_string(),
        (None, Some(tn)) => store
            .by_transaction
            .get(&(Channel::Alipay, tn.to_string()))
            .cloned()
            .ok_or_else(|| Failure::business("ACQ.TRADE_NOT_EXIST", "交易不存在"))?,
        (None, None) => {
            return Err(Failure::business(
                "ACQ.INVALID_PARAMETER",
                "out_trade_no和trade_no不能同时为空",
            ))
        }
    };
    store
        .payment_mut(Channel::Alipay, &otn)
        .filter(|p| p.scanned_at.is_some())
        .ok_or_else(|| Failure::business("ACQ.TRADE_NOT_EXIST", "交易不存在"))
}

fn trade_status(p: &Payment, now: DateTime<Utc>) -> &'static str {
    match p.status(now) {
        TradeStatus::NotPaid => "WAIT_BUYER_PAY",
        TradeStatus::Paid | TradeStatus::Refunded { full: false } => "TRADE_SUCCESS",
        TradeStatus::Refunded { full: true } | TradeStatus::Closed => "TRADE_CLOSED",
    }
}

fn with_trade_ids(mut node: Node, p: &Payment) -> Node {
    node.insert("out_trade_no".into(), p.out_trade_no.clone().into());
    node.insert(
        "trade_no".into(),
        p.transaction_id.clone().unwrap_or_default().into(),
    );
    node.insert("buyer_logon_id".into(), "159****5620".into());
    node.insert("buyer_user_id".into(), buyer_id(&p.out_trade_no).into());
    node
}

fn query(ctx: &Ctx, biz: &Value, now: DateTime<Utc>) -> Result<Node, Failure> {
    let mut store = ctx.store();
    let p = trade(&mut store, biz)?;
    let mut node = with_trade_ids(success(), p);
    node.insert("trade_status".into(), trade_status(p, now).into());
    node.insert(
        "total_amount".into(),
        p.paid_amount().to_yuan_string().into(),
    );
    let received = match p.paid {
        Some((paid, at)) => {
            node.insert("send_pay_date".into(), local_cn(at).into());
            node.insert(
                "fund_bill_list".into(),
                json!([{"amount": paid.to_yuan_string(), "fund_channel": "ALIPAYACCOUNT"}]),
            );
            paid
        }
        None => Money::ZERO,
    };
    for field in ["buyer_pay_amount", "receipt_amount", "invoice_amount"] {
        node.insert(field.into(), received.to_yuan_string().into());
    }
    node.insert("point_amount".into(), "0.00".into());
    Ok(node)
}

fn close(ctx: &Ctx, biz: &Value, now: DateTime<Utc>) -> Result<Node, Failure> {
    let mut store = ctx.store();
    let p = trade(&mut store, biz)?;
    match p.status(now) {
        TradeStatus::Paid | TradeStatus::Refunded { .. } => {
            Err(Failure::business("ACQ.TRADE_HAS_SUCCESS", "交易已被支付"))
        }
        TradeStatus::Closed => Ok(with_trade_ids(success(), p)),
        TradeStatus::NotPaid => {
            p.closed_at = Some(now);
            Ok(with_trade_ids(success(), p))
        }
    }
}

fn refund(ctx: &Arc<Ctx>, biz: &Value, now: DateTime<Utc>) -> Result<Node, Failure> {
    let amount = biz
        .get("refund_amount")
        .ok_or_else(|| Failure::missing("refund_amount"))
        .and_then(|v| {
            parse_amount(v)
                .ok_or_else(|| Failure::business("ACQ.INVALID_PARAMETER", "refund_amount不合法"))
        })?;
    if amount.is_zero() {
        return Err(Failure::business(
            "ACQ.INVALID_PARAMETER",
            "退款金额必须大于0",
        ));
    }
    let mut store = ctx.store();
    let p = trade(&mut store, biz)?;
    let request_no = text(biz, "out_request_no")
        .unwrap_or(&p.out_trade_no)
        .to_string();
    if !valid_out_no(&request_no) {
        return Err(Failure::business(
            "ACQ.INVALID_PARAMETER",
            "out_request_no不合法",
        ));
    }
    match p.status(now) {
        TradeStatus::NotPaid => {
            return Err(Failure::business(
                "ACQ.TRADE_STATUS_ERROR",
                "交易状态不合法",
            ))
        }
        TradeStatus::Closed => {
            return Err(Failure::business("ACQ.TRADE_HAS_CLOSE", "交易已经关闭"))
        }
        TradeStatus::Paid | TradeStatus::Refunded { .. } => {}
    }
    let refunded_node = |p: &Payment, r: &Refund, fund_change: &str| {
        let mut node = with_trade_ids(success(), p);
        node.insert("fund_change".into(), fund_change.into());
        node.insert("refund_fee".into(), p.refunded().to_yuan_string().into());
        node.insert("send_back_fee".into(), r.amount.to_yuan_string().into());
        node.insert("gmt_refund_pay".into(), local_cn(r.created_at).into());
        node
    };
    if let Some(r) = p.refunds.iter().find(|r| r.out_refund_no == request_no) {
        return match r.amount == amount {
            true => Ok(refunded_node(p, r, "N")),
            false => Err(Failure::business(
                "ACQ.DISCORDANT_REPEAT_REQUEST",
                "请求信息不一致",
            )),
        };
    }
    if amount > p.refundable() {
        return Err(Failure::business(
            "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL",
            "退款金额超限",
        ));
    }
    let refund = Refund {
        out_refund_no: request_no,
        refund_id: ctx.ids.token(),
        amount,
        reason: brace_free(text(biz, "refund_reason").unwrap_or("")),
        created_at: now,
        notify_url: p.notify_url.clone(),
    };
    p.refunds.push(refund.clone());
    let snapshot = p.clone();
    drop(store);
    if !snapshot.notify_url.is_empty() {
        notify::alipay_refund(ctx, &snapshot, &refund);
    }
    Ok(refunded_node(&snapshot, &refund, "Y"))
}

fn refund_query(ctx: &Ctx, biz: &Value) -> Result<Node, Failure> {
    let request_no =
        text(biz, "out_request_no").ok_or_else(|| Failure::missing("out_request_no"))?;
    let mut store = ctx.store();
    let p = trade(&mut store, biz)?;
    let mut node = success();
    node.insert("out_trade_no".into(), p.out_trade_no.clone().into());
    node.insert(
        "trade_no".into(),
        p.transaction_id.clone().unwrap_or_default().into(),
    );
    node.insert("out_request_no".into(), request_no.into());
    // An unknown request number is a success without `refund_status`: "not received".
    if let Some(r) = p.refunds.iter().find(|r| r.out_refund_no == request_no) {
        node.insert("refund_amount".into(), r.amount.to_yuan_string().into());
        node.insert(
            "total_amount".into(),
            p.paid_amount().to_yuan_string().into(),
        );
        node.insert("refund_status".into(), "REFUND_SUCCESS".into());
        if !r.reason.is_empty() {
            node.insert("refund_reason".into(), r.reason.clone().into());
        }
        let wants_time = biz
            .get("query_options")
            .and_then(Value::as_array)
            .is_some_and(|o| o.iter().any(|v| v == "gmt_refund_pay"));
        if wants_time {
            node.insert("gmt_refund_pay".into(), local_cn(r.created_at).into());
        }
    }
    Ok(node)
}

fn bill_url(ctx: &Ctx, biz: &Value, host: &str, now: DateTime<Utc>) -> Result<Node, Failure> {
    let bill_type = text(biz, "bill_type").ok_or_else(|| Failure::missing("bill_type"))?;
    if bill_type != "trade" {
        return Err(Failure::invalid(
            "isv.invalid-bill-type",
            "模拟器仅提供trade账单",
        ));
    }
    let date_text = text(biz, "bill_date").ok_or_else(|| Failure::missing("bill_date"))?;
    let date = NaiveDate::parse_from_str(date_text, "%Y-%m-%d").map_err(|_| {
        Failure::invalid(
            "isv.invalid-bill-date",
            "账单日期格式不正确（模拟器仅提供日账单）",
        )
    })?;
    if date > business_day(now) {
        return Err(Failure::business("isp.bill_not_exist", "账单不存在"));
    }
    let (url, empty) = alipay_bill::issue_download(ctx, date, host, now)
        .map_err(|_| Failure::business("ACQ.SYSTEM_ERROR", "系统错误"))?;
    let mut node = success();
    node.insert("bill_download_url".into(), url.into());
    if empty {
        node.insert("bill_file_code".into(), "EMPTY_DATA_WITH_BILL_FILE".into());
    }
    Ok(node)
}
