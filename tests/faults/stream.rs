//! A paced stream of `order.place` requests that outlives broker restarts
//! (it reconnects and republishes whatever the broker did not confirm), a
//! durable tap on `P.events` that keeps what is published meanwhile, and
//! the check that every request took effect exactly once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use payrecon::messaging::topology::Names;
use serde_json::Value;
use sqlx::PgPool;
use tokio::time::Instant;

use crate::common::place_data;

/// Requests published, then confirmed, at a time.
const CHUNK: usize = 100;
/// Every n-th order is placed with a short `pay_timeout_s`, so the timeout
/// job cancels it a moment later: events written by the daemon on its own,
/// also while the broker is away.
pub const TIMED_EVERY: usize = 50;
pub const TIMED_PAY_TIMEOUT_S: i64 = 2;

async fn confirm_channel(url: &str) -> Result<(Connection, Channel), lapin::Error> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((conn, channel))
}

/// Request `<tag>-<i>`: an `order.place`, by wechat_pay or alipay in turn.
fn request(tag: &str, i: usize) -> (String, Vec<u8>) {
    let id = format!("{tag}-{i}");
    let method = if i.is_multiple_of(2) {
        "wechat_pay"
    } else {
        "alipay"
    };
    let mut data = place_data(method);
    if i.is_multiple_of(TIMED_EVERY) {
        data["pay_timeout_s"] = serde_json::json!(TIMED_PAY_TIMEOUT_S);
    }
    let body = serde_json::json!({"type": "order.place", "request_id": id,
        "sent_at": "2026-11-24T10:00:00+08:00", "data": data});
    (id, body.to_string().into_bytes())
}

/// Publishes one chunk and waits for every confirm; any error or nack
/// fails the whole chunk (some of it may have been enqueued all the same).
async fn publish_chunk(channel: &Channel, queue: &str, bodies: &[Vec<u8>]) -> bool {
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    let mut confirms = Vec::with_capacity(bodies.len());
    for body in bodies {
        match channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                props.clone(),
            )
            .await
        {
            Ok(c) => confirms.push(c),
            Err(_) => return false,
        }
    }
    for c in confirms {
        if !matches!(c.await, Ok(conf) if conf.is_ack()) {
            return false;
        }
    }
    true
}

pub struct StreamReport {
    pub ids: Vec<String>,
    /// Requests placed with a short pay timeout (cancelled by the job).
    pub timed: usize,
    /// Requests published again because their chunk was not confirmed:
    /// the daemon must see each as the replay it may be.
    pub republished: usize,
    pub reconnects: usize,
}

/// The publishing task and how far it got.
pub struct Stream {
    sent: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<StreamReport>,
}

impl Stream {
    /// Publishes `total` requests to `queue` at about `rate` per second.
    pub fn start(url: String, queue: String, tag: &str, total: usize, rate: usize) -> Stream {
        let sent = Arc::new(AtomicUsize::new(0));
        let progress = sent.clone();
        let tag = tag.to_string();
        let task = tokio::spawn(async move {
            let mut report = StreamReport {
                ids: Vec::with_capacity(total),
                timed: 0,
                republished: 0,
                reconnects: 0,
            };
            let pace = Duration::from_secs_f64(CHUNK as f64 / rate as f64);
            let mut tick = tokio::time::interval(pace);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut link: Option<(Connection, Channel)> = None;
            for start in (0..total).step_by(CHUNK) {
                tick.tick().await;
                let (ids, bodies): (Vec<_>, Vec<_>) = (start..(start + CHUNK).min(total))
                    .map(|i| request(&tag, i))
                    .unzip();
                let deadline = Instant::now() + Duration::from_secs(300);
                loop {
                    if link.is_none() {
                        link = confirm_channel(&url).await.ok();
                    }
                    if let Some((_, channel)) = &link {
                        if publish_chunk(channel, &queue, &bodies).await {
                            break;
                        }
                        report.republished += bodies.len();
                        report.reconnects += 1;
                        if let Some((conn, _)) = link.take() {
                            let _ = conn.close(200, "retry".into()).await;
                        }
                    }
                    assert!(Instant::now() < deadline, "broker away for 300s");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                report.timed += (start..start + ids.len())
                    .filter(|i| i.is_multiple_of(TIMED_EVERY))
                    .count();
                report.ids.extend(ids);
                progress.store(report.ids.len(), Ordering::SeqCst);
            }
            if let Some((conn, _)) = link {
                let _ = conn.close(200, "done".into()).await;
            }
            report
        });
        Stream { sent, task }
    }

    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests were confirmed.
    pub async fn wait_sent(&self, n: usize, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.sent() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} requests sent after {secs}s",
                self.sent()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn finish(self) -> StreamReport {
        self.task.await.expect("stream task")
    }
}

/// A durable quorum queue bound to `P.events` for `#`: it survives a broker
/// restart with everything published to it, and is read once at the end.
/// Deleted on drop; `x-expires` removes it anyway should that fail.
pub struct Tap {
    url: String,
    pub queue: String,
}

impl Tap {
    /// Declares the daemon's topology too, so nothing published before the
    /// daemon is up is dropped as unroutable.
    pub async fn declare(url: &str, names: &Names) -> Tap {
        let (conn, channel) = confirm_channel(url).await.expect("amqp");
        payrecon::messaging::topology::declare(&channel, names)
            .await
            .expect("topology");
        let queue = format!("{}.restarts-tap", names.events);
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert("x-expires".into(), AMQPValue::LongInt(30 * 60 * 1000));
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.as_str().into(), durable, args)
            .await
            .expect("tap");
        channel
            .queue_bind(
                queue.as_str().into(),
                names.events.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind tap");
        let _ = conn.close(200, "declared".into()).await;
        Tap {
            url: url.to_string(),
            queue,
        }
    }

