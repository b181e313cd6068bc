//! Timeout cancellation against the gateway simulator, through the real
//! adapters: paid at the gateway, unpaid, gateway down, and two instances
//! racing on a mixed backlog.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Duration, SubsecRound, Utc};
use payrecon::config::Settings;
use payrecon::domain::{Channel, Order, OrderStatus, PaymentState};
use payrecon::gateway::factory::build_gateways;
use payrecon::gateway::{Gateway, PrepayRequest, TradeState};
use payrecon::jobs::TimeoutCancel;
use payrecon::simulator::{SimKeys, SimOptions, Simulator};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::support::{events, events_of, insert, load, order, TestDb};

type Gateways = HashMap<Channel, Arc<dyn Gateway>>;

/// RSA key generation is slow: one key set for the whole test binary.
fn keys_dir() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        SimKeys::load_or_create(dir.path()).expect("simulator keys");
        dir
    });
    dir.path().to_path_buf()
}

struct Sim {
    sim: Simulator,
    shutdown: CancellationToken,
    settings: Settings,
    http: reqwest::Client,
}

impl Sim {
    async fn start() -> Sim {
        let mut settings = Settings::default();
        settings.simulator.keys_dir = keys_dir();
        // Nobody listens there: the simulator's notifications go nowhere,
        // so only the timeout job can learn of a payment.
        settings.gateways.wechat_pay.notify_url = "http://127.0.0.1:9/notify/wechat_pay".into();
        settings.gateways.alipay.notify_url = "http://127.0.0.1:9/notify/alipay".into();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let shutdown = CancellationToken::new();
        let sim = Simulator::start(
            SimOptions::new(settings.simulator.clone()),
            listener,
            shutdown.clone(),
        )
        .await
        .expect("simulator starts");
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        Sim {
            sim,
            shutdown,
            settings,
            http,
        }
    }

    fn gateways(&self) -> Gateways {
        build_gateways(&self.settings, Some(&self.sim.base_url())).expect("gateways")
    }

    async fn control(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let response = self
            .http
            .post(format!("{}{path}", self.sim.base_url()))
            .json(&body)
            .send()
            .await
            .expect("control call");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap_or(serde_json::Value::Null)
    }

    /// A buyer pays; answers the gateway's transaction id.
    async fn pay(&self, o: &Order) -> String {
        let paid = self
            .control(
                "/sim/pay",
                json!({"channel": o.payment_method.as_str(), "out_trade_no": o.out_trade_no()}),
            )
            .await;
        paid["transaction_id"]
            .as_str()
            .expect("transaction_id")
            .to_string()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.sim.stopped().await;
    }
}

/// An expired order whose payment was prepared at the gateway.
async fn prepared(db: &TestDb, gateways: &Gateways, channel: Channel, now: DateTime<Utc>) -> Order {
    let o = order(
        channel,
        now - Duration::minutes(31),
        Duration::minutes(30),
        PaymentState::Prepared,
    );
    let request = PrepayRequest {
        out_trade_no: o.out_trade_no(),
        amount: o.total_amount,
        description: "test order".into(),
        notify_url: format!("http://127.0.0.1:9/notify/{channel}"),
        // The gateway's own deadline is later than ours: the job closes it.
        expires_at: now + Duration::hours(1),
    };
    gateways[&channel].prepay(&request).await.expect("prepay");
    insert(&db.pool, &o).await;
    o
}

#[tokio::test]
async fn an_order_paid_at_the_gateway_becomes_paid_not_cancelled() {
    let (db, sim) = (TestDb::new().await, Sim::start().await);
    let gateways = sim.gateways();
    let now = Utc::now().trunc_subsecs(6);
    let mut paid = Vec::new();
    for channel in Channel::ALL {
        let o = prepared(&db, &gateways, channel, now).await;
        let tx = sim.pay(&o).await;
        paid.push((o, tx));
    }

    let job = TimeoutCancel::new(db.pool.clone(), gateways, 10);
    let counts = job.run_at(now).await.unwrap();
    assert_eq!(
        (
            counts.get("paid"),
            counts.get("cancelled"),
            counts.get("deferred")
        ),
        (2, 0, 0)
    );
    let all = events(&db.pool).await;
    for (o, tx) in paid {
        let stored = load(&db.pool, o.order_id).await;
        assert_eq!(stored.status, OrderStatus::Paid);
        assert_eq!(stored.paid_amount, o.total_amount);
        assert_eq!(stored.gateway_transaction_id.as_deref(), Some(tx.as_str()));
        let e = events_of(&all, "order.paid", o.order_id);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0]["data"]["source"], "query");
        assert!(events_of(&all, "order.cancelled", o.order_id).is_empty());
    }
    sim.stop().await;
    db.finish(&[]).await;
}

