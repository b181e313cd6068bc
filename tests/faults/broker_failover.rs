//! Several brokers in `amqp.url` (issue 18): the daemon runs on the first,
//! and when that one goes away it moves to the next by itself — consumers
//! and the relay's publishing link both — declares its topology there and
//! carries on. Two private, unclustered RabbitMQ nodes; the shared broker
//! is never touched.
//!
//! Unclustered nodes share nothing: requests left unconsumed on a stopped
//! node stay there until it returns (only a cluster with quorum queues
//! makes them available elsewhere). What the test holds the daemon to is
//! that nothing it acknowledged is lost, and that it works on B.

use std::collections::HashSet;
use std::time::Duration;

use payrecon::app::Daemon;
use payrecon::config::Secret;
use sqlx::PgPool;
use tokio::time::Instant;

use crate::common::readiness::ReadinessWatch;
use crate::common::TestEnv;
use crate::restarts::SERIAL;
use crate::services::PrivateRabbit;
use crate::stream::{queue_depth, wait_count, Delivered, Stream, Tap};

const ON_A: usize = 600;
const ON_B: usize = 600;
const RATE: usize = 1_000;

async fn readyz(base: &str) -> Option<serde_json::Value> {
    let r = reqwest::get(format!("{base}/readyz")).await.ok()?;
    r.json().await.ok()
}

/// Polls `/readyz` until it says 200 on the broker at `port`.
async fn wait_on_broker(base: &str, port: u16, secs: u64) {
    let want = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = readyz(base).await;
        let on = got
            .as_ref()
            .and_then(|j| j["broker_address"].as_str().map(str::to_string));
        if on.as_deref() == Some(want.as_str()) && got.as_ref().is_some_and(|j| j["broker"] == true)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz not on {want} after {secs}s: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn orders_of(db: &PgPool, ids: &[String]) -> usize {
    let rows: Vec<String> = sqlx::query_scalar("SELECT request_id FROM inbox")
        .fetch_all(db)
        .await
        .expect("inbox");
    let rows: HashSet<String> = rows.into_iter().collect();
    ids.iter().filter(|id| rows.contains(*id)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_moves_to_the_next_broker_when_one_stops() {
    let _serial = SERIAL.lock().await;
    let a = PrivateRabbit::start("fa").await;
    let b = PrivateRabbit::start("fb").await;
    let mut env = TestEnv::new("ffailover");
    env.settings.amqp.url = Secret(format!("{},{}", a.amqp_url(), b.amqp_url()));
    let names = env.names();
    let daemon = Daemon::start(env.settings.clone())
        .await
        .expect("daemon starts");
    let base = format!("http://{}", daemon.http_addr);
    wait_on_broker(&base, a.port, 60).await;
    let db = PgPool::connect(env.settings.database.url.expose())
        .await
        .expect("test db");

    // On A: every request confirmed by A is consumed and becomes an order.
    let on_a = Stream::start(a.amqp_url(), names.requests.clone(), "fa", ON_A, RATE)
        .finish()
        .await;
    wait_count(&db, "SELECT count(*) FROM orders", ON_A as i64, 120).await;
    let mut conn = db.acquire().await.expect("conn");
    let deadline = Instant::now() + Duration::from_secs(60);
    while payrecon::store::outbox::count_unpublished(&mut conn)
        .await
        .expect("outbox")
        > 0
    {
        assert!(Instant::now() < deadline, "outbox not drained on A");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(conn);

    // A goes away; nobody tells the daemon where to go.
    let watch = ReadinessWatch::start(base.clone());
    let t0 = Instant::now();
    a.stop_app().await;
    wait_on_broker(&base, b.port, 120).await;
    let moved_in = t0.elapsed();
    // The daemon declared its topology on B itself: the queue is there.
    assert_eq!(queue_depth(&b.amqp_url(), &names.requests).await, 0);
    let tap = Tap::declare(&b.amqp_url(), &names).await;
    let before_b: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM outbox")
        .fetch_one(&db)
        .await
        .expect("max outbox id");

    // On B: requests become orders, and their events go out on B.
    let on_b = Stream::start(b.amqp_url(), names.requests.clone(), "fb", ON_B, RATE)
        .finish()
        .await;
    wait_count(
        &db,
        "SELECT count(*) FROM orders",
        (ON_A + ON_B) as i64,
        180,
    )
    .await;
    assert_eq!(orders_of(&db, &on_a.ids).await, ON_A, "orders from A lost");
    assert_eq!(orders_of(&db, &on_b.ids).await, ON_B, "orders from B");
    let created: Vec<String> =
        sqlx::query_scalar("SELECT event_id::text FROM outbox WHERE id > $1")
            .bind(before_b)
            .fetch_all(&db)
            .await
            .expect("outbox");
    let want: HashSet<String> = created.into_iter().collect();
    assert_eq!(want.len(), ON_B, "order.created of B's requests");
    let events = tap.read(&want, 180, Duration::from_secs(1)).await;
    let got = Delivered::from_events(&events);
    assert!(want.is_subset(&got.event_ids), "events missing on B");
    for id in &on_b.ids {
        let ids = got.by_subject.get(&("order.created".into(), id.clone()));
        assert_eq!(ids.map_or(0, HashSet::len), 1, "request {id}: {ids:?}");
    }
    assert_eq!(queue_depth(&b.amqp_url(), &names.requests).await, 0);
    assert_eq!(queue_depth(&b.amqp_url(), &names.requests_dlq).await, 0);
    let (unready, spells) = watch.unready();
    assert!(watch.finish().await);
    eprintln!(
        "figures: failover A→B: {ON_A} requests on A, {ON_B} on B, 1 node stopped, on B after \
         {:.1}s (/readyz 503 for {unready:?} in {spells} spell(s)), lost 0, doubled 0 \
         (each request one inbox row; orders {})",
        moved_in.as_secs_f64(),
        ON_A + ON_B
    );
    db.close().await;
    daemon.stop().await;
    drop(tap);
}
