//! The order.place statements against the real PostgreSQL: the plain
//! inserts of an all-new batch, and what they leave when a key is taken.

mod common;

use common::{place_data, TestEnv};
use payrecon::domain::{Order, OrderId};
use payrecon::messaging::contracts::SerializedEvent;
use payrecon::messaging::requests::{parse_request, Request};
use payrecon::store::placement::{self, Placement};
use payrecon::store::{self, outbox};
use sqlx::{PgConnection, PgPool};

/// A parsed order.place: its request id, digest, order and order.created.
struct Placing {
    request_id: String,
    digest: Vec<u8>,
    order: Order,
    created: SerializedEvent,
}

fn placing(request_id: &str, order_id: OrderId) -> Placing {
    let mut data = place_data("wechat_pay");
    data["order_id"] = serde_json::json!(order_id.to_string());
    let body = serde_json::json!({"type": "order.place", "request_id": request_id,
        "sent_at": "2026-11-24T10:00:00+08:00", "data": data});
    let env = parse_request(body.to_string().as_bytes()).unwrap();
    let Request::PlaceOrder(place) = env.body else {
        panic!("an order.place");
    };
    let new = place.into_new_order(chrono::Duration::minutes(30));
    let order = Order::place(new, chrono::Utc::now()).unwrap();
    let created = SerializedEvent::order_created(&order, request_id);
    Placing {
        request_id: request_id.to_string(),
        digest: env.digest,
        order,
        created,
    }
}

fn placements(batch: &[Placing]) -> Vec<Placement<'_>> {
    batch
        .iter()
        .map(|p| Placement {
            request_id: &p.request_id,
            request_type: "order.place",
            body_hash: &p.digest,
            order: &p.order,
            created: &p.created,
        })
        .collect()
}

/// (inbox rows, orders, unpublished events) as `conn` sees them.
async fn counts(conn: &mut PgConnection) -> (i64, i64, i64) {
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    (
        inbox,
        orders,
        outbox::count_unpublished(conn).await.unwrap(),
    )
}

async fn pool_for(tag: &str) -> (TestEnv, PgPool) {
    let env = TestEnv::new(tag);
    let pool = store::connect(&env.settings.database).await.unwrap();
    (env, pool)
}

fn fresh(n: usize, tag: &str) -> Vec<Placing> {
    (0..n)
        .map(|i| placing(&format!("{tag}-{i}"), OrderId::generate()))
        .collect()
}

#[tokio::test]
async fn an_all_new_batch_is_written_whole() {
    let (_env, pool) = pool_for("place_new").await;
    let batch = fresh(3, "new");
    let mut tx = pool.begin().await.unwrap();
    assert!(placement::insert_all_new(&mut tx, &placements(&batch))
        .await
        .unwrap());
    tx.commit().await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(counts(&mut conn).await, (3, 3, 3));
    let (status, total): (String, i64) =
        sqlx::query_as("SELECT status, total_amount FROM orders WHERE order_id = $1")
            .bind(batch[1].order.order_id.0)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!((status.as_str(), total), ("pending_payment", 3998));
}

/// Runs `second` after `first` was committed: the plain inserts must refuse
/// it whole, and the careful statement, in the same transaction, must
/// write just the new ones.
async fn refused_then_sorted(tag: &str, first: Vec<Placing>, second: Vec<Placing>, new: usize) {
    let (_env, pool) = pool_for(tag).await;
    let mut tx = pool.begin().await.unwrap();
    assert!(placement::insert_all_new(&mut tx, &placements(&first))
        .await
        .unwrap());
    tx.commit().await.unwrap();
    let before = counts(&mut pool.acquire().await.unwrap()).await;

    let mut tx = pool.begin().await.unwrap();
    assert!(!placement::insert_all_new(&mut tx, &placements(&second))
        .await
        .unwrap());
    assert_eq!(
        counts(&mut tx).await,
        before,
        "nothing of the refused batch is left"
    );
    let placed = placement::claim_insert_announce(&mut tx, &placements(&second))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(placed.inserted.len(), new);
    let after = counts(&mut pool.acquire().await.unwrap()).await;
    assert_eq!(after.1, before.1 + new as i64);
    assert_eq!(after.2, before.2 + new as i64);
}

#[tokio::test]
async fn a_processed_request_id_sends_the_batch_the_careful_way() {
    let first = fresh(2, "dup");
    let mut second = fresh(2, "dup-next");
    // A redelivery of the first batch's second request.
    second.insert(1, placing(&first[1].request_id, first[1].order.order_id));
    refused_then_sorted("place_dup", first, second, 2).await;
}

#[tokio::test]
async fn an_existing_order_id_sends_the_batch_the_careful_way() {
    let first = fresh(1, "exists");
    let mut second = fresh(1, "exists-next");
    // A new request naming the order the first batch created.
    second.push(placing("exists-other", first[0].order.order_id));
    refused_then_sorted("place_exists", first, second, 1).await;
}
