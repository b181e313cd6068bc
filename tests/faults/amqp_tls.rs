//! TLS to RabbitMQ (issue 18): `amqps://` for the consumers (lapin with
//! rustls), for the relay's own link (confirm_link over tokio-rustls) and
//! for the CLI, with `amqp.tls_ca_file`; an untrusted certificate, a wrong
//! host name or a plain port fails at once with one line naming host:port
//! and the reason. Each test runs a private RabbitMQ node with a TLS
//! listener whose CA and certificate are made here by the openssl CLI.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::tcp::OwnedTLSConfig;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use payrecon::app::Daemon;
use payrecon::config::{AmqpSettings, Secret};
use payrecon::messaging::broker_tls::BrokerTls;
use payrecon::messaging::confirm_link::ConfirmLink;
use payrecon::messaging::topology::{self, Names};
use serde_json::Value;
use tokio::time::Instant;

use crate::common::readiness::wait_readyz;
use crate::common::{place_data, TestEnv};
use crate::pki::Pki;
use crate::services::PrivateRabbit;

/// A private node whose TLS listener's certificate is for `localhost`
/// only (so `127.0.0.1` is the wrong name), signed by `ca`; `otherca`
/// signed nothing the node presents.
pub struct TlsNode {
    pki: Pki,
    pub rabbit: PrivateRabbit,
}

impl TlsNode {
    pub async fn start(tag: &str) -> TlsNode {
        let pki = Pki::new();
        pki.ca("ca").await;
        pki.ca("otherca").await;
        let cert = pki.server("ca", "DNS:localhost").await;
        let rabbit = PrivateRabbit::start_with_tls(tag, cert.for_rabbit()).await;
        TlsNode { pki, rabbit }
    }

    pub fn ca(&self, name: &str) -> String {
        self.pki
            .path(&format!("{name}.pem"))
            .to_string_lossy()
            .into_owned()
    }

    pub fn amqp(&self, url: String, ca: &str, prefix: &str) -> AmqpSettings {
        let mut amqp = payrecon::config::Settings::default().amqp;
        amqp.url = Secret(url);
        amqp.tls_ca_file = ca.to_string();
        amqp.prefix = prefix.to_string();
        amqp
    }

    /// Each connection of the node: (client-given name, ssl, protocol).
    async fn connections(&self) -> Vec<(String, bool, String)> {
        let out = self
            .rabbit
            .ctl(&[
                "--formatter",
                "json",
                "-q",
                "list_connections",
                "client_properties",
                "ssl",
                "ssl_protocol",
            ])
            .await;
        let rows: Vec<Value> = serde_json::from_str(out.trim()).expect("list_connections json");
        rows.iter()
            .map(|r| {
                // client_properties is a list of [key, type, value].
                let name = r["client_properties"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p[0] == "connection_name")
                    .and_then(|p| p[2].as_str())
                    .unwrap_or_default()
                    .to_string();
                let protocol = r["ssl_protocol"].as_str().unwrap_or_default().to_string();
                (name, r["ssl"] == true, protocol)
            })
            .collect()
    }
}

/// The test's own lapin connection over TLS, trusting `ca_file`.
pub async fn test_connection(url: &str, ca_file: &str) -> Connection {
    let ca = std::fs::read_to_string(ca_file).expect("ca file");
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain: Some(ca),
    };
    let props = ConnectionProperties::default().with_connection_name("amqps-test".into());
    let runtime = lapin::runtime::default_runtime().expect("runtime");
    Connection::connect_with_config(url, props, tls, runtime)
        .await
        .expect("test connection over amqps")
}

fn assert_line(e: &str, addr: &str, reason: &str) {
    eprintln!("refused as expected: {e}");
    assert!(!e.contains('\n'), "one line: {e}");
    assert!(e.contains(addr), "names {addr}: {e}");
    assert!(e.contains(reason), "says {reason:?}: {e}");
}

