//! The outbox relay: publishes committed events to `P.events` in id order
//! with publisher confirms. It takes (deletes) a round of events in a
//! transaction that commits only after the broker confirmed all of them; a
//! nack, an error or a crash in between rolls the deletion back, and the
//! next round republishes the same bytes with the same `event_id`
//! (at-least-once). Nothing is published that was not committed.

use std::sync::Arc;
use std::time::Duration;

use lapin::types::ShortString;
use lapin::Channel;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::publisher::{self, Outgoing, PublishError};
use crate::store::{outbox, StoreError};

const BATCH: i64 = 500;
/// Polling covers events written by other instances or by jobs that do not
/// notify this relay.
const POLL: Duration = Duration::from_millis(250);
const COALESCE: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Publish(#[from] PublishError),
}

pub async fn run(
    pool: PgPool,
    channel: Channel,
    exchange: String,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    loop {
        match relay_once(&pool, &channel, &exchange).await {
            Ok(n) if n as i64 == BATCH => continue,
            Ok(_) => {}
            Err(RelayOnceError::Store(e)) => {
                tracing::warn!(error = %e, "outbox relay: database unavailable")
            }
            Err(RelayOnceError::Publish(e)) => return Err(e.into()),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.notified() => {
                // Under load a wake comes after every committed batch; a
                // short wait lets the next ones join this round, so the
                // relay's statements and commit are paid per few hundred
                // events, not per batch.
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(COALESCE) => {}
                }
            }
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    // Drain what the last batches committed before we stop.
    let _ = relay_once(&pool, &channel, &exchange).await;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum RelayOnceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

impl From<sqlx::Error> for RelayOnceError {
    fn from(e: sqlx::Error) -> Self {
        RelayOnceError::Store(e.into())
    }
}

/// Publishes one batch; returns how many events it published.
pub async fn relay_once(
    pool: &PgPool,
    channel: &Channel,
    exchange: &str,
) -> Result<usize, RelayOnceError> {
    let mut tx = pool.begin().await?;
    if !outbox::take_relay_turn(&mut tx).await? {
        return Ok(0);
    }
    let rows = outbox::take_pending(&mut tx, BATCH).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let messages = rows
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
    let acked = publisher::publish_all(channel, messages).await?;
    if acked.iter().any(|ok| !ok) {
        // Dropping `tx` rolls the round back: every event of it, confirmed
        // or not, is published again by the next one.
        metrics::counter!("payrecon_events_nacked_total").increment(1);
        tracing::warn!(
            events = rows.len(),
            "broker nacked events; republishing the round"
        );
        return Ok(0);
    }
    tx.commit().await?;
    metrics::counter!("payrecon_events_published_total").increment(rows.len() as u64);
    Ok(rows.len())
}
