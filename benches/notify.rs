//! Issue 17, stage 1: a storm of paid notifications.
//!
//! N paid notifications (PAYRECON_BENCH_N, default 20,000; half WeChat Pay,
//! half Alipay), signed (and for WeChat Pay encrypted) beforehand with the
//! simulator's keys, for orders placed through the daemon before the clock
//! and awaiting payment, are posted to the daemon's HTTP ingress by
//! PAYRECON_BENCH_CLIENTS concurrent clients (default 256: the ingress
//! answers a gateway only once the broker confirmed its message to the
//! quorum queue, so its rate is at most clients / confirm latency, and 64
//! clients held it to about 3,600/s here; a sale's storm comes from many
//! gateway servers at once). Clock: from the
//! first post to the last `order.paid` seen on a queue of the bench's own
//! bound to `P.events`.
//! Baseline: the broker ceiling (`support/harness.rs`) in the same run.
//! Target: ≥ 0.4 of it.
//! Beside it: the ingress alone (posts per second answered 2xx, in the same
//! run) and the HTTP floor: a plain axum handler that only answers 200, hit
//! by the same clients with the same bodies.
//!
//! Run: `cargo bench --bench notify` (`PAYRECON_BENCH_QUICK=1`: a tenth).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{FixedOffset, Utc};
use futures::StreamExt;
use payrecon::gateway::alipay::sign::sign_content;
use payrecon::gateway::crypto::aes_256_gcm_encrypt;
use payrecon::simulator::SimKeys;
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
use harness::{measured_since, round3, BenchDaemon, Measured};
use report::{thousands, Table};
use tap::EventTap;

const TARGET: f64 = 0.4;
const AMOUNT_FEN: i64 = 3998;

/// One notification as a gateway would post it.
struct Post {
    path: &'static str,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn main() {
    let n = report::size("PAYRECON_BENCH_N", 20_000);
    let clients: usize = harness::env_number("PAYRECON_BENCH_CLIENTS").unwrap_or(256);
    harness::runtime().block_on(async move {
        let prefix = harness::unique_prefix();
        let ceiling = harness::broker_ceiling(&prefix, n, false).await;
        let bench = BenchDaemon::start(&prefix, |_| {}).await;
        let orders: Vec<(uuid::Uuid, &str)> = (0..n)
            .map(|i| {
                (
                    uuid::Uuid::new_v4(),
                    if i % 2 == 0 { "wechat_pay" } else { "alipay" },
                )
            })
            .collect();
        tap::place_orders(&bench, "notify-order", &orders).await;
        let posts = sign_all(&bench.settings.simulator, &orders).await;
        bench.checkpoint().await;
        let tap = EventTap::bind(
            &bench.conn,
            &bench.names,
            &["order.paid", "payment.anomaly"],
        )
        .await;
        let base = format!("http://{}", bench.daemon.http_addr);
        let cpu = CpuTicks::now();
        let start = Instant::now();
        let (answered_at, refused) = post_all(&base, &posts, clients).await;
        let ingress_rate = n as f64 / answered_at.duration_since(start).as_secs_f64();
        tap.wait_for("order.paid", n, Duration::from_secs(600))
            .await;
        let ours = measured_since(start, &cpu, n);
        assert_eq!(refused, 0, "the ingress refused notifications");
        assert_eq!(
            tap.count("payment.anomaly").await,
            0,
            "anomalies in honest notifications"
        );
        bench.stop().await;
        let floor = http_floor(&posts, clients).await;
        report(n, clients, ceiling, ours, ingress_rate, floor);
    });
}