/// A daemon that must not start: its error, within a bound.
async fn refused_start(env: &TestEnv, amqp: AmqpSettings) -> String {
    let mut settings = env.settings.clone();
    settings.amqp = amqp;
    let started = Instant::now();
    let e = match tokio::time::timeout(Duration::from_secs(30), Daemon::start(settings)).await {
        Err(_) => panic!("the daemon kept trying a certificate it cannot trust"),
        Ok(Ok(_)) => panic!("the daemon started"),
        Ok(Err(e)) => format!("{e:#}"),
    };
    assert!(started.elapsed() < Duration::from_secs(15), "slow: {e}");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_brokers_stop_the_daemon_with_one_line() {
    let node = TlsNode::start("at").await;
    let env = TestEnv::new("amqptls_bad");
    let port = node.rabbit.tls_port.expect("tls port");
    let (good_ca, other_ca) = (node.ca("ca"), node.ca("otherca"));
    let by_name = node.rabbit.amqps_url("localhost");
    let by_ip = node.rabbit.amqps_url("127.0.0.1");

    let e = refused_start(&env, node.amqp(by_name.clone(), &other_ca, &env.name)).await;
    assert_line(&e, &format!("localhost:{port}"), "unknown CA");
    assert!(e.starts_with("TLS to RabbitMQ at"), "{e}");
    // No CA file: the public roots alone do not know a private CA.
    let e = refused_start(&env, node.amqp(by_name.clone(), "", &env.name)).await;
    assert_line(&e, &format!("localhost:{port}"), "unknown CA");
    let e = refused_start(&env, node.amqp(by_ip.clone(), &good_ca, &env.name)).await;
    assert_line(
        &e,
        &format!("127.0.0.1:{port}"),
        "not valid for the host name 127.0.0.1",
    );
    let plain = format!("amqps://guest:guest@127.0.0.1:{}/%2f", node.rabbit.port);
    let e = refused_start(&env, node.amqp(plain.clone(), &good_ca, &env.name)).await;
    assert_line(
        &e,
        &format!("127.0.0.1:{}", node.rabbit.port),
        "does not speak TLS",
    );

    // The paths the start-up check does not take say the same: lapin's
    // (consumers, dlq) and the relay's link.
    let wrong = node.amqp(by_name.clone(), &other_ca, &env.name);
    let tls = BrokerTls::from_settings(&wrong).expect("ca file");
    let e = tls
        .open(&wrong.url, ConnectionProperties::default())
        .await
        .expect_err("lapin trusted another CA")
        .to_string();
    assert_line(&e, &format!("localhost:{port}"), "unknown CA");
    let e = ConfirmLink::connect_with(&by_ip, "amqps-test-link", &tls)
        .await
        .err()
        .expect("the link trusted another CA")
        .to_string();
    assert_line(&e, &format!("127.0.0.1:{port}"), "unknown CA");
    let right = BrokerTls::from_settings(&node.amqp(by_ip.clone(), &good_ca, "x")).expect("ca");
    let e = ConfirmLink::connect_with(&by_ip, "amqps-test-link", &right)
        .await
        .err()
        .expect("the link accepted the wrong host name")
        .to_string();
    assert_line(&e, &format!("127.0.0.1:{port}"), "host name 127.0.0.1");
    let e = ConfirmLink::connect_with(&plain, "amqps-test-link", &right)
        .await
        .err()
        .expect("the link spoke TLS to a plain port")
        .to_string();
    assert_line(&e, "127.0.0.1", "does not speak TLS");

    // The CLI: one line, exit 1, no retries.
    let out = cli(
        &env,
        &node.amqp(by_name, &other_ca, &env.name),
        &["dlq", "list"],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_line(stderr.trim(), &format!("localhost:{port}"), "unknown CA");
}

/// `payrecon ARGS` with `amqp` as its broker settings.
fn cli(env: &TestEnv, amqp: &AmqpSettings, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_payrecon"))
        .args(args)
        .env("PAYRECON__AMQP__URL", amqp.url.expose())
        .env("PAYRECON__AMQP__PREFIX", &amqp.prefix)
        .env("PAYRECON__AMQP__TLS_CA_FILE", &amqp.tls_ca_file)
        .env("DATABASE_URL", env.settings.database.url.expose())
        .env_remove("AMQP_URL")
        .output()
        .expect("run payrecon")
}

const ORDERS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_works_over_amqps_end_to_end() {
    let node = TlsNode::start("au").await;
    let mut env = TestEnv::new("amqptls");
    let url = node.rabbit.amqps_url("localhost");
    let ca = node.ca("ca");
    env.settings.amqp = node.amqp(url.clone(), &ca, &env.name);
    let names = env.names();

    // The test's side: a tap on P.events and the requests, over TLS too.
    let conn = test_connection(&url, &ca).await;
    let channel = conn.create_channel().await.expect("channel");
    topology::declare(&channel, &names).await.expect("topology");
    let mut events = crate::common::tap_events(&channel, &names).await;

    let daemon = Daemon::start(env.settings.clone())
        .await
        .expect("daemon starts over amqps");
    wait_readyz(&format!("http://{}", daemon.http_addr), 200, 60).await;

    let ids = place_orders(&channel, &names, ORDERS).await;
    let mut created = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while created.len() < ids.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(Ok(d))) = tokio::time::timeout(left, events.next()).await else {
            panic!("{} of {ORDERS} order.created after 120s", created.len());
        };
        let event: Value = serde_json::from_slice(&d.data).expect("event json");
        if event["type"] == "order.created" {
            let rid = event["request_id"].as_str().unwrap_or_default().to_string();
            assert!(ids.contains(&rid), "unknown request {rid}");
            assert!(created.insert(rid), "order.created twice");
        }
    }

    // Every connection on the node is TLS: the daemon's consumers, its
    // events link (which published what the tap got), and the test's own.
    let connections = node.connections().await;
    let consumers = format!("payrecon-{}", env.name);
    let link = format!("payrecon-{}-events", env.name);
    for want in [&consumers, &link] {
        assert!(
            connections.iter().any(|(n, ssl, _)| n == want && *ssl),
            "{want} over TLS: {connections:?}"
        );
    }
    assert!(
        connections.iter().all(|(_, ssl, _)| *ssl),
        "a plain connection: {connections:?}"
    );
    eprintln!("connections on the TLS node: {connections:?}");

    // The CLI over amqps: the dead-letter queues the daemon declared.
    let out = cli(&env, &env.settings.amqp, &["dlq", "list", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    daemon.stop().await;
    let _ = conn.close(200, "done".into()).await;
    idle_link_lives_on_heartbeats(&node, &env).await;
}

/// An idle link over TLS: `keep_alive`, as the relay calls it between
/// passes, sends heartbeats and reads the broker's through rustls (one
/// poll of the read, not TcpStream::try_read), so a 1 s heartbeat keeps
/// it open for several seconds and it still publishes.
async fn idle_link_lives_on_heartbeats(node: &TlsNode, env: &TestEnv) {
    let url = format!("{}?heartbeat=1", node.rabbit.amqps_url("localhost"));
    let tls = BrokerTls::from_settings(&env.settings.amqp).expect("ca");
    let name = format!("{}-idle", env.name);
    let mut link = ConfirmLink::connect_with(&url, &name, &tls)
        .await
        .expect("link over TLS");
    for _ in 0..20 {
        link.keep_alive().await.expect("kept alive over TLS");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let message = payrecon::messaging::publisher::Outgoing {
        exchange: "",
        routing_key: "nowhere",
        body: b"{}",
        properties: payrecon::messaging::publisher::json_properties(),
    };
    let acked = link.publish_all(vec![message]).await.expect("publish");
    assert_eq!(acked, [true]);
    link.close().await;
}

/// Publishes `n` order.place requests; returns their request ids.
async fn place_orders(channel: &Channel, names: &Names, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("tls-{i}");
        let method = if i % 2 == 0 { "wechat_pay" } else { "alipay" };
        let body = serde_json::json!({"type": "order.place", "request_id": id,
            "sent_at": "2026-11-24T10:00:00+08:00", "data": place_data(method)});
        channel
            .basic_publish(
                "".into(),
                names.requests.as_str().into(),
                BasicPublishOptions::default(),
                body.to_string().as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
        ids.push(id);
    }
    ids
}
