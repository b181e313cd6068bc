//! Issue 17, stage 2: prepays against the simulator.
//!
//! N `payment.request` (PAYRECON_BENCH_N, default 5,000; half WeChat Pay,
//! half Alipay) for orders placed through the daemon before the clock, the
//! simulator in-process (the default `simulator` mode). Clock: from the
//! first publish to the last `payment.prepared` seen on a queue of the
//! bench's own bound to `P.events`.
//! Baseline, in the same run: this machine's RSA-2048 PKCS#1 v1.5 SHA-256
//! signing rate on all cores with aws-lc-rs (the gateways' crypto). Each
//! prepay costs two signatures (ours on the request, the simulator's on the
//! answer) and verifications of both, so half the signing rate is the most
//! it could reach. Target: ≥ 0.4 × (signing rate / 2).
//!
//! Run: `cargo bench --bench prepay` (`PAYRECON_BENCH_QUICK=1`: a tenth).

use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::RSA_PKCS1_SHA256;
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
use harness::{measured_since, publish_all, round3, BenchDaemon};
use report::{thousands, Table};
use tap::EventTap;

const TARGET: f64 = 0.4;

fn main() {
    let n = report::size("PAYRECON_BENCH_N", 5_000);
    let sign_for = if report::quick() {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(3)
    };
    let signing = signing_rate(sign_for);
    harness::runtime().block_on(async move {
        let prefix = harness::unique_prefix();
        let bench = BenchDaemon::start(&prefix, |_| {}).await;
        let orders: Vec<(uuid::Uuid, &str)> = (0..n)
            .map(|i| (uuid::Uuid::new_v4(), if i % 2 == 0 { "wechat_pay" } else { "alipay" }))
            .collect();
        tap::place_orders(&bench, "prepay-order", &orders).await;
        let bodies: Vec<Vec<u8>> = orders
            .iter()
            .enumerate()
            .map(|(i, (id, method))| {
                json!({
                    "type": "payment.request", "request_id": format!("prepay-{i}"),
                    "sent_at": "2026-11-24T10:00:00+08:00",
                    "data": {"order_id": id.to_string(), "amount": 3998, "payment_method": method},
                })
                .to_string()
                .into_bytes()
            })
            .collect();
        bench.checkpoint().await;
        let tap = EventTap::bind(&bench.conn, &bench.names, &["payment.prepared", "payment.failed"]).await;
        let cpu = CpuTicks::now();
        let start = Instant::now();
        publish_all(&bench.ch, &bench.names.requests, &bodies).await;
        tap.wait_for("payment.prepared", n, Duration::from_secs(900)).await;
        let ours = measured_since(start, &cpu, n);
        let failed = tap.count("payment.failed").await;
        bench.stop().await;
        assert_eq!(failed, 0, "prepays failed");
        // A prepay needs two signatures: half the signing rate is its ceiling.
        let baseline = signing / 2.0;
        let ratio = ours.rate / baseline;
        let met = ratio >= TARGET;
        let mut t = Table::new(&["phase", "per s", "ratio", "CPU µs/msg this process", "PostgreSQL", "broker"]);
        t.row(&["RSA-2048 signatures, all cores".into(), thousands(signing), "–".into(), "–".into(), "–".into(), "–".into()]);
        t.row(&["baseline: signing rate / 2".into(), thousands(baseline), "1.000".into(), "–".into(), "–".into(), "–".into()]);
        t.row(&[
            "payment.request to payment.prepared".into(),
            thousands(ours.rate),
            format!("{ratio:.3}"),
            format!("{:.0}", ours.this_us),
            format!("{:.0}", ours.postgres_us),
            format!("{:.0}", ours.broker_us),
        ]);
        t.print(&format!(
            "prepay: {n} payment.request (half WeChat Pay, half Alipay) on the in-process simulator; target >= {TARGET}: {}",
            if met { "met" } else { "missed" }
        ));
        println!("(this process = the daemon, its simulator and the bench)");
        report::append(
            "prepay",
            "prepay",
            json!({
                "n": n, "channels": ["wechat_pay", "alipay"],
                "rate": ours.rate.round(), "signing_rate": signing.round(), "baseline": baseline.round(),
                "ratio": round3(ratio), "target": TARGET, "met": met,
                "cpu_per_msg": ours.cpu_json(),
            }),
        );
    });
}

/// RSA-2048 PKCS#1 v1.5 SHA-256 signatures per second on all cores, each
/// core signing a request-sized message for `time`.
fn signing_rate(time: Duration) -> f64 {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let key = std::sync::Arc::new(KeyPair::generate(KeySize::Rsa2048).expect("RSA key"));
    let message = vec![b'x'; 400];
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let key = key.clone();
            let message = message.clone();
            std::thread::spawn(move || {
                let rng = SystemRandom::new();
                let mut sig = vec![0u8; key.public_modulus_len()];
                let mut count = 0u64;
                while start.elapsed() < time {
                    key.sign(&RSA_PKCS1_SHA256, &rng, &message, &mut sig)
                        .expect("sign");
                    count += 1;
                }
                count
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().expect("signer")).sum();
    total as f64 / start.elapsed().as_secs_f64()
}
