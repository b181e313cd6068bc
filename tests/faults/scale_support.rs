//! Several daemons on one database and one broker prefix: starting them
//! (in-process, or `payrecon run` where a test must kill one), feeding them
//! orders, and checking the database and queues once they are done.

use std::path::PathBuf;
use std::time::Duration;

use payrecon::app::Daemon;
use payrecon::config::HumanDuration;
use serde_json::Value;
use sqlx::PgPool;
use tokio::process::Child;
use tokio::time::Instant;

use crate::common::{place_data, Broker, TestEnv, AMQP};

/// The brief's setting: orders expire 2 s after they are placed, and the
/// timeout job has a slot every second.
pub const PAY_TIMEOUT: Duration = Duration::from_secs(2);
pub const EVERY_SECOND: &str = "* * * * * *";

/// A test environment whose daemons cancel unpaid orders fast.
pub fn fleet_env(tag: &str) -> TestEnv {
    let mut env = TestEnv::new(tag);
    env.settings.orders.pay_timeout = HumanDuration(PAY_TIMEOUT);
    env.settings.jobs.timeout_cancel.schedule = EVERY_SECOND.into();
    env
}

/// Starts `n` in-process daemons on `env` (one database, one prefix) and
/// waits until each answers `/readyz`. The first starts alone: it creates
/// the database and the simulator's keys, which the others then share.
pub async fn start_daemons(env: &TestEnv, n: usize) -> Vec<Daemon> {
    let mut daemons = vec![ready_daemon(env).await];
    let rest = futures::future::join_all((1..n).map(|_| ready_daemon(env))).await;
    daemons.extend(rest);
    daemons
}

async fn ready_daemon(env: &TestEnv) -> Daemon {
    let daemon = Daemon::start(env.settings.clone())
        .await
        .expect("daemon starts");
    wait_ready(&daemon.http_addr.to_string(), None).await;
    daemon
}

/// Polls `/readyz` until 200 (60 s at most); a child that exits first fails.
async fn wait_ready(http: &str, mut child: Option<&mut Running>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = reqwest::get(format!("http://{http}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200);
        if ok {
            return;
        }
        if let Some(running) = child.as_deref_mut() {
            if let Ok(Some(status)) = running.child.try_wait() {
                panic!("payrecon run exited early ({status}):\n{}", running.log());
            }
        }
        assert!(Instant::now() < deadline, "{http} never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `payrecon run` as a child process, configured through the environment
/// like the in-process daemons of the same `env`.
pub struct Running {
    pub child: Child,
    log: PathBuf,
}

impl Running {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("child pid")
    }

    /// SIGKILL: no shutdown code runs; the kernel closes its sockets.
    pub async fn kill9(mut self) {
        let pid = self.pid().to_string();
        let status = tokio::process::Command::new("kill")
            .args(["-9", &pid])
            .status()
            .await
            .expect("kill");
        assert!(status.success(), "kill -9 {pid}");
        let waited = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        assert!(waited.is_ok(), "still running 10 s after kill -9");
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// `payrecon run` on `env`'s database, prefix and timeout job schedule,
/// against `amqp_url`, answering on `http`, its simulator on a free port,
/// its stderr in `log`; killed when dropped. Callers add their own
/// variables and spawn it.
pub fn run_command(
    env: &TestEnv,
    amqp_url: &str,
    http: &str,
    log: &std::path::Path,
) -> tokio::process::Command {
    let s = &env.settings;
    let log_file = std::fs::File::create(log).expect("log file");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_payrecon"));
    command
        .arg("run")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PAYRECON__DATABASE__URL", s.database.url.expose())
        .env(
            "PAYRECON__DATABASE__MAX_CONNECTIONS",
            s.database.max_connections.to_string(),
        )
        .env("PAYRECON__AMQP__URL", amqp_url)
        .env("PAYRECON__AMQP__PREFIX", &s.amqp.prefix)
        .env("PAYRECON__HTTP__LISTEN", http)
        .env(
            "PAYRECON__SIMULATOR__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("PAYRECON__SIMULATOR__KEYS_DIR", env.keys_dir.path())
        .env(
            "PAYRECON__JOBS__TIMEOUT_CANCEL__SCHEDULE",
            &s.jobs.timeout_cancel.schedule,
        )
        .stdout(std::process::Stdio::null())
        .stderr(log_file)
        .kill_on_drop(true);
    command
}

/// Starts `payrecon run` on `env`'s database, prefix and timing, and waits
/// until it is ready.
pub async fn start_binary(env: &TestEnv, tag: &str) -> Running {
    let s = &env.settings;
    let http = format!("127.0.0.1:{}", free_port());
    let log = env.keys_dir.path().join(format!("{tag}.log"));
    let child = run_command(env, AMQP, &http, &log)
        .env(
            "PAYRECON__ORDERS__PAY_TIMEOUT",
            format!("{}ms", s.orders.pay_timeout.0.as_millis()),
        )
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("spawn payrecon run");
    let mut running = Running { child, log };
    wait_ready(&http, Some(&mut running)).await;
    running
}

/// Publishes `order.place` for `n` orders whose ids the test chooses, so
/// every event can be traced back to its order. Returns the order ids.
pub async fn place_orders(
    broker: &Broker,
    tag: &str,
    range: std::ops::Range<usize>,
) -> Vec<String> {
    let mut ids = Vec::with_capacity(range.len());
    for i in range {
        let id = uuid::Uuid::new_v4().to_string();
        let mut data = place_data(if i % 2 == 0 { "wechat_pay" } else { "alipay" });
        data["order_id"] = Value::from(id.clone());
        broker
            .request("order.place", &format!("{tag}-{i}"), data)
            .await;
        ids.push(id);
    }
    ids
}

pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

/// Every order of the test cancelled, every request processed once, the
/// outbox drained.
pub async fn assert_settled(pool: &PgPool, orders: usize) {
    let n = orders as i64;
    assert_eq!(
        count(pool, "SELECT count(*) FROM orders").await,
        n,
        "orders"
    );
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM orders WHERE status = 'cancelled' AND cancel_reason = 'timeout'"
        )
        .await,
        n,
        "orders cancelled for timeout"
    );
    let pending =
        payrecon::store::outbox::count_unpublished(&mut pool.acquire().await.expect("conn"))
            .await
            .expect("outbox");
    assert_eq!(pending, 0, "outbox not drained");
}

/// Messages ready in a queue (a passive declare does not create it).
pub async fn queue_depth(broker: &Broker, queue: &str) -> u32 {
    broker
        .channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("passive declare")
        .message_count()
}
