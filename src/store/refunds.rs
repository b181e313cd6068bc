//! Refunds of an order, each with its own gateway `out_refund_no`.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::StoreError;
use crate::domain::{Money, OrderId, RefundId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundStatus {
    Pending,
    Processing,
    Succeeded,
    Failed,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Pending => "pending",
            RefundStatus::Processing => "processing",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => RefundStatus::Pending,
            "processing" => RefundStatus::Processing,
            "succeeded" => RefundStatus::Succeeded,
            "failed" => RefundStatus::Failed,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(self, RefundStatus::Succeeded | RefundStatus::Failed)
    }
}

#[derive(Debug, Clone)]
pub struct Refund {
    pub refund_id: RefundId,
    pub order_id: OrderId,
    pub amount: Money,
    pub reason: String,
    pub status: RefundStatus,
    pub gateway_refund_id: Option<String>,
    pub request_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl Refund {
    pub fn out_refund_no(&self) -> String {
        self.refund_id.out_refund_no()
    }
}

#[derive(sqlx::FromRow)]
struct RefundRow {
    refund_id: Uuid,
    order_id: Uuid,
    amount: i64,
    reason: String,
    status: String,
    gateway_refund_id: Option<String>,
    request_id: Option<String>,
    created_at: DateTime<Utc>,
}

impl TryFrom<RefundRow> for Refund {
    type Error = StoreError;
    fn try_from(r: RefundRow) -> Result<Self, StoreError> {
        Ok(Refund {
            refund_id: RefundId(r.refund_id),
            order_id: OrderId(r.order_id),
            amount: Money::from_fen(r.amount).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            status: RefundStatus::parse(&r.status)
                .ok_or_else(|| StoreError::Corrupt(format!("refund status {}", r.status)))?,
            reason: r.reason,
            gateway_refund_id: r.gateway_refund_id,
            request_id: r.request_id,
            created_at: r.created_at,
        })
    }
}

const COLUMNS: &str =
    "refund_id, order_id, amount, reason, status, gateway_refund_id, request_id, created_at";

/// Returns false when the refund id exists already.
pub async fn insert(conn: &mut PgConnection, r: &Refund) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO refunds (refund_id, order_id, out_refund_no, amount, reason, status, request_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
    )
    .bind(r.refund_id.0)
    .bind(r.order_id.0)
    .bind(r.out_refund_no())
    .bind(r.amount.fen())
    .bind(&r.reason)
    .bind(r.status.as_str())
    .bind(&r.request_id)
    .bind(r.created_at)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get_for_update(
    conn: &mut PgConnection,
    id: RefundId,
) -> Result<Option<Refund>, StoreError> {
    let row: Option<RefundRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM refunds WHERE refund_id = $1 FOR UPDATE"
    ))
    .bind(id.0)
    .fetch_optional(conn)
    .await?;
    row.map(Refund::try_from).transpose()
}

pub async fn get_by_out_refund_no_for_update(
    conn: &mut PgConnection,
    no: &str,
) -> Result<Option<Refund>, StoreError> {
    let row: Option<RefundRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM refunds WHERE out_refund_no = $1 FOR UPDATE"
    ))
    .bind(no)
    .fetch_optional(conn)
    .await?;
    row.map(Refund::try_from).transpose()
}

/// What is reserved by refunds not yet final: counted against what may
/// still be refunded, so concurrent requests cannot exceed the paid amount.
pub async fn in_flight_amount(
    conn: &mut PgConnection,
    order_id: OrderId,
) -> Result<Money, StoreError> {
    let sum: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(amount), 0)::BIGINT FROM refunds WHERE order_id = $1 AND status IN ('pending', 'processing')",
    )
    .bind(order_id.0)
    .fetch_one(conn)
    .await?;
    Money::from_fen(sum).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A refund call went out and its answer is not in: `processing`, unless a
/// notification or another attempt already made it final meanwhile (moving
/// it back would let it be settled, and counted on the order, twice).
pub async fn mark_processing(conn: &mut PgConnection, id: RefundId) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE refunds SET status = 'processing' WHERE refund_id = $1 AND status IN ('pending', 'processing')",
    )
    .bind(id.0)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_status(
    conn: &mut PgConnection,
    id: RefundId,
    status: RefundStatus,
    gateway_refund_id: Option<&str>,
    failure: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE refunds SET status = $2, gateway_refund_id = COALESCE($3, gateway_refund_id), failure = $4, \
         finished_at = CASE WHEN $2 IN ('succeeded', 'failed') THEN now() ELSE NULL END WHERE refund_id = $1",
    )
    .bind(id.0)
    .bind(status.as_str())
    .bind(gateway_refund_id)
    .bind(failure)
    .execute(conn)
    .await?;
    Ok(())
}
