//! The outbox relay: publishes committed events to `P.events` with publisher
//! confirms, in the order their transactions committed (by id within a
//! pass). A pass reads what committed since the last one and records its
//! snapshot as published only after the broker confirmed every event; a
//! nack, an error or a crash in between leaves the last recorded position,
//! and the next pass republishes the same bytes with the same `event_id`
//! (at-least-once). Nothing is published that was not committed.
//! Published rows are not deleted one by one: every time the ids enter a
//! new partition of the log, the full ones are emptied whole
//! (`outbox::reclaim`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::types::ShortString;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::confirm_link::{ConfirmLink, LinkError};
use super::publisher::{self, Outgoing};
use crate::store::{outbox, StoreError};

/// Events published (and confirmed) at a time within a pass.
const CHUNK: usize = 500;
/// Polling covers events written by other instances or by jobs that do not
/// notify this relay.
const POLL: Duration = Duration::from_millis(250);
const COALESCE: Duration = Duration::from_millis(10);
/// A pass that found fewer events than this means the relay keeps up: the
/// next wake publishes at once instead of coalescing, since waiting only
/// adds its 10 ms to every event's latency when there is nothing to gather
/// (at 1,000 order.place/s it was half the p50, `cargo bench --bench latency`).
const BUSY_PASS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Link(#[from] LinkError),
}

pub async fn run(
    pool: PgPool,
    mut link: ConfirmLink,
    exchange: String,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    // Full partitions are emptied at start, then each time the published
    // ids enter a new partition (every 65536 events).
    reclaim(&pool).await;
    let mut last_slot = None;
    let mut busy = false;
    loop {
        match relay_once(&pool, &mut link, &exchange).await {
            Ok(round) => {
                busy = round.published >= BUSY_PASS;
                if let Some(slot) = round.last_id.map(outbox::slot_of) {
                    if last_slot.is_some_and(|last| last != slot) {
                        reclaim(&pool).await;
                    }
                    last_slot = Some(slot);
                }
            }
            Err(RelayOnceError::Store(e)) => {
                tracing::warn!(error = %e, "outbox relay: database unavailable")
            }
            Err(RelayOnceError::Link(e)) => return Err(e.into()),
        }
        // Passes come at least every POLL: often enough for heartbeats.
        link.keep_alive().await?;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.notified() => {
                // Under load a wake comes after every committed batch; a
                // short wait lets the next ones join this pass, so the
                // relay's statements and commit are paid per few hundred
                // events, not per batch.
                if busy {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(COALESCE) => {}
                    }
                }
            }
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    // Drain what the last batches committed before we stop.
    let _ = relay_once(&pool, &mut link, &exchange).await;
    link.close().await;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum RelayOnceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Link(#[from] LinkError),
}

impl From<sqlx::Error> for RelayOnceError {
    fn from(e: sqlx::Error) -> Self {
        RelayOnceError::Store(e.into())
    }
}

async fn reclaim(pool: &PgPool) {
    match outbox::reclaim(pool).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(partitions = n, "outbox: emptied published partitions"),
        Err(e) => tracing::warn!(error = %e, "outbox: could not reclaim published partitions"),
    }
}

/// What a pass published.
#[derive(Debug, Default)]
pub struct Round {
    pub published: usize,
    /// The highest id among them.
    pub last_id: Option<i64>,
}

/// Publishes every event committed since the last pass, CHUNK at a time,
/// and ends the pass once all are confirmed. A pass longer than a chunk (a
/// backlog) records its progress after each confirmed chunk, so a nack or
/// a crash republishes at most the chunk in flight.
pub async fn relay_once(
    pool: &PgPool,
    link: &mut ConfirmLink,
    exchange: &str,
) -> Result<Round, RelayOnceError> {
    // Cancel-safe: the supervisor drops this pass when a consumer fails.
    let mut tx = crate::store::begin(pool).await?;
    let Some(turn) = outbox::take_relay_turn(&mut tx).await? else {
        return Ok(Round::default());
    };
    let mut round = Round::default();
    {
        let mut rows = outbox::unpublished(&mut tx, &turn);
        let mut chunk = Vec::with_capacity(CHUNK);
        loop {
            let next = rows.next().await.transpose()?;
            let end = next.is_none();
            chunk.extend(next);
            if chunk.len() == CHUNK || (end && !chunk.is_empty()) {
                if !publish_chunk(link, exchange, &chunk).await? {
                    // The pass stops at its last recorded progress: this
                    // chunk, confirmed or not, is published again next time.
                    metrics::counter!("payrecon_events_nacked_total").increment(1);
                    tracing::warn!(
                        events = chunk.len(),
                        "broker nacked events; republishing them"
                    );
                    return Ok(round);
                }
                round.published += chunk.len();
                metrics::counter!("payrecon_events_published_total").increment(chunk.len() as u64);
                round.last_id = chunk.iter().map(|e| e.id).max().max(round.last_id);
                if !end {
                    if let Some(last) = round.last_id {
                        outbox::record_progress(&mut *pool.acquire().await?, &turn, last).await?;
                    }
                }
                chunk.clear();
            }
            if end {
                break;
            }
        }
    }
    if round.published == 0 && turn.after_id == 0 {
        // Nothing new: the stored position stays, no write.
        return Ok(round);
    }
    outbox::finish_pass(&mut tx, &turn).await?;
    tx.commit().await?;
    Ok(round)
}

/// Publishes events with confirms; false if the broker nacked any.
async fn publish_chunk(
    link: &mut ConfirmLink,
    exchange: &str,
    events: &[outbox::PendingEvent],
) -> Result<bool, LinkError> {
    let messages = events
        .iter()
        .map(|r| Outgoing {
            exchange,
            routing_key: &r.routing_key,
            body: r.payload.as_bytes(),
            properties: publisher::json_properties()
                .with_message_id(ShortString::from(r.event_id.to_string()))
                .with_type(ShortString::from(r.routing_key.as_str())),
        })
        .collect();
    let acked = link.publish_all(messages).await?;
    Ok(acked.iter().all(|ok| *ok))
}
