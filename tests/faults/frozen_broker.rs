//! A broker node that goes silent instead of away (its host lost power or
//! its network: SIGSTOP of its VM here). Its sockets stay open and nothing
//! answers on them, so only timeouts can tell. The daemon must leave it
//! for the next address in `amqp.url` within seconds, whether it was
//! consuming there (heartbeats) or is connecting to it (a bounded
//! session set-up), and never hang on it.

use std::time::Duration;

use payrecon::app::Daemon;
use payrecon::config::Secret;
use tokio::time::Instant;

use crate::cluster_support::Frozen;
use crate::common::TestEnv;
use crate::restarts::SERIAL;
use crate::services::PrivateRabbit;

/// What the test allows for either move: the heartbeat's detection (two
/// intervals of 10 s) or the set-up bound, plus a reconnect.
const MOVE_SECS: u64 = 40;

/// Polls `/readyz` until it is 200 on the broker at `port`; returns when.
async fn ready_on(base: &str, port: u16, secs: u64) -> Duration {
    let want = format!("127.0.0.1:{port}");
    let t0 = Instant::now();
    loop {
        let got = match reqwest::get(format!("{base}/readyz")).await {
            Ok(r) => r.json::<serde_json::Value>().await.ok(),
            Err(_) => None,
        };
        let on = got.as_ref().and_then(|j| j["broker_address"].as_str());
        if on == Some(want.as_str()) && got.as_ref().is_some_and(|j| j["broker"] == true) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "/readyz not on {want} after {secs}s: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_node_is_left_for_the_next() {
    let _serial = SERIAL.lock().await;
    let a = PrivateRabbit::start("fza").await;
    let b = PrivateRabbit::start("fzb").await;
    let mut env = TestEnv::new("ffrozen");
    env.settings.amqp.url = Secret(format!("{},{}", a.amqp_url(), b.amqp_url()));
    let daemon = Daemon::start(env.settings.clone())
        .await
        .expect("daemon starts");
    let base = format!("http://{}", daemon.http_addr);
    ready_on(&base, a.port, 60).await;

    // Consuming on A, idle (nothing to relay): A freezes.
    let frozen = Frozen::freeze(&a).await;
    let left_in = ready_on(&base, b.port, MOVE_SECS).await;

    // A second daemon whose first address is the frozen node: connecting
    // there must give up and go on to B.
    let mut second = env.settings.clone();
    second.http.listen = "127.0.0.1:0".into();
    let daemon2 = Daemon::start(second).await.expect("second daemon starts");
    let base2 = format!("http://{}", daemon2.http_addr);
    let skipped_in = ready_on(&base2, b.port, MOVE_SECS).await;
    eprintln!(
        "figures: silent node (SIGSTOP): a consuming daemon on B after {:.1}s, a starting one \
         on B after {:.1}s",
        left_in.as_secs_f64(),
        skipped_in.as_secs_f64()
    );
    daemon2.stop().await;
    daemon.stop().await;
    drop(frozen);
}