fn report(
    n: usize,
    clients: usize,
    ceiling: Measured,
    ours: Measured,
    ingress: f64,
    floor: Measured,
) {
    let ratio = ours.rate / ceiling.rate;
    let met = ratio >= TARGET;
    let mut t = Table::new(&[
        "phase",
        "msg/s",
        "ratio",
        "CPU µs/msg this process",
        "PostgreSQL",
        "broker",
    ]);
    let row = |t: &mut Table, name: &str, rate: f64, of: f64, m: Option<&Measured>| {
        let cpu = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "–".into());
        t.row(&[
            name.into(),
            thousands(rate),
            format!("{:.3}", rate / of),
            cpu(m.map(|m| m.this_us)),
            cpu(m.map(|m| m.postgres_us)),
            cpu(m.map(|m| m.broker_us)),
        ]);
    };
    row(
        &mut t,
        "broker ceiling",
        ceiling.rate,
        ceiling.rate,
        Some(&ceiling),
    );
    row(
        &mut t,
        "notifications to order.paid",
        ours.rate,
        ceiling.rate,
        Some(&ours),
    );
    row(
        &mut t,
        "ingress alone (posts answered)",
        ingress,
        floor.rate,
        None,
    );
    row(
        &mut t,
        "HTTP floor (axum, 200 only)",
        floor.rate,
        floor.rate,
        Some(&floor),
    );
    t.print(&format!(
        "notify: {n} paid notifications (half WeChat Pay, half Alipay), {clients} clients; target >= {TARGET} of the ceiling: {}",
        if met { "met" } else { "missed" }
    ));
    println!("(this process = the daemon and the bench's clients; the floor's row is what the clients cost)");
    report::append(
        "notify",
        "notify",
        json!({
            "n": n, "clients": clients, "channels": ["wechat_pay", "alipay"],
            "rate": ours.rate.round(), "baseline": ceiling.rate.round(),
            "ratio": round3(ratio), "target": TARGET, "met": met,
            "ingress_rate": ingress.round(), "http_floor_rate": floor.rate.round(),
            "ingress_to_floor": round3(ingress / floor.rate),
            "cpu_per_msg": ours.cpu_json(), "baseline_cpu_per_msg": ceiling.cpu_json(),
            "http_floor_cpu_per_msg": floor.cpu_json(),
        }),
    );
}

/// Signs every notification on all cores (not timed), with the key files
/// the daemon's simulator made.
async fn sign_all(
    sim: &payrecon::config::SimulatorSettings,
    orders: &[(uuid::Uuid, &str)],
) -> Arc<Vec<Post>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = orders.len().div_ceil(threads).max(1);
    let mut handles = Vec::new();
    for part in orders.chunks(chunk) {
        let part: Vec<(uuid::Uuid, String)> =
            part.iter().map(|(id, m)| (*id, m.to_string())).collect();
        let keys = SimKeys::load_or_create(&sim.keys_dir).expect("keys");
        let sim = sim.clone();
        handles.push(tokio::task::spawn_blocking(move || {
            part.iter()
                .map(|(id, method)| {
                    let otn = id.simple().to_string();
                    match method.as_str() {
                        "wechat_pay" => wechat(&keys, &sim, &otn),
                        _ => alipay(&keys, &sim, &otn),
                    }
                })
                .collect::<Vec<Post>>()
        }));
    }
    let mut all = Vec::with_capacity(orders.len());
    for h in handles {
        all.extend(h.await.expect("signing"));
    }
    Arc::new(all)
}

fn beijing() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("UTC+8")
}

/// A TRANSACTION.SUCCESS notification as the simulator sends it: the
/// resource encrypted with the APIv3 key, the envelope signed over
/// `timestamp\nnonce\nbody\n` with the platform key.
fn wechat(keys: &SimKeys, sim: &payrecon::config::SimulatorSettings, otn: &str) -> Post {
    let now = Utc::now().with_timezone(&beijing()).to_rfc3339();
    let resource = json!({
        "mchid": sim.wechat_mchid, "appid": sim.wechat_appid, "out_trade_no": otn,
        "transaction_id": format!("4200{}", &uuid::Uuid::new_v4().simple().to_string()[..24]),
        "trade_type": "NATIVE", "trade_state": "SUCCESS", "trade_state_desc": "支付成功",
        "bank_type": "OTHERS", "attach": "", "success_time": now, "payer": {"openid": "oBench"},
        "amount": {"total": AMOUNT_FEN, "payer_total": AMOUNT_FEN, "currency": "CNY", "payer_currency": "CNY"},
    });
    let nonce = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let ciphertext = aes_256_gcm_encrypt(
        keys.wechat_apiv3_key.as_bytes(),
        nonce.as_bytes(),
        b"transaction",
        resource.to_string().as_bytes(),
    )
    .expect("encrypt");
    let body = json!({
        "id": format!("EV-{}", uuid::Uuid::new_v4().simple()), "create_time": now,
        "resource_type": "encrypt-resource", "event_type": "TRANSACTION.SUCCESS", "summary": "支付成功",
        "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM", "ciphertext": ciphertext,
                     "associated_data": "transaction", "nonce": nonce},
    })
    .to_string();
    let ts = Utc::now().timestamp();
    let sig_nonce = uuid::Uuid::new_v4().simple().to_string();
    let message = format!("{ts}\n{sig_nonce}\n{body}\n");
    let signature = keys
        .wechat_platform_private
        .sign_sha256_base64(message.as_bytes())
        .expect("sign");
    Post {
        path: "/notify/wechat_pay",
        content_type: "application/json",
        headers: vec![
            ("Wechatpay-Timestamp", ts.to_string()),
            ("Wechatpay-Nonce", sig_nonce),
            ("Wechatpay-Signature", signature),
            ("Wechatpay-Serial", sim.wechat_platform_serial.clone()),
            (
                "Wechatpay-Signature-Type",
                "WECHATPAY2-SHA256-RSA2048".into(),
            ),
        ],
        body,
    }
}

