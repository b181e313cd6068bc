//! Several instances on one database and prefix share one gateway simulator
//! (issue 15): with `simulator.embedded = false` they use one started apart
//! (as `payrecon gateway-sim` does); with `embedded = true` a later instance
//! shares a same-key simulator already at `simulator.listen`, and refuses
//! anything else there with one clear line.

#[path = "shared_simulator/binary.rs"]
mod binary;
mod common;

use std::path::Path;
use std::time::Duration;

use common::{Broker, TestEnv};
use payrecon::app::Daemon;
use payrecon::config::Settings;
use payrecon::domain::OrderId;
use payrecon::simulator::{SimKeys, SimOptions, Simulator};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// A simulator on a free loopback port with the keys of `keys_dir`, started
/// the way `payrecon gateway-sim` starts it.
async fn start_sim(settings: &Settings, keys_dir: &Path) -> (Simulator, CancellationToken) {
    let mut sim = settings.simulator.clone();
    sim.keys_dir = keys_dir.to_path_buf();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let shutdown = CancellationToken::new();
    let started = Simulator::start(SimOptions::new(sim), listener, shutdown.clone())
        .await
        .expect("simulator");
    (started, shutdown)
}

async fn prepare(broker: &mut Broker, id: OrderId, method: &str) -> Value {
    let data = json!({"order_id": id.to_string(), "amount": 3998, "payment_method": method});
    broker
        .request("payment.request", &format!("pay-{id}"), data)
        .await;
    broker.wait_event("payment.prepared", 20).await
}

async fn sim_view(sim: &str, id: OrderId, channel: &str) -> reqwest::Response {
    reqwest::get(format!(
        "{sim}/sim/payments/{}?channel={channel}",
        id.out_trade_no()
    ))
    .await
    .expect("simulator")
}

async fn sim_pay(sim: &str, id: OrderId, channel: &str) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(format!("{sim}/sim/pay"))
        .json(&json!({"channel": channel, "out_trade_no": id.out_trade_no()}))
        .send()
        .await
        .expect("simulator")
        .status()
}

/// Every event until `ms` pass without one.
async fn drain(broker: &mut Broker, ms: u64) -> Vec<Value> {
    let mut seen = Vec::new();
    while let Ok(Some(e)) =
        tokio::time::timeout(Duration::from_millis(ms), broker.try_next_event()).await
    {
        seen.push(e);
    }
    seen
}

fn about(events: &[Value], kind: &str, id: OrderId) -> usize {
    events
        .iter()
        .filter(|e| e["type"] == kind && e["data"]["order"]["order_id"] == id.to_string())
        .count()
}

/// Two daemons, one simulator started apart: a payment prepared by A is paid
/// once, whoever consumes its notification; a prepay made by A is closed by
/// B's cancel, so B's gateway finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_a_separate_simulator() {
    let env = TestEnv::new("shsim");
    let mut broker = Broker::connect(&env).await;
    let (sim, sim_stop) = start_sim(&env.settings, env.keys_dir.path()).await;
    let url = sim.base_url();
    let mut settings = env.settings.clone();
    settings.simulator.embedded = false;
    settings.simulator.listen = sim.addr().to_string();

    // Only A runs: both payments are prepared by A, with A's notify URL.
    let a = Daemon::start(settings.clone()).await.expect("daemon A");
    assert_eq!(a.simulator_base_url.as_deref(), Some(url.as_str()));
    let paid_id = broker.place_order("wechat_pay").await;
    prepare(&mut broker, paid_id, "wechat_pay").await;
    let closed_id = broker.place_order("alipay").await;
    prepare(&mut broker, closed_id, "alipay").await;
    let view: Value = sim_view(&url, paid_id, "wechat_pay")
        .await
        .json()
        .await
        .unwrap();
    let a_notify = format!("http://{}/notify/wechat_pay", a.http_addr);
    assert_eq!(view["notify_url"], a_notify.as_str(), "{view}");

    let b = Daemon::start(settings.clone()).await.expect("daemon B");
    assert_eq!(b.simulator_base_url.as_deref(), Some(url.as_str()));
    assert_eq!(sim_pay(&url, paid_id, "wechat_pay").await, 200);
    let paid = broker.wait_event("order.paid", 20).await;
    assert_eq!(paid["data"]["order"]["order_id"], paid_id.to_string());
    let later = drain(&mut broker, 2000).await;
    assert_eq!(about(&later, "order.paid", paid_id), 0, "{later:#?}");
    assert!(
        !later.iter().any(|e| e["type"] == "payment.anomaly"),
        "{later:#?}"
    );
    let view: Value = sim_view(&url, paid_id, "wechat_pay")
        .await
        .json()
        .await
        .unwrap();
    let deliveries = view["notifications"].as_array().expect("deliveries");
    assert_eq!(deliveries.len(), 1, "{view}");
    assert_eq!(deliveries[0]["url"], a_notify.as_str());
    assert_eq!(deliveries[0]["acknowledged"], true, "{view}");

    // A stops: B alone handles the cancel, and must find A's prepay at the
    // gateway to close it (an Alipay trade exists once the code is scanned).
    a.stop().await;
    let scan = reqwest::Client::new()
        .post(format!("{url}/sim/scan"))
        .json(&json!({"channel": "alipay", "out_trade_no": closed_id.out_trade_no()}))
        .send()
        .await
        .unwrap();
    assert!(scan.status().is_success());
    broker
        .request(
            "order.cancel",
            &format!("cancel-{closed_id}"),
            json!({"order_id": closed_id.to_string(), "reason": "buyer left"}),
        )
        .await;
    let cancelled = broker.wait_event("order.cancelled", 20).await;
    assert_eq!(
        cancelled["data"]["order"]["order_id"],
        closed_id.to_string()
    );
    let view: Value = sim_view(&url, closed_id, "alipay")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "TRADE_CLOSED", "{view}");
    assert_ne!(sim_pay(&url, closed_id, "alipay").await, 200);

    let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE order_id = $1")
        .bind(paid_id.0)
        .fetch_one(&b.pool)
        .await
        .unwrap();
    assert_eq!(status, "paid");
    b.stop().await;
    sim_stop.cancel();
    sim.stopped().await.expect("simulator stops");
}

