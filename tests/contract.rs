//! Contract (docs/contract.md) items that no other test pinned down: configuration layering from
//! the environment, `recon.run` through the queue, bearer-token auth of
//! `/orders` and `/recon`, the non-loopback guard, and `recon report
//! --channel --date` / `recon list --limit` on the command line.

mod common;

use std::process::Command;

use common::{Broker, TestEnv};
use payrecon::app::Daemon;
use payrecon::config::Secret;
use payrecon::domain::OrderId;
use serde_json::{json, Value};

fn payrecon(env: &TestEnv) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payrecon"));
    cmd.env(
        "PAYRECON__DATABASE__URL",
        env.settings.database.url.expose(),
    )
    .env("PAYRECON__AMQP__PREFIX", &env.name)
    .env("PAYRECON__SIMULATOR__KEYS_DIR", env.keys_dir.path())
    .env_remove("DATABASE_URL")
    .env_remove("AMQP_URL")
    .env("RUST_LOG", "warn");
    cmd
}

fn code(out: &std::process::Output) -> Option<i32> {
    if out.status.code() != Some(0) {
        eprintln!("stderr: {}", String::from_utf8_lossy(&out.stderr));
    }
    out.status.code()
}

/// Values that look like numbers are still strings for string keys (a
/// numeric mchid, an all-digit token), and numbers may come as text.
#[test]
fn env_values_keep_their_string_type() {
    let env = TestEnv::new("cenv");
    let out = payrecon(&env)
        .env("PAYRECON__GATEWAYS__WECHAT_PAY__MCHID", "1900000001")
        .env("PAYRECON__HTTP__API_TOKEN", "123456")
        .env("PAYRECON__SIMULATOR__ALIPAY_APP_ID", "2021000000000001")
        .env("PAYRECON__AMQP__PREFETCH", "16")
        .env("PAYRECON__GATEWAYS__ALIPAY__ENABLED", "false")
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(0));
}

