//! The control API (docs/contract.md §5) for tests and demos:
//!
//! - `POST /sim/pay {"channel","out_trade_no","amount"?,"paid_at"?}` — the buyer
//!   pays a prepared payment (`amount` in fen defaults to the prepared total;
//!   another value simulates tampering; `paid_at`, RFC 3339, backdates the
//!   payment for bill tests). Answers `{"transaction_id","paid_at"}` (404
//!   unknown, 409 already paid or closed), then notifies.
//! - `POST /sim/scan {"channel":"alipay","out_trade_no"}` — the buyer scans an
//!   Alipay QR code without paying: the trade now exists (`WAIT_BUYER_PAY`).
//! - `POST /sim/faults {…}` / `GET /sim/faults` — see `faults.rs`.
//! - `GET /sim/bill?channel=&date=[&bill_type=]` — the bill exactly as
//!   downloaded, uncompressed: WeChat Pay's CSV (UTF-8), Alipay's 业务明细 CSV
//!   (GBK, the archive's main entry). 404 when WeChat Pay has no bill that day.
//! - `POST /sim/probe {"channel","url"}` — sends one invalid notification
//!   (`WECHATPAY/SIGNTEST/…` signature; Alipay: a forged `sign`) and answers
//!   `{"status","rejected"}`.
//! - `GET /sim/payments/{out_trade_no}?channel=` — the simulator's view of a
//!   payment, its refunds and notification deliveries.
//! - `GET /sim/identity` — the simulator's ids and the SHA-256 fingerprints of
//!   its public keys (`identity.rs`): how a daemon tells a simulator it can
//!   share from anything else listening at `simulator.listen`.
//! - `GET /sim/calls?since=SEQ` — the protocol calls after `SEQ` (default 0)
//!   in arrival order: `seq`, `channel`, `op`, `out_trade_no`,
//!   `out_refund_no`, `fault` (`answered`, `failed`, `timed_out`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, Response, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::domain::{Channel, Money};

use super::faults::FaultRequest;
use super::identity::SimIdentity;
use super::state::{Payment, TradeStatus};
use super::wechat_bill::{self, BillType};
use super::{alipay_bill, notify, Ctx};

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/sim/pay", post(pay))
        .route("/sim/scan", post(scan))
        .route("/sim/faults", post(set_faults).get(get_faults))
        .route("/sim/bill", get(bill))
        .route("/sim/probe", post(probe))
        .route("/sim/payments/{out_trade_no}", get(payment))
        .route("/sim/identity", get(identity))
        .route("/sim/calls", get(calls))
}

async fn identity(State(ctx): State<Arc<Ctx>>) -> Json<SimIdentity> {
    Json(SimIdentity::of(&ctx.settings, &ctx.keys))
}

type Answer = (StatusCode, Json<Value>);

