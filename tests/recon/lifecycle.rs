//! An empty day, the one-run-per-channel rule, and the CLI commands with
//! their exit codes.

use std::sync::Arc;

use payrecon::cli::{exit, ReconCommand};
use payrecon::domain::recon::RunStatus;
use payrecon::domain::Channel;
use payrecon::jobs::reconcile::{run_reconciliation, BillSource, RunOutcome};
use payrecon::store;

use crate::runs::{bill_bytes, every_category};
use crate::support::*;

#[tokio::test]
async fn empty_day() {
    for channel in [Channel::WechatPay, Channel::Alipay] {
        let db = TestDb::new().await;
        let gw = Arc::new(ScriptedGateway {
            channel: Some(channel),
            ..Default::default()
        });
        let ctx = context(&db.pool, channel, gw.clone());
        // No bill at the gateway (NO_STATEMENT_EXIST) and nothing on our side.
        let RunOutcome::Completed(r) =
            run_reconciliation(&ctx, channel, day(), BillSource::Gateway, "test")
                .await
                .unwrap()
        else {
            panic!("skipped")
        };
        let s = r.run.summary.unwrap();
        assert_eq!(
            (
                s.order_count,
                s.total_amount,
                s.average_amount,
                s.success_rate
            ),
            (0, 0, 0, 0.0)
        );
        assert_eq!(
            (s.bill_count, s.bill_amount, s.bill_fee, s.discrepancy_count),
            (0, 0, 0, 0)
        );
        assert!(r.discrepancies.is_empty());
        // An empty bill file reconciles the same way.
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "bill", &bill_bytes(channel, &[]));
        let RunOutcome::Completed(r) =
            run_reconciliation(&ctx, channel, day(), BillSource::File(path), "test")
                .await
                .unwrap()
        else {
            panic!("skipped")
        };
        assert_eq!(r.run.summary.unwrap().bill_count, 0);
        db.drop_db().await;
    }
}

#[tokio::test]
async fn one_run_per_channel() {
    let db = TestDb::new().await;
    let other = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO recon_runs (run_id, channel, business_date, status, trigger, bill_source, started_at, heartbeat_at) \
         VALUES ($1, 'wechat_pay', '2026-11-23', 'running', 'schedule', 'gateway', now(), now())",
    )
    .bind(other)
    .execute(&db.pool)
    .await
    .unwrap();
    let gw = Arc::new(ScriptedGateway::default());
    let ctx = context(&db.pool, Channel::WechatPay, gw);
    let outcome = run_reconciliation(
        &ctx,
        Channel::WechatPay,
        day(),
        BillSource::Gateway,
        "schedule",
    )
    .await
    .unwrap();
    assert_eq!(outcome, RunOutcome::Skipped(other));
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM recon_runs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(runs, 1, "a skipped run records nothing");

    // The other channel is not blocked.
    let gw = Arc::new(ScriptedGateway {
        channel: Some(Channel::Alipay),
        ..Default::default()
    });
    let ctx_alipay = context(&db.pool, Channel::Alipay, gw);
    assert!(matches!(
        run_reconciliation(
            &ctx_alipay,
            Channel::Alipay,
            day(),
            BillSource::Gateway,
            "test"
        )
        .await
        .unwrap(),
        RunOutcome::Completed(_)
    ));

    // A running run whose process died (no heartbeat for longer than the lease) is taken over.
    sqlx::query("UPDATE recon_runs SET heartbeat_at = now() - interval '1 hour' WHERE run_id = $1")
        .bind(other)
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(matches!(
        run_reconciliation(&ctx, Channel::WechatPay, day(), BillSource::Gateway, "test")
            .await
            .unwrap(),
        RunOutcome::Completed(_)
    ));
    let mut conn = db.pool.acquire().await.unwrap();
    let old = store::recon::get_run(&mut conn, other)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.status, RunStatus::Failed);
    drop(conn);

    // While a run is in progress, a second one of the channel is skipped.
    let hold = Arc::new(tokio::sync::Notify::new());
    let gw = Arc::new(ScriptedGateway {
        hold: Some(hold.clone()),
        ..Default::default()
    });
    let ctx = context(&db.pool, Channel::WechatPay, gw);
    let first = tokio::spawn({
        let ctx = ctx.clone();
        async move {
            run_reconciliation(&ctx, Channel::WechatPay, day(), BillSource::Gateway, "a").await
        }
    });
    let running = loop {
        let id: Option<uuid::Uuid> = sqlx::query_scalar(
            "SELECT run_id FROM recon_runs WHERE channel = 'wechat_pay' AND status = 'running'",
        )
        .fetch_optional(&db.pool)
        .await
        .unwrap();
        if let Some(id) = id {
            break id;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let second = run_reconciliation(&ctx, Channel::WechatPay, day(), BillSource::Gateway, "b")
        .await
        .unwrap();
    assert_eq!(second, RunOutcome::Skipped(running));
    hold.notify_one();
    let RunOutcome::Completed(r) = first.await.unwrap().unwrap() else {
        panic!("first run skipped")
    };
    assert_eq!(r.run.run_id, running);
    db.drop_db().await;
}

#[tokio::test]
async fn cli_run_report_list() {
    let s = every_category(Channel::WechatPay).await;
    let dir = tempfile::tempdir().unwrap();
    let bill = write_file(
        dir.path(),
        "bill.csv.gz",
        &bill_bytes(Channel::WechatPay, &s.rows),
    );
    let ctx = context(&s.db.pool, Channel::WechatPay, s.gw.clone());
    let cli = |cmd| payrecon::cli::recon::run(cmd, ctx.clone());

    let run = |bill_file| ReconCommand::Run {
        channel: "wechat_pay".into(),
        date: "2026-11-24".into(),
        bill_file: Some(bill_file),
    };
    assert_eq!(
        cli(run(bill.clone())).await,
        exit::OK,
        "discrepancies are not an error"
    );
    let bad = write_file(dir.path(), "bad.csv", b"not a bill\n");
    assert_eq!(cli(run(bad)).await, exit::FAILED);
    let bad_date = ReconCommand::Run {
        channel: "wechat_pay".into(),
        date: "24.11.2026".into(),
        bill_file: None,
    };
    assert_eq!(cli(bad_date).await, exit::FAILED);

    let report =
        |run: Option<String>, channel: Option<&str>, format: &str, output| ReconCommand::Report {
            run,
            channel: channel.map(str::to_string),
            date: channel.map(|_| "2026-11-24".to_string()),
            format: format.into(),
            output,
        };
    // --channel/--date: the latest run of the day, which is the failed one.
    let out = dir.path().join("latest.json");
    assert_eq!(
        cli(report(None, Some("wechat_pay"), "json", Some(out.clone()))).await,
        exit::OK
    );
    let latest: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(latest["status"], "failed");
    assert!(latest["error"].as_str().unwrap().contains("bill line 1"));

    let mut conn = s.db.pool.acquire().await.unwrap();
    let runs = store::recon::list_runs(&mut conn, 10).await.unwrap();
    drop(conn);
    assert_eq!(runs.len(), 2);
    let completed = runs
        .iter()
        .find(|r| r.status == RunStatus::Completed)
        .unwrap();
    for format in ["table", "json", "csv", "html"] {
        let out = dir.path().join(format!("report.{format}"));
        assert_eq!(
            cli(report(
                Some(completed.run_id.to_string()),
                None,
                format,
                Some(out.clone())
            ))
            .await,
            exit::OK
        );
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.contains("amount_mismatch"), "{format}: {text}");
    }
    // Nothing but the finished files: no temporary left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");

    assert_eq!(
        cli(report(
            Some(uuid::Uuid::new_v4().to_string()),
            None,
            "json",
            None
        ))
        .await,
        exit::NOT_FOUND
    );
    assert_eq!(
        cli(report(Some("nonsense".into()), None, "json", None)).await,
        exit::NOT_FOUND
    );
    assert_eq!(
        cli(report(None, Some("alipay"), "json", None)).await,
        exit::NOT_FOUND
    );
    assert_eq!(cli(ReconCommand::List { limit: 5 }).await, exit::OK);
    s.db.drop_db().await;
}

