//! The batched consumer. It takes up to `max` deliveries (or what arrives
//! within `wait` of the first), lets a processor commit all their effects in
//! one transaction, dead-letters what can never be processed, and only then
//! acknowledges the whole batch with one `multiple` ack. A crash anywhere
//! before the ack redelivers the batch; the inbox makes the replay a no-op.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::Channel;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::dlq;
use super::publisher::{self, Outgoing};

/// What a processor says about a batch whose effects it committed.
#[derive(Debug, Default)]
pub struct BatchResult {
    /// Deliveries (by index) to move to the dead-letter queue, with the reason.
    pub dead_letters: Vec<(usize, String)>,
    /// The batch may have scheduled gateway work (a payment, a close, a
    /// refund, a reconciliation): wake its runner. A run of order.place
    /// schedules none, and waking the runner for it costs a query per batch.
    pub scheduled_work: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The database is unreachable or the batch conflicted: nothing was
    /// committed; the same batch is tried again after a pause.
    #[error("transient: {0}")]
    Transient(String),
}

#[async_trait]
pub trait BatchProcessor: Send + Sync + 'static {
    /// What the processor reads of a batch's bodies: read once, when the
    /// batch is formed, and handed to `process` (and to its retries).
    type Parsed: Send + Sync + 'static;

    /// Reads the batch, and says what its requests touch (e.g. order ids).
    /// A batch may be processed while the previous one is still committing
    /// only if their keys are disjoint; otherwise it waits, so a request
    /// always sees the effects of the requests before it. `None`: always wait.
    fn parse(&self, batch: &[Delivery]) -> (Self::Parsed, Option<HashSet<String>>);

    async fn process(
        &self,
        batch: &[Delivery],
        parsed: &Self::Parsed,
    ) -> Result<BatchResult, ProcessError>;
}

/// Who to wake after a batch committed.
#[derive(Clone)]
pub struct Wakers {
    /// The outbox relay: any batch may have written events.
    pub relay: Arc<Notify>,
    /// The runner of gateway work, for batches that scheduled some.
    pub work: Arc<Notify>,
}

pub struct ConsumerSpec {
    pub queue: String,
    pub dlx: String,
    pub prefetch: u16,
    pub max_batch: usize,
    pub wait: Duration,
    /// Batches processed at once (each on its own database connection).
    pub depth: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("dead-lettering: {0}")]
    DeadLetter(#[from] publisher::PublishError),
    #[error("the consumer stream ended (channel or connection closed)")]
    StreamEnded,
    #[error("batch worker failed: {0}")]
    Worker(String),
}

/// Consumes until `shutdown` (Ok) or until the broker side fails (Err, so the
/// supervisor reconnects). After every batch `committed` wakes the outbox
/// relay, which publishes the new events at once, and, if the batch
/// scheduled gateway work, the runner that does it.
pub async fn run<P: BatchProcessor>(
    channel: Channel,
    spec: ConsumerSpec,
    processor: Arc<P>,
    committed: Wakers,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    channel
        .basic_qos(spec.prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!("payrecon-{}-{}", spec.queue, uuid::Uuid::new_v4().simple());
    let mut stream = channel
        .basic_consume(
            ShortString::from(spec.queue.as_str()),
            ShortString::from(tag.as_str()),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Up to `depth` batches at once: the oldest committing while newer ones
    // run their statements on other connections. Settled (dead letters,
    // ack) strictly in order, so a multiple ack never covers a batch that
    // was not committed.
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    let mut abandoned = false;
    loop {
        let room = inflight.len() < spec.depth.max(1);
        let first = tokio::select! {
            // Shutdown first: with prefetched deliveries always ready, an
            // unbiased select would keep taking whole batches after a stop
            // half of the time, each one more round.
            biased;
            _ = shutdown.cancelled() => break,
            joined = join_oldest(&mut inflight) => {
                let Some(done) = inflight.pop_front() else { continue };
                if !finish(&channel, &spec, done, joined, &committed).await? {
                    abandoned = true;
                    break;
                }
                continue;
            }
            next = stream.next(), if room => next,
        };
        let mut batch = vec![first.ok_or(ConsumerError::StreamEnded)??];
        let deadline = tokio::time::Instant::now() + spec.wait;
        while batch.len() < spec.max_batch {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(delivery)) => batch.push(delivery?),
                Ok(None) => return Err(ConsumerError::StreamEnded),
                Err(_) => break,
            }
        }
        let (parsed, keys) = processor.parse(&batch);
        // A batch that touches what an unsettled one touches waits for all
        // of them, so a request always sees the effects of those before it.
        let independent = keys.as_ref().is_some_and(|k| {
            inflight
                .iter()
                .all(|f| f.keys.as_ref().is_some_and(|fk| fk.is_disjoint(k)))
        });
        if !independent && !settle_all(&channel, &spec, &mut inflight, &committed).await? {
            abandoned = true;
            break;
        }
        let batch = Arc::new(batch);
        let handle = tokio::spawn(process_with_retry(
            processor.clone(),
            batch.clone(),
            parsed,
            shutdown.clone(),
        ));
        inflight.push_back(InFlight {
            batch,
            keys,
            handle,
        });
    }
    if abandoned {
        // Not settled: a batch before them was not committed. They are
        // redelivered when the channel closes; the inbox makes that a no-op.
        for mut rest in inflight.drain(..) {
            let _ = rest.handle_result().await;
        }
    } else {
        settle_all(&channel, &spec, &mut inflight, &committed).await?;
    }
    // Stop deliveries; whatever was prefetched but not processed is requeued
    // by the broker when the channel closes.
    let _ = channel
        .basic_cancel(
            ShortString::from(tag.as_str()),
            BasicCancelOptions::default(),
        )
        .await;
    // Closed here, not left to lapin's close-on-drop: that one races the
    // connection close that follows and logs a spurious connection error.
    let _ = channel.close(200, "consumer stopped".into()).await;
    Ok(())
}

