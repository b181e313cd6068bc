//! WeChat Pay's trade bill (docs/gateways.md A5): built from the simulator's state
//! for one business day (+08:00), every value prefixed with a backtick, yuan
//! amounts, fees in 10⁻⁵ yuan. At 0.6% a fee in 10⁻⁵ yuan is exactly 6 × the
//! amount in fen, so no rounding is ever needed at that precision.
//! Lines end with `\n` (the real encoding and line ending are unconfirmed;
//! UTF-8 and `\n` are what every known consumer assumes). Payment rows stay
//! `SUCCESS` after a refund; each refund is its own `REFUND` row on the day it
//! was made, with a negative fee.

use std::collections::HashMap;
use std::io::Write;

use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::json;

use crate::domain::{format_signed_yuan, Channel};
use crate::gateway::crypto::sha1_hex;

use super::state::{business_day, local_cn, BillFile, Store};
use super::wechat_auth::{error, param_error, signed_json};
use super::wechat_pay::openid_of;
use super::Ctx;

pub const ALL_HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注";
pub const SUCCESS_HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,商品名称,商户数据包,手续费,费率,订单金额,费率备注";
pub const REFUND_HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,退款申请时间,退款成功时间,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注";
const SUMMARY_HEADER: &str =
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额";
const SUCCESS_SUMMARY_HEADER: &str = "总交易单数,应结订单总金额,手续费总金额,订单总金额";
/// The download link's validity.
const LINK_VALID_MINUTES: i64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillType {
    All,
    Success,
    Refund,
}

impl BillType {
    pub fn parse(text: &str) -> Option<BillType> {
        match text {
            "ALL" => Some(BillType::All),
            "SUCCESS" => Some(BillType::Success),
            "REFUND" => Some(BillType::Refund),
            _ => None,
        }
    }
}

struct Line {
    at: DateTime<Utc>,
    is_refund: bool,
    fields: HashMap<&'static str, String>,
    settle: i64,
    refund: i64,
    fee: i64,
    order: i64,
}

/// Commas and line breaks would split a value: the merchant's text loses them.
fn clean(text: &str) -> String {
    text.replace(',', "，").replace(['\r', '\n'], " ")
}

fn lines(ctx: &Ctx, store: &Store, date: NaiveDate) -> Vec<Line> {
    let yuan = |fen: i64| format_signed_yuan(fen, 2);
    let mut out = Vec::new();
    for p in store.channel_payments(Channel::WechatPay) {
        let (Some((paid, paid_at)), Some(tid)) = (p.paid, p.transaction_id.as_ref()) else {
            continue;
        };
        let base = |at: DateTime<Utc>, state: &str| -> HashMap<&'static str, String> {
            HashMap::from([
                ("交易时间", local_cn(at)),
                ("公众账号ID", ctx.settings.wechat_appid.clone()),
                ("商户号", ctx.settings.wechat_mchid.clone()),
                ("特约商户号", "0".into()),
                ("设备号", String::new()),
                ("微信订单号", tid.clone()),
                ("商户订单号", p.out_trade_no.clone()),
                ("用户标识", openid_of(p)),
                ("交易类型", p.trade_type.clone()),
                ("交易状态", state.into()),
                ("付款银行", "OTHERS".into()),
                ("货币种类", "CNY".into()),
                ("代金券金额", "0.00".into()),
                ("充值券退款金额", "0.00".into()),
                ("商品名称", clean(&p.description)),
                ("商户数据包", String::new()),
                ("费率", "0.60%".into()),
                ("费率备注", String::new()),
            ])
        };
        if business_day(paid_at) == date {
            let fen = paid.fen();
            let mut fields = base(paid_at, "SUCCESS");
            for (k, v) in [
                ("应结订单金额", yuan(fen)),
                ("微信退款单号", "0".into()),
                ("商户退款单号", "0".into()),
                ("退款金额", "0.00".into()),
                ("退款类型", String::new()),
                ("退款状态", String::new()),
                ("手续费", format_signed_yuan(fen * 6, 5)),
                ("订单金额", yuan(fen)),
                ("申请退款金额", "0.00".into()),
            ] {
                fields.insert(k, v);
            }
            out.push(Line {
                at: paid_at,
                is_refund: false,
                fields,
                settle: fen,
                refund: 0,
                fee: fen * 6,
                order: fen,
            });
        }
        for r in p
            .refunds
            .iter()
            .filter(|r| business_day(r.created_at) == date)
        {
            let fen = r.amount.fen();
            let mut fields = base(r.created_at, "REFUND");
            for (k, v) in [
                ("应结订单金额", "0.00".to_string()),
                ("退款申请时间", local_cn(r.created_at)),
                ("退款成功时间", local_cn(r.created_at)),
                ("微信退款单号", r.refund_id.clone()),
                ("商户退款单号", r.out_refund_no.clone()),
                ("退款金额", yuan(fen)),
                ("退款类型", "ORIGINAL".into()),
                ("退款状态", "SUCCESS".into()),
                ("手续费", format_signed_yuan(-fen * 6, 5)),
                ("订单金额", "0.00".into()),
                ("申请退款金额", yuan(fen)),
            ] {
                fields.insert(k, v);
            }
            out.push(Line {
                at: r.created_at,
                is_refund: true,
                fields,
                settle: 0,
                refund: fen,
                fee: -fen * 6,
                order: 0,
            });
        }
    }
    out.sort_by_key(|l| l.at);
    out
}

