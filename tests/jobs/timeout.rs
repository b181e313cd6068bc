//! Timeout cancellation: orders with no payment are cancelled without a
//! gateway call; a started payment is never cancelled blind; a backlog is
//! shared by instances, each order handled once.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{Duration, SubsecRound, Utc};
use payrecon::domain::{Channel, OrderStatus, PaymentState};
use payrecon::gateway::Gateway;
use payrecon::jobs::timeout_cancel::JOB_NAME;
use payrecon::jobs::{Scheduler, TimeoutCancel};
use payrecon::store::jobs::RunOutcome;
use payrecon::store::tasks::{self, NewTask, TaskKind};
use tokio_util::sync::CancellationToken;

use crate::support::{events, events_of, insert, load, order, TestDb};

fn no_gateways() -> HashMap<Channel, Arc<dyn Gateway>> {
    HashMap::new()
}

#[tokio::test]
async fn orders_with_no_payment_started_are_cancelled_without_a_gateway() {
    let db = TestDb::new().await;
    let now = Utc::now().trunc_subsecs(6);
    let mut expired = Vec::new();
    for i in 0..7 {
        let o = order(
            Channel::WechatPay,
            now - Duration::minutes(40 + i),
            Duration::minutes(30),
            PaymentState::NotStarted,
        );
        insert(&db.pool, &o).await;
        expired.push(o.order_id);
    }
    let fresh = order(
        Channel::Alipay,
        now - Duration::minutes(10),
        Duration::minutes(30),
        PaymentState::NotStarted,
    );
    insert(&db.pool, &fresh).await;
    // Expires exactly now: not yet past its deadline.
    let on_the_dot = order(
        Channel::Alipay,
        now - Duration::minutes(30),
        Duration::minutes(30),
        PaymentState::NotStarted,
    );
    insert(&db.pool, &on_the_dot).await;

    // No gateway at all: any gateway call would be impossible. Batches of 3
    // make the job go round several times.
    let job = TimeoutCancel::new(db.pool.clone(), no_gateways(), 3);
    let counts = job.run_at(now).await.unwrap();
    assert_eq!(
        (
            counts.get("cancelled"),
            counts.get("paid"),
            counts.get("deferred")
        ),
        (7, 0, 0)
    );

    let all = events(&db.pool).await;
    for id in &expired {
        let o = load(&db.pool, *id).await;
        assert_eq!(o.status, OrderStatus::Cancelled);
        assert_eq!(o.cancel_reason.as_deref(), Some("timeout"));
        assert_eq!(o.cancelled_at, Some(now));
        let cancelled = events_of(&all, "order.cancelled", *id);
        assert_eq!(cancelled.len(), 1);
        assert_eq!(cancelled[0]["data"]["reason"], "timeout");
        assert_eq!(cancelled[0]["data"]["order"]["status"], "cancelled");
        assert_eq!(cancelled[0]["request_id"], serde_json::Value::Null);
    }
    for id in [fresh.order_id, on_the_dot.order_id] {
        assert_eq!(load(&db.pool, id).await.status, OrderStatus::PendingPayment);
    }
    assert_eq!(all.len(), 7);

    // A second pass redoes nothing; only the order whose deadline has
    // since passed is new.
    let again = job.run_at(now + Duration::seconds(1)).await.unwrap();
    assert_eq!(again.get("cancelled"), 1);
    assert_eq!(
        load(&db.pool, on_the_dot.order_id).await.status,
        OrderStatus::Cancelled
    );
    assert_eq!(events(&db.pool).await.len(), 8);
    db.finish(&[]).await;
}

