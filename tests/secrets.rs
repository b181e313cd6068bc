//! Secrets never leave the process: `payrecon run` with distinctive
//! passwords in both URLs, a distinctive API token and APIv3 key, and live
//! gateways whose keys come from PEM files, is exercised (start, requests
//! with and without the token, a failing gateway call, a forged
//! notification, `/metrics`, a refused broker login, a bad URL, stop) with
//! debug JSON logs, and no secret — nor any line of a PEM body — appears in
//! anything it printed or answered.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Broker, TestEnv, AMQP};
use serde_json::json;

const DB_PASSWORD: &str = "PgPassSecret4f1a";
const AMQP_PASSWORD: &str = "AmqpPassSecret8c2d";
const API_TOKEN: &str = "ApiTokenSecret73be";
const APIV3_KEY: &str = "ApiV3KeySecret0123456789abcdefAB";

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gateway")
        .join(name)
}

/// Every secret string, and every body line of the PEM files in use.
fn secrets() -> Vec<String> {
    let mut all: Vec<String> = [DB_PASSWORD, AMQP_PASSWORD, API_TOKEN, APIV3_KEY]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for pem in ["test_rsa_private.pem", "other_rsa_private.pem"] {
        let text = std::fs::read_to_string(fixture(pem)).expect("pem");
        all.extend(
            text.lines()
                .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                .map(str::to_string),
        );
    }
    all
}

fn assert_clean(what: &str, text: &str) {
    for secret in secrets() {
        assert!(
            !text.contains(&secret),
            "{what} shows a secret ({}…):\n{text}",
            secret.get(..6).unwrap_or(&secret)
        );
    }
}

/// A config with every secret set, live gateways on a closed local port.
fn write_config(env: &TestEnv, amqp_url: &str, http: &str) -> PathBuf {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let config = format!(
        r#"
[database]
url = "postgres://postgres:{DB_PASSWORD}@127.0.0.1:5432/{name}"
[amqp]
url = "{amqp_url}"
prefix = "{name}"
[http]
listen = "{http}"
api_token = "{API_TOKEN}"
[retry]
max_attempts = 2
base_delay = "50ms"
max_delay = "100ms"
[gateways.wechat_pay]
mode = "live"
base_url = "{dead}"
mchid = "1900000001"
appid = "wxd930ea5d5a258f4f"
merchant_serial_no = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
merchant_private_key = "{wechat_key}"
platform_public_key = "{platform}"
platform_serial = "PUB_KEY_ID_0114232134912410000000000000"
apiv3_key = "{APIV3_KEY}"
[gateways.alipay]
mode = "live"
base_url = "{dead}/gateway.do"
app_id = "2021000000000001"
app_private_key = "{alipay_key}"
alipay_public_key = "{alipay_public}"
"#,
        name = env.name,
        wechat_key = fixture("test_rsa_private.pem").display(),
        platform = fixture("other_rsa_public.pem").display(),
        alipay_key = fixture("other_rsa_private.pem").display(),
        alipay_public = fixture("test_rsa_public.pem").display(),
    );
    let path = env
        .keys_dir
        .path()
        .join(format!("payrecon-{}.toml", free_port()));
    std::fs::write(&path, config).expect("config");
    path
}

fn payrecon(config: &Path, log: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payrecon"));
    let out = std::fs::File::create(log).expect("log");
    cmd.arg("--config")
        .arg(config)
        .env("RUST_LOG", "debug")
        .env_remove("DATABASE_URL")
        .env_remove("AMQP_URL")
        .stdout(out.try_clone().expect("log"))
        .stderr(out);
    cmd
}

fn wait_for(log: &Path, secs: u64, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if pred(&text) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(child: &mut std::process::Child) -> Option<i32> {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    child.wait().expect("wait").code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_errors_answers_or_metrics() {
    let env = TestEnv::new("secrets");
    let mut broker = Broker::connect(&env).await;
    let http_addr = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{http_addr}");
    let config = write_config(&env, AMQP, &http_addr);
    let log = env.keys_dir.path().join("run.log");
    let mut child = payrecon(&config, &log).arg("run").spawn().expect("spawn");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = client.get(format!("{base}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never ready:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut answers = String::new();
    // A request with the token, one without, and one with a wrong one.
    let order = broker.place_order("wechat_pay").await;
    for token in [Some(API_TOKEN), None, Some("wrong")] {
        let mut req = client.get(format!("{base}/orders/{order}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("orders");
        answers.push_str(&format!("{} {}\n", r.status(), r.text().await.unwrap()));
    }
    assert!(answers.starts_with("200"), "{answers}");
    // A live gateway call that fails (nothing listens at base_url).
    let pay =
        json!({"order_id": order.to_string(), "amount": 3998, "payment_method": "wechat_pay"});
    broker
        .request("payment.request", &format!("pay-{order}"), pay)
        .await;
    broker.wait_event("payment.failed", 60).await;
    // A forged notification, rejected with the APIv3 key at hand.
    let forged = client
        .post(format!("{base}/notify/wechat_pay"))
        .header("Wechatpay-Signature", "Zm9yZ2Vk")
        .header(
            "Wechatpay-Timestamp",
            chrono::Utc::now().timestamp().to_string(),
        )
        .header("Wechatpay-Nonce", "n")
        .header(
            "Wechatpay-Serial",
            "PUB_KEY_ID_0114232134912410000000000000",
        )
        .body(r#"{"id":"x","resource":{"ciphertext":"AAAA","nonce":"n","associated_data":""}}"#)
        .send()
        .await
        .expect("notify");
    answers.push_str(&format!(
        "{} {}\n",
        forged.status(),
        forged.text().await.unwrap()
    ));
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("payrecon_gateway_calls_total"),
        "{metrics}"
    );
    assert_eq!(stop(&mut child), Some(0));
    let run_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        run_log.contains("\"level\":\"DEBUG\""),
        "not at debug level"
    );
    assert_clean("the daemon's log", &run_log);
    assert_clean("the HTTP answers", &answers);
    assert_clean("/metrics", &metrics);

    // The broker refuses a wrong, distinctive password: said, not shown.
    let wrong = format!("amqp://guest:{AMQP_PASSWORD}@127.0.0.1:5672/%2f");
    let config = write_config(&env, &wrong, &format!("127.0.0.1:{}", free_port()));
    let log = env.keys_dir.path().join("refused.log");
    let mut child = payrecon(&config, &log).arg("run").spawn().expect("spawn");
    let text = wait_for(&log, 60, |t| t.contains("refused the login of user guest"));
    assert_eq!(stop(&mut child), Some(0));
    let text = std::fs::read_to_string(&log).unwrap_or(text);
    assert!(text.contains("refused the login of user guest"), "{text}");
    assert_clean("the refused daemon's log", &text);

    // URLs that do not parse: the key is named, the value is not.
    for (key, url) in [
        (
            "database.url",
            format!("postgres//postgres:{DB_PASSWORD}@127.0.0.1/x"),
        ),
        ("amqp.url", format!("amqp:guest:{AMQP_PASSWORD}@127.0.0.1")),
    ] {
        let variable = format!("PAYRECON__{}", key.to_uppercase().replace('.', "__"));
        let log = env.keys_dir.path().join("bad-url.log");
        let status = payrecon(&config, &log)
            .env(&variable, &url)
            .arg("migrate")
            .status()
            .expect("migrate");
        assert_eq!(status.code(), Some(1));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains(key), "{text}");
        assert_clean("a bad URL's error", &text);
    }
}
