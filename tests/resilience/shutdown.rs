use std::time::Duration;

use payrecon::app::Daemon;
use tokio::time::Instant;

use crate::common::{place_data, Broker, TestEnv};
use crate::support::{
    assert_each_once, daemon_connection_pids, place_orders, run_cmd, wait_readyz,
};

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
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
    let first = Daemon::start(env.settings.clone())
        .await
        .expect("daemon starts");
    wait_readyz(&format!("http://{}", first.http_addr), 200, 20).await;
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
    assert!(
        done > 0 && done < N as i64,
        "stop was not mid-burst: {done} of {N}"
    );
    let pending = count(
        &pool,
        "SELECT count(*) FROM outbox WHERE published_at IS NULL",
    )
    .await;
    assert_eq!(pending, 0, "the relay did not drain the outbox on stop");
    assert!(daemon_connection_pids(&env.name).await.is_empty());

    let second = Daemon::start(env.settings.clone())
        .await
        .expect("daemon restarts");
    assert_each_once(&env, &mut broker, &ids, true).await;
    pool.close().await;
    second.stop().await;
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// `payrecon run` as ops start it: ready, working, and on SIGTERM it stops
/// consuming, drains the outbox and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_exits_zero_on_sigterm() {
    let env = TestEnv::new("rbin");
    let mut broker = Broker::connect(&env).await;
    let http = format!("127.0.0.1:{}", free_port());
    let log = env.keys_dir.path().join("daemon.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_payrecon"))
        .arg("run")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env(
            "PAYRECON__DATABASE__URL",
            env.settings.database.url.expose(),
        )
        .env("PAYRECON__AMQP__URL", crate::common::AMQP)
        .env("PAYRECON__AMQP__PREFIX", &env.name)
        .env("PAYRECON__HTTP__LISTEN", &http)
        .env(
            "PAYRECON__SIMULATOR__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("PAYRECON__SIMULATOR__KEYS_DIR", env.keys_dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn payrecon run");
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let base = format!("http://{http}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(format!("{base}/readyz"))
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("payrecon run exited early ({status}):\n{}", show_log());
        }
        assert!(Instant::now() < deadline, "never ready:\n{}", show_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker
        .request("order.place", "bin-1", place_data("alipay"))
        .await;
    let created = broker.wait_event("order.created", 10).await;
    assert_eq!(created["request_id"], "bin-1");

    let pid = child.id().expect("child pid").to_string();
    run_cmd("kill", &["-TERM", &pid]).await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap_or_else(|_| panic!("no exit within 30s of SIGTERM:\n{}", show_log()))
        .expect("wait");
    assert_eq!(status.code(), Some(0), "exit status:\n{}", show_log());
    assert!(daemon_connection_pids(&env.name).await.is_empty());
    let pool = sqlx::PgPool::connect(env.settings.database.url.expose())
        .await
        .expect("test db");
    let pending = count(
        &pool,
        "SELECT count(*) FROM outbox WHERE published_at IS NULL",
    )
    .await;
    assert_eq!(pending, 0);
    pool.close().await;
}