fn ticked<I: IntoIterator<Item = String>>(values: I) -> String {
    values
        .into_iter()
        .map(|v| format!("`{v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The bill text of `date`, or `None` when that day has no row (the gateway
/// then answers `NO_STATEMENT_EXIST`).
pub fn render(ctx: &Ctx, date: NaiveDate, bill_type: BillType) -> Option<String> {
    let all = lines(ctx, &ctx.store(), date);
    let rows: Vec<&Line> = all
        .iter()
        .filter(|l| match bill_type {
            BillType::All => true,
            BillType::Success => !l.is_refund,
            BillType::Refund => l.is_refund,
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let header = match bill_type {
        BillType::All => ALL_HEADER,
        BillType::Success => SUCCESS_HEADER,
        BillType::Refund => REFUND_HEADER,
    };
    let mut text = format!("{header}\n");
    for line in &rows {
        let values = header
            .split(',')
            .map(|c| line.fields.get(c).cloned().unwrap_or_default());
        text.push_str(&ticked(values));
        text.push('\n');
    }
    let sum = |f: fn(&Line) -> i64| rows.iter().map(|l| f(l)).sum::<i64>();
    let (count, settle, fee, order) = (
        rows.len().to_string(),
        sum(|l| l.settle),
        sum(|l| l.fee),
        sum(|l| l.order),
    );
    let yuan = |v: i64| format_signed_yuan(v, 2);
    if bill_type == BillType::Success {
        text.push_str(&format!("{SUCCESS_SUMMARY_HEADER}\n"));
        text.push_str(&ticked([
            count,
            yuan(settle),
            format_signed_yuan(fee, 5),
            yuan(order),
        ]));
    } else {
        let refund = sum(|l| l.refund);
        text.push_str(&format!("{SUMMARY_HEADER}\n"));
        text.push_str(&ticked([
            count,
            yuan(settle),
            yuan(refund),
            "0.00".into(),
            format_signed_yuan(fee, 5),
            yuan(order),
            yuan(refund),
        ]));
    }
    text.push('\n');
    Some(text)
}

/// `GET /v3/bill/tradebill`: freezes the bill, announces its SHA1 (of the
/// uncompressed bytes, as the Java SDK checks it) and a 5-minute link on the
/// host the client used, so wechatpayv3's prefix stripping works.
pub fn trade_bill(
    ctx: &Ctx,
    query: &HashMap<String, String>,
    host: &str,
    now: DateTime<Utc>,
) -> Response<Body> {
    let Some(date) = query
        .get("bill_date")
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
    else {
        return param_error(ctx, "bill_date", "应为YYYY-MM-DD格式");
    };
    let Some(bill_type) =
        BillType::parse(query.get("bill_type").map(String::as_str).unwrap_or("ALL"))
    else {
        return param_error(ctx, "bill_type", "应为ALL、SUCCESS或REFUND");
    };
    let gzip = match query.get("tar_type").map(String::as_str) {
        None | Some("") => false,
        Some("GZIP") => true,
        Some(_) => return param_error(ctx, "tar_type", "仅支持GZIP"),
    };
    if date > business_day(now) {
        return error(
            ctx,
            StatusCode::BAD_REQUEST,
            "NO_STATEMENT_EXIST",
            "账单日期不能晚于今天",
        );
    }
    let Some(text) = render(ctx, date, bill_type) else {
        return error(
            ctx,
            StatusCode::BAD_REQUEST,
            "NO_STATEMENT_EXIST",
            "当日无账单",
        );
    };
    let hash = sha1_hex(text.as_bytes());
    let bytes = match gzip {
        false => text.into_bytes(),
        true => {
            let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
            match encoder
                .write_all(text.as_bytes())
                .and_then(|_| encoder.finish())
            {
                Ok(b) => b,
                Err(_) => {
                    return error(
                        ctx,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "SYSTEM_ERROR",
                        "系统错误",
                    )
                }
            }
        }
    };
    let token = ctx.ids.token();
    {
        let mut store = ctx.store();
        store.sweep_bills(now);
        store.put_bill(
            &token,
            BillFile {
                bytes,
                content_type: "application/octet-stream",
                file_name: format!("{date}.csv{}", if gzip { ".gz" } else { "" }),
                expires_at: now + Duration::minutes(LINK_VALID_MINUTES),
            },
        );
    }
    let url = format!("http://{host}/v3/billdownload/file?token={token}");
    signed_json(
        ctx,
        StatusCode::OK,
        &json!({"hash_type": "SHA1", "hash_value": hash, "download_url": url}),
    )
}

/// `GET /v3/billdownload/file?token=`: authenticated like any call, but the
/// answer is the file itself and is not signed.
pub fn download(ctx: &Ctx, query: &HashMap<String, String>, now: DateTime<Utc>) -> Response<Body> {
    let file = query.get("token").and_then(|t| {
        let store = ctx.store();
        store.bill(t, now)
    });
    let Some(file) = file else {
        return error(
            ctx,
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "下载链接不存在或已过期",
        );
    };
    let mut response = Response::new(Body::from(file.bytes));
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static(file.content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", file.file_name)) {
        response.headers_mut().insert("content-disposition", v);
    }
    response
}
