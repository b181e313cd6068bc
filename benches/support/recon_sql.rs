//! The reconciliation bench's baseline: PostgreSQL alone loads the bill's
//! detail rows (decompressed beforehand) with `COPY` into an unlogged table
//! and classifies them with one `FULL OUTER JOIN` of the bill's payments
//! against the channel's orders (plus the refunds, summed per order on each
//! side), giving each category's count and amounts. The same figures are
//! taken from payrecon's report, so the two can be compared line by line.

#![allow(dead_code)] // each bench binary uses its own part of this module

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use payrecon::domain::recon::Report;
use payrecon::domain::Channel;
use sqlx::PgConnection;
use tokio::io::AsyncReadExt;

/// Per line (a category, `matched`, `bill`, `bill_refund`): count, the sum
/// of the local amounts, the sum of the gateway amounts (fen; an absent
/// amount counts 0).
pub type Figures = BTreeMap<String, (i64, i64, i64)>;

/// The report's figures, in the baseline's shape.
pub fn report_figures(report: &Report) -> Figures {
    let mut f = Figures::new();
    for d in &report.discrepancies {
        let e = f.entry(d.category.as_str().to_string()).or_default();
        e.0 += 1;
        e.1 += d.local_amount.map(|m| m.fen()).unwrap_or(0);
        e.2 += d.gateway_amount.map(|m| m.fen()).unwrap_or(0);
    }
    if let Some(s) = &report.run.summary {
        f.insert(
            "matched".into(),
            (s.matched_count, s.matched_amount, s.matched_amount),
        );
        f.insert("bill".into(), (s.bill_count, 0, s.bill_amount));
        f.insert("bill_refund".into(), (0, 0, s.bill_refund_amount));
    }
    f
}

/// The bill's rows normalised: position, out_trade_no, kind, amount in fen.
fn normalised(channel: Channel) -> &'static str {
    match channel {
        // 商户订单号 c7, 交易状态 c10, 应结订单金额 c13, 退款金额 c17.
        Channel::WechatPay => {
            "SELECT ctid AS pos, ltrim(c7, '`') AS otn, \
               CASE ltrim(c10, '`') WHEN 'SUCCESS' THEN 'pay' WHEN 'REFUND' THEN 'refund' ELSE 'other' END AS kind, \
               round(100 * CASE ltrim(c10, '`') WHEN 'REFUND' THEN ltrim(c17, '`')::numeric \
                                 ELSE ltrim(c13, '`')::numeric END)::bigint AS amt \
             FROM bill"
        }
        // 商户订单号 c2, 业务类型 c3, 订单金额（元） c12 (negative for a refund).
        Channel::Alipay => {
            "SELECT ctid AS pos, btrim(c2, E'\\t ') AS otn, \
               CASE btrim(c3, E'\\t ') WHEN '交易' THEN 'pay' WHEN '退款' THEN 'refund' ELSE 'other' END AS kind, \
               round(100 * abs(c12::numeric))::bigint AS amt \
             FROM bill"
        }
    }
}

fn columns(channel: Channel) -> usize {
    match channel {
        Channel::WechatPay => 27,
        Channel::Alipay => 25,
    }
}

