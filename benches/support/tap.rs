//! A queue of the bench's own bound to `P.events`: the bench sees the
//! daemon's events as an upstream app would, and times them on arrival.

#![allow(dead_code)] // each bench binary uses its own part of this module

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use payrecon::messaging::topology::Names;
use tokio::sync::Mutex;

use super::harness::{place_request, publish_all, BenchDaemon};

/// When each event seen so far arrived, by its `request_id`, and how many
/// of each type.
#[derive(Default)]
pub struct Seen {
    pub arrived: HashMap<String, Instant>,
    pub by_type: HashMap<String, usize>,
    pub last: Option<Instant>,
}

/// A queue of the bench's own bound to `P.events` for some event types: the
/// bench sees the daemon's events as an upstream app would.
pub struct EventTap {
    pub seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl EventTap {
    pub async fn bind(conn: &Connection, names: &Names, types: &[&str]) -> EventTap {
        let ch = conn.create_channel().await.expect("channel");
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("tap queue");
        for t in types {
            ch.queue_bind(
                q.name().clone(),
                names.events.as_str().into(),
                (*t).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
        }
        let mut consumer = ch
            .basic_consume(
                q.name().clone(),
                "tap".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let into = seen.clone();
        let task = tokio::spawn(async move {
            // The channel lives as long as the task.
            let _ch = ch;
            while let Some(Ok(d)) = consumer.next().await {
                let at = Instant::now();
                let (kind, rid) = event_keys(&d.data);
                let mut s = into.lock().await;
                *s.by_type.entry(kind).or_default() += 1;
                if let Some(rid) = rid {
                    s.arrived.insert(rid, at);
                }
                s.last = Some(at);
            }
        });
        EventTap { seen, task }
    }

    /// Waits until `n` events of `kind` have been seen (panics after
    /// `limit`); returns when the last of them arrived.
    pub async fn wait_for(&self, kind: &str, n: usize, limit: Duration) -> Instant {
        let deadline = Instant::now() + limit;
        loop {
            {
                let s = self.seen.lock().await;
                if s.by_type.get(kind).copied().unwrap_or(0) >= n {
                    return s.last.unwrap_or_else(Instant::now);
                }
                if Instant::now() > deadline {
                    panic!(
                        "saw {} of {n} {kind} events within {limit:?}; seen: {:?}",
                        s.by_type.get(kind).copied().unwrap_or(0),
                        s.by_type
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub async fn count(&self, kind: &str) -> usize {
        self.seen
            .lock()
            .await
            .by_type
            .get(kind)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for EventTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `type` and `request_id` of an event body.
fn event_keys(body: &[u8]) -> (String, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Keys {
        #[serde(rename = "type")]
        kind: String,
        request_id: Option<String>,
    }
    match serde_json::from_slice::<Keys>(body) {
        Ok(k) => (k.kind, k.request_id),
        Err(_) => ("unparsable".into(), None),
    }
}

/// Places `n` orders (request ids `{tag}-{i}`) and waits for all their
/// `order.created` events: set-up before a clock starts.
pub async fn place_orders(bench: &BenchDaemon, tag: &str, ids: &[(uuid::Uuid, &str)]) {
    let tap = EventTap::bind(&bench.conn, &bench.names, &["order.created"]).await;
    let bodies: Vec<Vec<u8>> = ids
        .iter()
        .enumerate()
        .map(|(i, (id, method))| {
            place_request(&format!("{tag}-{i}"), method, Some(*id)).into_bytes()
        })
        .collect();
    publish_all(&bench.ch, &bench.names.requests, &bodies).await;
    tap.wait_for("order.created", ids.len(), Duration::from_secs(300))
        .await;
}
