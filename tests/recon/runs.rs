//! Full runs against a fresh database: every category at once for each
//! channel, checked field by field; the bill through the gateway API.

use std::collections::BTreeMap;
use std::sync::Arc;

use payrecon::domain::recon::{Category, Discrepancy, Resolution, RunStatus};
use payrecon::domain::{Channel, Order, OrderStatus};
use payrecon::gateway::{PaymentStatus, TradeState};
use payrecon::jobs::reconcile::{run_reconciliation, BillSource, RunOutcome};
use payrecon::store;

use crate::support::*;

pub struct Scenario {
    pub db: TestDb,
    pub gw: Arc<ScriptedGateway>,
    pub orders: BTreeMap<&'static str, Order>,
    pub unknown_otn: String,
    pub rows: Vec<Row>,
}

/// The orders and bill of the every-category day (amounts in fen):
/// A matched · B amount_mismatch (2000 vs 2500) · C missing_local · D missing_gateway ·
/// E status_mismatch repaired · F status_mismatch, gateway says unpaid · G status_mismatch
/// with another amount · H paid_after_cancel · I refund_mismatch (2000 vs 3000) ·
/// J duplicate · K refunded on both sides alike · L prepay failed, not in the bill.
pub async fn every_category(channel: Channel) -> Scenario {
    let db = TestDb::new().await;
    let p = &db.pool;
    let mut orders = BTreeMap::new();
    orders.insert("A", order(p, channel, 1000, Local::Paid(1000)).await);
    orders.insert("B", order(p, channel, 2000, Local::Paid(2000)).await);
    orders.insert("D", order(p, channel, 4000, Local::Paid(4000)).await);
    orders.insert("E", order(p, channel, 5000, Local::Pending).await);
    orders.insert("F", order(p, channel, 6000, Local::Pending).await);
    orders.insert("G", order(p, channel, 7000, Local::Pending).await);
    orders.insert("H", order(p, channel, 8000, Local::Cancelled).await);
    let mut i = order(p, channel, 9000, Local::Paid(9000)).await;
    refund(p, &mut i, 2000).await;
    orders.insert("I", i);
    orders.insert("J", order(p, channel, 1500, Local::Paid(1500)).await);
    let mut k = order(p, channel, 1000, Local::Paid(1000)).await;
    refund(p, &mut k, 500).await;
    orders.insert("K", k);
    orders.insert("L", order(p, channel, 1500, Local::PrepayFailed).await);
    // An order of the other channel: never part of this channel's figures.
    let other = if channel == Channel::WechatPay {
        Channel::Alipay
    } else {
        Channel::WechatPay
    };
    order(p, other, 99_900, Local::Paid(99_900)).await;

    let otn = |k: &str| orders[k].out_trade_no();
    let unknown_otn = payrecon::domain::OrderId::generate().out_trade_no();
    let rows = vec![
        pay(&otn("A"), 1000),
        pay(&otn("B"), 2500),
        pay(&unknown_otn, 3000),
        pay(&otn("E"), 5000),
        pay(&otn("F"), 6000),
        pay(&otn("G"), 7500),
        pay(&otn("H"), 8000),
        pay(&otn("I"), 9000),
        pay(&otn("J"), 1500),
        pay(&otn("J"), 1500),
        pay(&otn("K"), 1000),
        refund_row(&otn("I"), 3000),
        refund_row(&otn("K"), 500),
    ];
    let gw = Arc::new(ScriptedGateway {
        channel: Some(channel),
        ..Default::default()
    });
    {
        let mut q = gw.queries.lock().unwrap();
        q.insert(
            otn("E"),
            PaymentStatus {
                state: TradeState::Paid,
                transaction_id: Some("TX-E-GATEWAY".into()),
                amount: Some(fen(5000)),
                paid_at: Some(at(23, 59)),
            },
        );
        q.insert(
            otn("F"),
            PaymentStatus {
                state: TradeState::NotPaid,
                transaction_id: None,
                amount: Some(fen(6000)),
                paid_at: None,
            },
        );
    }
    Scenario {
        db,
        gw,
        orders,
        unknown_otn,
        rows,
    }
}

pub fn bill_bytes(channel: Channel, rows: &[Row]) -> Vec<u8> {
    match channel {
        Channel::WechatPay => gzip(wechat_bill(rows).as_bytes()),
        Channel::Alipay => alipay_zip(&alipay_bill(rows)),
    }
}