/// The classification, in one statement: $1 channel, $2/$3 the business day.
fn classify(channel: Channel) -> String {
    format!(
        "WITH b AS ({bill}), \
         pays AS (SELECT otn, amt, row_number() OVER (PARTITION BY otn ORDER BY pos) AS rn \
                  FROM b WHERE kind = 'pay'), \
         o AS (SELECT out_trade_no AS lotn, status, paid_amount, \
                 CASE WHEN status IN ('paid', 'shipped', 'completed', 'refunded') \
                      THEN paid_amount ELSE total_amount END AS amount, \
                 (paid_at >= $2 AND paid_at < $3 \
                  AND status IN ('paid', 'shipped', 'completed', 'refunded')) AS expected \
               FROM orders WHERE payment_method = $1), \
         payments AS ( \
           SELECT CASE \
               WHEN p.otn IS NULL THEN CASE WHEN o.expected THEN 'missing_gateway' END \
               WHEN p.rn > 1 THEN 'duplicate' \
               WHEN o.lotn IS NULL THEN 'missing_local' \
               WHEN o.status = 'pending_payment' THEN 'status_mismatch' \
               WHEN o.status = 'cancelled' THEN 'paid_after_cancel' \
               WHEN o.paid_amount <> p.amt THEN 'amount_mismatch' \
               ELSE 'matched' END AS category, \
             o.amount AS local_amount, p.amt AS gateway_amount \
           FROM pays p FULL OUTER JOIN o ON o.lotn = p.otn), \
         br AS (SELECT otn, sum(amt)::bigint AS amt FROM b WHERE kind = 'refund' GROUP BY otn), \
         lr AS (SELECT o.out_trade_no AS otn, sum(r.amount)::bigint AS amt \
                FROM refunds r JOIN orders o ON o.order_id = r.order_id \
                WHERE o.payment_method = $1 AND r.created_at >= $2 AND r.created_at < $3 \
                  AND r.status IN ('succeeded', 'processing') GROUP BY o.out_trade_no), \
         refunds AS ( \
           SELECT CASE \
               WHEN br.otn IS NULL THEN CASE WHEN lr.amt <> 0 THEN 'refund_mismatch' END \
               WHEN lr.otn IS NULL AND NOT EXISTS (SELECT 1 FROM o WHERE o.lotn = br.otn) THEN \
                 CASE WHEN NOT EXISTS (SELECT 1 FROM pays WHERE pays.otn = br.otn) THEN 'missing_local' END \
               WHEN coalesce(lr.amt, 0) <> br.amt THEN 'refund_mismatch' END AS category, \
             CASE WHEN lr.otn IS NOT NULL OR EXISTS (SELECT 1 FROM o WHERE o.lotn = br.otn) \
                  THEN coalesce(lr.amt, 0) END AS local_amount, \
             coalesce(br.amt, 0) AS gateway_amount \
           FROM br FULL OUTER JOIN lr ON lr.otn = br.otn) \
         SELECT category, count(*), coalesce(sum(local_amount), 0)::bigint, \
                coalesce(sum(gateway_amount), 0)::bigint \
         FROM (SELECT * FROM payments UNION ALL SELECT * FROM refunds) x \
         WHERE category IS NOT NULL GROUP BY category \
         UNION ALL SELECT 'bill', count(*), 0, coalesce(sum(amt), 0)::bigint FROM pays \
         UNION ALL SELECT 'bill_refund', 0, 0, coalesce(sum(amt), 0)::bigint FROM b WHERE kind = 'refund'",
        bill = normalised(channel)
    )
}

/// The timed baseline: creates the unlogged table, COPYs `detail` into it
/// and classifies. The table is dropped afterwards (not timed by the caller
/// if it stops its clock first: call [`drop_bill`]).
pub async fn baseline(
    conn: &mut PgConnection,
    channel: Channel,
    detail: &Path,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Figures {
    let cols: Vec<String> = (1..=columns(channel))
        .map(|i| format!("c{i} text"))
        .collect();
    sqlx::query(&format!("CREATE UNLOGGED TABLE bill ({})", cols.join(", ")))
        .execute(&mut *conn)
        .await
        .expect("create bill table");
    let encoding = match channel {
        Channel::WechatPay => "UTF8",
        Channel::Alipay => "GBK",
    };
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY bill FROM STDIN (FORMAT csv, HEADER true, ENCODING '{encoding}')"
        ))
        .await
        .expect("copy in");
    let mut file = tokio::fs::File::open(detail).await.expect("detail file");
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).await.expect("read detail");
        if n == 0 {
            break;
        }
        copy.send(&buf[..n]).await.expect("copy send");
    }
    copy.finish().await.expect("copy finish");
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(&classify(channel))
        .bind(channel.as_str())
        .bind(from)
        .bind(to)
        .fetch_all(&mut *conn)
        .await
        .expect("classify");
    let mut f: Figures = rows
        .into_iter()
        .map(|(c, n, l, g)| (c, (n, l, g)))
        .collect();
    // The report has no line for a category without cases, nor for no match.
    f.entry("matched".into()).or_default();
    f
}

pub async fn drop_bill(conn: &mut PgConnection) {
    sqlx::query("DROP TABLE IF EXISTS bill")
        .execute(conn)
        .await
        .expect("drop bill table");
}
