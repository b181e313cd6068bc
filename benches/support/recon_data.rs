//! The reconciliation bench's day: `n` orders of one channel inserted with
//! `generate_series` (rows as the store writes them), the gateway's bill of
//! the same day in its real format, and the same bill's detail rows
//! decompressed for PostgreSQL's `COPY`.
//!
//! Every order `i` (1..=n) falls in a slot `i % 1000`, and the slot decides
//! its story, so each discrepancy category has n/1000 cases:
//!
//! | slot | ours | the bill | finding |
//! |---|---|---|---|
//! | 1 | paid | pays 1 fen more | `amount_mismatch` |
//! | 2 | paid | nothing | `missing_gateway` |
//! | 3 | pending_payment | pays 7 fen more | `status_mismatch` (another amount: no repair, no gateway call) |
//! | 4 | cancelled | pays | `paid_after_cancel` |
//! | 5 | paid, 50 fen refunded | pays, refunds 60 | `refund_mismatch` |
//! | 6 | paid, 50 fen refunded | pays, refunds 50 | matched |
//! | 7 | paid | pays twice | `duplicate` |
//! | 8 | paid | pays, and pays an order we never had | `missing_local` |
//! | else | paid | pays | matched |

#![allow(dead_code)] // each bench binary uses its own part of this module

use std::io::{BufWriter, Write};
use std::path::Path;

use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use payrecon::domain::recon::Category;
use payrecon::domain::{format_signed_yuan, Channel};
use sqlx::PgConnection;

pub fn offset() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("offset")
}

pub fn day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 24).expect("date")
}

/// The business day's start in UTC.
pub fn day_start() -> DateTime<Utc> {
    offset()
        .from_local_datetime(&day().and_hms_opt(0, 0, 0).expect("time"))
        .single()
        .expect("start")
        .with_timezone(&Utc)
}

fn code(channel: Channel) -> u32 {
    match channel {
        Channel::WechatPay => 1,
        Channel::Alipay => 2,
    }
}

/// Order `i`'s id as 32 hex digits (its out_trade_no); `stranger` gives an
/// id of the same shape that no order has.
pub fn otn(channel: Channel, i: u64, stranger: bool) -> String {
    let c = code(channel) + if stranger { 100 } else { 0 };
    format!("{c:08x}000070008000{i:012x}")
}

pub fn total(i: u64) -> i64 {
    100 + (i % 9_900) as i64
}

/// The category slot `s` produces (None: matched).
pub fn category_of_slot(s: u64) -> Option<Category> {
    Some(match s {
        1 => Category::AmountMismatch,
        2 => Category::MissingGateway,
        3 => Category::StatusMismatch,
        4 => Category::PaidAfterCancel,
        5 => Category::RefundMismatch,
        7 => Category::Duplicate,
        8 => Category::MissingLocal,
        _ => return None,
    })
}

/// How many cases of each category a day of `n` orders has.
pub fn expected_counts(n: u64) -> Vec<(Category, u64)> {
    Category::ALL
        .iter()
        .map(|c| {
            let slot = (1..=8)
                .find(|s| category_of_slot(*s) == Some(*c))
                .unwrap_or(0);
            let count = (1..=n).filter(|i| i % 1000 == slot).count() as u64;
            (*c, count)
        })
        .collect()
}

