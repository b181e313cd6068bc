//! Test harness: every test gets its own PostgreSQL database and its own
//! `amqp.prefix`, both removed when the test ends (even when it fails), so
//! tests run in parallel and leave nothing behind.
#![allow(dead_code)]

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use payrecon::config::{GatewayMode, Secret, Settings};
use serde_json::Value;

pub mod readiness;

pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A unique name for this test's database and broker prefix.
pub fn unique(tag: &str) -> String {
    format!(
        "t_{tag}_{}",
        uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .get(..12)
            .unwrap_or("x")
    )
}

pub struct TestEnv {
    pub name: String,
    pub settings: Settings,
    pub keys_dir: tempfile::TempDir,
}

impl TestEnv {
    pub fn new(tag: &str) -> TestEnv {
        payrecon::telemetry::init_with_default("warn");
        let name = unique(tag);
        let keys_dir = tempfile::tempdir().expect("tempdir");
        let mut s = Settings::default();
        s.database.url = Secret(format!("postgres://postgres@127.0.0.1:5432/{name}"));
        s.database.max_connections = 5;
        s.amqp.prefix = name.clone();
        s.http.listen = "127.0.0.1:0".into();
        s.simulator.listen = "127.0.0.1:0".into();
        s.simulator.keys_dir = keys_dir.path().to_path_buf();
        s.retry.base_delay = payrecon::config::HumanDuration(Duration::from_millis(50));
        s.retry.max_delay = payrecon::config::HumanDuration(Duration::from_millis(500));
        s.gateways.wechat_pay.mode = GatewayMode::Simulator;
        s.gateways.alipay.mode = GatewayMode::Simulator;
        TestEnv {
            name,
            settings: s,
            keys_dir,
        }
    }

    pub fn names(&self) -> payrecon::messaging::topology::Names {
        payrecon::messaging::topology::Names::new(&self.name)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime we may use: clean up on a thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(cleanup(&name));
        })
        .join();
    }
}

/// Removes the database and the broker objects named `name`, as a
/// `TestEnv` does when dropped (for objects a test made by other means).
pub async fn drop_prefix_and_database(name: &str) {
    cleanup(name).await;
}

async fn cleanup(name: &str) {
    // Twice: a daemon dropped mid-test (a failed assertion) stops
    // asynchronously and may re-declare its topology once more first.
    cleanup_once(name).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cleanup_once(name).await;
}

async fn cleanup_once(name: &str) {
    if let Ok(conn) = Connection::connect(AMQP, ConnectionProperties::default()).await {
        let n = payrecon::messaging::topology::Names::new(name);
        for q in [
            &n.requests,
            &n.notifications,
            &n.requests_dlq,
            &n.notifications_dlq,
        ] {
            if let Ok(ch) = conn.create_channel().await {
                let _ = ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
        }
        for x in [&n.events, &n.dlx] {
            if let Ok(ch) = conn.create_channel().await {
                let _ = ch
                    .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
        }
        let _ = conn.close(200, "bye".into()).await;
    }
    if let Ok(pool) = sqlx::PgPool::connect(PG_ADMIN).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&pool)
            .await;
    }
}