fn fail(status: StatusCode, message: impl Into<String>) -> Answer {
    (status, Json(json!({ "error": message.into() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PayRequest {
    channel: Channel,
    out_trade_no: String,
    amount: Option<i64>,
    paid_at: Option<DateTime<Utc>>,
}

async fn pay(State(ctx): State<Arc<Ctx>>, Json(req): Json<PayRequest>) -> Answer {
    let now = Utc::now();
    let amount = match req.amount.map(Money::from_fen) {
        None => None,
        Some(Ok(m)) if !m.is_zero() => Some(m),
        Some(_) => {
            return fail(
                StatusCode::BAD_REQUEST,
                "amount must be a positive number of fen",
            )
        }
    };
    let paid_at = req.paid_at.unwrap_or(now);
    let snapshot = {
        let mut store = ctx.store();
        let Some(p) = store.payment_mut(req.channel, &req.out_trade_no) else {
            return fail(StatusCode::NOT_FOUND, "no such prepared payment");
        };
        match p.status(now) {
            TradeStatus::Paid | TradeStatus::Refunded { .. } => {
                return fail(StatusCode::CONFLICT, "already paid")
            }
            TradeStatus::Closed => return fail(StatusCode::CONFLICT, "the payment is closed"),
            TradeStatus::NotPaid => {}
        }
        let transaction_id = match req.channel {
            Channel::WechatPay => ctx.ids.wechat_transaction(paid_at),
            Channel::Alipay => ctx.ids.alipay_trade(paid_at),
        };
        p.scanned_at.get_or_insert(paid_at.min(now));
        p.transaction_id = Some(transaction_id.clone());
        p.paid = Some((amount.unwrap_or(p.total), paid_at));
        let snapshot = p.clone();
        store
            .by_transaction
            .insert((req.channel, transaction_id), req.out_trade_no.clone());
        snapshot
    };
    if !snapshot.notify_url.is_empty() {
        match req.channel {
            Channel::WechatPay => notify::wechat_payment(&ctx, &snapshot),
            Channel::Alipay => notify::alipay_payment(&ctx, &snapshot),
        }
    }
    (
        StatusCode::OK,
        Json(json!({"transaction_id": snapshot.transaction_id, "paid_at": paid_at.to_rfc3339()})),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanRequest {
    channel: Channel,
    out_trade_no: String,
}

async fn scan(State(ctx): State<Arc<Ctx>>, Json(req): Json<ScanRequest>) -> Answer {
    if req.channel != Channel::Alipay {
        return fail(StatusCode::BAD_REQUEST, "only Alipay has a scan step");
    }
    let now = Utc::now();
    let mut store = ctx.store();
    let Some(p) = store.payment_mut(req.channel, &req.out_trade_no) else {
        return fail(StatusCode::NOT_FOUND, "no such prepared payment");
    };
    if p.scanned_at.is_none() {
        p.scanned_at = Some(now);
        let trade_no = ctx.ids.alipay_trade(now);
        p.transaction_id = Some(trade_no.clone());
        store
            .by_transaction
            .insert((req.channel, trade_no), req.out_trade_no.clone());
    }
    let tid = store
        .payment(req.channel, &req.out_trade_no)
        .and_then(|p| p.transaction_id.clone());
    (StatusCode::OK, Json(json!({ "transaction_id": tid })))
}

async fn set_faults(State(ctx): State<Arc<Ctx>>, Json(req): Json<FaultRequest>) -> Answer {
    let mut faults = ctx.faults();
    match faults.apply(req) {
        Ok(()) => (StatusCode::OK, Json(json!(*faults))),
        Err(e) => fail(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn get_faults(State(ctx): State<Arc<Ctx>>) -> Answer {
    (StatusCode::OK, Json(json!(*ctx.faults())))
}

#[derive(Deserialize)]
struct BillQuery {
    channel: Channel,
    date: NaiveDate,
    bill_type: Option<String>,
}

async fn bill(State(ctx): State<Arc<Ctx>>, Query(q): Query<BillQuery>) -> Response<Body> {
    let (bytes, content_type) = match q.channel {
        Channel::WechatPay => {
            let Some(bill_type) = BillType::parse(q.bill_type.as_deref().unwrap_or("ALL")) else {
                return axum::response::IntoResponse::into_response(fail(
                    StatusCode::BAD_REQUEST,
                    "bill_type must be ALL, SUCCESS or REFUND",
                ));
            };
            match wechat_bill::render(&ctx, q.date, bill_type) {
                Some(text) => (text.into_bytes(), "text/csv; charset=utf-8"),
                None => {
                    return axum::response::IntoResponse::into_response(fail(
                        StatusCode::NOT_FOUND,
                        "NO_STATEMENT_EXIST",
                    ))
                }
            }
        }
        Channel::Alipay => (
            alipay_bill::detail_gbk(&ctx, q.date).0,
            "text/csv; charset=GBK",
        ),
    };
    let mut response = Response::new(Body::from(bytes));
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeRequest {
    channel: Channel,
    url: String,
}

async fn probe(State(ctx): State<Arc<Ctx>>, Json(req): Json<ProbeRequest>) -> Answer {
    let (status, acked) = notify::probe(&ctx, req.channel, &req.url).await;
    (
        StatusCode::OK,
        Json(json!({"status": status, "rejected": !acked})),
    )
}

#[derive(Deserialize)]
struct CallsQuery {
    since: Option<u64>,
}

async fn calls(State(ctx): State<Arc<Ctx>>, Query(q): Query<CallsQuery>) -> Answer {
    let calls = ctx.calls().since(q.since.unwrap_or(0));
    (StatusCode::OK, Json(json!(calls)))
}

#[derive(Deserialize)]
struct PaymentQuery {
    channel: Option<Channel>,
}

async fn payment(
    State(ctx): State<Arc<Ctx>>,
    Path(otn): Path<String>,
    Query(q): Query<PaymentQuery>,
) -> Answer {
    let now = Utc::now();
    let store = ctx.store();
    let found: Vec<&Payment> = Channel::ALL
        .iter()
        .filter(|c| q.channel.is_none_or(|want| want == **c))
        .filter_map(|c| store.payment(*c, &otn))
        .collect();
    match found.as_slice() {
        [] => fail(StatusCode::NOT_FOUND, "no such payment"),
        [p] => (StatusCode::OK, Json(view(p, now))),
        _ => fail(
            StatusCode::BAD_REQUEST,
            "both channels have it: add ?channel=",
        ),
    }
}

fn view(p: &Payment, now: DateTime<Utc>) -> Value {
    let status = match (p.channel, p.status(now)) {
        (Channel::Alipay, _) if p.scanned_at.is_none() => "NOT_EXIST",
        (Channel::WechatPay, TradeStatus::NotPaid) => "NOTPAY",
        (Channel::WechatPay, TradeStatus::Paid) => "SUCCESS",
        (Channel::WechatPay, TradeStatus::Refunded { .. }) => "REFUND",
        (Channel::WechatPay, TradeStatus::Closed) => "CLOSED",
        (Channel::Alipay, TradeStatus::NotPaid) => "WAIT_BUYER_PAY",
        (Channel::Alipay, TradeStatus::Paid | TradeStatus::Refunded { full: false }) => {
            "TRADE_SUCCESS"
        }
        (Channel::Alipay, _) => "TRADE_CLOSED",
    };
    json!({
        "channel": p.channel, "out_trade_no": p.out_trade_no, "status": status,
        "total": p.total, "paid_amount": p.paid.map(|(m, _)| m),
        "paid_at": p.paid.map(|(_, at)| at.to_rfc3339()),
        "transaction_id": p.transaction_id, "refunded": p.refunded(),
        "notify_url": p.notify_url, "prepay": p.prepay,
        "refunds": p.refunds.iter().map(|r| json!({
            "out_refund_no": r.out_refund_no, "refund_id": r.refund_id,
            "amount": r.amount, "created_at": r.created_at.to_rfc3339()})).collect::<Vec<_>>(),
        "notifications": p.deliveries,
    })
}
