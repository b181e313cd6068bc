//! Issue 17, stage 4: reconciliation of a day of 1,000,000 paid orders
//! against PostgreSQL's own speed, for each channel's bill.
//!
//! Per size (100,000 and 1,000,000 orders; a tenth of each in quick mode) a
//! database of its own gets both channels' orders (`support/recon_data.rs`:
//! every discrepancy category, n/1000 cases each) before any clock. Then,
//! per channel:
//! - **payrecon**: a child process runs `run_reconciliation` on the bill
//!   file, the path of `payrecon recon run --bill-file` (bill streamed,
//!   matched, report written in its transaction); it reports its wall time,
//!   its CPU and its peak resident memory (VmHWM), and the report's figures.
//! - **baseline**: PostgreSQL alone `COPY`s the same bill's detail rows
//!   (decompressed beforehand) into an unlogged table and classifies them
//!   with one `FULL OUTER JOIN` (`support/recon_sql.rs`).
//!
//! The bench fails if the report differs from the SQL's, category by
//! category (counts and amounts), or either from the day's known mix.
//! Run: `cargo bench --bench recon`; `PAYRECON_BENCH_RECON_N` sets the
//! larger size (default 1,000,000), `PAYRECON_BENCH_QUICK=1` a tenth.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use payrecon::config::{DatabaseSettings, Secret};
use payrecon::domain::Channel;
use payrecon::jobs::reconcile::{
    business_window, run_reconciliation, BillSource, ReconContext, RunOutcome,
};
use payrecon::store;
use serde_json::json;
use sqlx::{Connection, PgConnection};

#[allow(dead_code)] // the throughput bench uses the rest
#[path = "support/cpu.rs"]
mod cpu;
#[path = "support/recon_data.rs"]
mod data;
#[path = "support/pg_cpu.rs"]
mod pg_cpu;
#[path = "support/report.rs"]
mod report;
#[path = "support/recon_sql.rs"]
mod sql;

use cpu::CpuTicks;
use report::{thousands, Table};

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const RSS_TARGET_MIB: f64 = 300.0;
const RATIO_TARGET: f64 = 1.0;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let channel: Channel = args[i + 2].parse().expect("channel");
        child(&args[i + 1], channel, Path::new(&args[i + 3]));
        return;
    }
    let large = report::size("PAYRECON_BENCH_RECON_N", 1_000_000) as u64;
    let sizes = [large / 10, large];
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut results: HashMap<Channel, Vec<Run>> = HashMap::new();
    for n in sizes {
        for (channel, run) in rt.block_on(one_size(n)) {
            results.entry(channel).or_default().push(run);
        }
    }
    for channel in [Channel::WechatPay, Channel::Alipay] {
        print_stage(channel, &results[&channel]);
    }
}

/// One channel at one size.
#[derive(Debug)]
struct Run {
    orders: u64,
    rows: u64,
    payrecon_s: f64,
    baseline_s: f64,
    /// CPU µs per bill row: payrecon's process, PostgreSQL during payrecon's
    /// run, PostgreSQL during the baseline.
    cpu_payrecon: f64,
    cpu_pg_payrecon: f64,
    cpu_pg_baseline: f64,
    hwm_kib: i64,
    hwm_start_kib: i64,
}

