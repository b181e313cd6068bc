//! Verified notifications go onto `P.notifications` in groups: whatever
//! arrived while the previous group waited for its confirms is published
//! together and confirmed together (a group commit). Each caller still
//! learns its own message's fate before it answers the gateway. One
//! publish-and-wait per request cost the ingress a confirm round trip and
//! lapin's thread hand-offs each, and held a storm of notifications to
//! about a ninth of what plain HTTP answers here (`cargo bench --bench
//! notify`).

use std::sync::Arc;

use lapin::BasicProperties;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::messaging::publisher::{self, Outgoing};
use crate::messaging::supervisor::BrokerState;

/// At most this many messages a group: a window like the relay's chunks.
const MAX_GROUP: usize = 512;

#[derive(Debug, Clone, thiserror::Error)]
pub enum EnqueueError {
    #[error("broker not connected")]
    NotConnected,
    #[error("the broker did not take the message: {0}")]
    Publish(String),
}

struct Pending {
    body: Vec<u8>,
    properties: BasicProperties,
    done: oneshot::Sender<Result<(), EnqueueError>>,
}

/// The handle the ingress enqueues through; cheap to clone.
#[derive(Clone)]
pub struct NotifyQueue {
    tx: mpsc::UnboundedSender<Pending>,
}

impl NotifyQueue {
    /// Starts the publishing task, which ends at `shutdown` (callers still
    /// waiting then get `NotConnected`, and the gateway sends again).
    pub fn start(
        broker: Arc<BrokerState>,
        queue: String,
        shutdown: CancellationToken,
    ) -> (NotifyQueue, impl std::future::Future<Output = ()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (NotifyQueue { tx }, run(broker, queue, rx, shutdown))
    }

    /// Publishes `body` with confirms; Ok once the broker confirmed it.
    pub async fn enqueue(
        &self,
        body: Vec<u8>,
        properties: BasicProperties,
    ) -> Result<(), EnqueueError> {
        let (done, outcome) = oneshot::channel();
        self.tx
            .send(Pending {
                body,
                properties,
                done,
            })
            .map_err(|_| EnqueueError::NotConnected)?;
        outcome.await.unwrap_or(Err(EnqueueError::NotConnected))
    }
}

async fn run(
    broker: Arc<BrokerState>,
    queue: String,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            first = rx.recv() => first,
            _ = shutdown.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(more) => group.push(more),
                Err(_) => break,
            }
        }
        publish_group(&broker, &queue, group).await;
    }
}

async fn publish_group(broker: &BrokerState, queue: &str, group: Vec<Pending>) {
    let Some(channel) = broker.publisher().await else {
        for p in group {
            let _ = p.done.send(Err(EnqueueError::NotConnected));
        }
        return;
    };
    // Taken apart so each message's properties move into its publish
    // rather than being cloned, and the callers wait apart from both.
    let mut bodies = Vec::with_capacity(group.len());
    let mut properties = Vec::with_capacity(group.len());
    let mut callers = Vec::with_capacity(group.len());
    for p in group {
        bodies.push(p.body);
        properties.push(p.properties);
        callers.push(p.done);
    }
    let messages = bodies
        .iter()
        .zip(properties)
        .map(|(body, properties)| Outgoing {
            exchange: "",
            routing_key: queue,
            body,
            properties,
        })
        .collect();
    let outcomes: Vec<Result<(), EnqueueError>> =
        match publisher::publish_all(&channel, messages).await {
            Ok(acked) => acked
                .into_iter()
                .map(|ok| {
                    ok.then_some(())
                        .ok_or_else(|| EnqueueError::Publish("nacked".into()))
                })
                .collect(),
            Err(e) => vec![Err(EnqueueError::Publish(e.to_string())); callers.len()],
        };
    for (done, outcome) in callers.into_iter().zip(outcomes) {
        let _ = done.send(outcome);
    }
}
