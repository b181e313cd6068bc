//! The transactional outbox: an event row is written in the transaction of
//! the change it reports, and the relay (messaging::relay) publishes it with
//! publisher confirms afterwards, then deletes it. So an event exists iff
//! its change committed.

use chrono::{DateTime, Utc};

use sqlx::PgConnection;

use super::StoreError;
use crate::messaging::contracts::Event;

pub async fn enqueue(conn: &mut PgConnection, event: &Event) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO outbox (event_id, routing_key, payload, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(event.event_id)
    .bind(&event.kind)
    .bind(event.to_json())
    .bind(event.occurred_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Several events in one round trip (a batch of requests emits many).
pub async fn enqueue_many(conn: &mut PgConnection, events: &[Event]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.event_id).collect();
    let keys: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let payloads: Vec<String> = events.iter().map(Event::to_json).collect();
    let times: Vec<DateTime<Utc>> = events.iter().map(|e| e.occurred_at).collect();
    sqlx::query(
        "INSERT INTO outbox (event_id, routing_key, payload, created_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[])",
    )
    .bind(&ids)
    .bind(&keys)
    .bind(&payloads)
    .bind(&times)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingEvent {
    pub id: i64,
    pub event_id: uuid::Uuid,
    pub routing_key: String,
    pub payload: String,
}

/// The advisory lock key of the relay: "outbox" in ASCII.
const RELAY_LOCK: i64 = 0x6f7574626f78;

/// Takes the relay's turn for this transaction: true if no other relay
/// (another instance) holds it. One relay at a time publishes, so rows need
/// no row locks: locking each row would write every event to the WAL twice
/// more (the lock, then the delete).
///
/// The transaction's commit does not wait for the disk: losing it in a
/// crash only means publishing its events again (at-least-once, same
/// event_id). Set in the same round trip.
pub async fn take_relay_turn(conn: &mut PgConnection) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT pg_try_advisory_xact_lock($1) FROM set_config('synchronous_commit', 'off', true)",
    )
    .bind(RELAY_LOCK)
    .fetch_one(conn)
    .await?)
}

/// Takes up to `limit` unpublished events, oldest first, deleting them in
/// the caller's transaction: commit once the broker confirmed every one,
/// roll back otherwise and they are all still there for the next round.
/// One statement instead of a read and a delete by id: the rows are found
/// once, and their ids make no second trip. Call within the relay's turn
/// (`take_relay_turn`).
pub async fn take_pending(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<PendingEvent>, StoreError> {
    let mut rows: Vec<PendingEvent> = sqlx::query_as(
        "DELETE FROM outbox WHERE id IN ( \
           SELECT id FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1) \
         RETURNING id, event_id, routing_key, payload",
    )
    .bind(limit)
    .fetch_all(conn)
    .await?;
    // RETURNING keeps no order; events go out in the order they were written.
    rows.sort_unstable_by_key(|r| r.id);
    Ok(rows)
}

pub async fn count_unpublished(conn: &mut PgConnection) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(conn)
            .await?,
    )
}
