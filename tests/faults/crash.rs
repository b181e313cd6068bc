//! `kill -9` three times under 20,000 mixed requests. `payrecon run` is a
//! child process; the gateways are a standalone `payrecon gateway-sim` that
//! outlives every kill and re-sends the notifications a dead daemon missed.
//! Afterwards every request has had exactly its effect, every order's events
//! replay to its row, and nothing is left queued, unacknowledged or pending.

use std::time::Duration;

use futures::StreamExt;
use payrecon::domain::OrderId;
use rand::Rng;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::time::Instant;

use crate::common::{Broker, TestEnv};
use crate::crash_check::{gateway_agrees, queues_empty, verify, Expect};
use crate::crash_support::{
    count, distinct_events, free_port, live_gateway_env, wait_count, DaemonSpec, Publisher,
    SimProcess, Tap,
};

const TOTAL: i64 = 3998; // place_data: 2 × 1999 fen
const PART: i64 = 1000;
const KILLS: usize = 3;
/// A phase waits this long at most: a task claimed by a killed daemon
/// stays leased for 120 s before another run picks it up.
const PHASE_SECS: u64 = 900;

/// What the test does with one order, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    ShipRefundPart,
    ShipConfirm,
    ShipRefundFull,
    PaidRefundFull,
    Cancel,
    CompleteRefundPart,
}

impl Plan {
    fn of(i: usize) -> Plan {
        match i % 10 {
            0..=2 => Plan::ShipRefundPart,
            3 | 4 => Plan::ShipConfirm,
            5 | 6 => Plan::ShipRefundFull,
            7 => Plan::PaidRefundFull,
            8 => Plan::Cancel,
            _ => Plan::CompleteRefundPart,
        }
    }
    fn pays(self) -> bool {
        self != Plan::Cancel
    }
    fn ships(self) -> bool {
        !matches!(self, Plan::Cancel | Plan::PaidRefundFull)
    }
    fn confirms(self) -> bool {
        matches!(self, Plan::ShipConfirm | Plan::CompleteRefundPart)
    }
    fn refund(self) -> Option<i64> {
        match self {
            Plan::ShipRefundPart | Plan::CompleteRefundPart => Some(PART),
            Plan::ShipRefundFull | Plan::PaidRefundFull => Some(TOTAL),
            _ => None,
        }
    }
    /// Requests (gateway notifications of a payment included) per order.
    fn requests(self) -> usize {
        2 + usize::from(self.pays())
            + usize::from(self == Plan::Cancel)
            + usize::from(self.ships())
            + usize::from(self.confirms())
            + usize::from(self.refund().is_some())
    }
    /// The event types the order must have, in order.
    fn events(self) -> Vec<&'static str> {
        let mut e = vec!["order.created", "payment.prepared"];
        if self == Plan::Cancel {
            e.push("order.cancelled");
            return e;
        }
        e.push("order.paid");
        if self.ships() {
            e.push("order.shipped");
        }
        if self.confirms() {
            e.push("order.completed");
        }
        if let Some(amount) = self.refund() {
            e.push("refund.succeeded");
            if amount == TOTAL {
                e.push("order.refunded");
            }
        }
        e
    }
    /// status, paid_amount, refunded_amount at the end.
    fn end(self) -> (&'static str, i64, i64) {
        match self {
            Plan::ShipRefundPart => ("shipped", TOTAL, PART),
            Plan::ShipConfirm => ("completed", TOTAL, 0),
            Plan::ShipRefundFull | Plan::PaidRefundFull => ("refunded", TOTAL, TOTAL),
            Plan::Cancel => ("cancelled", 0, 0),
            Plan::CompleteRefundPart => ("completed", TOTAL, PART),
        }
    }
}

fn method(i: usize) -> &'static str {
    if i.is_multiple_of(2) {
        "wechat_pay"
    } else {
        "alipay"
    }
}

struct Shop {
    ids: Vec<OrderId>,
    publisher: Publisher,
    request_ids: Vec<String>,
}

impl Shop {
    async fn send(&mut self, kind: &str, rid: String, data: Value) {
        self.publisher.request(kind, &rid, data).await;
        self.request_ids.push(rid);
    }

