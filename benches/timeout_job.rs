//! Issue 17, stage 5: the timeout job on 100,000 expired orders (10,000 in
//! quick mode; `PAYRECON_BENCH_TIMEOUT_N`), half WeChat Pay, half Alipay,
//! each prepaid at the gateway simulator beforehand (and an Alipay one
//! scanned, so that its trade exists and the close is real): the job queries
//! every one, closes it and cancels the order. Figure: cancellations per
//! second.
//!
//! Baseline in the same run: the same query + close HTTP calls, through the
//! same adapters (same signing and verification), driven directly at the
//! job's concurrency against a fifth as many other prepaid payments (a
//! rate needs no more, and each payment costs two RSA signatures to set
//! up): the gateway's own rate, which the job cannot beat. The simulator runs in this process,
//! so "this process" CPU covers the simulator and the job (or the direct
//! calls); the difference between the two is the job's own.
//!
//! Afterwards the simulator's call log is checked: every order was queried
//! and closed, each call answered. Run: `cargo bench --bench timeout_job`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use futures::StreamExt;
use payrecon::config::{DatabaseSettings, Secret, Settings};
use payrecon::domain::{Channel, Money};
use payrecon::gateway::factory::build_gateways;
use payrecon::gateway::{CloseOutcome, Gateway, PrepayRequest, TradeState};
use payrecon::jobs::timeout_cancel::DEFAULT_BATCH;
use payrecon::jobs::TimeoutCancel;
use payrecon::simulator::{SimKeys, SimOptions, Simulator};
use payrecon::store;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

#[allow(dead_code)] // the throughput bench uses the rest
#[path = "support/cpu.rs"]
mod cpu;
#[path = "support/pg_cpu.rs"]
mod pg_cpu;
#[path = "support/report.rs"]
mod report;

use cpu::CpuTicks;
use report::{thousands, Table};

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The job's own default (`TimeoutCancel::new`), which the daemon runs with.
const JOB_CONCURRENCY: usize = 8;
/// Prepays before the clock, as many at once.
const SETUP_CONCURRENCY: usize = 16;

type Gateways = HashMap<Channel, Arc<dyn Gateway>>;

fn main() {
    let n = report::size("PAYRECON_BENCH_TIMEOUT_N", 100_000) as u64;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(bench(n));
}

fn channel_of(i: u64) -> Channel {
    if i.is_multiple_of(2) {
        Channel::WechatPay
    } else {
        Channel::Alipay
    }
}

/// Payment `i`'s out_trade_no (the hex of its order id); the baseline's
/// payments (`direct`) have ids no order has.
fn otn(i: u64, direct: bool) -> String {
    let set = if direct { 0xb } else { 0xa };
    format!("000000010000700080{set:02x}{i:012x}")
}

fn amount(i: u64) -> i64 {
    100 + (i % 9_900) as i64
}

