//! `order.place` throughput against this machine's own broker ceiling,
//! measured in the same run so a busy, shared machine affects both alike.
//!
//! Baseline: publish N messages with confirms to a quorum queue, consume and
//! ack the same N (what any correct consumer must at least do).
//! payrecon: publish N `order.place` requests with confirms, the daemon
//! consumes them (batched transactions), until all N orders are committed.
//! Both sides publish the same way, in windows of 1000 whose publishes are
//! all started before any is awaited: awaiting each lapin publish in turn
//! measures the client's thread hand-off, not the broker, and made the
//! "ceiling" swing between 9,000 and 22,000 msg/s from round to round.
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
//! contract's 256, to measure what a deployment's own setting gives).

use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use payrecon::config::{Secret, Settings};
use payrecon::domain::Order;
use payrecon::messaging::confirm_link::ConfirmLink;
use payrecon::messaging::contracts::SerializedEvent;
use payrecon::messaging::publisher::{self, Outgoing};
use payrecon::messaging::requests::{parse_request, Request};
use payrecon::messaging::topology::{self, Names};

#[path = "support/cpu.rs"]
mod cpu;
use cpu::{CpuTicks, MachineShare};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn main() {
    let n: usize = env_number("PAYRECON_BENCH_N").unwrap_or(10_000);
    let rounds: usize = env_number("PAYRECON_BENCH_ROUNDS").unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        // Alternate baseline and payrecon so that a change in the machine's
        // load hits both sides of a ratio alike; report the median round.
        let mut ratios = Vec::new();
        let mut floors = Vec::new();
        for round in 1..=rounds {
            let tag = uuid::Uuid::new_v4().simple().to_string();
            let prefix = format!("bench_{}", &tag[..10]);
            let (baseline, base_cpu, base_m) = broker_ceiling(&prefix, n, false).await;
            let (floor, floor_cpu, floor_m) = broker_ceiling(&prefix, n, true).await;
            let (ours, our_cpu, our_m) = payrecon_rate(&prefix, n).await;
            println!("round {round}: broker ceiling {baseline:>8.0} msg/s, payrecon {ours:>8.0} msg/s, ratio {:.3}", ours / baseline);
            println!("  messaging floor (the baseline + one event published per message) {floor:>8.0} msg/s, ratio {:.3}", floor / baseline);
            println!("  CPU µs/msg  baseline: bench {:.0}, postgres {:.0}, broker {:.0}", base_cpu.0, base_cpu.1, base_cpu.2);
            println!("              floor:    bench {:.0}, postgres {:.0}, broker {:.0}", floor_cpu.0, floor_cpu.1, floor_cpu.2);
            println!("              payrecon: daemon+bench {:.0}, postgres {:.0}, broker {:.0}", our_cpu.0, our_cpu.1, our_cpu.2);
            for (side, m) in [("baseline", base_m), ("floor", floor_m), ("payrecon", our_m)] {
                println!("  machine during {side:<8}: busy {:.0}%, idle {:.0}%, iowait {:.0}%, steal {:.0}%", m.busy, m.idle, m.iowait, m.steal);
            }
            ratios.push(ours / baseline);
            floors.push(floor / baseline);
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        println!("messaging floor / broker ceiling: median ratio {:.3} (what a consumer with no database and no logic reaches)", median(floors));
        let median = median(ratios);
        println!("order.place throughput / broker ceiling: median ratio {median:.3} over {rounds} rounds of {n} (target >= 0.5)");
    });
}

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Publishes with confirms, 1000 at a time, through the same publisher the
/// daemon uses (all publishes of a window started before any is awaited),
/// so the load generator is no slower on one side than on the other.
async fn publish_all(ch: &Channel, queue: &str, bodies: &[Vec<u8>]) {
    for window in bodies.chunks(1000) {
        let messages = window
            .iter()
            .map(|body| Outgoing {
                exchange: "",
                routing_key: queue,
                body,
                properties: BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            })
            .collect();
        let acked = publisher::publish_all(ch, messages).await.expect("publish");
        assert!(acked.iter().all(|ok| *ok), "broker nacked a message");
    }
}

/// A connection and a channel on it in publisher-confirm mode.
async fn confirming_channel() -> (Connection, Channel) {
    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm");
    (conn, ch)
}

