//! The dead-letter queues, worked on from the command line: list, replay,
//! purge. All three are one sweep over the queue with `basic.get` (manual
//! ack) that decides, per dead letter, to keep, replay or remove it.
//!
//! - Kept letters are never acked or nacked: they stay unacked until the
//!   sweep closes its channel, and the broker returns them all, in order.
//!   A listing therefore takes nothing away, and neither does a crashed
//!   sweep. On this broker (3.10) every return counts in `x-delivery-count`,
//!   which is harmless here: the dead-letter queues are declared without a
//!   delivery limit (`topology::declare`) and 3.10 has no default one. We
//!   close the channel instead of `basic.nack(requeue)` because from 4.0 on
//!   a return by channel close no longer counts as a failed delivery (as
//!   RabbitMQ's 4.0 notes have it; this 3.10 broker cannot show it), so a
//!   listing would not push a dead letter toward 4.x's default limit (20)
//!   either; a requeueing nack would.
//! - A replayed letter is republished to its work queue (default exchange,
//!   `mandatory`, publisher confirms) and acked in the dead-letter queue only
//!   once the broker confirmed the republish. An interruption in between
//!   leaves a copy in both queues: a duplicate, which the inbox absorbs by
//!   request_id; never a loss.
//! - A removed letter is acked at once.
//!
//! A sweep reads at most the messages that were ready when it began, so
//! letters that arrive meanwhile (a replayed request that fails again) are
//! left for the next sweep instead of being replayed in a loop.

pub mod letter;

use std::time::Duration;

use chrono::Utc;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties};

pub use letter::DeadLetter;

use super::broker_error::ConnectError;
use super::broker_tls::BrokerTls;
use super::topology::Names;
use crate::config::AmqpSettings;

/// Replays published before their confirms are awaited together.
const REPLAY_BATCH: usize = 64;

/// Test hook: the process exits (as if killed) once this many replays are
/// confirmed, before they are acked in the dead-letter queue.
pub const EXIT_AFTER_CONFIRMS_ENV: &str = "PAYRECON_DLQ_EXIT_AFTER_CONFIRMS";

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("no queue {0} on the broker (has the daemon run with this amqp.prefix?)")]
    NoQueue(String),
    #[error("{0} is not a dead-letter queue of this prefix")]
    NotADeadLetterQueue(String),
    #[error("the broker did not confirm the republish to {0}; nothing of that batch was removed")]
    NotConfirmed(String),
}

/// What a sweep does with one dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Keep,
    Replay,
    Remove,
}

/// A sweep's counts, so far or in the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Messages the sweep will look at (the queue's depth when it began,
    /// or less with a limit).
    pub total: u64,
    pub seen: u64,
    pub kept: u64,
    pub replayed: u64,
    pub removed: u64,
}

/// A connection to the broker for work on the dead-letter queues.
pub struct DeadLetters {
    conn: Connection,
    names: Names,
}

