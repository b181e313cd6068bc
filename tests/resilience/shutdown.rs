use std::time::Duration;

use payrecon::app::Daemon;
use tokio::time::Instant;

use crate::common::{Broker, TestEnv};
use crate::support::{
    allow_connections, assert_each_once, daemon_connection_pids, pg_admin, place_orders,
    queue_depth, ready_daemon, terminate_backends, wait_readyz,
};

pub async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

/// A clean stop in the middle of a burst settles what it took and leaves the
/// rest queued; a new daemon on the same database and prefix finishes the
/// job, and no event is published twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_mid_burst_then_restart_processes_each_request_once() {
    const N: usize = 400;
    let env = TestEnv::new("rstop");
    let mut broker = Broker::connect(&env).await;
    let (first, _) = ready_daemon(&env).await;
    let mut ids = place_orders(&broker, "burst", 0..N / 2, Duration::ZERO).await;
    let pool = sqlx::PgPool::connect(env.settings.database.url.expose())
        .await
        .expect("test db");
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&pool, "SELECT count(*) FROM orders").await == 0 {
        assert!(
            Instant::now() < deadline,
            "the first daemon processed nothing"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, rest) = tokio::join!(
        first.stop(),
        place_orders(&broker, "burst", N / 2..N, Duration::ZERO)
    );
    ids.extend(rest);

    // The stop was clean: what was committed is published, the connection closed.
    let done = count(&pool, "SELECT count(*) FROM orders").await;
    eprintln!("the first daemon processed {done} of {N}");
    assert!(
        done > 0 && done < N as i64,
        "stop was not mid-burst: {done} of {N}"
    );
    let pending = payrecon::store::outbox::count_unpublished(&mut pool.acquire().await.unwrap())
        .await
        .unwrap();
    assert_eq!(pending, 0, "the relay did not drain the outbox on stop");
    assert!(daemon_connection_pids(&env.name).await.is_empty());

    let second = Daemon::start(env.settings.clone())
        .await
        .expect("daemon restarts");
    assert_each_once(&env, &mut broker, &ids, true).await;
    pool.close().await;
    second.stop().await;
}

/// A stop while the database refuses connections: the batch that could not
/// commit is not acknowledged, the stop does not hang on the retry loop,
/// and a daemon started once the database is back processes everything once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_while_database_is_down_acknowledges_nothing_uncommitted() {
    let env = TestEnv::new("rstopdb");
    let mut broker = Broker::connect(&env).await;
    let first = Daemon::start(env.settings.clone())
        .await
        .expect("daemon starts");
    let base = format!("http://{}", first.http_addr);
    wait_readyz(&base, 200, 20).await;
    let admin = pg_admin().await;
    allow_connections(&admin, &env.name, false).await;
    terminate_backends(&admin, &env.name).await;
    wait_readyz(&base, 503, 15).await;
    let ids = place_orders(&broker, "held", 0..30, Duration::ZERO).await;
    // Let the consumer take them and start retrying the uncommitted batch.
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue_depth(&broker, &broker.names.requests).await > 0 {
        assert!(Instant::now() < deadline, "the consumer took nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    first.stop().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "stop took {took:?}");
    // Nothing was acknowledged: all of it is back in the queue.
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue_depth(&broker, &broker.names.requests).await < ids.len() as u32 {
        assert!(
            Instant::now() < deadline,
            "requests were acknowledged without a commit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    allow_connections(&admin, &env.name, true).await;
    admin.close().await;
    let second = Daemon::start(env.settings.clone())
        .await
        .expect("daemon restarts");
    assert_each_once(&env, &mut broker, &ids, true).await;
    second.stop().await;
}