/// Messages per second, CPU µs per message of (this process, PostgreSQL,
/// broker), and how busy the machine was.
type Measured = (f64, (f64, f64, f64), MachineShare);

/// Publishes N requests with confirms and consumes and acks them. With
/// `events`, one event of an order.created's size per consumed message is
/// also published to `P.events` with confirms, as payrecon must: the
/// messaging alone, without PostgreSQL or any logic.
async fn broker_ceiling(prefix: &str, n: usize, events: bool) -> Measured {
    let (conn, ch) = confirming_channel().await;
    // The very queue the daemon consumes (a quorum queue with its delivery
    // limit and dead-letter exchange), under a prefix of its own.
    let names = Names::new(&format!(
        "{prefix}_{}",
        if events { "floor" } else { "base" }
    ));
    topology::declare(&ch, &names).await.expect("topology");
    let queue = names.requests.clone();
    let consumer_ch = conn.create_channel().await.expect("channel");
    consumer_ch
        .basic_qos(256, BasicQosOptions::default())
        .await
        .expect("qos");
    // Made before the clock starts, as on the payrecon side.
    let bodies = vec![sample_request("baseline").into_bytes(); n];
    // Connected before the clock starts, as the daemon is (see payrecon_rate).
    let events_link = if events {
        Some(
            ConfirmLink::connect(AMQP, &format!("{prefix}-floor-events"))
                .await
                .expect("events link"),
        )
    } else {
        None
    };
    let cpu = CpuTicks::now();
    let start = Instant::now();
    let mut consumer = consumer_ch
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    // Events go out from a task of their own, as the daemon's relay does,
    // so consuming never waits for their confirms.
    let (due, mut events_due) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let relay = if let Some(mut link) = events_link {
        let exchange = names.events.clone();
        Some(tokio::spawn(async move {
            let event = order_created_body();
            while let Some(mut count) = events_due.recv().await {
                while let Ok(more) = events_due.try_recv() {
                    count += more;
                }
                publish_events(&mut link, &exchange, &event, count).await;
            }
            link.close().await;
        }))
    } else {
        None
    };
    let consume = tokio::spawn(async move {
        let mut seen = 0;
        while let Some(Ok(d)) = consumer.next().await {
            seen += 1;
            // The same multiple-ack every 64 messages a batching consumer would use.
            if seen % 64 == 0 || seen == n {
                if events {
                    let _ = due.send(if seen % 64 == 0 { 64 } else { seen % 64 });
                }
                d.acker
                    .ack(BasicAckOptions { multiple: true })
                    .await
                    .expect("ack");
            }
            if seen == n {
                break;
            }
        }
    });
    publish_all(&ch, &queue, &bodies).await;
    consume.await.expect("consumer");
    if let Some(relay) = relay {
        relay.await.expect("events");
    }
    let measured = measured_since(start, &cpu, n);
    delete_topology(&conn, &names).await;
    measured
}

/// What a phase that began at `start` with `cpu` measured over `n` messages.
fn measured_since(start: Instant, cpu: &CpuTicks, n: usize) -> Measured {
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let now = CpuTicks::now();
    (rate, now.per_message_since(cpu, n), now.machine_since(cpu))
}

/// The body of the `order.created` payrecon would publish for the sample
/// request, printed by payrecon's own serializer, so the floor's events are
/// the daemon's size.
fn order_created_body() -> Vec<u8> {
    let env = parse_request(sample_request("floor").as_bytes()).expect("sample request");
    let Request::PlaceOrder(place) = env.body else {
        panic!("the sample request is an order.place");
    };
    let new = place.into_new_order(chrono::Duration::minutes(30));
    let order = Order::place(new, chrono::Utc::now()).expect("sample order");
    SerializedEvent::order_created(&order, "floor")
        .payload
        .into_bytes()
}

async fn publish_events(link: &mut ConfirmLink, exchange: &str, body: &[u8], count: usize) {
    let ids: Vec<String> = (0..count)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let messages = ids
        .iter()
        .map(|id| Outgoing {
            exchange,
            routing_key: "order.created",
            body,
            properties: publisher::json_properties()
                .with_message_id(id.as_str().into())
                .with_type("order.created".into()),
        })
        .collect();
    let acked = link.publish_all(messages).await.expect("publish events");
    assert!(acked.iter().all(|ok| *ok), "broker nacked an event");
}