async fn bench(n: u64) {
    let keys_dir = report::results_path()
        .parent()
        .map(|p| p.join("bench-sim-keys"))
        .expect("target dir");
    let mut settings = Settings::default();
    settings.simulator.keys_dir = keys_dir.clone();
    // Nobody listens there: no payment happens, so nothing is notified.
    settings.gateways.wechat_pay.notify_url = "http://127.0.0.1:9/notify/wechat_pay".into();
    settings.gateways.alipay.notify_url = "http://127.0.0.1:9/notify/alipay".into();
    tokio::task::spawn_blocking(move || SimKeys::load_or_create(&keys_dir))
        .await
        .expect("keys task")
        .expect("simulator keys");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let shutdown = CancellationToken::new();
    let sim = Simulator::start(
        SimOptions::new(settings.simulator.clone()),
        listener,
        shutdown.clone(),
    )
    .await
    .expect("simulator");
    let base = sim.base_url();
    let gateways = build_gateways(&settings, Some(&base)).expect("gateways");
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");

    let name = format!("payrecon_bench_timeout_{}", uuid::Uuid::new_v4().simple());
    let db = DatabaseSettings {
        url: Secret(format!("postgres://postgres@127.0.0.1:5432/{name}")),
        max_connections: settings.database.max_connections,
        password_file: String::new(),
    };
    let pool = store::connect(&db).await.expect("bench database");
    let now = Utc::now().trunc_subsecs(6);

    let sample = (n / 5).max(1);
    let started = Instant::now();
    prepay_all(&gateways, &http, &base, n, sample, now).await;
    insert_expired(&pool, n, now).await;
    eprintln!(
        "{n} + {sample} payments prepaid, {n} expired orders inserted in {:.1?}",
        started.elapsed()
    );
    let mut probe = pool.acquire().await.expect("probe connection");
    let cpu = |before: CpuTicks, pg_before: u64, pg_after: u64, n: u64| {
        let this = CpuTicks::now().this.saturating_sub(before.this);
        let us = |t: u64| t as f64 * 10_000.0 / n as f64;
        (us(this), us(pg_after.saturating_sub(pg_before)))
    };

    // Baseline first: its calls are then out of the way of the call log's
    // window, which must hold all of the job's.
    let (before, pg_before) = (
        CpuTicks::now(),
        pg_cpu::backend_ticks(&mut probe, &name).await,
    );
    let t = Instant::now();
    direct_calls(&gateways, sample).await;
    let baseline_s = t.elapsed().as_secs_f64();
    let pg_after = pg_cpu::backend_ticks(&mut probe, &name).await;
    let baseline_cpu = cpu(before, pg_before, pg_after, sample);

    let job = TimeoutCancel::new(pool.clone(), gateways.clone(), DEFAULT_BATCH);
    let (before, pg_before) = (
        CpuTicks::now(),
        pg_cpu::backend_ticks(&mut probe, &name).await,
    );
    let t = Instant::now();
    let counts = job.run_at(now).await.expect("timeout job");
    let job_s = t.elapsed().as_secs_f64();
    let pg_after = pg_cpu::backend_ticks(&mut probe, &name).await;
    let job_cpu = cpu(before, pg_before, pg_after, n);
    drop(probe);
    assert_eq!(
        counts.get("cancelled"),
        n,
        "every expired order cancelled: {counts:?}"
    );
    check_call_log(&http, &base, n).await;

    let (job_rate, base_rate) = (n as f64 / job_s, sample as f64 / baseline_s);
    let ratio = job_rate / base_rate;
    let mut table = Table::new(&[
        "",
        "orders",
        "s",
        "orders/s",
        "ratio",
        "CPU µs/order: this process",
        "PostgreSQL",
    ]);
    table.row(&[
        "query+close alone".into(),
        thousands(sample as f64),
        format!("{baseline_s:.1}"),
        thousands(base_rate),
        "1".into(),
        format!("{:.0}", baseline_cpu.0),
        format!("{:.0}", baseline_cpu.1),
    ]);
    table.row(&[
        "timeout job".into(),
        thousands(n as f64),
        format!("{job_s:.1}"),
        thousands(job_rate),
        format!("{ratio:.2}"),
        format!("{:.0}", job_cpu.0),
        format!("{:.0}", job_cpu.1),
    ]);
    table.print(&format!(
        "Timeout job: {n} expired prepaid orders, concurrency {JOB_CONCURRENCY}, against the simulator's query+close"
    ));
    report::append(
        "timeout_job",
        "timeout",
        json!({
            "orders": n,
            "baseline_payments": sample,
            "cancellations_per_s": job_rate,
            "baseline_query_close_per_s": base_rate,
            "ratio": ratio,
            "target": null,
            "met": null,
            "concurrency": JOB_CONCURRENCY,
            "cpu_us_per_order": {
                "job_and_simulator": job_cpu.0,
                "postgres_job": job_cpu.1,
                "direct_calls_and_simulator": baseline_cpu.0,
                "postgres_direct": baseline_cpu.1,
            },
            "peak_rss_mib": cpu::peak_rss_kib() as f64 / 1024.0,
            "every_order_queried_and_closed": true,
        }),
    );

    pool.close().await;
    let mut admin = PgConnection::connect(ADMIN_URL).await.expect("admin");
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("drop database");
    shutdown.cancel();
    let _ = sim.stopped().await;
}

