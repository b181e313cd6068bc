use std::time::Duration;

use payrecon::app::Daemon;

use crate::common::{Broker, TestEnv};
use crate::support::{
    allow_connections, assert_each_once, pg_admin, place_orders, ready_daemon, terminate_backends,
    wait_readyz, ReadinessWatch,
};

/// Every session of the daemon's database is killed again and again while
/// requests stream in: transactions die mid-batch, and yet each request ends
/// with one order and one event, none dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_sessions_killed_midstream_lose_nothing() {
    let env = TestEnv::new("rdbkill");
    let mut broker = Broker::connect(&env).await;
    let (daemon, _) = ready_daemon(&env).await;
    let admin = pg_admin().await;
    let db = env.name.clone();
    let killer = tokio::spawn(async move {
        let mut killed = 0;
        for _ in 0..12 {
            killed += terminate_backends(&admin, &db).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        admin.close().await;
        killed
    });
    let ids = place_orders(&broker, "kill", 0..150, Duration::from_millis(8)).await;
    let killed = killer.await.expect("killer");
    assert!(killed > 0, "no session of the daemon was ever killed");
    assert_each_once(&env, &mut broker, &ids, false).await;
    daemon.stop().await;
}

/// The database refuses every connection for a while: `/readyz` says 503,
/// requests wait in the queue unacknowledged, and all go through once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_refusing_connections_is_unready_then_recovers() {
    let env = TestEnv::new("rdbdown");
    let mut broker = Broker::connect(&env).await;
    let (daemon, base) = ready_daemon(&env).await;
    let mut ids = place_orders(&broker, "pre", 0..10, Duration::ZERO).await;
    let admin = pg_admin().await;
    allow_connections(&admin, &env.name, false).await;
    terminate_backends(&admin, &env.name).await;
    wait_readyz(&base, 503, 15).await;
    let watch = ReadinessWatch::start(base.clone());
    ids.extend(place_orders(&broker, "down", 0..30, Duration::from_millis(10)).await);
    // Still down after the whole burst: readiness must not flap back to 200.
    wait_readyz(&base, 503, 1).await;
    allow_connections(&admin, &env.name, true).await;
    wait_readyz(&base, 200, 30).await;
    assert!(watch.finish().await);
    ids.extend(place_orders(&broker, "post", 0..10, Duration::ZERO).await);
    assert_each_once(&env, &mut broker, &ids, false).await;
    admin.close().await;
    daemon.stop().await;
}

/// A backlog waits in the queue before the daemon starts, so it is consumed
/// in full batches (up to 256 requests in one transaction); the sessions are
/// killed over and over while those transactions run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_killed_during_large_batches_loses_nothing() {
    const N: usize = 600;
    let env = TestEnv::new("rdbbatch");
    let mut broker = Broker::connect(&env).await;
    let ids = place_orders(&broker, "backlog", 0..N, Duration::ZERO).await;
    let daemon = Daemon::start(env.settings.clone())
        .await
        .expect("daemon starts");
    let admin = pg_admin().await;
    let db = env.name.clone();
    let killer = tokio::spawn(async move {
        let mut killed = 0;
        for _ in 0..40 {
            killed += terminate_backends(&admin, &db).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        admin.close().await;
        killed
    });
    let killed = killer.await.expect("killer");
    assert!(killed > 0, "no session of the daemon was ever killed");
    assert_each_once(&env, &mut broker, &ids, false).await;
    daemon.stop().await;
}

/// A daemon started while its database refuses connections waits for it
/// (instead of failing), then starts and processes what queued up meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_waits_for_a_database_that_refuses_connections() {
    let env = TestEnv::new("rdbstart");
    let mut broker = Broker::connect(&env).await;
    let admin = pg_admin().await;
    sqlx::query(&format!("CREATE DATABASE \"{}\"", env.name))
        .execute(&admin)
        .await
        .expect("create database");
    allow_connections(&admin, &env.name, false).await;
    let ids = place_orders(&broker, "early", 0..20, Duration::ZERO).await;
    let settings = env.settings.clone();
    let mut starting = tokio::spawn(async move { Daemon::start(settings).await });
    // Still waiting a good while later: neither started nor failed.
    let early = tokio::time::timeout(Duration::from_millis(1500), &mut starting).await;
    assert!(
        early.is_err(),
        "start returned while the database refused connections"
    );
    allow_connections(&admin, &env.name, true).await;
    admin.close().await;
    let daemon = tokio::time::timeout(Duration::from_secs(30), starting)
        .await
        .expect("started within 30s of the database coming back")
        .expect("start task")
        .expect("daemon starts");
    wait_readyz(&format!("http://{}", daemon.http_addr), 200, 20).await;
    assert_each_once(&env, &mut broker, &ids, true).await;
    daemon.stop().await;
}

/// Liveness is not readiness: while its database refuses connections the
/// daemon already listens. `/healthz` 200 and `/metrics` 200 in time,
/// `/readyz` 503, and what needs the database 503; once the database is
/// back the same server is ready and serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listens_before_the_database_is_reachable() {
    let env = TestEnv::new("rdblive");
    let admin = pg_admin().await;
    sqlx::query(&format!("CREATE DATABASE \"{}\"", env.name))
        .execute(&admin)
        .await
        .expect("create database");
    allow_connections(&admin, &env.name, false).await;
    let starting = Daemon::begin(env.settings.clone())
        .await
        .expect("listens without a database");
    let base = format!("http://{}", starting.http_addr);
    let http = reqwest::Client::new();
    let status = |method: reqwest::Method, path: &str| {
        let request = http.request(method, format!("{base}{path}"));
        async move { request.send().await.expect("answers").status().as_u16() }
    };
    let order = format!("/orders/{}", uuid::Uuid::new_v4());
    let check_starting = || async {
        assert_eq!(status(reqwest::Method::GET, "/healthz").await, 200);
        assert_eq!(status(reqwest::Method::GET, "/readyz").await, 503);
        assert_eq!(status(reqwest::Method::GET, &order).await, 503);
        assert_eq!(status(reqwest::Method::GET, "/recon/runs").await, 503);
        assert_eq!(status(reqwest::Method::POST, "/notify/alipay").await, 503);
        let scrape_started = std::time::Instant::now();
        let metrics = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics");
        assert_eq!(metrics.status(), 200);
        assert!(
            scrape_started.elapsed() < Duration::from_secs(5),
            "a scrape waited {:?} on the missing database",
            scrape_started.elapsed()
        );
        let text = metrics.text().await.expect("text");
        assert!(text.contains("payrecon_ready"), "{text}");
    };
    check_starting().await;
    let finishing = tokio::spawn(starting.finish());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!finishing.is_finished(), "started without its database");
    check_starting().await;
    allow_connections(&admin, &env.name, true).await;
    admin.close().await;
    let daemon = tokio::time::timeout(Duration::from_secs(30), finishing)
        .await
        .expect("started within 30s of the database coming back")
        .expect("start task")
        .expect("daemon starts");
    wait_readyz(&base, 200, 20).await;
    assert_eq!(status(reqwest::Method::GET, &order).await, 404);
    assert_eq!(status(reqwest::Method::GET, "/recon/runs").await, 200);
    daemon.stop().await;
}
