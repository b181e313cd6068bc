//! Reconciliation against the project's gateway simulator through the real
//! adapters: the bill is downloaded through each gateway's bill API (WeChat
//! Pay's gzip with its SHA1, Alipay's GBK zip), and the status_mismatch
//! repair asks the gateway's real query.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{FixedOffset, SubsecRound, Utc};
use payrecon::config::Settings;
use payrecon::domain::recon::{Category, Resolution};
use payrecon::domain::{
    Channel, LineItem, NewOrder, Order, OrderId, OrderStatus, PaymentState, RefundId,
};
use payrecon::gateway::factory::build_gateways;
use payrecon::gateway::{Gateway, PrepayRequest, RefundRequest};
use payrecon::jobs::reconcile::{run_reconciliation, BillSource, ReconContext, RunOutcome};
use payrecon::simulator::{SimOptions, Simulator};
use payrecon::store;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::support::{fen, TestDb};

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gateway");

struct Sim {
    base_url: String,
    gateways: HashMap<Channel, Arc<dyn Gateway>>,
    cancel: CancellationToken,
    _keys: tempfile::TempDir,
    _sim: Simulator,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The simulator with the committed test keys (no slow key generation).
async fn start_sim() -> Sim {
    let keys = tempfile::tempdir().unwrap();
    let copy = |from: &str, to: &str| {
        std::fs::copy(format!("{KEYS}/{from}"), keys.path().join(to)).unwrap()
    };
    for side in ["wechat_merchant", "alipay_app"] {
        copy("test_rsa_private.pem", &format!("{side}_private.pem"));
        copy("test_rsa_public.pem", &format!("{side}_public.pem"));
    }
    for side in ["wechat_platform", "alipay"] {
        copy("other_rsa_private.pem", &format!("{side}_private.pem"));
        copy("other_rsa_public.pem", &format!("{side}_public.pem"));
    }
    std::fs::write(
        keys.path().join("wechat_apiv3_key"),
        "abcdefghijklmnopqrstuvwxyz012345",
    )
    .unwrap();
    let mut settings = Settings::default();
    settings.simulator.keys_dir = keys.path().to_path_buf();
    let mut opts = SimOptions::new(settings.simulator.clone());
    opts.wechat_notify_retry = vec![std::time::Duration::from_millis(100)];
    opts.alipay_notify_retry = vec![std::time::Duration::from_millis(100)];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cancel = CancellationToken::new();
    let sim = Simulator::start(opts, listener, cancel.clone())
        .await
        .unwrap();
    let base_url = sim.base_url();
    let gateways = build_gateways(&settings, Some(&base_url)).unwrap();
    Sim {
        base_url,
        gateways,
        cancel,
        _keys: keys,
        _sim: sim,
    }
}

impl Sim {
    async fn pay(&self, channel: Channel, otn: &str, amount: Option<i64>) -> String {
        let mut body = json!({"channel": channel, "out_trade_no": otn});
        if let Some(a) = amount {
            body["amount"] = json!(a);
        }
        let answer: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/sim/pay", self.base_url))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["transaction_id"].as_str().unwrap().to_string()
    }
}

/// An order created now, prepared at the gateway when `prepare`.
async fn placed(
    pool: &sqlx::PgPool,
    sim: &Sim,
    channel: Channel,
    total: i64,
    prepare: bool,
) -> Order {
    let now = Utc::now().trunc_subsecs(6);
    let new = NewOrder {
        order_id: OrderId::generate(),
        user_id: "u1".into(),
        items: vec![LineItem {
            product_id: "p1".into(),
            quantity: 1,
            unit_price: fen(total),
        }],
        payment_method: channel,
        pay_timeout: chrono::Duration::minutes(30),
    };
    let mut o = Order::place(new, now).unwrap();
    let mut conn = pool.acquire().await.unwrap();
    store::orders::insert(&mut conn, &o).await.unwrap();
    if prepare {
        sim.gateways[&channel]
            .prepay(&PrepayRequest {
                out_trade_no: o.out_trade_no(),
                amount: fen(total),
                description: "recon test".into(),
                notify_url: format!("http://127.0.0.1:9/notify/{channel}"),
                expires_at: now + chrono::Duration::minutes(30),
            })
            .await
            .unwrap();
        o.payment_state = PaymentState::Prepared;
        store::orders::update(&mut conn, &o, OrderStatus::PendingPayment)
            .await
            .unwrap();
    }
    o
}

async fn mark_paid(pool: &sqlx::PgPool, o: &mut Order, transaction_id: &str) {
    let mut conn = pool.acquire().await.unwrap();
    o.mark_paid(transaction_id, o.total_amount, Utc::now().trunc_subsecs(6))
        .unwrap();
    store::orders::update(&mut conn, o, OrderStatus::PendingPayment)
        .await
        .unwrap();
}

async fn reconcile_through_simulator(channel: Channel) {
    let sim = start_sim().await;
    let db = TestDb::new().await;
    let p = &db.pool;

    // P1: paid on both sides, part refunded on both sides → matched.
    let mut p1 = placed(p, &sim, channel, 1000, true).await;
    let tx1 = sim.pay(channel, &p1.out_trade_no(), None).await;
    mark_paid(p, &mut p1, &tx1).await;
    let refund_id = RefundId::new_random();
    let refund = sim.gateways[&channel]
        .refund(&RefundRequest {
            out_trade_no: p1.out_trade_no(),
            out_refund_no: refund_id.out_refund_no(),
            amount: fen(300),
            total: fen(1000),
            reason: "test".into(),
            notify_url: String::new(),
        })
        .await
        .unwrap();
    let mut conn = p.acquire().await.unwrap();
    store::refunds::insert(
        &mut conn,
        &store::refunds::Refund {
            refund_id,
            order_id: p1.order_id,
            amount: fen(300),
            reason: "test".into(),
            status: store::refunds::RefundStatus::Succeeded,
            gateway_refund_id: refund.gateway_refund_id,
            request_id: None,
            created_at: Utc::now(),
        },
    )
    .await
    .unwrap();
    drop(conn);
    // P2: paid at the gateway, the notification never reached us → repaired.
    let p2 = placed(p, &sim, channel, 1500, true).await;
    let tx2 = sim.pay(channel, &p2.out_trade_no(), None).await;
    // P3: paid with us, unknown to the gateway → missing_gateway.
    let mut p3 = placed(p, &sim, channel, 700, false).await;
    mark_paid(p, &mut p3, "TX-NOWHERE").await;
    // P4: the buyer paid another amount than ours → amount_mismatch.
    let mut p4 = placed(p, &sim, channel, 2000, true).await;
    let tx4 = sim.pay(channel, &p4.out_trade_no(), Some(1999)).await;
    mark_paid(p, &mut p4, &tx4).await;

    let mut gateways = HashMap::new();
    gateways.insert(channel, sim.gateways[&channel].clone());
    let offset = FixedOffset::east_opt(8 * 3600).unwrap();
    let ctx = ReconContext {
        pool: p.clone(),
        gateways,
        business_offset: offset,
        progress: None,
    };
    let today = Utc::now().with_timezone(&offset).date_naive();
    let RunOutcome::Completed(r) =
        run_reconciliation(&ctx, channel, today, BillSource::Gateway, "test")
            .await
            .unwrap()
    else {
        panic!("skipped")
    };

    let found: Vec<(Category, String, Resolution)> = r
        .discrepancies
        .iter()
        .map(|d| (d.category, d.out_trade_no.clone(), d.resolution))
        .collect();
    assert_eq!(
        found,
        vec![
            (
                Category::AmountMismatch,
                p4.out_trade_no(),
                Resolution::Open
            ),
            (
                Category::MissingGateway,
                p3.out_trade_no(),
                Resolution::Open
            ),
            (
                Category::StatusMismatch,
                p2.out_trade_no(),
                Resolution::AutoRepaired
            ),
        ]
    );
    let amount = &r.discrepancies[0];
    assert_eq!(
        (amount.local_amount, amount.gateway_amount),
        (Some(fen(2000)), Some(fen(1999)))
    );
    assert_eq!(amount.gateway_transaction_id.as_deref(), Some(tx4.as_str()));
    let s = r.run.summary.as_ref().unwrap();
    assert_eq!(
        (s.bill_count, s.bill_amount, s.bill_refund_amount),
        (3, 1000 + 1500 + 1999, 300)
    );
    assert_eq!((s.matched_count, s.matched_amount), (1, 1000));
    assert_eq!((s.order_count, s.paid_count, s.pending_count), (4, 4, 0));

    let mut conn = p.acquire().await.unwrap();
    let repaired = store::orders::get(&mut conn, p2.order_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(repaired.status, OrderStatus::Paid);
    assert_eq!(
        repaired.gateway_transaction_id.as_deref(),
        Some(tx2.as_str())
    );
    drop(conn);
    db.drop_db().await;
}

#[tokio::test]
async fn wechat_pay_through_the_simulator() {
    reconcile_through_simulator(Channel::WechatPay).await;
}

#[tokio::test]
async fn alipay_through_the_simulator() {
    reconcile_through_simulator(Channel::Alipay).await;
}
