//! A malformed bill fails the run with a message naming the line, and leaves
//! no half-written report: no discrepancies, no summary, no event, no repair.

use payrecon::domain::recon::RunStatus;
use payrecon::domain::{Channel, OrderStatus};
use payrecon::jobs::reconcile::{run_reconciliation, BillSource};
use payrecon::store;

use crate::runs::{bill_bytes, every_category, Scenario};
use crate::support::*;

async fn assert_fails_cleanly(
    channel: Channel,
    make: impl Fn(&Scenario) -> Vec<u8>,
    expected: &str,
) {
    let s = every_category(channel).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "bill", &make(&s));
    let ctx = context(&s.db.pool, channel, s.gw.clone());
    let err = run_reconciliation(&ctx, channel, day(), BillSource::File(path), "test")
        .await
        .expect_err("a malformed bill must fail the run");
    assert!(err.to_string().contains(expected), "{err}");

    let mut conn = s.db.pool.acquire().await.unwrap();
    let runs = store::recon::list_runs(&mut conn, 10).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Failed);
    assert!(runs[0].summary.is_none());
    assert!(runs[0].error.as_deref().unwrap().contains(expected));
    assert!(store::recon::discrepancies(&mut conn, runs[0].run_id)
        .await
        .unwrap()
        .is_empty());
    assert!(events(&s.db.pool, "recon.completed").await.is_empty());
    // Repairs happen only after the whole bill was read: nothing moved.
    let e = store::orders::get(&mut conn, s.orders["E"].order_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.status, OrderStatus::PendingPayment);
    assert!(s.gw.queried.lock().unwrap().is_empty());
    drop(conn);
    s.db.drop_db().await;
}

#[tokio::test]
async fn wechat_bad_amount_fails_naming_the_line() {
    // Line 4 is the third payment (the unknown order's 30.00).
    let make = |s: &Scenario| {
        gzip(
            wechat_bill(&s.rows)
                .replacen("`30.00", "`30.0O", 1)
                .as_bytes(),
        )
    };
    assert_fails_cleanly(Channel::WechatPay, make, "bill line 4: bad amount").await;
}

#[tokio::test]
async fn wechat_truncated_fails() {
    let make = |s: &Scenario| {
        wechat_bill(&s.rows)
            .lines()
            .take(8)
            .collect::<Vec<_>>()
            .join("\n")
            .into_bytes()
    };
    assert_fails_cleanly(Channel::WechatPay, make, "truncated after line 8").await;
}

#[tokio::test]
async fn alipay_wrong_header_fails() {
    let make = |s: &Scenario| {
        let text = encoding_rs::GBK
            .decode(&alipay_bill(&s.rows))
            .0
            .into_owned();
        alipay_zip(
            &encoding_rs::GBK
                .encode(&text.replacen("商户订单号", "订单号", 1))
                .0,
        )
    };
    assert_fails_cleanly(
        Channel::Alipay,
        make,
        "bill line 5: expected the 业务明细 header",
    )
    .await;
}

#[tokio::test]
async fn alipay_broken_gbk_fails() {
    // A GBK sequence broken in the middle of the last data line.
    let make = |s: &Scenario| {
        let mut gbk = alipay_bill(&s.rows);
        let shang = encoding_rs::GBK.encode("商").0.into_owned();
        let pos = gbk.windows(2).rposition(|w| w == shang.as_slice()).unwrap();
        gbk[pos + 1] = 0x7f;
        alipay_zip(&gbk)
    };
    assert_fails_cleanly(Channel::Alipay, make, "not valid GBK").await;
}

#[tokio::test]
async fn wrong_container_for_the_channel_fails() {
    assert_fails_cleanly(
        Channel::Alipay,
        |s| bill_bytes(Channel::WechatPay, &s.rows),
        "gzip",
    )
    .await;
}
