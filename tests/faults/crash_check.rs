//! The crash test's verdict: each order's events replayed against its row
//! and its plan, the inbox against the requests sent, the simulator's state
//! against our refunds, and the queues empty.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use payrecon::domain::OrderId;
use serde_json::Value;
use sqlx::PgPool;
use tokio::time::Instant;

use crate::common::TestEnv;
use crate::crash_support::{queue_totals, SimProcess};

/// What one order must come to: its event types in order, and its final
/// status, paid amount and refunded amount.
pub struct Expect {
    pub id: OrderId,
    pub channel: &'static str,
    pub events: Vec<&'static str>,
    pub end: (&'static str, i64, i64),
}

/// Replays one order's events (distinct, in order) to (status, paid,
/// refunded), refusing any transition the order could not make.
pub fn replay(events: &[&Value]) -> Result<(String, i64, i64), String> {
    let (mut status, mut paid, mut refunded) = (String::new(), 0, 0);
    for e in events {
        let kind = e["type"].as_str().unwrap_or_default();
        let from = |allowed: &[&str]| {
            allowed
                .contains(&status.as_str())
                .then_some(())
                .ok_or(format!("{kind} from {status:?}"))
        };
        match kind {
            "order.created" => from(&[""])?,
            "payment.prepared" | "payment.failed" => from(&["pending_payment"])?,
            "order.paid" | "order.cancelled" => from(&["pending_payment"])?,
            "order.shipped" => from(&["paid"])?,
            "order.completed" => from(&["shipped"])?,
            "refund.succeeded" | "order.refunded" => from(&["paid", "shipped", "completed"])?,
            "refund.failed" => {}
            other => return Err(format!("unexpected {other}")),
        }
        match kind {
            "order.created" => status = "pending_payment".into(),
            "order.paid" => {
                status = "paid".into();
                paid = e["data"]["order"]["total_amount"].as_i64().unwrap_or(0);
            }
            "order.shipped" => status = "shipped".into(),
            "order.completed" => status = "completed".into(),
            "order.cancelled" => status = "cancelled".into(),
            "refund.succeeded" => refunded += e["data"]["refund"]["amount"].as_i64().unwrap_or(0),
            "order.refunded" if refunded != paid => {
                return Err(format!("order.refunded at {refunded} of {paid}"))
            }
            "order.refunded" => status = "refunded".into(),
            _ => {}
        }
    }
    Ok((status, paid, refunded))
}

/// Checks everything and returns (lost, doubled); panics listing the first
/// problems when either is not zero.
pub async fn verify(
    pool: &PgPool,
    expect: &[Expect],
    distinct: &[Value],
    request_ids: &[String],
) -> (usize, usize) {
    let mut problems: Vec<String> = Vec::new();
    let (mut lost, mut doubled) = (0, 0);
    let mut by_order: HashMap<String, Vec<&Value>> = HashMap::new();
    for e in distinct {
        match e["data"]["order"]["order_id"].as_str() {
            Some(id) => by_order.entry(id.to_string()).or_default().push(e),
            None => {
                doubled += 1;
                problems.push(format!("event without an order: {e}"));
            }
        }
    }
    let rows: Vec<(uuid::Uuid, String, i64, i64)> =
        sqlx::query_as("SELECT order_id, status, paid_amount, refunded_amount FROM orders")
            .fetch_all(pool)
            .await
            .expect("orders");
    let rows: HashMap<String, (String, i64, i64)> = rows
        .into_iter()
        .map(|(id, s, p, r)| (id.to_string(), (s, p, r)))
        .collect();
    for x in expect {
        let id = x.id.to_string();
        let events = by_order.remove(&id).unwrap_or_default();
        let types: Vec<&str> = events
            .iter()
            .map(|e| e["type"].as_str().unwrap_or_default())
            .collect();
        if types != x.events {
            let (want, got) = (x.events.len(), types.len());
            lost += want.saturating_sub(got);
            doubled += got.saturating_sub(want);
            if want == got {
                lost += 1;
            }
            problems.push(format!("{id}: events {types:?}, want {:?}", x.events));
        }
        let replayed = replay(&events);
        let row = rows.get(&id).cloned();
        let want = (x.end.0.to_string(), x.end.1, x.end.2);
        match (&replayed, &row) {
            (Ok(r), Some(row)) if *r == want && *row == want => {}
            _ => {
                lost += 1;
                problems.push(format!(
                    "{id}: replayed {replayed:?}, row {row:?}, want {want:?}"
                ));
            }
        }
        // The last event carries the order as it was committed: it must be the row.
        if let (Some(last), Some(row)) = (events.last(), &row) {
            let o = &last["data"]["order"];
            let snap = (
                o["status"].as_str().unwrap_or_default().to_string(),
                o["paid_amount"].as_i64().unwrap_or(-1),
                o["refunded_amount"].as_i64().unwrap_or(-1),
            );
            if snap != *row {
                problems.push(format!("{id}: last event says {snap:?}, row {row:?}"));
                lost += 1;
            }
        }
    }
    if !by_order.is_empty() {
        doubled += by_order.len();
        problems.push(format!("events for {} unknown orders", by_order.len()));
    }
    if rows.len() != expect.len() {
        doubled += rows.len().saturating_sub(expect.len());
        problems.push(format!("{} orders for {} placed", rows.len(), expect.len()));
    }

    let inbox: Vec<(String, String)> = sqlx::query_as(
        "SELECT request_id, outcome FROM inbox WHERE request_type <> 'gateway.notification'",
    )
    .fetch_all(pool)
    .await
    .expect("inbox");
    let sent: HashSet<&str> = request_ids.iter().map(String::as_str).collect();
    let seen: HashSet<&str> = inbox.iter().map(|(r, _)| r.as_str()).collect();
    let missing = sent.difference(&seen).count();
    let extra = seen.difference(&sent).count();
    lost += missing;
    doubled += extra;
    if missing + extra > 0 {
        problems.push(format!(
            "inbox: {missing} requests missing, {extra} unknown"
        ));
    }
    let rejected: Vec<&(String, String)> = inbox.iter().filter(|(_, o)| o != "processed").collect();
    if !rejected.is_empty() {
        doubled += rejected.len();
        let first: Vec<_> = rejected.iter().take(5).collect();
        problems.push(format!("{} rejected requests: {first:?}", rejected.len()));
    }
    let mut conn = pool.acquire().await.expect("conn");
    let unpublished = payrecon::store::outbox::count_unpublished(&mut conn)
        .await
        .expect("outbox");
    drop(conn);
    let unsettled: i64 = unpublished
        + sqlx::query_scalar::<_, i64>(
            "SELECT (SELECT count(*) FROM gateway_tasks WHERE state <> 'done') \
              + (SELECT count(*) FROM refunds WHERE status <> 'succeeded') \
              + (SELECT count(*) FROM payment_anomalies)",
        )
        .fetch_one(pool)
        .await
        .expect("unsettled");
    if unsettled != 0 {
        lost += unsettled as usize;
        problems.push(format!(
            "{unsettled} unpublished events, open tasks, unsettled refunds or anomalies"
        ));
    }
    problems.truncate(20);
    assert!(
        lost == 0 && doubled == 0,
        "lost {lost}, doubled {doubled}:\n{}",
        problems.join("\n")
    );
    (lost, doubled)
}

/// The simulator's side: every notification acknowledged (the re-sends to a
/// killed daemon included), each payment paid once, each refund made once
/// and of the amount we recorded. Polls while re-sends are still due.
pub async fn gateway_agrees(sim: &SimProcess, expect: &[Expect], secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut left: Vec<&Expect> = expect.iter().collect();
    while !left.is_empty() {
        let mut still = Vec::new();
        for x in left {
            let path = format!(
                "/sim/payments/{}?channel={}",
                x.id.out_trade_no(),
                x.channel
            );
            let (status, p) = sim.get_json(&path).await;
            assert_eq!(status, 200, "{path}: {p}");
            let pending = p["notifications"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["acknowledged"] != true));
            if pending {
                still.push(x);
                continue;
            }
            let (_, paid, refunded) = x.end;
            let refunds = p["refunds"].as_array().map_or(0, Vec::len);
            assert_eq!(refunds, usize::from(refunded > 0), "{path}: refunds {p}");
            assert_eq!(p["refunded"].as_i64().unwrap_or(0), refunded, "{path}: {p}");
            let paid_at_sim = p["paid_amount"].as_i64().unwrap_or(0);
            assert_eq!(paid_at_sim, paid, "{path}: {p}");
        }
        if !still.is_empty() {
            assert!(
                Instant::now() < deadline,
                "{} payments with unacknowledged notifications after {secs}s, e.g. {}",
                still.len(),
                still[0].id
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        left = still;
    }
}

/// Nothing ready and nothing unacknowledged in any of the test's queues.
pub async fn queues_empty(env: &TestEnv) {
    let n = env.names();
    for q in [
        &n.requests,
        &n.notifications,
        &n.requests_dlq,
        &n.notifications_dlq,
    ] {
        assert_eq!(queue_totals(q).await, (0, 0), "{q}: (ready, unacked)");
    }
}