/// Deliveries of `queue`, taken without acks (the test only reads them).
/// Declares `queue` with `opts` and binds it to every event of `events`.
pub async fn bind_to_events(
    channel: &Channel,
    queue: &str,
    opts: QueueDeclareOptions,
    events: &str,
) {
    channel
        .queue_declare(queue.into(), opts, FieldTable::default())
        .await
        .expect("declare the events queue");
    channel
        .queue_bind(
            queue.into(),
            events.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind the events queue");
}

/// An exclusive queue bound to every event of `P.events`, consumed no-ack.
pub async fn tap_events(
    channel: &Channel,
    names: &payrecon::messaging::topology::Names,
) -> lapin::Consumer {
    let tap = format!("{}.tap", names.events);
    let opts = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    bind_to_events(channel, &tap, opts, &names.events).await;
    consume_no_ack(channel, &tap).await
}

pub async fn consume_no_ack(channel: &Channel, queue: &str) -> lapin::Consumer {
    channel
        .basic_consume(
            queue.into(),
            // Named after the queue: unique on the channel.
            queue.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume")
}

/// A broker client for the test side: publishes requests, taps events.
pub struct Broker {
    pub conn: Connection,
    pub channel: Channel,
    pub names: payrecon::messaging::topology::Names,
    events: lapin::Consumer,
}

impl Broker {
    /// Binds an exclusive queue to `P.events` before anything is published.
    pub async fn connect(env: &TestEnv) -> Broker {
        let names = env.names();
        let conn = Connection::connect(AMQP, ConnectionProperties::default())
            .await
            .expect("amqp");
        let channel = conn.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        // The same idempotent declaration as the daemon's, so nothing the
        // test publishes before the daemon is up is dropped as unroutable.
        payrecon::messaging::topology::declare(&channel, &names)
            .await
            .expect("topology");
        let events = tap_events(&channel, &names).await;
        Broker {
            conn,
            channel,
            names,
            events,
        }
    }

    pub async fn publish_raw(&self, queue: &str, body: &[u8]) {
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        self.channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }

    pub async fn request(&self, kind: &str, request_id: &str, data: Value) {
        let body = serde_json::json!({ "type": kind, "request_id": request_id, "sent_at": "2026-11-24T10:00:00+08:00", "data": data });
        self.publish_raw(&self.names.requests.clone(), body.to_string().as_bytes())
            .await;
    }

    /// The next event, or panics after `secs`.
    pub async fn next_event(&mut self, secs: u64) -> Value {
        let d = tokio::time::timeout(Duration::from_secs(secs), self.events.next())
            .await
            .expect("timed out waiting for an event")
            .expect("event stream ended")
            .expect("delivery");
        serde_json::from_slice(&d.data).expect("event is JSON")
    }

    /// Skips events until one of `kind` arrives.
    pub async fn wait_event(&mut self, kind: &str, secs: u64) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .as_secs()
                .max(1);
            let e = self.next_event(left).await;
            if e["type"] == kind {
                return e;
            }
        }
    }

    /// The next event, if the stream has one.
    pub async fn try_next_event(&mut self) -> Option<Value> {
        let d = self.events.next().await?.ok()?;
        serde_json::from_slice(&d.data).ok()
    }

    /// No event arrives within `ms`.
    pub async fn assert_quiet(&mut self, ms: u64) {
        if let Ok(Some(Ok(d))) =
            tokio::time::timeout(Duration::from_millis(ms), self.events.next()).await
        {
            panic!("unexpected event: {}", String::from_utf8_lossy(&d.data));
        }
    }

    /// Reads one message from a queue (for dead-letter checks), waiting up to `secs`.
    pub async fn get_from(
        &self,
        queue: &str,
        secs: u64,
    ) -> Option<lapin::message::BasicGetMessage> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(m)) = self
                .channel
                .basic_get(
                    queue.into(),
                    lapin::options::BasicGetOptions { no_ack: true },
                )
                .await
            {
                return Some(m);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

pub fn header_str(props: &BasicProperties, name: &str) -> Option<String> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(name)? {
        lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
        other => Some(format!("{other:?}")),
    }
}

pub fn place_data(method: &str) -> Value {
    serde_json::json!({
        "user_id": "u1",
        "items": [{"product_id": "p1", "quantity": 2, "unit_price": 1999}],
        "currency": "CNY",
        "payment_method": method,
    })
}

impl Broker {
    /// Places an order (2 × 1999 fen) with a chosen id and waits for `order.created`.
    pub async fn place_order(&mut self, method: &str) -> payrecon::domain::OrderId {
        let id = payrecon::domain::OrderId::generate();
        let mut data = place_data(method);
        data["order_id"] = serde_json::json!(id.to_string());
        self.request("order.place", &format!("place-{id}"), data)
            .await;
        self.wait_event("order.created", 10).await;
        id
    }
}