/// The daily job through the scheduler: the slot picks the previous business
/// day; a channel already being reconciled is skipped, not failed.
#[tokio::test]
async fn daily_job_reconciles_the_previous_day_and_skips_a_busy_channel() {
    use payrecon::jobs::reconcile::daily::{add_reconcile, JOB_NAME};
    use payrecon::jobs::{Scheduler, SlotOutcome};

    let s = every_category(Channel::WechatPay).await;
    let text = wechat_bill(&s.rows);
    let sha1 = payrecon::gateway::crypto::sha1_hex(text.as_bytes());
    *s.gw.bill.lock().unwrap() = Some((gzip(text.as_bytes()), Some(sha1)));
    let ctx = context(&s.db.pool, Channel::WechatPay, s.gw.clone());
    let mut scheduler = Scheduler::new();
    add_reconcile(&mut scheduler, &payrecon::config::Settings::default(), ctx).unwrap();

    // 10:00 on 2026-11-25 in +08:00 reconciles 2026-11-24.
    let slot = scheduler.next_slot(JOB_NAME, at(23, 0)).unwrap().unwrap();
    assert_eq!(slot.to_rfc3339(), "2026-11-25T02:00:00+00:00");
    let SlotOutcome::Succeeded(counts) = scheduler
        .run_slot_now(&s.db.pool, JOB_NAME, slot, slot)
        .await
        .unwrap()
    else {
        panic!("the slot did not run")
    };
    assert_eq!(
        (
            counts.get("completed"),
            counts.get("discrepancies"),
            counts.get("skipped")
        ),
        (1, 9, 0)
    );
    let mut conn = s.db.pool.acquire().await.unwrap();
    let latest = store::recon::latest_run(&mut conn, Channel::WechatPay, day())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (latest.status, latest.trigger.as_str()),
        (RunStatus::Completed, "schedule")
    );

    // Next day, with a run of the channel still going elsewhere.
    sqlx::query(
        "INSERT INTO recon_runs (run_id, channel, business_date, status, trigger, bill_source, started_at, heartbeat_at) \
         VALUES ($1, 'wechat_pay', '2026-11-25', 'running', 'cli', 'file', now(), now())",
    )
    .bind(uuid::Uuid::new_v4())
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    let next = scheduler.next_slot(JOB_NAME, slot).unwrap().unwrap();
    let SlotOutcome::Succeeded(counts) = scheduler
        .run_slot_now(&s.db.pool, JOB_NAME, next, next)
        .await
        .unwrap()
    else {
        panic!("the slot did not run")
    };
    assert_eq!((counts.get("completed"), counts.get("skipped")), (0, 1));
    s.db.drop_db().await;
}