fn d(
    category: Category,
    o: Option<&Order>,
    otn: &str,
    local: Option<(i64, OrderStatus)>,
    gateway: Option<(i64, &str)>,
    txid: Option<String>,
    resolution: Resolution,
) -> Discrepancy {
    Discrepancy {
        category,
        out_trade_no: otn.to_string(),
        order_id: o.map(|o| o.order_id),
        local_amount: local.map(|l| fen(l.0)),
        gateway_amount: gateway.map(|g| fen(g.0)),
        local_status: local.map(|l| l.1),
        gateway_status: gateway.map(|g| g.1.to_string()),
        gateway_transaction_id: txid,
        resolution,
    }
}

pub fn expected_discrepancies(s: &Scenario, channel: Channel) -> Vec<Discrepancy> {
    let (paid, refunded) = match channel {
        Channel::WechatPay => ("SUCCESS", "REFUND"),
        Channel::Alipay => ("交易", "退款"),
    };
    let o = |k: &str| &s.orders[k];
    let tx = |otn: &str| Some(pay(otn, 0).transaction_id);
    let mk = |cat, k: &str, local: Option<(i64, OrderStatus)>, gw: Option<(i64, &str)>, res| {
        let otn = o(k).out_trade_no();
        let txid = if gw.is_some() { tx(&otn) } else { None };
        d(cat, Some(o(k)), &otn, local, gw, txid, res)
    };
    use Category::*;
    use OrderStatus::*;
    use Resolution::*;
    let mut list = vec![
        mk(
            AmountMismatch,
            "B",
            Some((2000, Paid)),
            Some((2500, paid)),
            Open,
        ),
        d(
            MissingLocal,
            None,
            &s.unknown_otn,
            None,
            Some((3000, paid)),
            tx(&s.unknown_otn),
            Open,
        ),
        mk(MissingGateway, "D", Some((4000, Paid)), None, Open),
        mk(
            StatusMismatch,
            "E",
            Some((5000, PendingPayment)),
            Some((5000, paid)),
            AutoRepaired,
        ),
        mk(
            StatusMismatch,
            "F",
            Some((6000, PendingPayment)),
            Some((6000, paid)),
            Open,
        ),
        mk(
            StatusMismatch,
            "G",
            Some((7000, PendingPayment)),
            Some((7500, paid)),
            Open,
        ),
        mk(
            PaidAfterCancel,
            "H",
            Some((8000, Cancelled)),
            Some((8000, paid)),
            Open,
        ),
        mk(
            RefundMismatch,
            "I",
            Some((2000, Paid)),
            Some((3000, refunded)),
            Open,
        ),
        mk(Duplicate, "J", Some((1500, Paid)), Some((1500, paid)), Open),
    ];
    list.sort_by(|a, b| (a.category, &a.out_trade_no).cmp(&(b.category, &b.out_trade_no)));
    list
}