impl DeadLetters {
    pub async fn connect(amqp: &AmqpSettings) -> Result<DeadLetters, DlqError> {
        let props = ConnectionProperties::default()
            .with_connection_name(format!("payrecon-dlq-{}", amqp.prefix).into());
        // The first of the brokers that answers, as the daemon would.
        let urls = amqp.urls();
        let tls = BrokerTls::from_settings(amqp)?;
        let mut conn = tls.open(&amqp.first_url(), props.clone()).await;
        for url in urls.iter().skip(1) {
            match &conn {
                Ok(_) => break,
                // The nodes of a cluster share their CA: the next fails alike.
                Err(e) if e.is_tls() => break,
                Err(_) => conn = tls.open(url, props.clone()).await,
            }
        }
        let conn = conn?;
        Ok(DeadLetters {
            conn,
            names: Names::new(&amqp.prefix),
        })
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The work queue whose dead letters `dlq` holds.
    pub fn origin_of(&self, dlq: &str) -> Result<String, DlqError> {
        if dlq == self.names.requests_dlq {
            Ok(self.names.requests.clone())
        } else if dlq == self.names.notifications_dlq {
            Ok(self.names.notifications.clone())
        } else {
            Err(DlqError::NotADeadLetterQueue(dlq.to_string()))
        }
    }

    /// Messages ready in `queue`. Passive: a missing queue is an error, not
    /// created (with the wrong arguments) as a side effect.
    pub async fn depth(&self, queue: &str) -> Result<u64, DlqError> {
        // A failed passive declare closes its channel: one of its own.
        let channel = self.conn.create_channel().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declared = channel
            .queue_declare(ShortString::from(queue), options, FieldTable::default())
            .await;
        let depth = match declared {
            Ok(q) => u64::from(q.message_count()),
            Err(_) => return Err(DlqError::NoQueue(queue.to_string())),
        };
        let _ = channel.close(200, "depth read".into()).await;
        Ok(depth)
    }

    /// Up to `limit` dead letters from the head of `dlq`, all left in place.
    pub async fn list(&self, dlq: &str, limit: u64) -> Result<Vec<DeadLetter>, DlqError> {
        let mut seen = Vec::new();
        self.sweep(
            dlq,
            Some(limit),
            |letter| {
                seen.push(letter.clone());
                Action::Keep
            },
            |_| {},
        )
        .await?;
        Ok(seen)
    }

    /// Looks at every dead letter that was ready in `dlq` when it began (at
    /// most `limit`) and does what `decide` says with each. `progress` is
    /// told after each one.
    pub async fn sweep(
        &self,
        dlq: &str,
        limit: Option<u64>,
        mut decide: impl FnMut(&DeadLetter) -> Action,
        mut progress: impl FnMut(&Sweep),
    ) -> Result<Sweep, DlqError> {
        let origin = self.origin_of(dlq)?;
        let depth = self.depth(dlq).await?;
        let mut sweep = Sweep {
            total: limit.map_or(depth, |l| l.min(depth)),
            ..Sweep::default()
        };
        let channel = self.conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let exit_after = exit_after_confirms();
        let mut batch: Vec<Delivery> = Vec::with_capacity(REPLAY_BATCH);
        while sweep.seen < sweep.total {
            let got = channel
                .basic_get(ShortString::from(dlq), BasicGetOptions { no_ack: false })
                .await?;
            let Some(got) = got else { break };
            sweep.seen += 1;
            let delivery = got.delivery;
            let letter = DeadLetter::read(dlq, &delivery.properties, &delivery.data);
            match decide(&letter) {
                // Held unacked: returned when the channel closes.
                Action::Keep => sweep.kept += 1,
                Action::Remove => {
                    channel
                        .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
                        .await?;
                    sweep.removed += 1;
                }
                Action::Replay => {
                    batch.push(delivery);
                    if batch.len() >= REPLAY_BATCH {
                        sweep.replayed +=
                            replay(&channel, &origin, &mut batch, sweep.replayed, exit_after)
                                .await?;
                    }
                }
            }
            progress(&sweep);
        }
        if !batch.is_empty() {
            sweep.replayed +=
                replay(&channel, &origin, &mut batch, sweep.replayed, exit_after).await?;
            progress(&sweep);
        }
        // Returns every kept letter to the queue (see the module doc).
        channel.close(200, "dlq sweep done".into()).await?;
        let expected = depth.saturating_sub(sweep.replayed + sweep.removed);
        self.await_returns(dlq, expected).await;
        Ok(sweep)
    }

    /// The broker returns a closed channel's unacked messages a moment
    /// after the close: wait until they are ready again, so a command that
    /// follows this one (a replay right after a listing) sees them all.
    async fn await_returns(&self, dlq: &str, expected: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match self.depth(dlq).await {
                Ok(now) if now >= expected => return,
                Ok(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // Another client took some meanwhile, or the queue is gone:
                // nothing of ours is missing, the count is just not ours.
                _ => {
                    tracing::warn!(queue = %dlq, expected, "dead letters not all back yet");
                    return;
                }
            }
        }
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "dlq done".into()).await;
    }
}

/// Republishes a batch to `origin`, waits for every confirm, then acks the
/// batch in the dead-letter queue. Returns how many were replayed.
async fn replay(
    channel: &Channel,
    origin: &str,
    batch: &mut Vec<Delivery>,
    replayed_before: u64,
    exit_after: Option<u64>,
) -> Result<u64, DlqError> {
    let now = Utc::now();
    // mandatory: a work queue that is gone returns the message instead of
    // the broker confirming a message that reached nothing.
    let options = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let mut confirms = Vec::with_capacity(batch.len());
    for d in batch.iter() {
        let props = letter::for_replay(&d.properties, now);
        confirms.push(
            channel
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(origin),
                    options,
                    &d.data,
                    props,
                )
                .await?,
        );
    }
    for confirm in confirms {
        match confirm.await? {
            Confirmation::Ack(None) => {}
            _ => return Err(DlqError::NotConfirmed(origin.to_string())),
        }
    }
    let count = batch.len() as u64;
    if exit_after.is_some_and(|n| replayed_before + count >= n) {
        eprintln!("{EXIT_AFTER_CONFIRMS_ENV}: exiting between confirm and ack");
        std::process::exit(137);
    }
    for d in batch.drain(..) {
        channel
            .basic_ack(d.delivery_tag, BasicAckOptions::default())
            .await?;
    }
    tracing::info!(queue = %origin, count, "dead letters replayed");
    Ok(count)
}

fn exit_after_confirms() -> Option<u64> {
    std::env::var(EXIT_AFTER_CONFIRMS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
}