/// `embedded = true`, the address already served by a simulator with the
/// same keys: the daemon starts, and its payments are made there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_shares_a_same_key_simulator_at_its_address() {
    let env = TestEnv::new("shsame");
    let mut broker = Broker::connect(&env).await;
    let (sim, sim_stop) = start_sim(&env.settings, env.keys_dir.path()).await;
    let mut settings = env.settings.clone();
    assert!(settings.simulator.embedded, "embedded is the default");
    settings.simulator.listen = sim.addr().to_string();
    let daemon = Daemon::start(settings).await.expect("daemon shares");
    assert_eq!(daemon.simulator_base_url, Some(sim.base_url()));
    let id = broker.place_order("wechat_pay").await;
    prepare(&mut broker, id, "wechat_pay").await;
    assert_eq!(
        sim_view(&sim.base_url(), id, "wechat_pay").await.status(),
        200
    );
    daemon.stop().await;
    sim_stop.cancel();
    sim.stopped().await.expect("simulator stops");
}

async fn start_error(settings: Settings) -> String {
    match Daemon::start(settings).await {
        Ok(d) => {
            d.stop().await;
            panic!("the daemon started");
        }
        Err(e) => format!("{e:#}"),
    }
}

/// `embedded = true` and the address is held by a simulator with other
/// keys, or by something that is no simulator: one line naming
/// `simulator.listen`, the address, and the ways out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_refuses_other_keys_and_strangers_at_its_address() {
    let env = TestEnv::new("shother");
    let own = env.keys_dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || SimKeys::load_or_create(&own).map(|_| ()))
        .await
        .unwrap()
        .expect("own keys");
    let other_keys = tempfile::tempdir().expect("tempdir");
    let (sim, sim_stop) = start_sim(&env.settings, other_keys.path()).await;
    let mut settings = env.settings.clone();
    settings.simulator.listen = sim.addr().to_string();
    let err = start_error(settings.clone()).await;
    let listen = format!("simulator.listen {}", sim.addr());
    assert!(err.starts_with(&listen), "{err}");
    assert!(err.contains("other keys"), "{err}");
    assert!(err.contains("wechat_platform_public.pem"), "{err}");
    assert!(err.contains("simulator.keys_dir"), "{err}");
    assert!(err.contains("simulator.embedded = false"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
    sim_stop.cancel();
    sim.stopped().await.expect("simulator stops");

    // A listener that answers like an SSH server, not an HTTP one.
    let stranger = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = stranger.local_addr().unwrap();
    let serving = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut conn, _)) = stranger.accept().await {
            let _ = conn.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
        }
    });
    settings.simulator.listen = addr.to_string();
    let err = start_error(settings).await;
    assert!(
        err.starts_with(&format!("simulator.listen {addr}")),
        "{err}"
    );
    assert!(err.contains("not a payrecon gateway simulator"), "{err}");
    assert!(err.contains("simulator.embedded = false"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
    serving.abort();
}

/// `embedded = false` before `gateway-sim` ever created the keys: one line
/// that says to start it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_without_keys_says_to_start_gateway_sim() {
    let env = TestEnv::new("shnokeys");
    let mut settings = env.settings.clone();
    settings.simulator.embedded = false;
    settings.simulator.listen = "127.0.0.1:9".into();
    let err = start_error(settings).await;
    assert!(err.contains("payrecon gateway-sim"), "{err}");
    assert!(err.contains("simulator.keys_dir"), "{err}");
    assert!(err.contains("is missing"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
}
