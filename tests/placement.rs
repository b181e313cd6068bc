//! The order.place statements against the real PostgreSQL: the COPYs of
//! an all-new batch, the rows they write, and what they leave when a key
//! is taken.

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
    placing_with(request_id, order_id, place_data("wechat_pay"))
}

fn placing_with(request_id: &str, order_id: OrderId, mut data: serde_json::Value) -> Placing {
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

/// What the three rows of a placed order hold, as text, read back.
async fn stored(conn: &mut PgConnection, p: &Placing) -> Vec<Option<String>> {
    sqlx::query_as::<_, (Vec<Option<String>>,)>(
        "SELECT ARRAY[i.request_type, encode(i.body_hash, 'hex'), i.outcome, \
                o.out_trade_no, o.user_id, (o.items = $4)::text, o.currency, o.total_amount::text, \
                o.payment_method, o.status, o.payment_state, \
                to_char(o.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), \
                to_char(o.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), \
                e.routing_key, e.payload, \
                to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')] \
         FROM inbox i, orders o, outbox e \
         WHERE i.request_id = $1 AND o.order_id = $2 AND e.event_id = $3",
    )
    .bind(&p.request_id)
    .bind(p.order.order_id.0)
    .bind(p.created.event_id)
    .bind(sqlx::types::Json(&p.order.items))
    .fetch_one(conn)
    .await
    .unwrap()
    .0
}

/// What those rows must hold for `p`: the values the request parsed to,
/// times to the microsecond PostgreSQL keeps.
fn expected(p: &Placing) -> Vec<Option<String>> {
    let micros = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
    [
        "order.place".to_string(),
        hex::encode(&p.digest),
        "processed".to_string(),
        p.order.out_trade_no(),
        p.order.user_id.as_str().to_string(),
        // The stored items equal, as jsonb, the request's.
        "true".to_string(),
        p.order.currency.as_str().to_string(),
        p.order.total_amount.fen().to_string(),
        p.order.payment_method.as_str().to_string(),
        p.order.status.as_str().to_string(),
        p.order.payment_state.as_str().to_string(),
        micros(p.order.created_at),
        micros(p.order.expires_at),
        "order.created".to_string(),
        p.created.payload.clone(),
        micros(p.created.occurred_at),
    ]
    .into_iter()
    .map(Some)
    .collect()
}

#[tokio::test]
async fn the_copies_write_what_the_careful_statement_writes() {
    let (_env, pool) = pool_for("place_rows").await;
    // Text that COPY's framing must carry untouched: quotes, a backslash,
    // a tab, a newline and characters outside ASCII.
    let mut data = place_data("alipay");
    data["user_id"] = serde_json::json!("用户\t\"1\"");
    data["items"] = serde_json::json!([
        {"product_id": "商品\\2\n", "quantity": 3, "unit_price": 1},
        {"product_id": "p\t9", "quantity": 1, "unit_price": 999_999}
    ]);
    let copied = placing_with("rows-copy", OrderId::generate(), data.clone());
    let careful = placing_with("rows-careful", OrderId::generate(), data);
    let mut tx = pool.begin().await.unwrap();
    assert!(
        placement::insert_all_new(&mut tx, &placements(std::slice::from_ref(&copied)))
            .await
            .unwrap()
    );
    let placed =
        placement::claim_insert_announce(&mut tx, &placements(std::slice::from_ref(&careful)))
            .await
            .unwrap();
    assert_eq!(placed.inserted.len(), 1);
    tx.commit().await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let (from_copy, from_statement) = (
        stored(&mut conn, &copied).await,
        stored(&mut conn, &careful).await,
    );
    assert_eq!(from_copy, expected(&copied));
    assert_eq!(from_statement, expected(&careful));
}
