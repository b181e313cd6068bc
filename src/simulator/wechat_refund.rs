//! WeChat Pay refunds (docs/gateways.md A4): create and query. Refunds succeed at
//! once: the create answer says `SUCCESS` and a `REFUND.SUCCESS` notification
//! follows (to the refund's `notify_url`, else the payment's). A repeated
//! `out_refund_no` with the same order and amount answers the same refund;
//! with anything else, `INVALID_REQUEST`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Response, StatusCode};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::domain::{Channel, Money};

use super::state::{rfc3339_cn, Payment, Refund};
use super::wechat_auth::{error, param_error, signed_json};
use super::wechat_pay::{parse, valid_out_no};
use super::{notify, Ctx};

/// The real limit on partial refunds of one order.
const MAX_REFUNDS: usize = 50;

#[derive(Deserialize)]
struct RefundBody {
    out_trade_no: Option<String>,
    transaction_id: Option<String>,
    out_refund_no: String,
    reason: Option<String>,
    notify_url: Option<String>,
    amount: RefundAmountIn,
}

#[derive(Deserialize)]
struct RefundAmountIn {
    refund: i64,
    total: i64,
    currency: String,
}

pub fn refund(ctx: &Arc<Ctx>, body: &[u8], now: DateTime<Utc>) -> Response<Body> {
    let req: RefundBody = match parse(body) {
        Ok(r) => r,
        Err(e) => return param_error(ctx, "body", &e),
    };
    if !valid_out_no(&req.out_refund_no, 64, "|@") {
        return param_error(ctx, "out_refund_no", "应为1到64位数字、大小写字母、_-|*@");
    }
    let (Ok(amount), Ok(total)) = (
        Money::from_fen(req.amount.refund),
        Money::from_fen(req.amount.total),
    ) else {
        return param_error(ctx, "amount", "金额不能为负");
    };
    if amount.is_zero() || req.amount.currency != "CNY" {
        return param_error(ctx, "amount.refund", "退款金额应大于0，币种为CNY");
    }
    let mut store = ctx.store();
    let otn = match (&req.out_trade_no, &req.transaction_id) {
        (Some(otn), _) => Some(otn.clone()),
        (None, Some(tid)) => store
            .by_transaction_id(Channel::WechatPay, tid)
            .map(|p| p.out_trade_no.clone()),
        (None, None) => {
            return param_error(
                ctx,
                "out_trade_no",
                "out_trade_no和transaction_id不能同时为空",
            )
        }
    };
    if let Some(existing_otn) = store.wechat_refunds.get(&req.out_refund_no).cloned() {
        let same = otn.as_deref() == Some(existing_otn.as_str());
        let found = store
            .payment(Channel::WechatPay, &existing_otn)
            .and_then(|p| {
                let r = p
                    .refunds
                    .iter()
                    .find(|r| r.out_refund_no == req.out_refund_no)?;
                Some((p.clone(), r.clone()))
            });
        return match found {
            Some((p, r)) if same && r.amount == amount => {
                signed_json(ctx, StatusCode::OK, &refund_json(&p, &r, "SUCCESS"))
            }
            _ => error(
                ctx,
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                "商户退款单号重复，且请求参数与原请求不一致",
            ),
        };
    }
    let Some(p) = otn.and_then(|otn| store.payment_mut(Channel::WechatPay, &otn)) else {
        return error(
            ctx,
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_EXISTS",
            "订单不存在",
        );
    };
    if p.paid.is_none() {
        return error(
            ctx,
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_EXISTS",
            "订单不存在或未支付",
        );
    }
    if total != p.paid_amount() {
        return error(
            ctx,
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "订单金额total与原订单金额不一致",
        );
    }
    if amount > p.refundable() {
        return error(
            ctx,
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "申请退款金额超过订单可退金额",
        );
    }
    if p.refunds.len() >= MAX_REFUNDS {
        return error(
            ctx,
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "部分退款次数已达上限",
        );
    }
    let refund = Refund {
        out_refund_no: req.out_refund_no.clone(),
        refund_id: ctx.ids.wechat_refund(now),
        amount,
        reason: req.reason.unwrap_or_default(),
        created_at: now,
        notify_url: req.notify_url.unwrap_or_else(|| p.notify_url.clone()),
    };
    p.refunds.push(refund.clone());
    let snapshot = p.clone();
    store
        .wechat_refunds
        .insert(req.out_refund_no, snapshot.out_trade_no.clone());
    drop(store);
    notify::wechat_refund(ctx, &snapshot, &refund);
    signed_json(
        ctx,
        StatusCode::OK,
        &refund_json(&snapshot, &refund, "SUCCESS"),
    )
}

/// The refund object of the create and query answers.
pub fn refund_json(p: &Payment, r: &Refund, status: &str) -> Value {
    let paid = p.paid_amount().fen();
    json!({
        "refund_id": r.refund_id, "out_refund_no": r.out_refund_no,
        "transaction_id": p.transaction_id, "out_trade_no": p.out_trade_no,
        "channel": "ORIGINAL", "user_received_account": "支付用户零钱",
        "success_time": rfc3339_cn(r.created_at), "create_time": rfc3339_cn(r.created_at),
        "status": status, "funds_account": "AVAILABLE",
        "amount": {"total": paid, "refund": r.amount.fen(), "from": [],
                   "payer_total": paid, "payer_refund": r.amount.fen(),
                   "settlement_refund": r.amount.fen(), "settlement_total": paid,
                   "discount_refund": 0, "currency": "CNY", "refund_fee": 0},
        "promotion_detail": [],
    })
}

pub fn query_refund(ctx: &Ctx, out_refund_no: &str) -> Response<Body> {
    let found = {
        let store = ctx.store();
        store
            .wechat_refunds
            .get(out_refund_no)
            .and_then(|otn| store.payment(Channel::WechatPay, otn))
            .and_then(|p| {
                let r = p
                    .refunds
                    .iter()
                    .find(|r| r.out_refund_no == out_refund_no)?;
                Some(refund_json(p, r, "SUCCESS"))
            })
    };
    match found {
        Some(v) => signed_json(ctx, StatusCode::OK, &v),
        None => error(
            ctx,
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_EXISTS",
            "退款单不存在",
        ),
    }
}