fn sample_request(rid: &str) -> String {
    serde_json::json!({
        "type": "order.place", "request_id": rid, "sent_at": "2026-11-24T10:00:00+08:00",
        "data": {"user_id": "u1", "items": [{"product_id": "p1", "quantity": 2, "unit_price": 1999}],
                 "currency": "CNY", "payment_method": "wechat_pay"}
    })
    .to_string()
}

async fn payrecon_rate(prefix: &str, n: usize) -> Measured {
    let db = prefix.to_string();
    let mut s = Settings::default();
    s.database.url = Secret(format!("postgres://postgres@127.0.0.1:5432/{db}"));
    s.amqp.prefix = prefix.to_string();
    if let Some(prefetch) = env_number("PAYRECON_BENCH_PREFETCH") {
        s.amqp.prefetch = prefetch;
    }
    s.http.listen = "127.0.0.1:0".into();
    s.simulator.listen = "127.0.0.1:0".into();
    let keys = tempfile::tempdir().expect("tempdir");
    s.simulator.keys_dir = keys.path().to_path_buf();
    let (conn, ch) = confirming_channel().await;
    let names = Names::new(prefix);
    topology::declare(&ch, &names).await.expect("topology");
    let daemon = payrecon::app::Daemon::start(s).await.expect("daemon");
    // The clock measures processing, not start-up: the daemon connects to
    // the broker and starts consuming after `start` returns, so wait until
    // it says it is ready, as a deployment's load balancer would.
    wait_ready(daemon.http_addr).await;
    // Creating the round's database dirtied a few megabytes of files (the
    // template's copy, the migrations) that the OS and PostgreSQL would
    // otherwise write out during the measurement: set-up, not processing.
    sqlx::query("CHECKPOINT")
        .execute(&daemon.pool)
        .await
        .expect("checkpoint");
    // The load generator's own work (printing N distinct requests) is not
    // payrecon's: it is done before the clock starts.
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| sample_request(&format!("bench-{i}")).into_bytes())
        .collect();
    let cpu = CpuTicks::now();
    let start = Instant::now();
    publish_all(&ch, &names.requests, &bodies).await;
    // The last request is taken last; once its inbox row is there, a count
    // confirms every order. (Counting every few milliseconds would itself
    // load the machine with table scans.)
    let last = format!("bench-{}", n - 1);
    loop {
        let seen: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM inbox WHERE request_id = $1)")
                .bind(&last)
                .fetch_one(&daemon.pool)
                .await
                .expect("poll");
        if seen {
            let done: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
                .fetch_one(&daemon.pool)
                .await
                .expect("count");
            if done as usize >= n {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let measured = measured_since(start, &cpu, n);
    daemon.stop().await;
    delete_topology(&conn, &names).await;
    if let Ok(pool) = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres").await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
            .execute(&pool)
            .await;
    }
    measured
}

async fn wait_ready(addr: std::net::SocketAddr) {
    let url = format!("http://{addr}/readyz");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(&url).await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the daemon did not become ready within 30 s");
}

/// Removes what a round declared, on a channel of its own: a channel the
/// round used may have been closed by the broker, and a failed delete
/// closes the channel it ran on, so each delete gets a fresh one if needed.
async fn delete_topology(conn: &Connection, names: &Names) {
    let queues = [
        &names.requests,
        &names.notifications,
        &names.requests_dlq,
        &names.notifications_dlq,
    ];
    let exchanges = [&names.events, &names.dlx];
    let all = queues
        .iter()
        .map(|q| (true, q.as_str()))
        .chain(exchanges.iter().map(|x| (false, x.as_str())));
    let mut ch = conn.create_channel().await.ok();
    for (is_queue, name) in all {
        let deleted = match &ch {
            Some(c) if is_queue => c
                .queue_delete(name.into(), QueueDeleteOptions::default())
                .await
                .is_ok(),
            Some(c) => c
                .exchange_delete(name.into(), Default::default())
                .await
                .is_ok(),
            None => false,
        };
        if !deleted {
            eprintln!("bench: could not delete {name}");
            ch = conn.create_channel().await.ok();
        }
    }
}
