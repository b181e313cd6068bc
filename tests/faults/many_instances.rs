//! Three daemons on one database and one broker prefix (issue 15): each
//! order is created once and cancelled once, each slot of the timeout job
//! runs once across them, a backlog of expired orders is shared, and when
//! one daemon is killed mid-stream the other two finish its work.
//!
//! Orders here are never paid: the timeout job cancels an order whose
//! payment never started without asking a gateway (`jobs::timeout_cancel`),
//! so each daemon's own embedded simulator holding separate state is fine.

use std::time::{Duration, Instant};

use chrono::Utc;
use payrecon::domain::{Channel, LineItem, Money, NewOrder, Order, OrderId};
use sqlx::PgPool;

use crate::common::Broker;
use crate::scale_runs::{assert_no_instance_overlaps_itself, collect, slots, wait_runs_closed};
use crate::scale_support::{
    assert_settled, count, fleet_env, place_orders, queue_depth, start_binary, start_daemons,
};

const ORDERS: usize = 6_000;
const BACKLOG: usize = 10_000;
/// Generous: three daemons share two cores with other engineers' tests.
const SETTLE_SECS: u64 = 300;

async fn test_pool(env: &crate::common::TestEnv) -> PgPool {
    PgPool::connect(env.settings.database.url.expose())
        .await
        .expect("test db")
}