async fn check_every_category(channel: Channel) {
    let s = every_category(channel).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "bill", &bill_bytes(channel, &s.rows));
    let ctx = context(&s.db.pool, channel, s.gw.clone());
    let outcome = run_reconciliation(&ctx, channel, day(), BillSource::File(path), "test")
        .await
        .unwrap();
    let RunOutcome::Completed(report) = outcome else {
        panic!("skipped")
    };

    assert_eq!(report.run.status, RunStatus::Completed);
    assert_eq!(report.run.channel, channel);
    assert_eq!(report.run.date, day());
    let expected = expected_discrepancies(&s, channel);
    assert_eq!(report.discrepancies.len(), expected.len());
    for (got, want) in report.discrepancies.iter().zip(&expected) {
        assert_eq!(got, want);
    }

    let sm = report.run.summary.clone().unwrap();
    assert_eq!(sm.order_count, 11);
    assert_eq!(sm.total_amount, 46_000);
    assert_eq!(sm.average_amount, 4182); // 46000 / 11 = 4181.8…
    assert_eq!(sm.paid_count, 7); // A B D E(repaired) I J K
    assert_eq!(sm.failed_count, 2); // H cancelled, L prepay failed
    assert_eq!(sm.pending_count, 2); // F G
    assert_eq!(sm.success_rate, 7.0 / 11.0);
    assert_eq!(sm.bill_count, 11);
    assert_eq!(sm.bill_amount, 46_000);
    assert_eq!(sm.bill_refund_amount, 3_500);
    assert_eq!(sm.bill_fee, 255); // 0.6% of 46000 less 0.6% of 3500
    assert_eq!(sm.matched_count, 4); // A I J K
    assert_eq!(sm.matched_amount, 12_500);
    assert_eq!(sm.discrepancy_count, 9);
    let by: Vec<(String, i64)> = sm.discrepancies_by_category.clone().into_iter().collect();
    let want: Vec<(String, i64)> = [
        ("amount_mismatch", 1),
        ("duplicate", 1),
        ("missing_gateway", 1),
        ("missing_local", 1),
        ("paid_after_cancel", 1),
        ("refund_mismatch", 1),
        ("status_mismatch", 3),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), *v))
    .collect();
    assert_eq!(by, want);

    // Only E was repaired, only after the gateway confirmed it; F was asked and left.
    let mut queried = s.gw.queried.lock().unwrap().clone();
    queried.sort();
    let mut want_q = vec![s.orders["E"].out_trade_no(), s.orders["F"].out_trade_no()];
    want_q.sort();
    assert_eq!(queried, want_q);
    let mut conn = s.db.pool.acquire().await.unwrap();
    let e = store::orders::get(&mut conn, s.orders["E"].order_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.status, OrderStatus::Paid);
    assert_eq!(e.gateway_transaction_id.as_deref(), Some("TX-E-GATEWAY"));
    for k in ["F", "G"] {
        let o = store::orders::get(&mut conn, s.orders[k].order_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            o.status,
            OrderStatus::PendingPayment,
            "{k}: the bill alone never moves money state"
        );
    }
    let paid = events(&s.db.pool, "order.paid").await;
    assert_eq!(paid.len(), 1);
    assert_eq!(paid[0]["data"]["source"], "reconciliation");
    assert_eq!(
        paid[0]["data"]["order"]["order_id"],
        s.orders["E"].order_id.to_string()
    );

    // Persisted exactly as returned, and announced once.
    let stored = store::recon::get_run(&mut conn, report.run.run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, RunStatus::Completed);
    assert_eq!(stored.summary.as_ref(), Some(&sm));
    assert_eq!(
        store::recon::discrepancies(&mut conn, report.run.run_id)
            .await
            .unwrap(),
        report.discrepancies
    );
    let done = events(&s.db.pool, "recon.completed").await;
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["data"]["run_id"], report.run.run_id.to_string());
    assert_eq!(done[0]["data"]["channel"], channel.as_str());
    assert_eq!(done[0]["data"]["date"], "2026-11-24");
    assert_eq!(done[0]["data"]["summary"]["discrepancy_count"], 9);
    assert!(done[0].get("order").is_none() && done[0]["data"].get("order").is_none());
    drop(conn);
    s.db.drop_db().await;
}

#[tokio::test]
async fn every_category_wechat_pay() {
    check_every_category(Channel::WechatPay).await;
}

#[tokio::test]
async fn every_category_alipay() {
    check_every_category(Channel::Alipay).await;
}

/// The bill comes through the gateway API: WeChat's digest is checked.
#[tokio::test]
async fn gateway_download_checks_the_digest() {
    let s = every_category(Channel::WechatPay).await;
    let text = wechat_bill(&s.rows);
    let sha1 = payrecon::gateway::crypto::sha1_hex(text.as_bytes());
    *s.gw.bill.lock().unwrap() = Some((gzip(text.as_bytes()), Some(sha1)));
    let ctx = context(&s.db.pool, Channel::WechatPay, s.gw.clone());
    let RunOutcome::Completed(report) =
        run_reconciliation(&ctx, Channel::WechatPay, day(), BillSource::Gateway, "test")
            .await
            .unwrap()
    else {
        panic!("skipped")
    };
    assert_eq!(report.discrepancies.len(), 9);
    assert_eq!(
        report.run.bill_source,
        payrecon::domain::recon::BillSourceKind::Gateway
    );

    // A corrupted download (digest mismatch) fails the run and changes nothing.
    *s.gw.bill.lock().unwrap() = Some((gzip(text.as_bytes()), Some("0".repeat(40))));
    let err = run_reconciliation(&ctx, Channel::WechatPay, day(), BillSource::Gateway, "test")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    s.db.drop_db().await;
}
