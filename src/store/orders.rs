//! Orders: load (optionally locked) and write back with an optimistic check
//! on the status the caller read.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use super::StoreError;
use crate::domain::{LineItem, Money, Order, OrderId, OrderStatus, PaymentState};

#[derive(FromRow)]
struct OrderRow {
    order_id: Uuid,
    user_id: String,
    items: sqlx::types::Json<Vec<LineItem>>,
    currency: String,
    total_amount: i64,
    payment_method: String,
    status: String,
    payment_state: String,
    paid_amount: i64,
    refunded_amount: i64,
    gateway_transaction_id: Option<String>,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    paid_at: Option<DateTime<Utc>>,
    shipped_at: Option<DateTime<Utc>>,
    completed_at: Option<DateTime<Utc>>,
    cancelled_at: Option<DateTime<Utc>>,
    cancel_reason: Option<String>,
    carrier: Option<String>,
    tracking_no: Option<String>,
}

const COLUMNS: &str = "order_id, user_id, items, currency, total_amount, payment_method, status, \
    payment_state, paid_amount, refunded_amount, gateway_transaction_id, created_at, expires_at, \
    paid_at, shipped_at, completed_at, cancelled_at, cancel_reason, carrier, tracking_no";

impl TryFrom<OrderRow> for Order {
    type Error = StoreError;
    fn try_from(r: OrderRow) -> Result<Order, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("order {}: {what}", r.order_id));
        let money = |v: i64| Money::from_fen(v).map_err(|e| corrupt(&e.to_string()));
        Ok(Order {
            order_id: OrderId(r.order_id),
            items: r.items.0.clone(),
            total_amount: money(r.total_amount)?,
            payment_method: r
                .payment_method
                .parse()
                .map_err(|_| corrupt("payment_method"))?,
            status: r.status.parse::<OrderStatus>().map_err(|e| corrupt(&e))?,
            payment_state: PaymentState::parse(&r.payment_state)
                .ok_or_else(|| corrupt("payment_state"))?,
            paid_amount: money(r.paid_amount)?,
            refunded_amount: money(r.refunded_amount)?,
            user_id: r.user_id,
            currency: r.currency,
            gateway_transaction_id: r.gateway_transaction_id,
            created_at: r.created_at,
            expires_at: r.expires_at,
            paid_at: r.paid_at,
            shipped_at: r.shipped_at,
            completed_at: r.completed_at,
            cancelled_at: r.cancelled_at,
            cancel_reason: r.cancel_reason,
            carrier: r.carrier,
            tracking_no: r.tracking_no,
        })
    }
}

pub async fn get(conn: &mut PgConnection, id: OrderId) -> Result<Option<Order>, StoreError> {
    let row: Option<OrderRow> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM orders WHERE order_id = $1"))
            .bind(id.0)
            .fetch_optional(conn)
            .await?;
    row.map(Order::try_from).transpose()
}

/// Locks the row for the rest of the transaction.
pub async fn get_for_update(
    conn: &mut PgConnection,
    id: OrderId,
) -> Result<Option<Order>, StoreError> {
    let row: Option<OrderRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM orders WHERE order_id = $1 FOR UPDATE"
    ))
    .bind(id.0)
    .fetch_optional(conn)
    .await?;
    row.map(Order::try_from).transpose()
}

/// Locks many rows at once, in `order_id` order: one lock order for every
/// batch, so two batches never deadlock on each other.
pub async fn get_many_for_update(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<Order>, StoreError> {
    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM orders WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE"
    ))
    .bind(ids)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(Order::try_from).collect()
}

/// Inserts a new order. Returns false when the order id already exists.
pub async fn insert(conn: &mut PgConnection, o: &Order) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO orders (order_id, out_trade_no, user_id, items, currency, total_amount, payment_method, \
         status, payment_state, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(o.order_id.0)
    .bind(o.out_trade_no())
    .bind(&o.user_id)
    .bind(sqlx::types::Json(&o.items))
    .bind(&o.currency)
    .bind(o.total_amount.fen())
    .bind(o.payment_method.as_str())
    .bind(o.status.as_str())
    .bind(o.payment_state.as_str())
    .bind(o.created_at)
    .bind(o.expires_at)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Writes back every mutable field, only if the row still has the status
/// the caller read (`expected`). Zero rows is a conflict, not a lost update.
pub async fn update(
    conn: &mut PgConnection,
    o: &Order,
    expected: OrderStatus,
) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE orders SET status = $2, payment_state = $3, paid_amount = $4, refunded_amount = $5, \
         gateway_transaction_id = $6, paid_at = $7, shipped_at = $8, completed_at = $9, cancelled_at = $10, \
         cancel_reason = $11, carrier = $12, tracking_no = $13, updated_at = now() \
         WHERE order_id = $1 AND status = $14",
    )
    .bind(o.order_id.0)
    .bind(o.status.as_str())
    .bind(o.payment_state.as_str())
    .bind(o.paid_amount.fen())
    .bind(o.refunded_amount.fen())
    .bind(&o.gateway_transaction_id)
    .bind(o.paid_at)
    .bind(o.shipped_at)
    .bind(o.completed_at)
    .bind(o.cancelled_at)
    .bind(&o.cancel_reason)
    .bind(&o.carrier)
    .bind(&o.tracking_no)
    .bind(expected.as_str())
    .execute(conn)
    .await?;
    if done.rows_affected() != 1 {
        return Err(StoreError::Conflict(format!(
            "order {} is no longer {}",
            o.order_id, expected
        )));
    }
    Ok(())
}

/// Writes back what a payment changes (`Order::mark_paid`) for many orders
/// in one statement, each only if it is still `pending_payment`; a row that
/// is not is a conflict, as in `update`.
pub async fn update_paid_many(conn: &mut PgConnection, paid: &[&Order]) -> Result<(), StoreError> {
    if paid.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = paid.iter().map(|o| o.order_id.0).collect();
    let statuses: Vec<&str> = paid.iter().map(|o| o.status.as_str()).collect();
    let states: Vec<&str> = paid.iter().map(|o| o.payment_state.as_str()).collect();
    let amounts: Vec<i64> = paid.iter().map(|o| o.paid_amount.fen()).collect();
    let transactions: Vec<Option<&str>> = paid
        .iter()
        .map(|o| o.gateway_transaction_id.as_deref())
        .collect();
    let paid_at: Vec<Option<DateTime<Utc>>> = paid.iter().map(|o| o.paid_at).collect();
    let done = sqlx::query(
        "UPDATE orders o SET status = t.status, payment_state = t.payment_state, paid_amount = t.paid_amount, \
         gateway_transaction_id = t.transaction_id, paid_at = t.paid_at, updated_at = now() \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::timestamptz[]) \
           AS t(order_id, status, payment_state, paid_amount, transaction_id, paid_at) \
         WHERE o.order_id = t.order_id AND o.status = $7",
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&states)
    .bind(&amounts)
    .bind(&transactions)
    .bind(&paid_at)
    .bind(OrderStatus::PendingPayment.as_str())
    .execute(conn)
    .await?;
    if done.rows_affected() != paid.len() as u64 {
        return Err(StoreError::Conflict(format!(
            "{} of {} orders are no longer {}",
            paid.len() as u64 - done.rows_affected(),
            paid.len(),
            OrderStatus::PendingPayment
        )));
    }
    Ok(())
}

/// Counts of orders by status, for the metrics gauge.
pub async fn count_by_status(conn: &mut PgConnection) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(
        sqlx::query_as("SELECT status, count(*) FROM orders GROUP BY status")
            .fetch_all(conn)
            .await?,
    )
}
