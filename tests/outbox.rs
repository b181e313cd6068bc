//! The outbox log against the real PostgreSQL: what a relay round takes,
//! what it leaves for the next, and when published partitions are emptied;
//! and the order.place statement's answer to a concurrent claim.

mod common;

use common::TestEnv;
use futures::TryStreamExt;
use payrecon::messaging::contracts::Event;
use payrecon::store::{self, outbox, StoreError};
use serde_json::json;
use sqlx::PgPool;

async fn pool_for(tag: &str) -> (TestEnv, PgPool) {
    let env = TestEnv::new(tag);
    let pool = store::connect(&env.settings.database).await.unwrap();
    (env, pool)
}

async fn write_event(conn: &mut sqlx::PgConnection, i: usize) -> uuid::Uuid {
    let event = Event::new("request.rejected", Some(&format!("r-{i}")), json!({"i": i}));
    outbox::enqueue(conn, &event).await.unwrap();
    event.event_id
}

async fn unpublished(pool: &PgPool) -> i64 {
    outbox::count_unpublished(&mut *pool.acquire().await.unwrap())
        .await
        .unwrap()
}

/// One relay round: its turn, the event ids it reads, and, with `commit`,
/// its snapshot recorded as published.
async fn round(pool: &PgPool, commit: bool) -> Vec<uuid::Uuid> {
    let mut tx = pool.begin_with(outbox::ROUND_BEGIN).await.unwrap();
    let turn = outbox::take_relay_turn(&mut tx)
        .await
        .unwrap()
        .expect("the relay's turn");
    let rows: Vec<_> = outbox::unpublished(&mut tx, &turn)
        .try_collect()
        .await
        .unwrap();
    if commit {
        outbox::mark_published(&mut tx, &turn).await.unwrap();
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
    rows.iter().map(|r| r.event_id).collect()
}

/// A round reads in the order written, one relay at a time; a round rolled
/// back (a nack, an error, a crash) leaves every event for the next one; a
/// committed round leaves nothing behind and reads nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_counts_only_once_committed() {
    let (_env, pool) = pool_for("relayround").await;
    let mut written = Vec::new();
    for i in 0..3 {
        written.push(write_event(&mut *pool.acquire().await.unwrap(), i).await);
    }

    let mut first = pool.begin_with(outbox::ROUND_BEGIN).await.unwrap();
    assert!(outbox::take_relay_turn(&mut first).await.unwrap().is_some());
    let mut second = pool.begin_with(outbox::ROUND_BEGIN).await.unwrap();
    assert!(
        outbox::take_relay_turn(&mut second).await.unwrap().is_none(),
        "a second relay waits its turn"
    );
    drop(second);
    first.rollback().await.unwrap();

    assert_eq!(round(&pool, false).await, written, "read in the order written");
    assert_eq!(unpublished(&pool).await, 3, "a round rolled back keeps every event");
    assert_eq!(round(&pool, true).await, written);
    assert_eq!(unpublished(&pool).await, 0, "a committed round is published");
    assert!(round(&pool, true).await.is_empty(), "nothing is read twice");
    pool.close().await;
}

/// A transaction that took its id first but commits last is not skipped:
/// the round that runs while it is open cannot see its event, and the next
/// round after its commit publishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_goes_out_in_the_next_round() {
    let (_env, pool) = pool_for("latecommit").await;
    let mut slow = pool.begin().await.unwrap();
    let late = write_event(&mut slow, 0).await;
    let early = write_event(&mut *pool.acquire().await.unwrap(), 1).await;

    assert_eq!(round(&pool, true).await, vec![early]);
    slow.commit().await.unwrap();
    assert_eq!(unpublished(&pool).await, 1);
    assert_eq!(round(&pool, true).await, vec![late]);
    assert_eq!(unpublished(&pool).await, 0);
    pool.close().await;
}

/// Rows with ids of partition `slot` (the sequence itself is far below).
async fn write_in_slot(conn: &mut sqlx::PgConnection, slot: i64, n: i64) {
    sqlx::query(
        "INSERT INTO outbox (id, event_id, routing_key, payload) \
         SELECT $1 * 65536 + g, gen_random_uuid(), 'request.rejected', '{}' \
         FROM generate_series(1, $2) g",
    )
    .bind(slot)
    .bind(n)
    .execute(conn)
    .await
    .unwrap();
}