#[tokio::test]
async fn an_unpaid_order_is_closed_at_the_gateway_then_cancelled() {
    let (db, sim) = (TestDb::new().await, Sim::start().await);
    let gateways = sim.gateways();
    let now = Utc::now().trunc_subsecs(6);
    let mut unpaid = Vec::new();
    for channel in Channel::ALL {
        unpaid.push(prepared(&db, &gateways, channel, now).await);
    }

    let job = TimeoutCancel::new(db.pool.clone(), gateways.clone(), 10);
    let counts = job.run_at(now).await.unwrap();
    assert_eq!(
        (
            counts.get("paid"),
            counts.get("cancelled"),
            counts.get("deferred")
        ),
        (0, 2, 0)
    );
    let all = events(&db.pool).await;
    for o in unpaid {
        let stored = load(&db.pool, o.order_id).await;
        assert_eq!(stored.status, OrderStatus::Cancelled);
        assert_eq!(stored.cancel_reason.as_deref(), Some("timeout"));
        let e = events_of(&all, "order.cancelled", o.order_id);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0]["data"]["reason"], "timeout");
        // The buyer can no longer pay it.
        let at_gateway = gateways[&o.payment_method]
            .query(&o.out_trade_no())
            .await
            .unwrap();
        assert!(
            matches!(at_gateway.state, TradeState::Closed | TradeState::NotFound),
            "{:?} still payable: {at_gateway:?}",
            o.payment_method
        );
    }
    sim.stop().await;
    db.finish(&[]).await;
}

#[tokio::test]
async fn a_gateway_that_fails_leaves_the_order_for_the_next_tick() {
    let (db, sim) = (TestDb::new().await, Sim::start().await);
    let gateways = sim.gateways();
    let now = Utc::now().trunc_subsecs(6);
    let o = prepared(&db, &gateways, Channel::WechatPay, now).await;

    sim.control("/sim/faults", json!({"error_rate": 1.0})).await;
    let job = TimeoutCancel::new(db.pool.clone(), gateways, 10);
    let counts = job.run_at(now).await.unwrap();
    assert_eq!((counts.get("deferred"), counts.get("cancelled")), (1, 0));
    assert_eq!(
        load(&db.pool, o.order_id).await.status,
        OrderStatus::PendingPayment
    );
    assert!(events(&db.pool).await.is_empty());

    // The gateway recovers; the buyer had paid meanwhile.
    sim.control("/sim/faults", json!({})).await;
    let tx = sim.pay(&o).await;
    let counts = job.run_at(now + Duration::minutes(1)).await.unwrap();
    assert_eq!((counts.get("paid"), counts.get("deferred")), (1, 0));
    let stored = load(&db.pool, o.order_id).await;
    assert_eq!(
        (stored.status, stored.gateway_transaction_id),
        (OrderStatus::Paid, Some(tx))
    );
    sim.stop().await;
    db.finish(&[]).await;
}

#[tokio::test]
async fn a_gateway_that_is_gone_leaves_the_order_unpaid() {
    let (db, sim) = (TestDb::new().await, Sim::start().await);
    let gateways = sim.gateways();
    let now = Utc::now().trunc_subsecs(6);
    let o = prepared(&db, &gateways, Channel::Alipay, now).await;
    sim.stop().await;

    let job = TimeoutCancel::new(db.pool.clone(), gateways, 10);
    let counts = job.run_at(now).await.unwrap();
    assert_eq!((counts.get("deferred"), counts.get("cancelled")), (1, 0));
    assert_eq!(
        load(&db.pool, o.order_id).await.status,
        OrderStatus::PendingPayment
    );
    assert!(events(&db.pool).await.is_empty());
    db.finish(&[]).await;
}