/// Prepays the job's `n` payments and the baseline's `sample` at the simulator
/// (an Alipay precreate is also scanned: only then does its trade exist).
async fn prepay_all(
    gateways: &Gateways,
    http: &reqwest::Client,
    base: &str,
    n: u64,
    sample: u64,
    now: DateTime<Utc>,
) {
    let all = (1..=n)
        .map(|i| (i, false))
        .chain((1..=sample).map(|i| (i, true)));
    let calls = all.map(|(i, direct)| async move {
        let channel = channel_of(i);
        let request = PrepayRequest {
            out_trade_no: otn(i, direct),
            amount: Money::from_fen(amount(i)).expect("amount"),
            description: "bench order".into(),
            notify_url: format!("http://127.0.0.1:9/notify/{channel}"),
            // The gateway's deadline is later than ours: the job closes it.
            expires_at: now + Duration::hours(1),
        };
        gateways[&channel].prepay(&request).await.expect("prepay");
        if channel == Channel::Alipay {
            let scanned = http
                .post(format!("{base}/sim/scan"))
                .json(&json!({"channel": "alipay", "out_trade_no": request.out_trade_no}))
                .send()
                .await
                .expect("scan");
            assert!(scanned.status().is_success(), "scan: {}", scanned.status());
        }
    });
    futures::stream::iter(calls)
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
}

/// The job's orders: pending, prepared, expired ten minutes before `now`.
async fn insert_expired(pool: &sqlx::PgPool, n: u64, now: DateTime<Utc>) {
    let ids: Vec<String> = (1..=n).map(|i| otn(i, false)).collect();
    let channels: Vec<&str> = (1..=n).map(|i| channel_of(i).as_str()).collect();
    let amounts: Vec<i64> = (1..=n).map(amount).collect();
    sqlx::query(
        "INSERT INTO orders (order_id, out_trade_no, user_id, items, currency, total_amount, \
           payment_method, status, payment_state, created_at, expires_at, updated_at) \
         SELECT id::uuid, id, 'u1', \
           jsonb_build_array(jsonb_build_object('product_id', 'p1', 'quantity', 1, 'unit_price', amt)), \
           'CNY', amt, ch, 'pending_payment', 'prepared', \
           $4::timestamptz - interval '40 minutes', $4::timestamptz - interval '10 minutes', $4 \
         FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS t(id, ch, amt)",
    )
    .bind(&ids)
    .bind(&channels)
    .bind(&amounts)
    .bind(now)
    .execute(pool)
    .await
    .expect("insert orders");
    for stmt in ["VACUUM ANALYZE orders", "CHECKPOINT"] {
        sqlx::query(stmt).execute(pool).await.expect(stmt);
    }
}

/// The baseline: query (unpaid) then close, per payment, at the job's concurrency.
async fn direct_calls(gateways: &Gateways, n: u64) {
    let calls = (1..=n).map(|i| async move {
        let gw = &gateways[&channel_of(i)];
        let id = otn(i, true);
        let status = gw.query(&id).await.expect("query");
        assert_eq!(status.state, TradeState::NotPaid, "{id}");
        let closed = gw.close(&id).await.expect("close");
        assert!(matches!(closed, CloseOutcome::Closed), "{id}");
    });
    futures::stream::iter(calls)
        .buffer_unordered(JOB_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
}

/// Every job order has an answered query and an answered close in the
/// simulator's log (which keeps the latest 200,000 calls: the job's).
async fn check_call_log(http: &reqwest::Client, base: &str, n: u64) {
    let calls: Vec<serde_json::Value> = http
        .get(format!("{base}/sim/calls?since=0"))
        .send()
        .await
        .expect("call log")
        .json()
        .await
        .expect("call log JSON");
    let mut queried = HashSet::new();
    let mut closed = HashSet::new();
    for c in &calls {
        let (Some(op), Some(otn)) = (c["op"].as_str(), c["out_trade_no"].as_str()) else {
            continue;
        };
        assert_eq!(c["fault"], "answered", "{c}");
        match op {
            "query" => queried.insert(otn.to_string()),
            "close" => closed.insert(otn.to_string()),
            _ => false,
        };
    }
    for i in 1..=n {
        let id = otn(i, false);
        assert!(queried.contains(&id), "order {id} was not queried");
        assert!(closed.contains(&id), "order {id} was not closed");
    }
    eprintln!("call log: all {n} orders queried and closed at the gateway");
}
