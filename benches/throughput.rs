//! `order.place` throughput against this machine's own broker ceiling,
//! measured in the same run so a busy, shared machine affects both alike.
//!
//! Baseline: publish N messages with confirms to a quorum queue, consume and
//! ack the same N (what any correct consumer must at least do).
//! payrecon: publish N `order.place` requests with confirms, the daemon
//! consumes them (batched transactions), until all N orders are committed.
//! Both sides publish the same way, in windows of 1000 whose publishes are
//! all started before any is awaited (`support/harness.rs`).
//! Messaging floor: the baseline plus one event of an order.created's size
//! published with confirms to `P.events` per message, on the daemon's own
//! events link (`messaging::confirm_link`), which is what the contract asks
//! of payrecon on the broker with no database and no logic.
//! Each phase also reports CPU per message by process and how busy the
//! machine was (see `support/cpu.rs`).
//! Target (issue "Foundation"): ratio ≥ 0.5.
//!
//! Run: `cargo bench --bench throughput` (PAYRECON_BENCH_N messages per round,
//! default 10000; PAYRECON_BENCH_ROUNDS rounds, default 5;
//! PAYRECON_BENCH_PREFETCH the daemon's `amqp.prefetch`, default the
//! contract's 256, to measure a deployment's own setting).
//! `PAYRECON_BENCH_QUICK=1`: a tenth of N, one round.

use std::time::{Duration, Instant};

#[path = "support/cpu.rs"]
mod cpu;
#[path = "support/harness.rs"]
mod harness;
#[path = "support/report.rs"]
mod report;

use cpu::CpuTicks;
use harness::{
    broker_ceiling, measured_since, publish_all, round3, sample_request, BenchDaemon, Measured,
};
use report::{thousands, Table};

const TARGET: f64 = 0.5;

fn main() {
    let n = report::size("PAYRECON_BENCH_N", 10_000);
    let rounds: usize = if report::quick() {
        1
    } else {
        harness::env_number("PAYRECON_BENCH_ROUNDS").unwrap_or(5)
    };
    harness::runtime().block_on(async move {
        // Alternate baseline and payrecon so that a change in the machine's
        // load hits both sides of a ratio alike; report the median round.
        let mut all = Vec::new();
        for round in 1..=rounds {
            let prefix = harness::unique_prefix();
            let base = broker_ceiling(&prefix, n, false).await;
            let floor = broker_ceiling(&prefix, n, true).await;
            let ours = payrecon_rate(&prefix, n).await;
            println!(
                "round {round}: broker ceiling {:>8.0} msg/s, floor {:>8.0}, payrecon {:>8.0}, ratio {:.3}",
                base.rate, floor.rate, ours.rate, ours.rate / base.rate
            );
            for (side, m) in [("baseline", base), ("floor", floor), ("payrecon", ours)] {
                println!("  machine during {side:<8}: busy {:.0}%, idle {:.0}%, iowait {:.0}%, steal {:.0}%", m.machine.busy, m.machine.idle, m.machine.iowait, m.machine.steal);
            }
            all.push((base, floor, ours));
        }
        // The median round by payrecon's ratio.
        all.sort_by(|a, b| (a.2.rate / a.0.rate).total_cmp(&(b.2.rate / b.0.rate)));
        let (base, floor, ours) = all[all.len() / 2];
        let ratio = ours.rate / base.rate;
        let mut t = Table::new(&["phase", "msg/s", "ratio", "CPU µs/msg this process", "PostgreSQL", "broker"]);
        for (name, m) in [("broker ceiling", base), ("messaging floor", floor), ("payrecon order.place", ours)] {
            t.row(&[
                name.into(),
                thousands(m.rate),
                format!("{:.3}", m.rate / base.rate),
                format!("{:.0}", m.this_us),
                format!("{:.0}", m.postgres_us),
                format!("{:.0}", m.broker_us),
            ]);
        }
        t.print(&format!(
            "order.place throughput, median of {rounds} round(s) of {n} (target ratio >= {TARGET}): {}",
            if ratio >= TARGET { "met" } else { "missed" }
        ));
        report::append(
            "throughput",
            "order.place",
            serde_json::json!({
                "n": n, "rounds": rounds,
                "rate": ours.rate.round(), "baseline": base.rate.round(),
                "ratio": round3(ratio), "target": TARGET, "met": ratio >= TARGET,
                "floor_ratio": round3(floor.rate / base.rate),
                "cpu_per_msg": ours.cpu_json(), "baseline_cpu_per_msg": base.cpu_json(),
            }),
        );
    });
}

async fn payrecon_rate(prefix: &str, n: usize) -> Measured {
    let bench = BenchDaemon::start(prefix, |_| {}).await;
    // The load generator's own work (printing N distinct requests) is not
    // payrecon's: it is done before the clock starts.
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| sample_request(&format!("bench-{i}")).into_bytes())
        .collect();
    let cpu = CpuTicks::now();
    let start = Instant::now();
    publish_all(&bench.ch, &bench.names.requests, &bodies).await;
    // The last request is taken last; once its inbox row is there, a count
    // confirms every order. (Counting every few milliseconds would itself
    // load the machine with table scans.)
    let pool = &bench.daemon.pool;
    let last = format!("bench-{}", n - 1);
    loop {
        let seen: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM inbox WHERE request_id = $1)")
                .bind(&last)
                .fetch_one(pool)
                .await
                .expect("poll");
        if seen {
            let done: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
                .fetch_one(pool)
                .await
                .expect("count");
            if done as usize >= n {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let measured = measured_since(start, &cpu, n);
    bench.stop().await;
    measured
}
