//! Alipay's trade bill (docs/gateways.md B4): a zip holding the GBK `业务明细` CSV
//! (25 columns, `#` header/footer lines, ids and text suffixed with a tab) and
//! the `业务明细(汇总)` file, entry names GBK without the UTF-8 flag.
//! Service fee: 0.6% of the amount in fen, rounded half up, negative on
//! payments and positive on refunds (the refund sign is docs/gateways.md's
//! construction). The export time is fixed at 09:00 the next day, so the same
//! day always gives the same bytes. The summary file's layout has one source
//! only and is this simulator's best reading of it.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, Response, StatusCode};
use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, Utc};

use crate::domain::{format_signed_yuan, Channel};

use super::alipay_proto::seller_id;
use super::calls::CallLabel;
use super::state::{business_day, local_cn, BillFile};
use super::{zip_gbk, Ctx};

pub const DOWNLOAD_PATH: &str = "/downloadBillFile.resource";
/// Alipay's bill links expire 30 s after issue.
const LINK_VALID_SECS: i64 = 30;

const DETAIL_HEADER: &str = "支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注";
const SUMMARY_HEADER: &str = "门店编号,门店名称,交易订单总笔数,退款订单总笔数,订单金额（元）,商家实收（元）,支付宝优惠（元）,商家优惠（元）,卡消费金额（元）,服务费（元）,分润（元）,实收净额（元）";
const RULE: &str = "-----------------------------------------";

/// 0.6% of `fen`, rounded half up to a whole fen.
fn service_fee(fen: i64) -> i64 {
    (fen * 6 + 500) / 1000
}

fn clean(text: &str) -> String {
    text.replace(',', "，").replace(['\r', '\n'], " ")
}

fn cn_time(at: NaiveDateTime) -> String {
    at.format("%Y年%m月%d日 %H:%M:%S").to_string()
}

struct Totals {
    payments: usize,
    refunds: usize,
    received: i64,
    refunded: i64,
    fee: i64,
}

/// The account shown in the header and the file names (PID + "0156").
fn account(ctx: &Ctx) -> String {
    format!("{}0156", seller_id(ctx))
}

fn export_time(date: NaiveDate) -> NaiveDateTime {
    (date + Duration::days(1))
        .and_hms_opt(9, 0, 0)
        .unwrap_or_default()
}

fn detail(ctx: &Ctx, date: NaiveDate) -> (String, Totals) {
    let yuan = |v: i64| format_signed_yuan(v, 2);
    let mut rows: Vec<(DateTime<Utc>, String)> = Vec::new();
    let mut t = Totals {
        payments: 0,
        refunds: 0,
        received: 0,
        refunded: 0,
        fee: 0,
    };
    {
        let store = ctx.store();
        for p in store.channel_payments(Channel::Alipay) {
            let (Some((paid, paid_at)), Some(trade_no)) = (p.paid, p.transaction_id.as_ref())
            else {
                continue;
            };
            let created = local_cn(p.scanned_at.unwrap_or(p.created_at));
            let buyer = "*三(159****5620)";
            let row = |kind: &str, done: DateTime<Utc>, amount: i64, request_no: &str, fee: i64| {
                format!(
                    "{trade_no}\t,{}\t,{kind}\t,{},{created},{},\t,\t,\t,\t,{buyer}\t,{a},{a},0.00,0.00,0.00,0.00,0.00,,0.00\t,0.00,{request_no}\t,{},0.00,",
                    p.out_trade_no,
                    clean(&p.description),
                    local_cn(done),
                    yuan(fee),
                    a = yuan(amount),
                )
            };
            if business_day(paid_at) == date {
                let fee = service_fee(paid.fen());
                rows.push((paid_at, row("交易", paid_at, paid.fen(), "", -fee)));
                t.payments += 1;
                t.received += paid.fen();
                t.fee -= fee;
            }
            for r in p
                .refunds
                .iter()
                .filter(|r| business_day(r.created_at) == date)
            {
                let fee = service_fee(r.amount.fen());
                rows.push((
                    r.created_at,
                    row("退款", r.created_at, -r.amount.fen(), &r.out_refund_no, fee),
                ));
                t.refunds += 1;
                t.refunded -= r.amount.fen();
                t.fee += fee;
            }
        }
    }
    rows.sort_by_key(|r| r.0);
    let start = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    let mut text = String::new();
    text.push_str("#支付宝业务明细查询\n");
    text.push_str(&format!("#账号：[{}]\n", account(ctx)));
    text.push_str(&format!(
        "#起始日期：[{}]   终止日期：[{}]\n",
        cn_time(start),
        cn_time(start + Duration::days(1))
    ));
    text.push_str(&format!("#{RULE}业务明细列表{RULE}\n{DETAIL_HEADER}\n"));
    for (_, row) in &rows {
        text.push_str(row);
        text.push('\n');
    }
    text.push_str(&format!("#{RULE}业务明细列表结束{}\n", &RULE[..36]));
    text.push_str(&format!(
        "#交易合计：{}笔，商家实收共{}元，商家优惠共0.00元\n",
        t.payments,
        yuan(t.received)
    ));
    text.push_str(&format!(
        "#退款合计：{}笔，商家实收退款共{}元，商家优惠退款共0.00元\n",
        t.refunds,
        yuan(t.refunded)
    ));
    text.push_str(&format!("#导出时间：[{}]\n", cn_time(export_time(date))));
    (text, t)
}

