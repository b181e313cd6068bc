//! The gateway simulator (docs/contract.md §5), tested over HTTP: its protocols with
//! hand-rolled clients, its crypto against independent vectors, and — when
//! `PAYRECON_SDK_PYTHON` names a Python with the official SDKs — against
//! `wechatpayv3` and `python-alipay-sdk` themselves.

#[path = "simulator/helpers.rs"]
mod helpers;
#[path = "simulator/receiver.rs"]
mod receiver;

#[path = "simulator/alipay.rs"]
mod alipay;
#[path = "simulator/alipay_bill.rs"]
mod alipay_bill;
#[path = "simulator/sdk.rs"]
mod sdk;
#[path = "simulator/vectors.rs"]
mod vectors;
#[path = "simulator/wechat.rs"]
mod wechat;
#[path = "simulator/wechat_bill.rs"]
mod wechat_bill;

use helpers::*;
use payrecon::simulator::{SimOptions, Simulator};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn brings_its_own_keys_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_keys_to(dir.path());
    let own = std::fs::read_to_string(dir.path().join("wechat_apiv3_key")).expect("key");
    let mut settings = payrecon::config::Settings::default().simulator;
    settings.keys_dir = dir.path().join("nested");
    std::fs::create_dir_all(&settings.keys_dir).expect("mkdir");
    std::fs::write(
        settings.keys_dir.join("wechat_apiv3_key"),
        "abcdefghijklmnopqrstuvwxyz012345",
    )
    .expect("write");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let shutdown = CancellationToken::new();
    let sim = Simulator::start(
        SimOptions::new(settings.clone()),
        listener,
        shutdown.clone(),
    )
    .await
    .expect("start");
    assert_eq!(
        sim.keys().wechat_apiv3_key,
        "abcdefghijklmnopqrstuvwxyz012345"
    );
    assert_ne!(own, sim.keys().wechat_apiv3_key);
    for name in [
        "wechat_merchant_private.pem",
        "alipay_public.pem",
        "alipay_app_public.pem",
    ] {
        assert!(settings.keys_dir.join(name).exists(), "{name} created");
    }
    assert!(sim.base_url().starts_with("http://127.0.0.1:"));
    let url = format!("{}/sim/faults", sim.base_url());
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    assert_eq!(client.get(&url).send().await.expect("up").status(), 200);

    shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(5), sim.stopped())
        .await
        .expect("stops promptly")
        .expect("clean stop");
    assert!(client.get(&url).send().await.is_err(), "no longer serving");
}

#[tokio::test]
async fn run_serves_on_the_given_address_until_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_keys_to(dir.path());
    let mut settings = payrecon::config::Settings::default().simulator;
    settings.keys_dir = dir.path().to_path_buf();
    // Find a free port, then hand its address to `run`.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let shutdown = CancellationToken::new();
    let (addr, token) = (listen.clone(), shutdown.clone());
    let server =
        tokio::spawn(async move { payrecon::simulator::run(settings, &addr, token).await });
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let url = format!("http://{listen}/sim/faults");
    let mut up = false;
    for _ in 0..50 {
        if client
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(up, "serving on {listen}");
    shutdown.cancel();
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("stops")
        .expect("task");
    assert!(stopped.is_ok(), "{stopped:?}");
}

#[tokio::test]
async fn unknown_payments_and_bad_control_bodies() {
    let h = Harness::start().await;
    let (status, _) = h
        .control(
            "/sim/pay",
            serde_json::json!({"channel": "alipay", "out_trade_no": "NOPE"}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = h
        .control(
            "/sim/pay",
            serde_json::json!({"channel": "visa", "out_trade_no": "NOPE"}),
        )
        .await;
    assert_eq!(status, 422);
    let (status, _) = h.get_json("/sim/payments/NOPE").await;
    assert_eq!(status, 404);
}
