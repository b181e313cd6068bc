//! Issue 17, stage 3: `order.place` latency under a steady offered load.
//!
//! Open loop: requests are published on a fixed schedule (rate R for
//! PAYRECON_BENCH_SECONDS, default 30) whatever the daemon answers, and each
//! latency runs from the request's *scheduled* send time to its
//! `order.created` seen on a queue of the bench's own bound to `P.events`,
//! so a stall delays every request scheduled during it and none is hidden
//! (no coordinated omission). Percentiles from an HDR histogram.
//! Rates: 1,000/s, 2,000/s and 50 % of the saturation rate measured first in
//! the same run (a drain of PAYRECON_BENCH_N orders, default 10,000,
//! published as fast as the broker takes them, as the throughput bench does).
//! Target: p99 ≤ 25 ms.
//!
//! Run: `cargo bench --bench latency` (`PAYRECON_BENCH_QUICK=1`: 3 s per
//! rate and a tenth of the drain).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use lapin::BasicProperties;
use payrecon::messaging::publisher::{self, Outgoing};
use serde_json::json;

#[allow(dead_code)] // the machine shares are for the throughput bench
#[path = "support/cpu.rs"]
mod cpu;
#[path = "support/harness.rs"]
mod harness;
#[path = "support/report.rs"]
mod report;
#[path = "support/tap.rs"]
mod tap;

use cpu::CpuTicks;
use harness::{measured_since, place_request, publish_all, BenchDaemon, Measured};
use report::{thousands, Table};
use tap::EventTap;

const TARGET_P99_MS: f64 = 25.0;

struct Phase {
    name: String,
    rate: f64,
    hist: Histogram<u64>,
    measured: Measured,
}

fn main() {
    let secs = report::size("PAYRECON_BENCH_SECONDS", 30) as f64;
    let drain_n = report::size("PAYRECON_BENCH_N", 10_000);
    harness::runtime().block_on(async move {
        let prefix = harness::unique_prefix();
        let bench = BenchDaemon::start(&prefix, |_| {}).await;
        let tap = EventTap::bind(&bench.conn, &bench.names, &["order.created"]).await;
        let saturation = drain(&bench, &tap, drain_n).await;
        println!(
            "saturation: {} order.place/s (a drain of {drain_n})",
            thousands(saturation.rate)
        );
        let mut phases = Vec::new();
        let rates = [
            ("1,000/s".to_string(), 1000.0),
            ("2,000/s".to_string(), 2000.0),
            (
                format!("50% of saturation ({}/s)", thousands(saturation.rate / 2.0)),
                saturation.rate / 2.0,
            ),
        ];
        for (k, (name, rate)) in rates.into_iter().enumerate() {
            bench.checkpoint().await;
            let (hist, measured) = open_loop(&bench, &tap, &format!("lat{k}"), rate, secs).await;
            phases.push(Phase {
                name,
                rate,
                hist,
                measured,
            });
        }
        bench.stop().await;
        report(secs, saturation, &phases);
    });
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn report(secs: f64, saturation: Measured, phases: &[Phase]) {
    let mut t = Table::new(&[
        "offered load",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "target p99 <= 25 ms",
        "CPU µs/msg this process",
        "PostgreSQL",
        "broker",
    ]);
    for p in phases {
        let h = &p.hist;
        let p99 = ms(h.value_at_quantile(0.99));
        let met = p99 <= TARGET_P99_MS;
        t.row(&[
            p.name.clone(),
            format!("{:.1}", ms(h.value_at_quantile(0.5))),
            format!("{p99:.1}"),
            format!("{:.1}", ms(h.value_at_quantile(0.999))),
            format!("{:.1}", ms(h.max())),
            if met { "met" } else { "missed" }.into(),
            format!("{:.0}", p.measured.this_us),
            format!("{:.0}", p.measured.postgres_us),
            format!("{:.0}", p.measured.broker_us),
        ]);
        report::append(
            "latency",
            &format!("order.place@{:.0}/s", p.rate),
            json!({
                "offered_rate": p.rate.round(), "seconds": secs, "n": h.len(),
                "saturation_rate": saturation.rate.round(),
                "load_to_saturation": harness::round3(p.rate / saturation.rate),
                "p50_ms": ms(h.value_at_quantile(0.5)), "p99_ms": p99,
                "p999_ms": ms(h.value_at_quantile(0.999)), "max_ms": ms(h.max()),
                "target_p99_ms": TARGET_P99_MS, "met": met,
                "cpu_per_msg": p.measured.cpu_json(),
            }),
        );
    }
    t.print(&format!(
        "latency: order.place to order.created, open loop, {secs:.0} s per rate; saturation {} /s",
        thousands(saturation.rate)
    ));
    println!("(latency from each request's scheduled send time; this process = the daemon and the bench)");
}

/// Publishes `n` requests as fast as the broker confirms them, until the
/// last `order.created`: the saturation rate.
async fn drain(bench: &BenchDaemon, tap: &EventTap, n: usize) -> Measured {
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| place_request(&format!("drain-{i}"), "wechat_pay", None).into_bytes())
        .collect();
    let before = tap.count("order.created").await;
    let cpu = CpuTicks::now();
    let start = Instant::now();
    publish_all(&bench.ch, &bench.names.requests, &bodies).await;
    tap.wait_for("order.created", before + n, Duration::from_secs(300))
        .await;
    measured_since(start, &cpu, n)
}

