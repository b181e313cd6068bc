//! The demo's side of the broker: it publishes requests as an upstream app
//! would and watches `P.events` through a queue of its own.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use serde_json::{json, Value};

use crate::config::AmqpSettings;
use crate::messaging::broker_tls::BrokerTls;
use crate::messaging::topology::{self, Names};

pub struct Tap {
    conn: Connection,
    channel: Channel,
    names: Names,
    events: Consumer,
    /// Every event seen so far, by type.
    pub seen: HashMap<String, Vec<Value>>,
    sent: u64,
}

impl Tap {
    pub async fn connect(amqp: &AmqpSettings, names: Names) -> anyhow::Result<Tap> {
        let tls = BrokerTls::from_settings(amqp)?;
        let conn = tls
            .open(&amqp.first_url(), ConnectionProperties::default())
            .await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // The daemon's own idempotent declaration: nothing published before
        // its consumers are up is dropped as unroutable.
        topology::declare(&channel, &names).await?;
        let opts = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let tap = channel
            .queue_declare("".into(), opts, FieldTable::default())
            .await?;
        channel
            .queue_bind(
                tap.name().clone(),
                names.events.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let events = channel
            .basic_consume(
                tap.name().clone(),
                "demo".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(Tap {
            conn,
            channel,
            names,
            events,
            seen: HashMap::new(),
            sent: 0,
        })
    }

    /// Publishes one request (docs/contract.md §3) and waits for the broker's confirm.
    pub async fn request(&mut self, kind: &str, data: Value) -> anyhow::Result<()> {
        self.sent += 1;
        let body = json!({
            "type": kind,
            "request_id": format!("demo-{}-{}", kind, self.sent),
            "sent_at": crate::messaging::contracts::rfc3339(chrono::Utc::now()),
            "data": data,
        });
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        self.channel
            .basic_publish(
                "".into(),
                self.names.requests.as_str().into(),
                BasicPublishOptions::default(),
                body.to_string().as_bytes(),
                props,
            )
            .await?
            .await?;
        Ok(())
    }

    pub fn count(&self, kind: &str) -> usize {
        self.seen.get(kind).map_or(0, Vec::len)
    }

    fn count_all(&self, kinds: &[&str]) -> usize {
        kinds.iter().map(|k| self.count(k)).sum()
    }

    /// Waits until `n` events of the `kinds` together have been seen, or
    /// fails after `secs`.
    pub async fn wait_for(&mut self, kinds: &[&str], n: usize, secs: u64) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while self.count_all(kinds) < n {
            let next = tokio::time::timeout_at(deadline, self.events.next()).await;
            match next {
                Ok(Some(Ok(delivery))) => {
                    if let Ok(event) = serde_json::from_slice::<Value>(&delivery.data) {
                        let t = event["type"].as_str().unwrap_or("?").to_string();
                        self.seen.entry(t).or_default().push(event);
                    }
                }
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(None) => anyhow::bail!("the event stream ended"),
                Err(_) => anyhow::bail!(
                    "waited {secs} s for {n} events of {kinds:?}, saw {}",
                    self.count_all(kinds)
                ),
            }
        }
        Ok(())
    }

    /// Takes in whatever has arrived within `ms`.
    pub async fn drain(&mut self, ms: u64) {
        let until = tokio::time::Instant::now() + Duration::from_millis(ms);
        while let Ok(Some(Ok(d))) = tokio::time::timeout_at(until, self.events.next()).await {
            if let Ok(event) = serde_json::from_slice::<Value>(&d.data) {
                let t = event["type"].as_str().unwrap_or("?").to_string();
                self.seen.entry(t).or_default().push(event);
            }
        }
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "demo done".into()).await;
    }
}
