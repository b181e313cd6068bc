//! The outbox log against the real PostgreSQL: what a relay round takes,
//! what it leaves for the next, and when published partitions are emptied.

mod common;

use common::TestEnv;
use futures::TryStreamExt;
use payrecon::messaging::contracts::Event;
use payrecon::store::{self, outbox};
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

/// `n` events, each committed on its own; their ids in the order written.
async fn write_events(pool: &PgPool, n: usize) -> Vec<uuid::Uuid> {
    let mut written = Vec::with_capacity(n);
    for i in 0..n {
        written.push(write_event(&mut pool.acquire().await.unwrap(), i).await);
    }
    written
}

async fn unpublished(pool: &PgPool) -> i64 {
    outbox::count_unpublished(&mut pool.acquire().await.unwrap())
        .await
        .unwrap()
}

/// A relay pass opened: its transaction, its turn and the rows it reads.
async fn open_pass(
    pool: &PgPool,
) -> (
    sqlx::Transaction<'static, sqlx::Postgres>,
    outbox::RelayTurn,
    Vec<outbox::PendingEvent>,
) {
    let mut tx = pool.begin().await.unwrap();
    let turn = outbox::take_relay_turn(&mut tx)
        .await
        .unwrap()
        .expect("the relay's turn");
    let rows = outbox::unpublished(&mut tx, &turn)
        .try_collect()
        .await
        .unwrap();
    (tx, turn, rows)
}

/// One relay pass: the event ids it reads, and, with `commit`, its snapshot
/// recorded as published.
async fn round(pool: &PgPool, commit: bool) -> Vec<uuid::Uuid> {
    let (mut tx, turn, rows) = open_pass(pool).await;
    if commit {
        outbox::finish_pass(&mut tx, &turn).await.unwrap();
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
    rows.iter().map(|r| r.event_id).collect()
}

/// A pass reads in the order written, one relay at a time; a pass rolled
/// back (a nack, an error, a crash) leaves every event for the next one; a
/// committed pass leaves nothing behind and reads nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_counts_only_once_committed() {
    let (_env, pool) = pool_for("relayround").await;
    let written = write_events(&pool, 3).await;

    let mut first = pool.begin().await.unwrap();
    assert!(outbox::take_relay_turn(&mut first).await.unwrap().is_some());
    let mut second = pool.begin().await.unwrap();
    assert!(
        outbox::take_relay_turn(&mut second)
            .await
            .unwrap()
            .is_none(),
        "a second relay waits its turn"
    );
    drop(second);
    first.rollback().await.unwrap();

    assert_eq!(
        round(&pool, false).await,
        written,
        "read in the order written"
    );
    assert_eq!(
        unpublished(&pool).await,
        3,
        "a pass rolled back keeps every event"
    );
    assert_eq!(round(&pool, true).await, written);
    assert_eq!(unpublished(&pool).await, 0, "a committed pass is published");
    assert!(round(&pool, true).await.is_empty(), "nothing is read twice");
    pool.close().await;
}

/// A transaction that took its id first but commits last is not skipped:
/// the pass that runs while it is open cannot see its event, and the next
/// pass after its commit publishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_goes_out_in_the_next_round() {
    let (_env, pool) = pool_for("latecommit").await;
    let mut slow = pool.begin().await.unwrap();
    let late = write_event(&mut slow, 0).await;
    let early = write_event(&mut pool.acquire().await.unwrap(), 1).await;

    assert_eq!(round(&pool, true).await, vec![early]);
    slow.commit().await.unwrap();
    assert_eq!(unpublished(&pool).await, 1);
    assert_eq!(round(&pool, true).await, vec![late]);
    assert_eq!(unpublished(&pool).await, 0);
    pool.close().await;
}

/// A long pass records its progress; interrupted (a crash, a nack), the
/// next pass goes on after the last recorded event, still within the old
/// pass's snapshot: an event committed meanwhile waits for the pass after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_pass_resumes_after_its_progress() {
    let (_env, pool) = pool_for("resume").await;
    let written = write_events(&pool, 4).await;
    let (tx, turn, rows) = open_pass(&pool).await;
    outbox::record_progress(&mut pool.acquire().await.unwrap(), &turn, rows[1].id)
        .await
        .unwrap();
    drop(tx); // the crash
    assert_eq!(unpublished(&pool).await, 2, "two recorded as published");
    let later = write_event(&mut pool.acquire().await.unwrap(), 9).await;

    assert_eq!(round(&pool, true).await, written[2..].to_vec());
    assert_eq!(round(&pool, true).await, vec![later]);
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
    write_in_slot(&mut pool.acquire().await.unwrap(), 3, 5).await;
    assert_eq!(
        outbox::reclaim(&pool).await.unwrap(),
        0,
        "nothing published yet"
    );
    assert_eq!(rows_in(&pool, "outbox_s3").await, 5);

    assert_eq!(round(&pool, true).await.len(), 5);
    let mut writing = pool.begin().await.unwrap();
    write_in_slot(&mut writing, 4, 1).await;
    assert_eq!(outbox::reclaim(&pool).await.unwrap(), 1);
    assert_eq!(rows_in(&pool, "outbox_s3").await, 0, "published: emptied");

    writing.commit().await.unwrap();
    assert_eq!(
        rows_in(&pool, "outbox_s4").await,
        1,
        "the open write survived"
    );
    assert_eq!(unpublished(&pool).await, 1);
    assert_eq!(round(&pool, true).await.len(), 1);
    assert_eq!(outbox::reclaim(&pool).await.unwrap(), 1);
    assert_eq!(rows_in(&pool, "outbox").await, 0);
    assert_eq!(unpublished(&pool).await, 0);
    pool.close().await;
}