struct InFlight {
    batch: Arc<Vec<Delivery>>,
    keys: Option<HashSet<String>>,
    handle: tokio::task::JoinHandle<Option<BatchResult>>,
}

type Joined = Result<Option<BatchResult>, tokio::task::JoinError>;

impl InFlight {
    async fn handle_result(&mut self) -> Joined {
        (&mut self.handle).await
    }
}

/// Completes when the oldest batch in flight has been processed (never, if none).
async fn join_oldest(inflight: &mut VecDeque<InFlight>) -> Joined {
    match inflight.front_mut() {
        Some(f) => f.handle_result().await,
        None => std::future::pending().await,
    }
}

/// Waits for and settles every batch in flight, oldest first. False: one
/// was not committed (see `finish`); the ones after it are left unsettled.
async fn settle_all(
    channel: &Channel,
    spec: &ConsumerSpec,
    inflight: &mut VecDeque<InFlight>,
    committed: &Wakers,
) -> Result<bool, ConsumerError> {
    while let Some(mut oldest) = inflight.pop_front() {
        let joined = oldest.handle_result().await;
        if !finish(channel, spec, oldest, joined, committed).await? {
            for mut rest in inflight.drain(..) {
                let _ = rest.handle_result().await;
            }
            return Ok(false);
        }
    }
    Ok(true)
}

/// Settles a processed batch. False: it was not processed because of a
/// shutdown during a database outage (nothing committed, nothing acked).
async fn finish(
    channel: &Channel,
    spec: &ConsumerSpec,
    done: InFlight,
    joined: Joined,
    committed: &Wakers,
) -> Result<bool, ConsumerError> {
    match joined {
        Ok(Some(result)) => {
            let scheduled_work = result.scheduled_work;
            settle(channel, spec, &done.batch, result).await?;
            committed.relay.notify_one();
            if scheduled_work {
                committed.work.notify_one();
            }
            Ok(true)
        }
        Ok(None) => Ok(false),
        Err(e) => Err(ConsumerError::Worker(e.to_string())),
    }
}

async fn process_with_retry<P: BatchProcessor>(
    processor: Arc<P>,
    batch: Arc<Vec<Delivery>>,
    parsed: P::Parsed,
    shutdown: CancellationToken,
) -> Option<BatchResult> {
    let mut pause = Duration::from_millis(100);
    loop {
        match processor.process(&batch, &parsed).await {
            Ok(result) => return Some(result),
            Err(ProcessError::Transient(why)) => {
                tracing::warn!(error = %why, batch = batch.len(), "batch not committed, will retry");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn settle(
    channel: &Channel,
    spec: &ConsumerSpec,
    batch: &[Delivery],
    result: BatchResult,
) -> Result<(), ConsumerError> {
    let mut letters = Vec::with_capacity(result.dead_letters.len());
    let now = chrono::Utc::now();
    for (index, reason) in &result.dead_letters {
        let Some(d) = batch.get(*index) else { continue };
        tracing::warn!(queue = %spec.queue, reason = %reason, "dead-lettering message");
        // Labelled "requests" / "notifications" like the other series, not
        // with the prefixed queue name: one dashboard serves every prefix.
        let label = spec
            .queue
            .rsplit_once('.')
            .map_or(spec.queue.as_str(), |(_, q)| q);
        metrics::counter!("payrecon_dead_letters_total", "queue" => label.to_string()).increment(1);
        letters.push(Outgoing {
            exchange: &spec.dlx,
            routing_key: &spec.queue,
            body: &d.data,
            properties: dlq::letter::mark(d.properties.clone(), reason, now),
        });
    }
    if !letters.is_empty() {
        let acked = publisher::publish_all(channel, letters).await?;
        if acked.iter().any(|ok| !ok) {
            return Err(publisher::PublishError::Nacked.into());
        }
    }
    if let Some(last) = batch.last() {
        channel
            .basic_ack(last.delivery_tag, BasicAckOptions { multiple: true })
            .await?;
    }
    Ok(())
}