/// Inserts the channel's `n` orders and their refunds (before any clock).
pub async fn insert_orders(conn: &mut PgConnection, channel: Channel, n: u64) {
    let ids = "SELECT i, i % 1000 AS slot, 100 + i % 9900 AS total, \
          lpad(to_hex($1::int), 8, '0') || '000070008000' || lpad(to_hex(i), 12, '0') AS id, \
          $3::timestamptz + make_interval(secs => (i * 79) % 80000) AS created \
        FROM generate_series(1::bigint, $2::bigint) i";
    sqlx::query(&format!(
        "INSERT INTO orders (order_id, out_trade_no, user_id, items, currency, total_amount, \
           payment_method, status, payment_state, paid_amount, refunded_amount, gateway_transaction_id, \
           created_at, expires_at, paid_at, cancelled_at, cancel_reason, updated_at) \
         SELECT id::uuid, id, 'u' || (i % 1000), \
           jsonb_build_array(jsonb_build_object('product_id', 'p1', 'quantity', 1, 'unit_price', total)), \
           'CNY', total, $4, \
           CASE slot WHEN 3 THEN 'pending_payment' WHEN 4 THEN 'cancelled' ELSE 'paid' END, 'prepared', \
           CASE WHEN slot IN (3, 4) THEN 0 ELSE total END, \
           CASE WHEN slot IN (5, 6) THEN 50 ELSE 0 END, \
           CASE WHEN slot IN (3, 4) THEN NULL ELSE 'TX' || id END, \
           created, created + interval '30 minutes', \
           CASE WHEN slot IN (3, 4) THEN NULL ELSE created + interval '1 minute' END, \
           CASE WHEN slot = 4 THEN created + interval '31 minutes' END, \
           CASE WHEN slot = 4 THEN 'timeout' END, created \
         FROM ({ids}) s"
    ))
    .bind(code(channel) as i32)
    .bind(n as i64)
    .bind(day_start())
    .bind(channel.as_str())
    .execute(&mut *conn)
    .await
    .expect("insert orders");
    sqlx::query(&format!(
        "INSERT INTO refunds (refund_id, order_id, out_refund_no, amount, reason, status, \
           gateway_refund_id, created_at, finished_at) \
         SELECT rid::uuid, id::uuid, rid, 50, 'bench', 'succeeded', 'RF' || i, \
           created + interval '10 minutes', created + interval '11 minutes' \
         FROM (SELECT s.*, lpad(to_hex($1::int), 8, '0') || '000070009000' || lpad(to_hex(i), 12, '0') AS rid \
               FROM ({ids}) s) r WHERE slot IN (5, 6)"
    ))
    .bind(code(channel) as i32)
    .bind(n as i64)
    .bind(day_start())
    .execute(&mut *conn)
    .await
    .expect("insert refunds");
}

/// One bill row to write.
struct Row {
    otn: String,
    txid: String,
    refund: bool,
    amount: i64,
}

/// The bill's rows for order `i`, in the order the bill lists them.
fn rows_of(channel: Channel, i: u64) -> Vec<Row> {
    let id = otn(channel, i, false);
    let txid = format!("4200{i:024}");
    let t = total(i);
    let pay = |amount: i64| Row {
        otn: id.clone(),
        txid: txid.clone(),
        refund: false,
        amount,
    };
    let refund = |amount: i64| Row {
        otn: id.clone(),
        txid: txid.clone(),
        refund: true,
        amount,
    };
    match i % 1000 {
        1 => vec![pay(t + 1)],
        2 => vec![],
        3 => vec![pay(t + 7)],
        5 => vec![pay(t), refund(60)],
        6 => vec![pay(t), refund(50)],
        7 => vec![pay(t), pay(t)],
        8 => vec![
            pay(t),
            Row {
                otn: otn(channel, i, true),
                txid: format!("4201{i:024}"),
                refund: false,
                amount: t,
            },
        ],
        _ => vec![pay(t)],
    }
}

/// Writes the bill of `n` orders to `bill` in the gateway's download format
/// (WeChat Pay: gzip CSV; Alipay: zip of a GBK CSV) and its detail rows,
/// decompressed and with their header, to `detail` for `COPY`. Returns the
/// number of detail rows.
pub fn write_bill(channel: Channel, n: u64, bill: &Path, detail: &Path) -> u64 {
    let mut plain = BufWriter::new(std::fs::File::create(detail).expect("detail file"));
    let rows = match channel {
        Channel::WechatPay => write_wechat(n, bill, &mut plain),
        Channel::Alipay => write_alipay(n, bill, &mut plain),
    };
    plain.flush().expect("flush detail");
    rows
}