/// Nothing ready or dead-lettered on the request queues once the daemons
/// have stopped: a delivery never acknowledged would be back in the queue.
async fn assert_queues_empty(broker: &Broker) {
    assert_eq!(
        queue_depth(broker, &broker.names.requests).await,
        0,
        "requests left"
    );
    assert_eq!(
        queue_depth(broker, &broker.names.requests_dlq).await,
        0,
        "dead letters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_create_and_cancel_each_order_once() {
    let env = fleet_env("fleet");
    let mut broker = Broker::connect(&env).await;
    let daemons = start_daemons(&env, 3).await;
    let started = Instant::now();

    let ids = place_orders(&broker, "fleet", 0..ORDERS).await;
    let tally = collect(&mut broker, ORDERS, true, SETTLE_SECS).await;
    let duration = started.elapsed();
    tally.assert_each_once(&ids, true);
    assert_eq!(tally.redeliveries(), 0, "an event was delivered twice");

    let pool = test_pool(&env).await;
    assert_settled(&pool, ORDERS).await;
    let instances: Vec<String> = daemons.iter().map(|d| d.instance.clone()).collect();
    // The work can be done before the daemon that started last wins a slot
    // (seen in CI: 16 slots between two); the schedule goes on, so give it
    // time to reach every one before judging that all take part.
    wait_each_ran(&pool, &instances, 60).await;
    for d in daemons {
        d.stop().await;
    }
    assert_queues_empty(&broker).await;
    let runs = wait_runs_closed(&pool, 30).await;
    assert_no_instance_overlaps_itself(&runs);
    let s = slots(&runs, &instances);
    eprintln!(
        "FIGURES fleet: orders {ORDERS}, instances 3, killed 0, created once {}, cancelled once {}, \
         slots {} (doubled {}, lost {}, passed while all busy {}), runs by instance {:?}, \
         cancelled by instance {:?}, duration {:.1}s",
        tally.created.len(),
        tally.cancelled.len(),
        s.claimed,
        s.doubled,
        s.lost,
        s.passed_busy,
        s.runs_by.values().collect::<Vec<_>>(),
        s.cancelled_by.values().collect::<Vec<_>>(),
        duration.as_secs_f64()
    );
    assert_eq!(s.doubled, 0, "{s:?}");
    assert_eq!(s.lost, 0, "{s:?}");
    assert_eq!(s.abandoned, 0, "{s:?}");
    let cancelled: u64 = s.cancelled_by.values().sum();
    assert_eq!(cancelled, ORDERS as u64, "runs' counts: {s:?}");
    // Every daemon's scheduler took part: the slots are shared, not held.
    assert!(
        instances.iter().all(|i| s.runs_by.contains_key(i)),
        "{s:?} for {instances:?}"
    );
    pool.close().await;
}

/// `n` orders whose deadline passed ten minutes ago, written in one
/// transaction so the whole backlog appears at once.
async fn insert_expired(pool: &PgPool, n: usize) -> Vec<String> {
    let now = Utc::now();
    let mut tx = pool.begin().await.expect("tx");
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let order = Order::place(
            NewOrder {
                order_id: OrderId::generate(),
                user_id: format!("u{i}"),
                items: vec![LineItem {
                    product_id: "p1".into(),
                    quantity: 1,
                    unit_price: Money::from_fen(1999).expect("amount"),
                }],
                payment_method: if i % 2 == 0 {
                    Channel::WechatPay
                } else {
                    Channel::Alipay
                },
                pay_timeout: chrono::Duration::minutes(5),
            },
            now - chrono::Duration::minutes(15),
        )
        .expect("order");
        assert!(payrecon::store::orders::insert(&mut tx, &order)
            .await
            .expect("insert"));
        ids.push(order.order_id.to_string());
    }
    tx.commit().await.expect("commit");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_share_a_backlog_of_expired_orders() {
    let env = fleet_env("backlog");
    let mut broker = Broker::connect(&env).await;
    let daemons = start_daemons(&env, 3).await;
    let pool = test_pool(&env).await;
    let instances: Vec<String> = daemons.iter().map(|d| d.instance.clone()).collect();

    let ids = insert_expired(&pool, BACKLOG).await;
    let started = Instant::now();
    let tally = collect(&mut broker, BACKLOG, false, SETTLE_SECS).await;
    let duration = started.elapsed();
    tally.assert_each_once(&ids, false);
    assert_eq!(tally.redeliveries(), 0, "an event was delivered twice");
    assert_settled(&pool, BACKLOG).await;

    let runs = wait_runs_closed(&pool, 60).await;
    for d in daemons {
        d.stop().await;
    }
    assert_no_instance_overlaps_itself(&runs);
    let s = slots(&runs, &instances);
    let shares: Vec<u64> = instances
        .iter()
        .map(|i| s.cancelled_by.get(i).copied().unwrap_or(0))
        .collect();
    eprintln!(
        "FIGURES backlog: expired orders {BACKLOG}, instances 3, cancelled once {}, \
         cancelled by daemon {shares:?}, slots {} (doubled {}, lost {}, passed while all busy {}), \
         duration {:.1}s",
        tally.cancelled.len(),
        s.claimed,
        s.doubled,
        s.lost,
        s.passed_busy,
        duration.as_secs_f64()
    );
    // The runs' own counts add up to the backlog: no order counted twice.
    assert_eq!(shares.iter().sum::<u64>(), BACKLOG as u64, "{s:?}");
    assert!(
        shares.iter().filter(|n| **n > 0).count() >= 2,
        "one instance carried the whole backlog: {shares:?}"
    );
    assert_eq!(s.doubled, 0, "{s:?}");
    assert_eq!(s.lost, 0, "{s:?}");
    pool.close().await;
}

/// Two in-process daemons and one `payrecon run`, killed with SIGKILL in
/// the middle of the stream and (when it can be caught) of a timeout run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_stream_leaves_its_work_to_the_other_two() {
    let env = fleet_env("fkill");
    let mut broker = Broker::connect(&env).await;
    let daemons = start_daemons(&env, 2).await;
    let victim = start_binary(&env, "victim").await;
    let victim_tag = format!("-{}-", victim.pid());
    let pool = test_pool(&env).await;
    let started = Instant::now();

    let mut ids = place_orders(&broker, "kill", 0..ORDERS / 3).await;
    let kill = async {
        // Kill it while it holds a slot, if it takes one within 30 s.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut mid_run = false;
        while Instant::now() < deadline {
            let open = count(
                &pool,
                &format!(
                    "SELECT count(*) FROM job_runs WHERE finished_at IS NULL \
                     AND job = 'timeout_cancel' AND instance LIKE '%{victim_tag}%'"
                ),
            )
            .await;
            if open > 0 {
                mid_run = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let orders_then = count(&pool, "SELECT count(*) FROM orders").await;
        victim.kill9().await;
        let killed_at = Utc::now();
        let lease: Option<chrono::DateTime<Utc>> = sqlx::query_scalar(&format!(
            "SELECT max(lease_until) FROM job_runs WHERE finished_at IS NULL \
             AND job = 'timeout_cancel' AND instance LIKE '%{victim_tag}%'"
        ))
        .fetch_one(&pool)
        .await
        .expect("lease");
        (mid_run, orders_then, killed_at, lease)
    };
    let (rest, (mid_run, orders_at_kill, killed_at, lease_at_kill)) =
        tokio::join!(place_orders(&broker, "kill", ORDERS / 3..ORDERS), kill);
    ids.extend(rest);

    let tally = collect(&mut broker, ORDERS, true, SETTLE_SECS).await;
    let duration = started.elapsed();
    tally.assert_each_once(&ids, true);
    // At-least-once: a relay killed after the broker confirmed a chunk and
    // before it recorded so leaves that chunk to be published again, with
    // the same event ids. Never more than the one chunk.
    assert!(
        tally.redeliveries() <= 500,
        "{} redeliveries",
        tally.redeliveries()
    );
    assert_settled(&pool, ORDERS).await;
    // While the killed run's claim (a 60 s lease) was still open, the other
    // two went on cancelling: they did not wait it out.
    if let Some(lease_until) = lease_at_kill {
        let meanwhile = tally
            .cancelled_at
            .iter()
            .filter(|at| **at > killed_at && **at < lease_until)
            .count();
        assert!(
            meanwhile > 0,
            "no order cancelled between the kill and the end of its run's lease"
        );
    }
    let inbox = count(
        &pool,
        "SELECT count(*) FROM inbox WHERE outcome = 'processed'",
    )
    .await;
    assert_eq!(inbox, ORDERS as i64, "requests processed");

    // The killed run's claim stays open until its lease runs out; then the
    // next claim records it as abandoned. No slot stays open for good.
    let runs = wait_runs_closed(&pool, 120).await;
    let instances: Vec<String> = daemons.iter().map(|d| d.instance.clone()).collect();
    for d in daemons {
        d.stop().await;
    }
    assert_queues_empty(&broker).await;
    assert_no_instance_overlaps_itself(&runs);
    let s = slots(&runs, &instances);
    let victim_runs = runs
        .iter()
        .filter(|r| r.instance.contains(&victim_tag))
        .count();
    eprintln!(
        "FIGURES kill: orders {ORDERS}, instances 3, killed 1 (kill -9 at {orders_at_kill} orders, \
         mid-run {mid_run}), created once {}, cancelled once {}, redelivered event ids {}, \
         slots {} (victim {victim_runs}, abandoned {}, doubled {}, lost {}, passed while all busy {}), \
         duration {:.1}s",
        tally.created.len(),
        tally.cancelled.len(),
        tally.redeliveries(),
        s.claimed,
        s.abandoned,
        s.doubled,
        s.lost,
        s.passed_busy,
        duration.as_secs_f64()
    );
    assert!(victim_runs > 0, "the killed daemon never ran a slot");
    if mid_run {
        assert_eq!(s.abandoned, 1, "the killed run: {s:?}");
    }
    assert_eq!(s.doubled, 0, "{s:?}");
    assert_eq!(s.lost, 0, "{s:?}");
    pool.close().await;
}

/// Waits (at most `secs`) until each of `instances` has a run of the
/// timeout job; the caller's assertions say whether they all did.
async fn wait_each_ran(pool: &PgPool, instances: &[String], secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let runs = crate::scale_runs::timeout_runs(pool).await;
        if instances
            .iter()
            .all(|i| runs.iter().any(|r| &r.instance == i))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
