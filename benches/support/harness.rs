//! What the benches share around the daemon: confirming channels, the
//! windowed publisher, the broker ceiling, a daemon on its own database and
//! queue prefix, and the clean-up (the bench's own queue on `P.events` is
//! `tap.rs`).

#![allow(dead_code)] // each bench binary uses its own part of this module

use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use payrecon::app::Daemon;
use payrecon::config::{Secret, Settings};
use payrecon::domain::Order;
use payrecon::messaging::confirm_link::ConfirmLink;
use payrecon::messaging::contracts::SerializedEvent;
use payrecon::messaging::publisher::{self, Outgoing};
use payrecon::messaging::requests::{parse_request, Request};
use payrecon::messaging::topology::{self, Names};

use super::cpu::{CpuTicks, MachineShare};

pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const PG: &str = "postgres://postgres@127.0.0.1:5432";

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A fresh prefix (and database name) for one phase: `bench_<10 hex>`.
pub fn unique_prefix() -> String {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    format!("bench_{}", &tag[..10])
}

/// What a phase measured: messages per second, CPU µs per message of this
/// process (the daemon and the load generator), PostgreSQL and the broker,
/// and how busy the machine was.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub rate: f64,
    pub this_us: f64,
    pub postgres_us: f64,
    pub broker_us: f64,
    pub machine: MachineShare,
}

impl Measured {
    /// The CPU figures as the JSON lines carry them.
    pub fn cpu_json(&self) -> serde_json::Value {
        serde_json::json!({
            "this_process_us": round1(self.this_us),
            "postgres_us": round1(self.postgres_us),
            "broker_us": round1(self.broker_us),
            "machine_busy_pct": round1(self.machine.busy),
        })
    }
}

pub fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// What a phase that began at `start` with `cpu` measured over `n` messages.
pub fn measured_since(start: Instant, cpu: &CpuTicks, n: usize) -> Measured {
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let now = CpuTicks::now();
    let (this_us, postgres_us, broker_us) = now.per_message_since(cpu, n);
    Measured {
        rate,
        this_us,
        postgres_us,
        broker_us,
        machine: now.machine_since(cpu),
    }
}

/// A connection and a channel on it in publisher-confirm mode.
pub async fn confirming_channel() -> (Connection, Channel) {
    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm");
    (conn, ch)
}

/// Publishes with confirms, 1000 at a time, through the same publisher the
/// daemon uses (all publishes of a window started before any is awaited):
/// awaiting each lapin publish in turn measures the client's thread
/// hand-off, not the broker.
pub async fn publish_all(ch: &Channel, queue: &str, bodies: &[Vec<u8>]) {
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

/// An `order.place` request of 2 × 1999 fen (3998), paid by `method`, with
/// the order id chosen here when given (so the bench knows its
/// `out_trade_no`).
pub fn place_request(rid: &str, method: &str, order_id: Option<uuid::Uuid>) -> String {
    let mut data = serde_json::json!({
        "user_id": "u1", "items": [{"product_id": "p1", "quantity": 2, "unit_price": 1999}],
        "currency": "CNY", "payment_method": method,
    });
    if let Some(id) = order_id {
        data["order_id"] = id.to_string().into();
    }
    serde_json::json!({
        "type": "order.place", "request_id": rid, "sent_at": "2026-11-24T10:00:00+08:00",
        "data": data,
    })
    .to_string()
}

pub fn sample_request(rid: &str) -> String {
    place_request(rid, "wechat_pay", None)
}

/// Publishes N requests with confirms and consumes and acks them. With
/// `events`, one event of an order.created's size per consumed message is
/// also published to `P.events` with confirms, as payrecon must: the
/// messaging alone, without PostgreSQL or any logic.
pub async fn broker_ceiling(prefix: &str, n: usize, events: bool) -> Measured {
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
    // Connected before the clock starts, as the daemon is.
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
    let relay = events_link.map(|mut link| {
        let exchange = names.events.clone();
        tokio::spawn(async move {
            let event = order_created_body();
            while let Some(mut count) = events_due.recv().await {
                while let Ok(more) = events_due.try_recv() {
                    count += more;
                }
                publish_events(&mut link, &exchange, &event, count).await;
            }
            link.close().await;
        })
    });
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

/// A daemon on a database and a queue prefix of its own, ready (it answers
/// `/readyz`) and checkpointed; `stop` removes all it made.
pub struct BenchDaemon {
    pub daemon: Daemon,
    pub names: Names,
    pub conn: Connection,
    /// A confirming channel to publish requests on.
    pub ch: Channel,
    pub keys_dir: tempfile::TempDir,
    pub settings: Settings,
    db: String,
}

impl BenchDaemon {
    /// `tweak` adjusts the settings (e.g. prefetch) before the start.
    pub async fn start(prefix: &str, tweak: impl FnOnce(&mut Settings)) -> BenchDaemon {
        let db = prefix.to_string();
        let mut s = Settings::default();
        s.database.url = Secret(format!("{PG}/{db}"));
        s.amqp.prefix = prefix.to_string();
        if let Some(prefetch) = env_number("PAYRECON_BENCH_PREFETCH") {
            s.amqp.prefetch = prefetch;
        }
        s.http.listen = "127.0.0.1:0".into();
        s.simulator.listen = "127.0.0.1:0".into();
        let keys_dir = tempfile::tempdir().expect("tempdir");
        s.simulator.keys_dir = keys_dir.path().to_path_buf();
        tweak(&mut s);
        let (conn, ch) = confirming_channel().await;
        let names = Names::new(prefix);
        // Declared here too, so that the bench's own queues can be bound to
        // `P.events` before the daemon is up.
        topology::declare(&ch, &names).await.expect("topology");
        let daemon = Daemon::start(s.clone()).await.expect("daemon");
        // The clock measures processing, not start-up: the daemon connects to
        // the broker and starts consuming after `start` returns.
        wait_ready(daemon.http_addr).await;
        let bench = BenchDaemon {
            daemon,
            names,
            conn,
            ch,
            keys_dir,
            settings: s,
            db,
        };
        bench.checkpoint().await;
        bench
    }

    /// Writes out what set-up dirtied (the new database's files, the rows
    /// set up before the clock) so the measurement does not pay for it.
    pub async fn checkpoint(&self) {
        sqlx::query("CHECKPOINT")
            .execute(&self.daemon.pool)
            .await
            .expect("checkpoint");
    }

    pub async fn stop(self) {
        self.daemon.stop().await;
        delete_topology(&self.conn, &self.names).await;
        drop_database(&self.db).await;
    }
}

pub async fn drop_database(db: &str) {
    if let Ok(pool) = sqlx::PgPool::connect(&format!("{PG}/postgres")).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
            .execute(&pool)
            .await;
    }
}

pub async fn wait_ready(addr: std::net::SocketAddr) {
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
pub async fn delete_topology(conn: &Connection, names: &Names) {
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
