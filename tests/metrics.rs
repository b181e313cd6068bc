//! `/metrics` as a dashboard reads it: after a daemon placed orders, called
//! a gateway, dead-lettered a request and ran a reconciliation, every series
//! the README lists (and config/'s dashboard and alerts use) is there with
//! the value the database and the broker hold. One test in this binary: the recorder is process-wide, so a
//! second daemon here would move the same gauges.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use payrecon::app::Daemon;
use serde_json::json;

use common::{Broker, TestEnv};

/// A sample's value: the first line of `name` whose labels include `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, found) = match series.split_once('{') {
                Some((m, rest)) => (m, parse_labels(rest.trim_end_matches('}'))),
                None => (series, HashMap::new()),
            };
            let matches = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| found.get(*k).map(String::as_str) == Some(*v));
            matches.then(|| value.parse().ok()).flatten()
        })
}

fn parse_labels(text: &str) -> HashMap<String, String> {
    text.split("\",")
        .filter_map(|pair| {
            let (k, v) = pair.split_once("=\"")?;
            Some((k.to_string(), v.trim_end_matches('"').to_string()))
        })
        .collect()
}

async fn scrape(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// Scrapes until `pred` holds (the DLQ and the relay settle asynchronously).
async fn scrape_until(base: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(base).await;
        if pred(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_what_the_daemon_did() {
    let env = TestEnv::new("metrics");
    let mut broker = Broker::connect(&env).await;
    let daemon = Daemon::start(env.settings.clone()).await.expect("daemon");
    let base = format!("http://{}", daemon.http_addr);
    let http = reqwest::Client::new();

    let paid = broker.place_order("alipay").await;
    broker.place_order("wechat_pay").await;
    broker.place_order("wechat_pay").await;
    let pay = json!({"order_id": paid.to_string(), "amount": 3998, "payment_method": "alipay"});
    broker
        .request("payment.request", &format!("pay-{paid}"), pay)
        .await;
    broker.wait_event("payment.prepared", 30).await;
    // Paid 1 fen short at the gateway: an anomaly now, a discrepancy in the
    // reconciliation below.
    let sim = daemon.simulator_base_url.clone().expect("simulator");
    let answer = http
        .post(format!("{sim}/sim/pay"))
        .json(&json!({"channel": "alipay", "out_trade_no": paid.out_trade_no(), "amount": 3997}))
        .send()
        .await
        .expect("sim pay");
    assert_eq!(answer.status(), 200);
    broker.wait_event("payment.anomaly", 30).await;
    broker
        .publish_raw(&env.names().requests, b"this is not JSON")
        .await;
    let day = (Utc::now() + chrono::Duration::hours(8)).date_naive();
    let recon = json!({"channel": "alipay", "date": day.to_string()});
    broker.request("recon.run", "recon-metrics", recon).await;
    let done = broker.wait_event("recon.completed", 60).await;
    let run_id: uuid::Uuid = done["data"]["run_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("run_id");

    let text = scrape_until(&base, "settled", |t| {
        sample(t, "payrecon_dlq_depth", &[("queue", "requests")]) == Some(1.0)
            && sample(t, "payrecon_outbox_unpublished_events", &[]) == Some(0.0)
    })
    .await;
    let get = |name: &str, labels: &[(&str, &str)]| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{text}"))
    };

    // Message rates by type and outcome; the dead letter in both its series.
    let placed = get(
        "payrecon_messages_total",
        &[
            ("queue", "requests"),
            ("type", "order.place"),
            ("outcome", "applied"),
        ],
    );
    assert_eq!(placed, 3.0);
    let invalid = get(
        "payrecon_messages_total",
        &[("type", "unknown"), ("outcome", "invalid")],
    );
    assert_eq!(invalid, 1.0);
    assert_eq!(
        get("payrecon_dead_letters_total", &[("queue", "requests")]),
        1.0
    );
    assert_eq!(
        get("payrecon_dlq_depth", &[("queue", "notifications")]),
        0.0
    );
    let notified = get(
        "payrecon_messages_total",
        &[("queue", "notifications"), ("type", "gateway.notification")],
    );
    assert!(notified >= 1.0);

    // Gateway calls by outcome, and their latency.
    let prepay = [("channel", "alipay"), ("operation", "prepay")];
    assert!(
        get(
            "payrecon_gateway_calls_total",
            &[prepay[0], prepay[1], ("outcome", "ok")]
        ) >= 1.0
    );
    assert!(get("payrecon_gateway_call_duration_seconds_count", &prepay) >= 1.0);
    assert!(get("payrecon_gateway_call_duration_seconds_sum", &prepay) > 0.0);

    // Orders by status: what the database holds.
    let pool = payrecon::store::connect(&env.settings.database)
        .await
        .expect("pool");
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM orders GROUP BY status")
            .fetch_all(&pool)
            .await
            .unwrap();
    for status in payrecon::domain::OrderStatus::ALL {
        let want = counts
            .iter()
            .find(|(s, _)| s == status.as_str())
            .map_or(0, |(_, n)| *n);
        assert_eq!(
            get("payrecon_orders", &[("status", status.as_str())]),
            want as f64,
            "{}",
            status.as_str()
        );
    }

    // Readiness and the outbox lag.
    assert_eq!(get("payrecon_ready", &[("dependency", "database")]), 1.0);
    assert_eq!(get("payrecon_ready", &[("dependency", "broker")]), 1.0);
    assert_eq!(get("payrecon_outbox_oldest_unpublished_seconds", &[]), 0.0);

    // The last reconciliation: its finish and its discrepancies per category.
    let finished: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM finished_at)::float8 FROM recon_runs WHERE run_id = $1",
    )
    .bind(run_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    let last = get(
        "payrecon_recon_last_success_timestamp_seconds",
        &[("channel", "alipay")],
    );
    assert!((last - finished).abs() < 0.01, "{last} vs {finished}");
    assert_eq!(
        get(
            "payrecon_recon_last_success_timestamp_seconds",
            &[("channel", "wechat_pay")]
        ),
        0.0
    );
    let by_category: Vec<(String, i64)> = sqlx::query_as(
        "SELECT category, count(*) FROM recon_discrepancies WHERE run_id = $1 GROUP BY category",
    )
    .bind(run_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        !by_category.is_empty(),
        "the short payment is a discrepancy"
    );
    for category in payrecon::domain::recon::Category::ALL {
        let want = by_category
            .iter()
            .find(|(c, _)| c == category.as_str())
            .map_or(0, |(_, n)| *n);
        let labels = [("channel", "alipay"), ("category", category.as_str())];
        assert_eq!(
            get("payrecon_recon_last_discrepancies", &labels),
            want as f64,
            "{}",
            category.as_str()
        );
    }
    assert_eq!(
        get(
            "payrecon_recon_runs_total",
            &[("channel", "alipay"), ("outcome", "completed")]
        ),
        1.0
    );
    pool.close().await;
    daemon.stop().await;
}
