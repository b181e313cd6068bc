//! Processes and probes for the fault tests: `payrecon gateway-sim` and
//! `payrecon run` as child processes (configured through the environment
//! only, as ops run them), an event tap that keeps every delivery, a
//! publisher of requests, and polling helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::common::{Broker, TestEnv, AMQP};

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Re-sends a few seconds apart (about 3 min in all) instead of the gateways'
/// real 15 s / 4 min first waits, so notifications lost to a killed daemon
/// come back within the test.
pub const FAST_NOTIFY_RETRY: &str = "1s,1s,2s,2s,3s,5s,5s,10s,10s,10s,15s,15s,30s,30s,30s";

/// `payrecon gateway-sim` on a free loopback port, with its key files in
/// the test's `keys_dir`. Outlives any number of daemon kills.
pub struct SimProcess {
    child: Child,
    pub base_url: String,
    log: PathBuf,
    http: reqwest::Client,
}

impl SimProcess {
    pub async fn start(env: &TestEnv) -> SimProcess {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = env.keys_dir.path().join("sim.log");
        let child = Command::new(env!("CARGO_BIN_EXE_payrecon"))
            .args(["gateway-sim", "--listen", &addr])
            .args(["--notify-retry", FAST_NOTIFY_RETRY])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("PAYRECON__SIMULATOR__KEYS_DIR", env.keys_dir.path())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("sim log"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn payrecon gateway-sim");
        let mut sim = SimProcess {
            child,
            base_url: format!("http://{addr}"),
            log,
            http: reqwest::Client::new(),
        };
        // Key generation takes a few seconds on a busy machine.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let up = sim
                .http
                .get(format!("{}/sim/faults", sim.base_url))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if up {
                return sim;
            }
            if let Ok(Some(status)) = sim.child.try_wait() {
                panic!("gateway-sim exited ({status}): {}", sim.log());
            }
            assert!(Instant::now() < deadline, "gateway-sim never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base_url))
            .json(&body)
            .send()
            .await
            .expect("simulator")
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .expect("simulator");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

/// The environment that points `payrecon run` at a standalone simulator:
/// both gateways `live`, with the simulator's URL, ids (docs/contract.md §1) and
/// key files, and notify URLs on the daemon's fixed HTTP address.
pub fn live_gateway_env(env: &TestEnv, sim_url: &str, http: &str) -> Vec<(String, String)> {
    let keys = env.keys_dir.path();
    let key = |f: &str| keys.join(f).display().to_string();
    let apiv3 = std::fs::read_to_string(keys.join("wechat_apiv3_key")).expect("apiv3 key");
    let s = &env.settings.simulator;
    let w = "PAYRECON__GATEWAYS__WECHAT_PAY__";
    let a = "PAYRECON__GATEWAYS__ALIPAY__";
    [
        (format!("{w}MODE"), "live".to_string()),
        (format!("{w}BASE_URL"), sim_url.to_string()),
        (format!("{w}MCHID"), s.wechat_mchid.clone()),
        (format!("{w}APPID"), s.wechat_appid.clone()),
        (
            format!("{w}MERCHANT_SERIAL_NO"),
            s.wechat_merchant_serial_no.clone(),
        ),
        (
            format!("{w}MERCHANT_PRIVATE_KEY"),
            key("wechat_merchant_private.pem"),
        ),
        (
            format!("{w}PLATFORM_PUBLIC_KEY"),
            key("wechat_platform_public.pem"),
        ),
        (
            format!("{w}PLATFORM_SERIAL"),
            s.wechat_platform_serial.clone(),
        ),
        (format!("{w}APIV3_KEY"), apiv3),
        (
            format!("{w}NOTIFY_URL"),
            format!("http://{http}/notify/wechat_pay"),
        ),
        (format!("{a}MODE"), "live".to_string()),
        (format!("{a}BASE_URL"), format!("{sim_url}/gateway.do")),
        (format!("{a}APP_ID"), s.alipay_app_id.clone()),
        (format!("{a}APP_PRIVATE_KEY"), key("alipay_app_private.pem")),
        (format!("{a}ALIPAY_PUBLIC_KEY"), key("alipay_public.pem")),
        (
            format!("{a}NOTIFY_URL"),
            format!("http://{http}/notify/alipay"),
        ),
    ]
    .into_iter()
    .collect()
}

/// How to start `payrecon run` on the test's database and prefix, on a
/// fixed HTTP address (the simulator keeps notifying it across restarts).
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    pub http: String,
    db_url: String,
    prefix: String,
    log_dir: PathBuf,
    extra: Vec<(String, String)>,
}

impl DaemonSpec {
    pub fn new(env: &TestEnv, http: &str, extra: Vec<(String, String)>) -> DaemonSpec {
        DaemonSpec {
            http: http.to_string(),
            db_url: env.settings.database.url.expose().to_string(),
            prefix: env.name.clone(),
            log_dir: env.keys_dir.path().to_path_buf(),
            extra,
        }
    }

    /// Starts one incarnation, logging to `daemon-<incarnation>.log`.
    pub fn spawn(&self, incarnation: u32) -> DaemonProcess {
        let log = self.log_dir.join(format!("daemon-{incarnation}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_payrecon"))
            .arg("run")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("PAYRECON__DATABASE__URL", &self.db_url)
            .env("PAYRECON__AMQP__URL", AMQP)
            .env("PAYRECON__AMQP__PREFIX", &self.prefix)
            .env("PAYRECON__HTTP__LISTEN", &self.http)
            .env("PAYRECON__RETRY__BASE_DELAY", "50ms")
            .env("PAYRECON__RETRY__MAX_DELAY", "1s")
            .env("RUST_LOG", "warn")
            .envs(self.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("daemon log"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn payrecon run");
        DaemonProcess {
            child,
            http: self.http.clone(),
            log,
        }
    }
}

pub struct DaemonProcess {
    child: Child,
    pub http: String,
    log: PathBuf,
}

impl DaemonProcess {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub async fn wait_ready(&mut self, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let url = format!("http://{}/readyz", self.http);
        loop {
            if reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("payrecon run exited ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "never ready:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`: no signal handler runs, nothing is flushed or settled.
    pub async fn kill9(mut self) {
        let pid = self.child.id().expect("running daemon").to_string();
        let out = Command::new("kill")
            .args(["-9", &pid])
            .output()
            .await
            .expect("kill");
        assert!(out.status.success(), "kill -9 {pid} failed");
        let status = self.child.wait().await.expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "not killed by SIGKILL: {status}"
        );
    }

    /// SIGTERM and the exit code.
    pub async fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().expect("running daemon").to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).output().await;
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("no exit within 60s of SIGTERM")
            .expect("wait")
            .code()
    }
}

/// Every event the test's tap receives, repeats included, in arrival order.
/// The tap's connection is the test's own, so it sees across daemon kills.
pub struct Tap {
    events: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Tap {
    pub fn start(mut broker: Broker) -> Tap {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let task = tokio::spawn(async move {
            while let Some(e) = broker.try_next_event().await {
                sink.lock().expect("tap lock").push(e);
            }
        });
        Tap { events, task }
    }

    pub fn snapshot(&self) -> Vec<Value> {
        self.events.lock().expect("tap lock").clone()
    }

    pub fn count(&self, kind: &str) -> usize {
        self.events
            .lock()
            .expect("tap lock")
            .iter()
            .filter(|e| e["type"] == kind)
            .count()
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

/// Publishes requests onto `P.requests` with publisher confirms.
pub struct Publisher {
    conn: Connection,
    channel: Channel,
    queue: String,
    pub sent: usize,
}

impl Publisher {
    pub async fn connect(env: &TestEnv) -> Publisher {
        let conn = Connection::connect(AMQP, ConnectionProperties::default())
            .await
            .expect("amqp");
        let channel = conn.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        Publisher {
            conn,
            channel,
            queue: env.names().requests.clone(),
            sent: 0,
        }
    }

    pub async fn request(&mut self, kind: &str, request_id: &str, data: Value) {
        let body = json!({"type": kind, "request_id": request_id,
                          "sent_at": "2026-11-24T10:00:00+08:00", "data": data});
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        self.channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                body.to_string().as_bytes(),
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        self.sent += 1;
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "bye".into()).await;
    }
}

pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Polls `sql` (a count) until it reaches `want`; panics after `secs`.
pub async fn wait_count(pool: &PgPool, sql: &str, want: i64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = count(pool, sql).await;
        if got >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: {got} of {want} after {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Distinct events by `event_id` (first delivery kept, in arrival order)
/// and how many deliveries repeated an id already seen.
pub fn distinct_events(all: &[Value]) -> (Vec<Value>, usize) {
    let mut seen = std::collections::HashSet::new();
    let mut distinct = Vec::new();
    for e in all {
        let id = e["event_id"].as_str().unwrap_or_default().to_string();
        if seen.insert(id) {
            distinct.push(e.clone());
        }
    }
    let repeats = all.len() - distinct.len();
    (distinct, repeats)
}

/// Messages ready plus unacknowledged in `queue`, from the broker's own
/// count (`rabbitmqctl`), which a passive declare does not give.
pub async fn queue_totals(queue: &str) -> (u64, u64) {
    let out = Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])
        .output()
        .await
        .expect("rabbitmqctl");
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if let [name, ready, unacked] = cols.as_slice() {
            if *name == queue {
                return (
                    ready.parse().unwrap_or(u64::MAX),
                    unacked.parse().unwrap_or(u64::MAX),
                );
            }
        }
    }
    panic!("queue {queue} not listed by rabbitmqctl:\n{text}");
}
