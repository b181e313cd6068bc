//! `payrecon demo`, run as a newcomer runs it: the real binary against the
//! real PostgreSQL and RabbitMQ. It must tell the whole story, write the
//! reports, find one discrepancy of each category, and leave nothing behind
//! (or keep everything with `--keep`).

mod common;

use std::process::Command;

use common::{AMQP, PG_ADMIN};

fn demo(keys: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_payrecon"))
        .arg("demo")
        .args(["--out-dir", out.to_str().unwrap()])
        .args(extra)
        .env("PAYRECON__SIMULATOR__KEYS_DIR", keys)
        .env(
            "PAYRECON__DATABASE__URL",
            "postgres://postgres@127.0.0.1:5432/payrecon",
        )
        .env("PAYRECON__AMQP__URL", AMQP)
        .output()
        .expect("run payrecon demo");
    let story = String::from_utf8_lossy(&output.stdout).into_owned();
    let code = output.status.code().unwrap_or(-1);
    assert_eq!(
        code,
        0,
        "{story}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (code, story)
}

/// The demo's own name, from its first line.
fn name_of(story: &str) -> String {
    let start = story
        .find("payrecon_demo_")
        .expect("the demo names its database");
    story[start..start + "payrecon_demo_".len() + 8].to_string()
}

async fn database_exists(name: &str) -> bool {
    let pool = sqlx::PgPool::connect(PG_ADMIN).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_one(&pool)
        .await
        .unwrap();
    n == 1
}

async fn queue_exists(name: &str) -> bool {
    let conn = lapin::Connection::connect(AMQP, Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let found = ch
        .queue_declare(name.into(), passive, Default::default())
        .await
        .is_ok();
    let _ = conn.close(200, "bye".into()).await;
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_tells_the_story_writes_the_reports_and_cleans_up() {
    let keys = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let (_, story) = demo(keys.path(), out.path(), &[]);
    for line in [
        "200 × order.created",
        "190 × payment.prepared",
        "170 × order.paid",
        "payment.anomaly (amount_mismatch)",
        "refused with HTTP 401",
        "60 shipped, 30 completed, 10 refunds succeeded, 5 orders fully refunded",
        "20 × order.cancelled",
        "alipay: 100 orders, 85 paid, bill 85 payments, 85 matched, 0 discrepancies",
    ] {
        assert!(story.contains(line), "missing {line:?} in:\n{story}");
    }
    for category in [
        "amount_mismatch",
        "missing_local",
        "missing_gateway",
        "status_mismatch",
        "paid_after_cancel",
        "refund_mismatch",
        "duplicate",
    ] {
        assert!(
            story
                .lines()
                .any(|l| l.trim_start().starts_with(category) && l.contains(" 1  (open)")),
            "{category} not found once in:\n{story}"
        );
    }
    let html = std::fs::read_to_string(out.path().join("report-wechat_pay.html")).unwrap();
    assert!(html.contains("<svg id=\"chart\""));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("report-wechat_pay.json")).unwrap())
            .unwrap();
    assert_eq!(report["summary"]["discrepancy_count"], 7);
    assert!(out.path().join("report-alipay.csv").exists());
    let name = name_of(&story);
    assert!(!database_exists(&name).await, "{name} was left behind");
    assert!(!queue_exists(&format!("{name}.requests")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_keep_leaves_the_database_and_queues() {
    let keys = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let (_, story) = demo(keys.path(), out.path(), &["--keep"]);
    let name = name_of(&story);
    let kept = database_exists(&name).await && queue_exists(&format!("{name}.requests")).await;
    // What the test kept, it removes.
    common::drop_prefix_and_database(&name).await;
    assert!(kept, "--keep removed {name}");
    assert!(story.contains(&format!("Kept: database {name}")));
}