fn write_wechat(n: u64, path: &Path, plain: &mut impl Write) -> u64 {
    use payrecon::gateway::bill::wechat::{DETAIL_HEADER, SUMMARY_HEADER};
    let file = std::fs::File::create(path).expect("bill file");
    let gz = flate2::write::GzEncoder::new(BufWriter::new(file), flate2::Compression::fast());
    let mut w = BufWriter::new(gz);
    let header = DETAIL_HEADER.join(",");
    writeln!(w, "{header}").expect("write");
    writeln!(plain, "{header}").expect("write");
    let (mut count, mut settle, mut refunds, mut fees) = (0u64, 0i64, 0i64, 0i64);
    let y = |f: i64| format_signed_yuan(f, 2);
    for i in 1..=n {
        for r in rows_of(Channel::WechatPay, i) {
            // The 0.6% fee in 10^-5 yuan: fen × 6, given back on a refund.
            let (state, settlement, refund, fee, order, applied, ids) = if r.refund {
                let ids = ("50300000001", "RF1", "ORIGINAL", "SUCCESS");
                ("REFUND", 0, r.amount, -6 * r.amount, 0, r.amount, ids)
            } else {
                let ids = ("0", "0", "", "");
                ("SUCCESS", r.amount, 0, 6 * r.amount, r.amount, 0, ids)
            };
            count += 1;
            settle += settlement;
            refunds += refund;
            fees += fee;
            let line = format!(
                "`2026-11-24 10:05:00,`wxd930ea5d5a258f4f,`1900000001,`0,`,`{},`{},`openid,`NATIVE,`{state},`OTHERS,`CNY,`{},`0.00,`{},`{},`{},`0.00,`{},`{},`goods,`,`{},`0.60%,`{},`{},`\n",
                r.txid, r.otn, y(settlement), ids.0, ids.1, y(refund), ids.2, ids.3,
                format_signed_yuan(fee, 5), y(order), y(applied)
            );
            w.write_all(line.as_bytes()).expect("write");
            plain.write_all(line.as_bytes()).expect("write");
        }
    }
    writeln!(w, "{}", SUMMARY_HEADER.join(",")).expect("write");
    writeln!(
        w,
        "`{count},`{},`{},`0.00,`{},`{},`{}",
        y(settle),
        y(refunds),
        format_signed_yuan(fees, 5),
        y(settle),
        y(refunds)
    )
    .expect("write");
    let gz = w.into_inner().map_err(|e| e.into_error()).expect("flush");
    gz.finish().expect("gzip").flush().expect("flush");
    count
}

fn write_alipay(n: u64, path: &Path, plain: &mut impl Write) -> u64 {
    use payrecon::gateway::bill::alipay::DETAIL_HEADER;
    let file = std::fs::File::create(path).expect("bill file");
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(1))
        .large_file(true);
    zip.start_file("20880000000000000156_20261124_业务明细.csv", options)
        .expect("entry");
    let mut w = BufWriter::new(&mut zip);
    let gbk = |s: &str| encoding_rs::GBK.encode(s).0.into_owned();
    let header = gbk(&format!("{}\n", DETAIL_HEADER.join(",")));
    w.write_all(&gbk("#支付宝业务明细查询\n#账号：[20880000000000000156]\n#-----------------------------------------业务明细列表----------------------------------------\n"))
        .expect("write");
    w.write_all(&header).expect("write");
    plain.write_all(&header).expect("write");
    let (mut pays, mut refunds) = (0u64, 0u64);
    let y = |f: i64| format_signed_yuan(f, 2);
    for i in 1..=n {
        for r in rows_of(Channel::Alipay, i) {
            let fee = r.amount * 6 / 1000;
            let (kind, amount, fee, batch) = if r.refund {
                refunds += 1;
                ("退款", -r.amount, fee, "RF001")
            } else {
                pays += 1;
                ("交易", r.amount, -fee, "")
            };
            let line = gbk(&format!(
                "{}\t,{}\t,{kind}\t,商品,2026-11-24 10:00:00,2026-11-24 10:05:00,\t,\t,\t,\t,buyer\t,{},{},0.00,0.00,0.00,0.00,0.00,,0.00\t,0.00,{batch}\t,{},0.00,\n",
                r.txid, r.otn, y(amount), y(amount), y(fee)
            ));
            w.write_all(&line).expect("write");
            plain.write_all(&line).expect("write");
        }
    }
    w.write_all(&gbk(&format!(
        "#-----------------------------------------业务明细列表结束------------------------------------\n#交易合计：{pays}笔，商家实收共0.00元，商家优惠共0.00元\n#退款合计：{refunds}笔，商家实收退款共0.00元，商家优惠退款共0.00元\n"
    )))
    .expect("write");
    drop(w);
    zip.finish().expect("zip");
    pays + refunds
}