#[tokio::test]
async fn a_started_payment_is_never_cancelled_without_asking_the_gateway() {
    let db = TestDb::new().await;
    let now = Utc::now().trunc_subsecs(6);
    // Its channel has no gateway this instance can ask: it must stay unpaid.
    let started = order(
        Channel::Alipay,
        now - Duration::hours(1),
        Duration::minutes(30),
        PaymentState::Prepared,
    );
    insert(&db.pool, &started).await;
    // A prepay still in flight: the prepay task settles it, the job keeps off.
    let preparing = order(
        Channel::Alipay,
        now - Duration::hours(1),
        Duration::minutes(30),
        PaymentState::Preparing,
    );
    insert(&db.pool, &preparing).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let task = NewTask {
        order_id: Some(preparing.order_id),
        ..NewTask::default()
    };
    tasks::schedule(&mut conn, TaskKind::Prepay, task, now)
        .await
        .unwrap();
    drop(conn);

    let job = TimeoutCancel::new(db.pool.clone(), no_gateways(), 10);
    let counts = job.run_at(now).await.unwrap();
    assert_eq!((counts.get("cancelled"), counts.get("deferred")), (0, 1));
    for id in [started.order_id, preparing.order_id] {
        assert_eq!(load(&db.pool, id).await.status, OrderStatus::PendingPayment);
    }
    assert!(events(&db.pool).await.is_empty());
    // Deferred means "next tick", not "never".
    let next = job.run_at(now + Duration::minutes(1)).await.unwrap();
    assert_eq!(next.get("deferred"), 1);
    db.finish(&[]).await;
}

#[tokio::test]
async fn two_instances_share_a_backlog_and_handle_each_order_once() {
    let db = TestDb::new().await;
    let other = db.second_pool().await;
    let now = Utc::now().trunc_subsecs(6);
    let mut ids = Vec::new();
    for i in 0..300 {
        let channel = if i % 2 == 0 {
            Channel::WechatPay
        } else {
            Channel::Alipay
        };
        let o = order(
            channel,
            now - Duration::minutes(31) - Duration::seconds(i),
            Duration::minutes(30),
            PaymentState::NotStarted,
        );
        insert(&db.pool, &o).await;
        ids.push(o.order_id);
    }

    let a = TimeoutCancel::new(db.pool.clone(), no_gateways(), 20);
    let b = TimeoutCancel::new(other.clone(), no_gateways(), 20);
    let (ca, cb) = tokio::join!(a.run_at(now), b.run_at(now));
    let (ca, cb) = (ca.unwrap(), cb.unwrap());
    assert_eq!(
        ca.get("cancelled") + cb.get("cancelled"),
        300,
        "a: {ca:?}, b: {cb:?}"
    );

    let all = events(&db.pool).await;
    assert_eq!(all.len(), 300);
    for id in ids {
        assert_eq!(events_of(&all, "order.cancelled", id).len(), 1);
        assert_eq!(load(&db.pool, id).await.status, OrderStatus::Cancelled);
    }
    db.finish(&[other]).await;
}

#[tokio::test]
async fn the_scheduled_job_records_what_it_cancelled() {
    let db = TestDb::new().await;
    let now = Utc::now().trunc_subsecs(6);
    for i in 0..5 {
        let o = order(
            Channel::WechatPay,
            now - Duration::minutes(45 + i),
            Duration::minutes(30),
            PaymentState::NotStarted,
        );
        insert(&db.pool, &o).await;
    }
    let job = Arc::new(TimeoutCancel::new(db.pool.clone(), no_gateways(), 2));
    let mut scheduler = Scheduler::new().with_instance("daemon");
    let utc = payrecon::config::parse_offset("UTC").unwrap();
    scheduler.add(JOB_NAME, "* * * * * *", utc, job).unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(scheduler.run(db.pool.clone(), shutdown.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    shutdown.cancel();
    running.await.unwrap();

    let mut conn = db.pool.acquire().await.unwrap();
    let runs = payrecon::store::jobs::runs(&mut conn, JOB_NAME)
        .await
        .unwrap();
    drop(conn);
    assert!(!runs.is_empty());
    let cancelled: u64 = runs
        .iter()
        .map(|r| r.counts["cancelled"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(cancelled, 5, "{runs:?}");
    assert!(runs
        .iter()
        .all(|r| r.outcome == Some(RunOutcome::Succeeded)));
    assert_eq!(events(&db.pool).await.len(), 5);
    db.finish(&[]).await;
}
