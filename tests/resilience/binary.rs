//! `payrecon run` as ops start it: a child process configured only through
//! the environment, stopped with a signal.

use std::path::PathBuf;
use std::time::Duration;

use payrecon::app::Daemon;
use tokio::process::Child;
use tokio::time::Instant;

use crate::common::{place_data, Broker, TestEnv, AMQP};
use crate::shutdown::count;
use crate::support::{
    allow_connections, assert_each_once, daemon_connection_pids, pg_admin, place_orders, run_cmd,
};

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` and returns the exit code, which must come within 30 s.
    async fn signal_and_wait(mut self, signal: &str) -> Option<i32> {
        let pid = self.child.id().expect("child pid").to_string();
        run_cmd("kill", &[signal, &pid]).await;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("no exit within 30s of {signal}:\n{}", self.log()))
            .expect("wait");
        let log = self.log();
        if status.code() != Some(0) {
            eprintln!("payrecon run log:\n{log}");
        }
        // A clean stop is quiet: nothing for ops to chase in the logs.
        let errors: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("\"level\":\"ERROR\""))
            .collect();
        assert!(errors.is_empty(), "errors logged: {errors:#?}");
        status.code()
    }
}

/// Starts `payrecon run` on the test's database and prefix and waits until
/// `/readyz` says 200.
async fn start_binary(env: &TestEnv) -> Running {
    let (mut running, http) = spawn_binary(env);
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(format!("http://{http}/readyz"))
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        if let Ok(Some(status)) = running.child.try_wait() {
            panic!("payrecon run exited early ({status}):\n{}", running.log());
        }
        assert!(Instant::now() < deadline, "never ready:\n{}", running.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running
}

/// Starts `payrecon run`; returns it and its HTTP address.
fn spawn_binary(env: &TestEnv) -> (Running, String) {
    let http = format!("127.0.0.1:{}", free_port());
    let log = env.keys_dir.path().join("daemon.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_payrecon"))
        .arg("run")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env(
            "PAYRECON__DATABASE__URL",
            env.settings.database.url.expose(),
        )
        .env("PAYRECON__AMQP__URL", AMQP)
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
    (Running { child, log }, http)
}

/// SIGTERM in the middle of a burst: exit 0, the outbox drained, the broker
/// connection closed; an in-process daemon started afterwards finishes the
/// rest, and every request has exactly one order and one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_sigterm_mid_burst_exits_zero_and_loses_nothing() {
    const N: usize = 300;
    let env = TestEnv::new("rbinterm");
    let mut broker = Broker::connect(&env).await;
    let running = start_binary(&env).await;
    let mut ids = place_orders(&broker, "bin", 0..N / 2, Duration::ZERO).await;
    let pool = sqlx::PgPool::connect(env.settings.database.url.expose())
        .await
        .expect("test db");
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&pool, "SELECT count(*) FROM orders").await == 0 {
        assert!(Instant::now() < deadline, "payrecon run processed nothing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (code, rest) = tokio::join!(
        running.signal_and_wait("-TERM"),
        place_orders(&broker, "bin", N / 2..N, Duration::ZERO)
    );
    ids.extend(rest);
    assert_eq!(code, Some(0), "exit code after SIGTERM");
    let done = count(&pool, "SELECT count(*) FROM orders").await;
    eprintln!("payrecon run had processed {done} of {N} requests at SIGTERM");
    assert!(daemon_connection_pids(&env.name).await.is_empty());
    let pending = payrecon::store::outbox::count_unpublished(&mut pool.acquire().await.unwrap())
        .await
        .unwrap();
    assert_eq!(pending, 0, "outbox not drained before exit");

    let daemon = Daemon::start(env.settings.clone())
        .await
        .expect("daemon starts");
    assert_each_once(&env, &mut broker, &ids, true).await;
    pool.close().await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_exits_zero_on_sigint() {
    let env = TestEnv::new("rbinint");
    let mut broker = Broker::connect(&env).await;
    let running = start_binary(&env).await;
    broker
        .request("order.place", "bin-1", place_data("alipay"))
        .await;
    let created = broker.wait_event("order.created", 10).await;
    assert_eq!(created["request_id"], "bin-1");
    assert_eq!(running.signal_and_wait("-INT").await, Some(0));
    assert!(daemon_connection_pids(&env.name).await.is_empty());
}

/// SIGTERM while the daemon still waits for a database that refuses
/// connections: there is nothing to settle, and it exits 0 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_waiting_for_the_database_exits_zero_on_sigterm() {
    let env = TestEnv::new("rbinwait");
    let admin = pg_admin().await;
    sqlx::query(&format!("CREATE DATABASE \"{}\"", env.name))
        .execute(&admin)
        .await
        .expect("create database");
    allow_connections(&admin, &env.name, false).await;
    let (running, _) = spawn_binary(&env);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !running.log().contains("database unavailable") {
        assert!(
            Instant::now() < deadline,
            "never tried the database:\n{}",
            running.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(running.signal_and_wait("-TERM").await, Some(0));
    allow_connections(&admin, &env.name, true).await;
    admin.close().await;
}