/// A TRADE_SUCCESS notification signed (V1, RSA2) with Alipay's key.
fn alipay(keys: &SimKeys, sim: &payrecon::config::SimulatorSettings, otn: &str) -> Post {
    let now = Utc::now().with_timezone(&beijing());
    let local = now.format("%Y-%m-%d %H:%M:%S").to_string();
    let yuan = payrecon::domain::Money::from_fen(AMOUNT_FEN)
        .expect("the bench's amount")
        .to_yuan_string();
    let mut fields: Vec<(&str, String)> = vec![
        ("app_id", sim.alipay_app_id.clone()),
        ("auth_app_id", sim.alipay_app_id.clone()),
        ("charset", "utf-8".into()),
        ("gmt_payment", local.clone()),
        ("notify_id", uuid::Uuid::new_v4().simple().to_string()),
        ("notify_time", local),
        ("notify_type", "trade_status_sync".into()),
        ("out_trade_no", otn.into()),
        ("total_amount", yuan.clone()),
        ("receipt_amount", yuan),
        (
            "trade_no",
            format!(
                "2026112522{}",
                &uuid::Uuid::new_v4().simple().to_string()[..18]
            ),
        ),
        ("trade_status", "TRADE_SUCCESS".into()),
        ("version", "1.0".into()),
    ];
    let content = sign_content(
        fields.iter().map(|(k, v)| (*k, v.as_str())),
        &["sign", "sign_type"],
    );
    let sign = keys
        .alipay_private
        .sign_sha256_base64(content.as_bytes())
        .expect("sign");
    fields.push(("sign_type", "RSA2".into()));
    fields.push(("sign", sign));
    Post {
        path: "/notify/alipay",
        content_type: "application/x-www-form-urlencoded; charset=utf-8",
        headers: Vec::new(),
        body: serde_urlencoded::to_string(&fields).expect("form"),
    }
}

/// Posts everything with `clients` requests in flight; returns when the
/// last answer came and how many were not 2xx.
async fn post_all(base: &str, posts: &Arc<Vec<Post>>, clients: usize) -> (Instant, usize) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .expect("client");
    let refused = Arc::new(AtomicUsize::new(0));
    futures::stream::iter(0..posts.len())
        .map(|i| {
            let http = http.clone();
            let posts = posts.clone();
            let refused = refused.clone();
            let url = format!("{base}{}", posts[i].path);
            async move {
                let p = &posts[i];
                let mut req = http.post(url).header("content-type", p.content_type);
                for (k, v) in &p.headers {
                    req = req.header(*k, v);
                }
                let ok = match req.body(p.body.clone()).send().await {
                    Ok(r) => r.status().is_success(),
                    Err(_) => false,
                };
                if !ok {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .buffer_unordered(clients)
        .for_each(|_| async {})
        .await;
    (Instant::now(), refused.load(Ordering::Relaxed))
}

/// The same clients and bodies against a plain axum handler that only
/// answers 200: what HTTP on this machine costs with no work behind it.
async fn http_floor(posts: &Arc<Vec<Post>>, clients: usize) -> Measured {
    let app = axum::Router::new().route(
        "/notify/{channel}",
        axum::routing::post(|_body: axum::body::Bytes| async { axum::http::StatusCode::OK }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let cpu = CpuTicks::now();
    let start = Instant::now();
    let (_, refused) = post_all(&format!("http://{addr}"), posts, clients).await;
    let measured = measured_since(start, &cpu, posts.len());
    server.abort();
    assert_eq!(refused, 0, "the HTTP floor refused posts");
    measured
}