/// Offers `rate` requests per second for `secs` on a fixed schedule, each
/// publish started on time whatever became of the earlier ones, and
/// returns the latencies from each scheduled time to its `order.created`.
async fn open_loop(
    bench: &BenchDaemon,
    tap: &EventTap,
    tag: &str,
    rate: f64,
    secs: f64,
) -> (Histogram<u64>, Measured) {
    let n = (rate * secs).round() as usize;
    let ids: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        ids.iter()
            .map(|rid| place_request(rid, "wechat_pay", None).into_bytes())
            .collect(),
    );
    let before = tap.count("order.created").await;
    let scheduled = |i: usize| Duration::from_secs_f64(i as f64 / rate);
    let cpu = CpuTicks::now();
    let t0 = Instant::now();
    let mut sent = 0;
    let mut confirms = Vec::new();
    while sent < n {
        let due = (((t0.elapsed().as_secs_f64()) * rate) as usize + 1).min(n);
        if due > sent {
            // Confirms are awaited elsewhere: the schedule never waits for
            // the broker or the daemon.
            let (ch, queue, bodies) = (
                bench.ch.clone(),
                bench.names.requests.clone(),
                bodies.clone(),
            );
            let range = sent..due;
            confirms.push(tokio::spawn(async move {
                let messages = bodies[range]
                    .iter()
                    .map(|body| Outgoing {
                        exchange: "",
                        routing_key: &queue,
                        body,
                        properties: BasicProperties::default()
                            .with_delivery_mode(2)
                            .with_content_type("application/json".into()),
                    })
                    .collect();
                let acked = publisher::publish_all(&ch, messages)
                    .await
                    .expect("publish");
                assert!(acked.iter().all(|ok| *ok), "broker nacked a request");
            }));
            sent = due;
        }
        if sent < n {
            tokio::time::sleep_until((t0 + scheduled(sent)).into()).await;
        }
    }
    for c in confirms {
        c.await.expect("publisher");
    }
    tap.wait_for("order.created", before + n, Duration::from_secs(120))
        .await;
    let measured = measured_since(t0, &cpu, n);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
    let seen = tap.seen.lock().await;
    for (i, rid) in ids.iter().enumerate() {
        let arrived = seen
            .arrived
            .get(rid)
            .expect("an order.created for every request");
        let latency = arrived.saturating_duration_since(t0 + scheduled(i));
        hist.saturating_record(latency.as_micros() as u64);
    }
    (hist, measured)
}