async fn rows_in(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A partition is emptied only once every row in it is published, and not
/// while a transaction may still be writing into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaim_empties_only_published_partitions() {
    let (_env, pool) = pool_for("reclaim").await;
    write_in_slot(&mut *pool.acquire().await.unwrap(), 3, 5).await;
    assert_eq!(outbox::reclaim(&pool).await.unwrap(), 0, "nothing published yet");
    assert_eq!(rows_in(&pool, "outbox_s3").await, 5);

    assert_eq!(round(&pool, true).await.len(), 5);
    let mut writing = pool.begin().await.unwrap();
    write_in_slot(&mut writing, 4, 1).await;
    assert_eq!(outbox::reclaim(&pool).await.unwrap(), 1);
    assert_eq!(rows_in(&pool, "outbox_s3").await, 0, "published: emptied");

    writing.commit().await.unwrap();
    assert_eq!(rows_in(&pool, "outbox_s4").await, 1, "the open write survived");
    assert_eq!(unpublished(&pool).await, 1);
    assert_eq!(round(&pool, true).await.len(), 1);
    assert_eq!(outbox::reclaim(&pool).await.unwrap(), 1);
    assert_eq!(rows_in(&pool, "outbox").await, 0);
    assert_eq!(unpublished(&pool).await, 0);
    pool.close().await;
}

/// The order.place statement skips committed keys with NOT EXISTS; a key
/// that another transaction commits while the statement waits on it is a
/// conflict to retry, not an error to dead-letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_claim_is_a_retryable_conflict() {
    use payrecon::domain::Order;
    use payrecon::messaging::contracts::SerializedEvent;
    use payrecon::messaging::requests::{parse_request, Request};
    use payrecon::store::placement::{self, Placement};

    let (env, pool) = pool_for("claimrace").await;
    let body = json!({"type": "order.place", "request_id": "race-1", "sent_at": "2026-11-24T10:00:00+08:00",
                      "data": common::place_data("alipay")});
    let env_req = parse_request(body.to_string().as_bytes()).unwrap();
    let Request::PlaceOrder(place) = &env_req.body else {
        panic!("an order.place");
    };
    let order = Order::place(
        place.clone().into_new_order(chrono::Duration::minutes(30)),
        chrono::Utc::now(),
    )
    .unwrap();
    let created = SerializedEvent::order_created(&order, "race-1");
    let placements = [Placement {
        request_id: "race-1",
        request_type: "order.place",
        body_hash: &env_req.digest,
        order: &order,
        created: &created,
    }];

    // Another transaction claims the request id and has not committed yet.
    let mut other = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO inbox (request_id, request_type, body_hash, outcome) VALUES ('race-1', 'order.place', '\\x00', 'processed')")
        .execute(&mut *other)
        .await
        .unwrap();
    let racing = tokio::spawn({
        let pool = pool.clone();
        let placements_order = order.clone();
        let created = created.clone();
        let digest = env_req.digest.clone();
        async move {
            let p = [Placement {
                request_id: "race-1",
                request_type: "order.place",
                body_hash: &digest,
                order: &placements_order,
                created: &created,
            }];
            let mut conn = pool.acquire().await.unwrap();
            placement::claim_insert_announce(&mut conn, &p).await
        }
    });
    // Commit only once the statement is waiting on the uncommitted key.
    let waiting = "SELECT count(*) FROM pg_stat_activity \
                   WHERE datname = current_database() AND wait_event_type = 'Lock'";
    for _ in 0..200 {
        let n: i64 = sqlx::query_scalar(waiting).fetch_one(&pool).await.unwrap();
        if n > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    other.commit().await.unwrap();
    let result = racing.await.unwrap();
    assert!(
        matches!(&result, Err(e @ StoreError::Conflict(_)) if e.is_transient()),
        "a concurrent claim is a transient conflict: {result:?}"
    );

    // Tried again, the statement finds the committed claim and skips it.
    let mut conn = pool.acquire().await.unwrap();
    let placed = placement::claim_insert_announce(&mut conn, &placements)
        .await
        .unwrap();
    assert!(placed.claimed.is_empty() && placed.inserted.is_empty());
    drop(conn);
    pool.close().await;
    drop(env);
}