/// `DATABASE_URL` is above the files and below `PAYRECON__DATABASE__URL`.
#[test]
fn database_url_precedence() {
    let env = TestEnv::new("cdburl");
    let good = env.settings.database.url.expose().to_string();
    let bad = "postgres://nobody@127.0.0.1:1/nothing";

    let out = payrecon(&env)
        .env_remove("PAYRECON__DATABASE__URL")
        .env("DATABASE_URL", &good)
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(0));

    let out = payrecon(&env)
        .env("DATABASE_URL", bad)
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(0), "PAYRECON__DATABASE__URL wins");

    let out = payrecon(&env)
        .env_remove("PAYRECON__DATABASE__URL")
        .env("DATABASE_URL", bad)
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "DATABASE_URL beats the file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recon_run_request_completes_through_the_queue() {
    let env = TestEnv::new("crecon");
    let mut broker = Broker::connect(&env).await;
    let daemon = Daemon::start(env.settings.clone()).await.expect("daemon");
    let date = chrono::Utc::now().date_naive().to_string();
    broker
        .request(
            "recon.run",
            "recon-req-1",
            json!({"channel": "wechat_pay", "date": date}),
        )
        .await;
    // The daily job catches up its missed slot at startup and holds the
    // channel meanwhile; the request waits for it rather than being dropped.
    let done = loop {
        let e = broker.wait_event("recon.completed", 30).await;
        if e["request_id"].is_null() {
            continue; // a scheduled run
        }
        break e;
    };
    assert_eq!(done["request_id"], "recon-req-1");
    let data = &done["data"];
    assert_eq!(data["channel"], "wechat_pay");
    assert_eq!(data["date"], date);
    assert!(data.get("order").is_none());
    assert!(data["summary"]["discrepancy_count"].is_i64(), "{done}");
    let run_id = data["run_id"].as_str().expect("run_id").to_string();

    let report: Value = reqwest::get(format!("http://{}/recon/runs/{run_id}", daemon.http_addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["status"], "completed");
    assert_eq!(report["bill_source"], "gateway");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_and_recon_need_the_token_when_set() {
    let mut env = TestEnv::new("cauth");
    env.settings.http.api_token = Secret("s3cret".into());
    let daemon = Daemon::start(env.settings.clone()).await.expect("daemon");
    let base = format!("http://{}", daemon.http_addr);
    let http = reqwest::Client::new();
    let order = format!("{base}/orders/{}", OrderId::generate());
    for url in [
        order.as_str(),
        &format!("{base}/recon/runs"),
        &format!("{base}/recon/runs/{}", uuid::Uuid::new_v4()),
    ] {
        let none = http.get(url).send().await.unwrap();
        assert_eq!(none.status(), 401, "{url} without a token");
        let wrong = http.get(url).bearer_auth("nope").send().await.unwrap();
        assert_eq!(wrong.status(), 401, "{url} with a wrong token");
    }
    // A fresh installation reconciles nothing by itself at start-up.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let ok = http
        .get(format!("{base}/recon/runs"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let runs: Value = ok.json().await.unwrap();
    assert_eq!(runs, json!([]));
    let missing = http.get(&order).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(missing.status(), 404);
    // Health and metrics stay open.
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_token_on_a_public_address_is_refused() {
    let mut env = TestEnv::new("cpublic");
    env.settings.http.listen = "0.0.0.0:0".into();
    assert!(Daemon::start(env.settings.clone()).await.is_err());

    let out = payrecon(&env)
        .env("PAYRECON__HTTP__LISTEN", "0.0.0.0:0")
        .env("PAYRECON__SIMULATOR__LISTEN", "127.0.0.1:0")
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("api_token"));
}

fn run_id_of(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "run")
        .nth(1)
        .unwrap_or_else(|| panic!("no run id in {text}"))
        .to_string()
}

#[test]
fn recon_report_by_day_is_the_latest_run_and_list_limits() {
    let env = TestEnv::new("creport");
    let bill = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/bills/wechat_all.csv"
    );
    let run = || {
        payrecon(&env)
            .args(["recon", "run", "--channel", "wechat_pay"])
            .args(["--date", "2024-01-01", "--bill-file", bill])
            .output()
            .unwrap()
    };
    let first = run();
    assert_eq!(code(&first), Some(0));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let second = run();
    assert_eq!(code(&second), Some(0));
    let (first, second) = (run_id_of(&first), run_id_of(&second));
    assert_ne!(first, second);

    let report = payrecon(&env)
        .args(["recon", "report", "--channel", "wechat_pay"])
        .args(["--date", "2024-01-01", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(code(&report), Some(0));
    let json: Value = serde_json::from_slice(&report.stdout).expect("JSON report");
    assert_eq!(json["run_id"], second.as_str());
    assert_eq!(json["bill_source"], "file");

    let by_id = payrecon(&env)
        .args(["recon", "report", "--run", &first, "--format", "csv"])
        .output()
        .unwrap();
    assert_eq!(code(&by_id), Some(0));
    assert!(String::from_utf8_lossy(&by_id.stdout).starts_with("category,"));

    let other_day = payrecon(&env)
        .args([
            "recon",
            "report",
            "--channel",
            "wechat_pay",
            "--date",
            "2024-01-02",
        ])
        .output()
        .unwrap();
    assert_eq!(other_day.status.code(), Some(3));
    let no_run = payrecon(&env)
        .args([
            "recon",
            "report",
            "--run",
            &uuid::Uuid::new_v4().to_string(),
        ])
        .output()
        .unwrap();
    assert_eq!(no_run.status.code(), Some(3));

    let list = payrecon(&env)
        .args(["recon", "list", "--limit", "1"])
        .output()
        .unwrap();
    assert_eq!(code(&list), Some(0));
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains(&second), "{text}");
    assert!(!text.contains(&first), "{text}");
    let all = payrecon(&env).args(["recon", "list"]).output().unwrap();
    let text = String::from_utf8_lossy(&all.stdout);
    let (a, b) = (text.find(&second), text.find(&first));
    assert!(a.is_some() && b.is_some() && a < b, "newest first: {text}");
}