#[tokio::test]
async fn two_instances_racing_on_a_mixed_backlog_handle_each_order_once() {
    let (db, sim) = (TestDb::new().await, Sim::start().await);
    let other_pool = db.second_pool().await;
    let gateways = sim.gateways();
    let now = Utc::now().trunc_subsecs(6);
    let (mut expect_paid, mut expect_cancelled) = (Vec::new(), Vec::new());
    for i in 0..36 {
        let channel = Channel::ALL[i % 2];
        match i % 3 {
            0 => {
                let o = order(
                    channel,
                    now - Duration::minutes(40),
                    Duration::minutes(30),
                    PaymentState::NotStarted,
                );
                insert(&db.pool, &o).await;
                expect_cancelled.push(o.order_id);
            }
            1 => expect_cancelled.push(prepared(&db, &gateways, channel, now).await.order_id),
            _ => {
                let o = prepared(&db, &gateways, channel, now).await;
                sim.pay(&o).await;
                expect_paid.push(o.order_id);
            }
        }
    }

    // Each instance has its own pool and its own adapters, as two daemons would.
    let a = TimeoutCancel::new(db.pool.clone(), gateways, 4);
    let b = TimeoutCancel::new(other_pool.clone(), sim.gateways(), 4);
    let (ca, cb) = tokio::join!(a.run_at(now), b.run_at(now));
    let (ca, cb) = (ca.unwrap(), cb.unwrap());
    assert_eq!(
        ca.get("cancelled") + cb.get("cancelled"),
        24,
        "a: {ca:?} b: {cb:?}"
    );
    assert_eq!(ca.get("paid") + cb.get("paid"), 12, "a: {ca:?} b: {cb:?}");
    assert_eq!(ca.get("deferred") + cb.get("deferred"), 0);

    let all = events(&db.pool).await;
    assert_eq!(all.len(), 36);
    for id in expect_cancelled {
        assert_eq!(load(&db.pool, id).await.status, OrderStatus::Cancelled);
        assert_eq!(events_of(&all, "order.cancelled", id).len(), 1);
    }
    for id in expect_paid {
        assert_eq!(load(&db.pool, id).await.status, OrderStatus::Paid);
        assert_eq!(events_of(&all, "order.paid", id).len(), 1);
    }
    sim.stop().await;
    db.finish(&[other_pool]).await;
}

#[tokio::test]
async fn a_payment_of_another_amount_is_an_anomaly_not_a_cancel() {
    let (db, sim) = (TestDb::new().await, Sim::start().await);
    let gateways = sim.gateways();
    let now = Utc::now().trunc_subsecs(6);
    let o = prepared(&db, &gateways, Channel::WechatPay, now).await;
    let tampered = o.total_amount.fen() - 1;
    sim.control(
        "/sim/pay",
        json!({"channel": "wechat_pay", "out_trade_no": o.out_trade_no(), "amount": tampered}),
    )
    .await;

    let job = TimeoutCancel::new(db.pool.clone(), gateways, 10);
    let counts = job.run_at(now).await.unwrap();
    assert_eq!(
        (
            counts.get("anomalies"),
            counts.get("paid"),
            counts.get("cancelled")
        ),
        (1, 0, 0)
    );
    assert_eq!(
        load(&db.pool, o.order_id).await.status,
        OrderStatus::PendingPayment
    );
    let all = events(&db.pool).await;
    let anomaly = events_of(&all, "payment.anomaly", o.order_id);
    assert_eq!(anomaly.len(), 1);
    assert_eq!(anomaly[0]["data"]["kind"], "amount_mismatch");
    assert_eq!(anomaly[0]["data"]["gateway_amount"], tampered);
    // Not asked about again at every tick: people decide.
    let next = job.run_at(now + Duration::minutes(1)).await.unwrap();
    assert_eq!(next.get("anomalies"), 0);
    sim.stop().await;
    db.finish(&[]).await;
}
