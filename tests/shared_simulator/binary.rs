//! The real binary, as ops start it (environment only): `payrecon
//! gateway-sim` and two `payrecon run` on one simulator address, and two
//! `payrecon run` with the embedded default on one address (the second used
//! to die with "Address already in use").

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::common::{Broker, TestEnv, AMQP};

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

    /// SIGTERM, then the exit code, which must come within 30 s; no error
    /// may have been logged.
    async fn stop(mut self) -> Option<i32> {
        let pid = self.child.id().expect("child pid").to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill");
        assert!(killed.success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("no exit within 30s of SIGTERM:\n{}", self.log()))
            .expect("wait");
        let log = self.log();
        if status.code() != Some(0) {
            eprintln!("log:\n{log}");
        }
        // Sharing is normal operation: nothing for ops to chase in the logs.
        let errors: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("\"level\":\"ERROR\""))
            .collect();
        assert!(errors.is_empty(), "errors logged: {errors:#?}");
        status.code()
    }

    /// Waits until `url` answers 200, or panics with the log.
    async fn until_ok(&mut self, url: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while reqwest::get(url)
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("exited early ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "never ready:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `payrecon ARGS` on the test's database, prefix and keys, logging to
/// `NAME.log` in the keys folder (removed with it).
fn spawn(env: &TestEnv, name: &str, args: &[&str], vars: &[(&str, String)]) -> Running {
    let log = env.keys_dir.path().join(format!("{name}.log"));
    let log_file = std::fs::File::create(&log).expect("log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_payrecon"));
    command
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env(
            "PAYRECON__DATABASE__URL",
            env.settings.database.url.expose(),
        )
        .env("PAYRECON__AMQP__URL", AMQP)
        .env("PAYRECON__AMQP__PREFIX", &env.name)
        .env("PAYRECON__SIMULATOR__KEYS_DIR", env.keys_dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(log_file)
        .kill_on_drop(true);
    for (key, value) in vars {
        command.env(key, value);
    }
    let child = command.spawn().expect("spawn payrecon");
    Running { child, log }
}

/// A ready `payrecon run` on HTTP `http` and simulator `sim`.
async fn run(env: &TestEnv, name: &str, sim: &str, embedded: bool) -> (Running, String) {
    let http = format!("127.0.0.1:{}", free_port());
    let vars = [
        ("PAYRECON__HTTP__LISTEN", http.clone()),
        ("PAYRECON__SIMULATOR__LISTEN", sim.to_string()),
        ("PAYRECON__SIMULATOR__EMBEDDED", embedded.to_string()),
    ];
    let mut running = spawn(env, name, &["run"], &vars);
    running.until_ok(&format!("http://{http}/readyz")).await;
    (running, http)
}

/// Places and prepares an order through the requests queue and checks the
/// simulator at `sim` holds its payment.
async fn prepared_at(broker: &mut Broker, sim: &str) {
    let id = broker.place_order("wechat_pay").await;
    let data = serde_json::json!({"order_id": id.to_string(), "amount": 3998, "payment_method": "wechat_pay"});
    broker.request("payment.request", "bin-pay", data).await;
    broker.wait_event("payment.prepared", 30).await;
    let view = reqwest::get(format!(
        "http://{sim}/sim/payments/{}?channel=wechat_pay",
        id.out_trade_no()
    ))
    .await
    .expect("simulator");
    assert_eq!(view.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_gateway_sim_and_two_runs_with_embedded_false() {
    let env = TestEnv::new("shbin");
    let mut broker = Broker::connect(&env).await;
    let sim = format!("127.0.0.1:{}", free_port());
    let mut gateway_sim = spawn(
        &env,
        "sim",
        &["gateway-sim"],
        &[("PAYRECON__SIMULATOR__LISTEN", sim.clone())],
    );
    gateway_sim
        .until_ok(&format!("http://{sim}/sim/identity"))
        .await;
    let (first, _) = run(&env, "run1", &sim, false).await;
    let (second, _) = run(&env, "run2", &sim, false).await;
    for r in [&first, &second] {
        assert!(
            r.log().contains("using the gateway simulator"),
            "{}",
            r.log()
        );
    }
    prepared_at(&mut broker, &sim).await;
    assert_eq!(first.stop().await, Some(0));
    assert_eq!(second.stop().await, Some(0));
    assert_eq!(gateway_sim.stop().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_two_embedded_runs_share_the_first_ones_simulator() {
    let env = TestEnv::new("shbinemb");
    let mut broker = Broker::connect(&env).await;
    let sim = format!("127.0.0.1:{}", free_port());
    let (first, _) = run(&env, "run1", &sim, true).await;
    let (second, _) = run(&env, "run2", &sim, true).await;
    assert!(
        second
            .log()
            .contains("already served by a payrecon gateway simulator"),
        "{}",
        second.log()
    );
    prepared_at(&mut broker, &sim).await;
    assert_eq!(second.stop().await, Some(0));
    assert_eq!(first.stop().await, Some(0));
}