async fn one_size(n: u64) -> Vec<(Channel, Run)> {
    let name = format!("payrecon_bench_recon_{}", uuid::Uuid::new_v4().simple());
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    let settings = DatabaseSettings {
        url: Secret(url.clone()),
        max_connections: 2,
        password_file: String::new(),
    };
    let pool = store::connect(&settings).await.expect("bench database");
    let mut conn = pool.acquire().await.expect("connection");
    let started = Instant::now();
    for channel in [Channel::WechatPay, Channel::Alipay] {
        data::insert_orders(&mut conn, channel, n).await;
    }
    check_orders_load(&mut conn, n).await;
    // The inserts are written out now, not during a measurement.
    for stmt in [
        "VACUUM ANALYZE orders",
        "VACUUM ANALYZE refunds",
        "CHECKPOINT",
    ] {
        sqlx::query(stmt).execute(&mut *conn).await.expect(stmt);
    }
    eprintln!(
        "{n} orders per channel inserted in {:.1?}",
        started.elapsed()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let mut out = Vec::new();
    for channel in [Channel::WechatPay, Channel::Alipay] {
        let bill = dir.path().join(format!("{channel}-{n}.bill"));
        let detail = dir.path().join(format!("{channel}-{n}.csv"));
        let rows = data::write_bill(channel, n, &bill, &detail);
        let (run, ours) = run_payrecon(&url, channel, &bill, n, rows);
        let (baseline_s, cpu_pg_baseline, theirs) =
            run_baseline(&mut conn, channel, &detail, rows).await;
        compare(channel, n, &ours, &theirs);
        out.push((
            channel,
            Run {
                baseline_s,
                cpu_pg_baseline,
                ..run
            },
        ));
        let _ = std::fs::remove_file(&bill);
        let _ = std::fs::remove_file(&detail);
    }
    drop(conn);
    pool.close().await;
    let mut admin = PgConnection::connect(ADMIN_URL).await.expect("admin");
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("drop database");
    out
}

/// The generated rows read back through the store, one of each story: the
/// daemon's own code accepts them.
async fn check_orders_load(conn: &mut PgConnection, n: u64) {
    for channel in [Channel::WechatPay, Channel::Alipay] {
        for i in (1..=10.min(n)).chain([n]) {
            let id = payrecon::domain::OrderId::from_out_trade_no(&data::otn(channel, i, false))
                .expect("out_trade_no");
            let order = store::orders::get(conn, id).await.expect("order loads");
            assert!(order.is_some(), "order {i} of {channel} missing");
        }
    }
}

fn run_payrecon(
    url: &str,
    channel: Channel,
    bill: &Path,
    n: u64,
    rows: u64,
) -> (Run, sql::Figures) {
    let out = Command::new(std::env::current_exe().expect("exe"))
        .args(["--child", url, channel.as_str()])
        .arg(bill)
        .output()
        .expect("child");
    assert!(
        out.status.success(),
        "reconciliation child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the child's JSON line");
    let figures: sql::Figures = serde_json::from_value(v["figures"].clone()).expect("figures");
    let per_row = |ticks: f64| ticks * 10_000.0 / rows as f64;
    let run = Run {
        orders: n,
        rows,
        payrecon_s: v["seconds"].as_f64().expect("seconds"),
        baseline_s: 0.0,
        cpu_payrecon: per_row(v["cpu_ticks"].as_f64().expect("ticks")),
        cpu_pg_payrecon: per_row(v["pg_ticks"].as_f64().expect("ticks")),
        cpu_pg_baseline: 0.0,
        hwm_kib: v["hwm_kib"].as_i64().expect("hwm"),
        hwm_start_kib: v["hwm_start_kib"].as_i64().expect("hwm"),
    };
    (run, figures)
}

async fn run_baseline(
    conn: &mut PgConnection,
    channel: Channel,
    detail: &Path,
    rows: u64,
) -> (f64, f64, sql::Figures) {
    let (from, to) = business_window(data::day(), data::offset());
    let db = pg_cpu::database(conn).await;
    let before = pg_cpu::backend_ticks(conn, &db).await;
    let started = Instant::now();
    let figures = sql::baseline(conn, channel, detail, from, to).await;
    let seconds = started.elapsed().as_secs_f64();
    let after = pg_cpu::backend_ticks(conn, &db).await;
    sql::drop_bill(conn).await;
    let pg = after.saturating_sub(before) as f64 * 10_000.0 / rows as f64;
    (seconds, pg, figures)
}

/// The report must say what the SQL says, and both what the day holds.
fn compare(channel: Channel, n: u64, ours: &sql::Figures, theirs: &sql::Figures) {
    assert_eq!(
        ours, theirs,
        "{channel}, {n} orders: payrecon's report (left) differs from the SQL baseline's (right)"
    );
    for (category, count) in data::expected_counts(n) {
        let got = ours.get(category.as_str()).map(|f| f.0).unwrap_or(0);
        assert_eq!(got as u64, count, "{channel}, {n} orders: {category:?}");
    }
    eprintln!("{channel}, {n} orders: report = SQL baseline, category by category: {ours:?}");
}

fn print_stage(channel: Channel, runs: &[Run]) {
    let mut table = Table::new(&[
        "orders",
        "bill rows",
        "payrecon s",
        "baseline s",
        "ratio",
        "target",
        "met",
        "CPU µs/row payrecon",
        "PostgreSQL (payrecon)",
        "PostgreSQL (baseline)",
        "peak RSS MiB",
    ]);
    let mut lines = Vec::new();
    for r in runs {
        let ratio = r.payrecon_s / r.baseline_s;
        let mib = r.hwm_kib as f64 / 1024.0;
        let met = ratio <= RATIO_TARGET && mib <= RSS_TARGET_MIB;
        table.row(&[
            thousands(r.orders as f64),
            thousands(r.rows as f64),
            format!("{:.2}", r.payrecon_s),
            format!("{:.2}", r.baseline_s),
            format!("{ratio:.2}"),
            format!("≤ {RATIO_TARGET}, ≤ {RSS_TARGET_MIB} MiB"),
            if met { "yes" } else { "no" }.into(),
            format!("{:.1}", r.cpu_payrecon),
            format!("{:.1}", r.cpu_pg_payrecon),
            format!("{:.1}", r.cpu_pg_baseline),
            format!("{mib:.1}"),
        ]);
        lines.push(json!({
            "orders": r.orders,
            "bill_rows": r.rows,
            "payrecon_s": r.payrecon_s,
            "baseline_s": r.baseline_s,
            "ratio": ratio,
            "ratio_target": RATIO_TARGET,
            "peak_rss_mib": mib,
            "rss_at_start_mib": r.hwm_start_kib as f64 / 1024.0,
            "rss_target_mib": RSS_TARGET_MIB,
            "met": met,
            "cpu_us_per_row": {
                "payrecon": r.cpu_payrecon,
                "postgres_during_payrecon": r.cpu_pg_payrecon,
                "postgres_baseline": r.cpu_pg_baseline,
            },
        }));
    }
    table.print(&format!(
        "Reconciliation, {channel}: payrecon against PostgreSQL's COPY + FULL OUTER JOIN"
    ));
    if let [small, large] = runs {
        let per_order =
            (large.hwm_kib - small.hwm_kib) as f64 * 1024.0 / (large.orders - small.orders) as f64;
        println!("peak RSS growth: {per_order:.0} bytes per paid order");
    }
    report::append(
        "recon",
        &format!("recon_{channel}"),
        json!({ "sizes": lines }),
    );
}

/// The child: one reconciliation, as `payrecon recon run --bill-file` runs
/// it, and one JSON line on stdout.
fn child(url: &str, channel: Channel, bill: &Path) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let line = rt.block_on(async {
        let settings = DatabaseSettings {
            url: Secret(url.to_string()),
            max_connections: 5,
            password_file: String::new(),
        };
        let pool = store::connect_existing(&settings).await.expect("pool");
        let ctx = ReconContext {
            pool,
            // No gateway: the day's status_mismatches have other amounts,
            // which are never repaired, so no run would call one.
            gateways: HashMap::new(),
            business_offset: data::offset(),
            progress: None,
        };
        let hwm_start_kib = cpu::peak_rss_kib();
        // PostgreSQL's side is read here, while this run's backends live:
        // a backend's ticks leave /proc with it.
        let mut probe = PgConnection::connect(url).await.expect("probe connection");
        let db = pg_cpu::database(&mut probe).await;
        let ticks = CpuTicks::now().this;
        let pg_before = pg_cpu::backend_ticks(&mut probe, &db).await;
        let started = Instant::now();
        let outcome = run_reconciliation(
            &ctx,
            channel,
            data::day(),
            BillSource::File(bill.to_path_buf()),
            "bench",
        )
        .await
        .expect("reconciliation");
        let seconds = started.elapsed().as_secs_f64();
        let cpu_ticks = CpuTicks::now().this.saturating_sub(ticks);
        let pg_ticks = pg_cpu::backend_ticks(&mut probe, &db)
            .await
            .saturating_sub(pg_before);
        let RunOutcome::Completed(report) = outcome else {
            panic!("the run was skipped");
        };
        json!({
            "seconds": seconds,
            "cpu_ticks": cpu_ticks,
            "pg_ticks": pg_ticks,
            "hwm_kib": cpu::peak_rss_kib(),
            "hwm_start_kib": hwm_start_kib,
            "figures": sql::report_figures(&report),
        })
    });
    println!("{line}");
}