    async fn each(&mut self, kind: &str, tag: &str, keep: impl Fn(Plan) -> Option<Value>) {
        for i in 0..self.ids.len() {
            let id = self.ids[i];
            if let Some(mut data) = keep(Plan::of(i)) {
                data["order_id"] = json!(id.to_string());
                self.send(kind, format!("{tag}-{id}"), data).await;
            }
        }
    }
}

async fn phase(pool: &PgPool, what: &str, sql: &str, want: usize, started: Instant) {
    wait_count(pool, sql, want as i64, PHASE_SECS).await;
    eprintln!("crash: {what} done at {:?}", started.elapsed());
}

/// Drives every order through its plan, phase by phase, while the killer runs.
async fn drive(shop: &mut Shop, sim: &SimProcess, pool: &PgPool, started: Instant) -> usize {
    let n = shop.ids.len();
    let plans: Vec<Plan> = (0..n).map(Plan::of).collect();
    let with = |f: fn(Plan) -> bool| plans.iter().filter(|p| f(**p)).count();
    for i in 0..n {
        let mut data = crate::common::place_data(method(i));
        data["order_id"] = json!(shop.ids[i].to_string());
        shop.send("order.place", format!("place-{}", shop.ids[i]), data)
            .await;
    }
    phase(pool, "place", "SELECT count(*) FROM orders", n, started).await;
    for i in 0..n {
        let id = shop.ids[i];
        let data =
            json!({"order_id": id.to_string(), "amount": TOTAL, "payment_method": method(i)});
        shop.send("payment.request", format!("pay-{id}"), data)
            .await;
    }
    let prepared = "SELECT count(*) FROM orders WHERE payment_state = 'prepared'";
    phase(pool, "payment.request", prepared, n, started).await;
    // The buyers pay at the simulator; its notifications are the requests
    // that arrive over HTTP.
    let payers: Vec<(usize, OrderId)> = (0..n)
        .filter(|i| plans[*i].pays())
        .map(|i| (i, shop.ids[i]))
        .collect();
    let paid_at_sim = futures::stream::iter(payers)
        .map(|(i, id)| async move {
            let body = json!({"channel": method(i), "out_trade_no": id.out_trade_no()});
            sim.post("/sim/pay", body).await.status().as_u16()
        })
        .buffer_unordered(8)
        .collect::<Vec<u16>>()
        .await;
    assert!(paid_at_sim.iter().all(|s| *s == 200), "a /sim/pay failed");
    shop.each("order.cancel", "cancel", |p| {
        (p == Plan::Cancel).then(|| json!({"reason": "changed mind"}))
    })
    .await;
    let paid = "SELECT count(*) FROM orders WHERE status = 'paid'";
    phase(pool, "pay", paid, with(Plan::pays), started).await;
    let cancelled = "SELECT count(*) FROM orders WHERE status = 'cancelled'";
    phase(pool, "cancel", cancelled, n - with(Plan::pays), started).await;
    shop.each("order.ship", "ship", |p| {
        p.ships()
            .then(|| json!({"carrier": "SF", "tracking_no": "SF1"}))
    })
    .await;
    let shipped = "SELECT count(*) FROM orders WHERE status = 'shipped'";
    phase(pool, "ship", shipped, with(Plan::ships), started).await;
    shop.each("order.confirm_receipt", "recv", |p| {
        p.confirms().then(|| json!({}))
    })
    .await;
    let completed = "SELECT count(*) FROM orders WHERE status = 'completed'";
    phase(pool, "confirm", completed, with(Plan::confirms), started).await;
    shop.each("refund.request", "refund", |p| {
        p.refund()
            .map(|a| json!({"amount": a, "reason": "returned"}))
    })
    .await;
    let refunds = plans.iter().filter(|p| p.refund().is_some()).count();
    let settled = "SELECT count(*) FROM refunds WHERE status = 'succeeded'";
    phase(pool, "refund", settled, refunds, started).await;
    paid_at_sim.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_three_times_under_mixed_load_loses_and_doubles_nothing() {
    let orders: usize = std::env::var("PAYRECON_CRASH_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4200);
    let env = TestEnv::new("crash");
    let sim = SimProcess::start(&env).await;
    let tap = Tap::start(Broker::connect(&env).await);
    let publisher = Publisher::connect(&env).await;
    let http = format!("127.0.0.1:{}", free_port());
    let spec = DaemonSpec::new(&env, &http, live_gateway_env(&env, &sim.base_url, &http));
    let mut first = spec.spawn(0);
    first.wait_ready(120).await;
    let pool = PgPool::connect(env.settings.database.url.expose())
        .await
        .expect("test db");
    let plans: Vec<Plan> = (0..orders).map(Plan::of).collect();
    let requests: usize = plans.iter().map(|p| p.requests()).sum();
    // Kill points count requests taken off the queue (notifications come
    // over HTTP and are not in this count).
    let queued = requests - plans.iter().filter(|p| p.pays()).count();
    let started = Instant::now();

    // The killer: three `kill -9` at random points of the run (after a
    // random share of the requests was processed, plus a random delay),
    // each followed by a restart after a random pause.
    let killer = {
        let pool = pool.clone();
        let mut rng = rand::thread_rng();
        let mut marks: Vec<i64> = (0..KILLS)
            .map(|_| (queued as f64 * rng.gen_range(0.05..0.95)) as i64)
            .collect();
        marks.sort_unstable();
        let delays: Vec<(u64, u64)> = (0..KILLS)
            .map(|_| (rng.gen_range(0..1500), rng.gen_range(100..3000)))
            .collect();
        tokio::spawn(async move {
            let processed =
                "SELECT count(*) FROM inbox WHERE request_type <> 'gateway.notification'";
            let mut daemon = first;
            let mut kills = Vec::new();
            for (k, (mark, (delay, pause))) in marks.into_iter().zip(delays).enumerate() {
                wait_count(&pool, processed, mark, PHASE_SECS * 4).await;
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let at = count(&pool, processed).await;
                daemon.kill9().await;
                eprintln!(
                    "crash: kill -9 #{} after {at} requests at {:?}",
                    k + 1,
                    started.elapsed()
                );
                kills.push(at);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                daemon = spec.spawn(k as u32 + 1);
                daemon.wait_ready(120).await;
            }
            (daemon, kills)
        })
    };

    let ids: Vec<OrderId> = (0..orders).map(|_| OrderId::generate()).collect();
    let mut shop = Shop {
        ids: ids.clone(),
        publisher,
        request_ids: Vec::new(),
    };
    let payments = drive(&mut shop, &sim, &pool, started).await;
    let (daemon, kills) = killer.await.expect("killer");
    assert_eq!(kills.len(), KILLS);
    let sent = shop.request_ids.len();
    assert_eq!(sent + payments, requests, "requests planned vs sent");

    let expect: Vec<Expect> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| Expect {
            id: *id,
            channel: method(i),
            events: plans[i].events(),
            end: plans[i].end(),
        })
        .collect();
    // Converged: every notification acknowledged (the re-sends after a kill
    // take up to a few minutes), every event delivered.
    gateway_agrees(&sim, &expect, 300).await;
    let expected_events: usize = expect.iter().map(|x| x.events.len()).sum();
    let deadline = Instant::now() + Duration::from_secs(120);
    while distinct_events(&tap.snapshot()).0.len() < expected_events && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A gateway task a killed daemon had claimed resumes only once its lease
    // (120 s) runs out, even when a notification settled its payment or
    // refund meanwhile: wait for those to close before judging.
    let deadline = Instant::now() + Duration::from_secs(200);
    while count(
        &pool,
        "SELECT count(*) FROM gateway_tasks WHERE state <> 'done'",
    )
    .await
        > 0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Late repeats, or an event too many, would arrive now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all = tap.snapshot();
    let (distinct, repeats) = distinct_events(&all);
    let (lost, doubled) = verify(&pool, &expect, &distinct, &shop.request_ids).await;
    // Nothing sits unacknowledged while the daemon still runs...
    queues_empty(&env).await;
    assert_eq!(
        daemon.terminate().await,
        Some(0),
        "clean stop after the run"
    );
    // ...nor after it stopped.
    queues_empty(&env).await;
    eprintln!(
        "crash figures: orders {orders}, requests {requests} ({sent} on the queue + {payments} \
         payment notifications), kills {} at {kills:?} requests, lost {lost}, doubled {doubled}, \
         events {} ({repeats} re-deliveries of an already delivered event_id), duration {:?}",
        KILLS,
        distinct.len(),
        started.elapsed()
    );
    tap.stop();
    shop.publisher.close().await;
    pool.close().await;
}