    /// Reads (and acks) events until every id of `want` has come, then
    /// for `quiet` more to catch copies. Panics after `secs`.
    pub async fn read(&self, want: &HashSet<String>, secs: u64, quiet: Duration) -> Vec<Value> {
        let (conn, channel) = confirm_channel(&self.url).await.expect("amqp");
        channel
            .basic_qos(2000, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut deliveries = channel
            .basic_consume(
                self.queue.as_str().into(),
                "restarts-tap".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume tap");
        let mut events = Vec::new();
        let mut missing = want.clone();
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let wait = if missing.is_empty() {
                quiet
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            let Ok(Some(Ok(d))) = tokio::time::timeout(wait, deliveries.next()).await else {
                assert!(
                    missing.is_empty(),
                    "{} of {} events never reached the tap after {secs}s",
                    missing.len(),
                    want.len()
                );
                break;
            };
            d.ack(BasicAckOptions::default()).await.expect("ack");
            let e: Value = serde_json::from_slice(&d.data).expect("event is JSON");
            missing.remove(e["event_id"].as_str().unwrap_or_default());
            events.push(e);
        }
        let _ = conn.close(200, "read".into()).await;
        events
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let (url, queue) = (self.url.clone(), self.queue.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok((conn, ch)) = confirm_channel(&url).await {
                    let _ = ch
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await;
                    let _ = conn.close(200, "bye".into()).await;
                }
            });
        })
        .join();
    }
}

/// Messages ready in `queue`, asked on a connection of its own.
pub async fn queue_depth(url: &str, queue: &str) -> u32 {
    let (conn, channel) = confirm_channel(url).await.expect("amqp");
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let n = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .expect("passive declare")
        .message_count();
    let _ = conn.close(200, "depth".into()).await;
    n
}

/// Polls `sql` (a count) until it returns `want`, or panics after `secs`.
pub async fn wait_count(db: &PgPool, sql: &str, want: i64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got: i64 = sqlx::query_scalar(sql).fetch_one(db).await.unwrap_or(-1);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: {got}, want {want} after {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the tap received, by event type and causing request or order.
#[derive(Default, Debug)]
pub struct Delivered {
    pub deliveries: usize,
    /// Deliveries that repeated an event_id (the relay is at-least-once
    /// across a lost confirm); the copy is byte-identical.
    pub copies: usize,
    pub event_ids: HashSet<String>,
    /// (type, request_id or order_id) → distinct event_ids.
    pub by_subject: HashMap<(String, String), HashSet<String>>,
}

impl Delivered {
    pub fn from_events(events: &[Value]) -> Delivered {
        let mut d = Delivered::default();
        for e in events {
            let kind = e["type"].as_str().unwrap_or_default().to_string();
            let eid = e["event_id"].as_str().unwrap_or_default().to_string();
            let subject = match kind.as_str() {
                "order.created" => e["request_id"].as_str(),
                _ => e["data"]["order"]["order_id"].as_str(),
            }
            .unwrap_or_default()
            .to_string();
            d.deliveries += 1;
            if !d.event_ids.insert(eid.clone()) {
                d.copies += 1;
            }
            d.by_subject.entry((kind, subject)).or_default().insert(eid);
        }
        d
    }

    pub fn subjects(&self, kind: &str) -> usize {
        self.by_subject.keys().filter(|(k, _)| k == kind).count()
    }
}