fn summary(ctx: &Ctx, date: NaiveDate, t: &Totals) -> String {
    let yuan = |v: i64| format_signed_yuan(v, 2);
    let amount = t.received + t.refunded;
    let net = amount + t.fee;
    let start = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    let values = format!(
        "{},{},{amt},{amt},0.00,0.00,0.00,{},0.00,{}",
        t.payments,
        t.refunds,
        yuan(t.fee),
        yuan(net),
        amt = yuan(amount)
    );
    let mut text = String::new();
    text.push_str("#支付宝业务汇总查询\n");
    text.push_str(&format!("#账号：[{}]\n", account(ctx)));
    text.push_str(&format!(
        "#起始日期：[{}]   终止日期：[{}]\n",
        cn_time(start),
        cn_time(start + Duration::days(1))
    ));
    text.push_str(&format!("#{RULE}业务汇总列表{RULE}\n{SUMMARY_HEADER}\n"));
    text.push_str(&format!("\t,\t,{values}\n"));
    text.push_str(&format!("合计,,{values}\n"));
    text.push_str(&format!("#{RULE}业务汇总列表结束{}\n", &RULE[..36]));
    text.push_str(&format!("#导出时间：[{}]\n", cn_time(export_time(date))));
    text
}

fn gbk(text: &str) -> Vec<u8> {
    encoding_rs::GBK.encode(text).0.into_owned()
}

/// The 业务明细 file's bytes (GBK), exactly as inside the archive, and
/// whether the day had no rows.
pub fn detail_gbk(ctx: &Ctx, date: NaiveDate) -> (Vec<u8>, bool) {
    let (text, t) = detail(ctx, date);
    (gbk(&text), t.payments + t.refunds == 0)
}

/// The archive of one day; `true` when the day had no rows.
pub fn archive(ctx: &Ctx, date: NaiveDate) -> std::io::Result<(Vec<u8>, bool)> {
    let (text, t) = detail(ctx, date);
    let day = date.format("%Y%m%d");
    let prefix = format!("{}_{day}", account(ctx));
    let entries = [
        zip_gbk::Entry {
            name: gbk(&format!("{prefix}_业务明细.csv")),
            data: gbk(&text),
        },
        zip_gbk::Entry {
            name: gbk(&format!("{prefix}_业务明细(汇总).csv")),
            data: gbk(&summary(ctx, date, &t)),
        },
    ];
    let bytes = zip_gbk::write(&entries, export_time(date))?;
    Ok((bytes, t.payments + t.refunds == 0))
}

/// Freezes the day's archive behind a 30-second link on the client's host.
/// Returns the URL and whether the day was empty.
pub fn issue_download(
    ctx: &Ctx,
    date: NaiveDate,
    host: &str,
    now: DateTime<Utc>,
) -> std::io::Result<(String, bool)> {
    let (bytes, empty) = archive(ctx, date)?;
    let token = ctx.ids.token();
    let day = date.format("%Y%m%d");
    let file_name = format!("{}_{day}.csv.zip", account(ctx));
    {
        let mut store = ctx.store();
        store.sweep_bills(now);
        store.put_bill(
            &token,
            BillFile {
                bytes,
                content_type: "application/octet-stream",
                file_name: file_name.clone(),
                expires_at: now + Duration::seconds(LINK_VALID_SECS),
            },
        );
    }
    let url = format!(
        "http://{host}{DOWNLOAD_PATH}?bizType=trade&userId={}&fileType=csv.zip&bizDates={day}&downloadFileName={file_name}&token={token}",
        seller_id(ctx)
    );
    Ok((url, empty))
}

/// The unsigned download; faults apply as to any call of the channel.
pub async fn download(
    State(ctx): State<std::sync::Arc<Ctx>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response<Body> {
    let failure = || plain(StatusCode::INTERNAL_SERVER_ERROR, "system error".into());
    let call = async {
        let now = Utc::now();
        let file = query.get("token").and_then(|t| {
            let store = ctx.store();
            store.bill(t, now)
        });
        let Some(file) = file else {
            return plain(StatusCode::NOT_FOUND, "link expired or unknown".into());
        };
        let mut response = Response::new(Body::from(file.bytes));
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static(file.content_type));
        if let Ok(v) =
            HeaderValue::from_str(&format!("attachment; filename=\"{}\"", file.file_name))
        {
            response.headers_mut().insert("content-disposition", v);
        }
        response
    };
    ctx.guarded(
        Channel::Alipay,
        CallLabel::new("bill_download"),
        failure,
        call,
    )
    .await
}

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    r
}
