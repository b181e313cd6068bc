//! Durable gateway tasks: scheduled in the transaction that decided them,
//! claimed with a lease (so no network call happens inside a transaction and
//! two workers never run one task at once), rescheduled with backoff.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::StoreError;
use crate::domain::{OrderId, RefundId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    Prepay,
    Close,
    Refund,
    Recon,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Prepay => "prepay",
            TaskKind::Close => "close",
            TaskKind::Refund => "refund",
            TaskKind::Recon => "recon",
        }
    }

    fn parse(s: &str) -> Option<TaskKind> {
        Some(match s {
            "prepay" => TaskKind::Prepay,
            "close" => TaskKind::Close,
            "refund" => TaskKind::Refund,
            "recon" => TaskKind::Recon,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Task {
    pub id: i64,
    pub kind: TaskKind,
    pub order_id: Option<OrderId>,
    pub refund_id: Option<RefundId>,
    pub request_id: Option<String>,
    pub payload: Value,
    /// Attempts already made before this one.
    pub attempt: i32,
}

#[derive(Debug, Clone, Default)]
pub struct NewTask {
    pub order_id: Option<OrderId>,
    pub refund_id: Option<RefundId>,
    pub request_id: Option<String>,
    pub payload: Value,
}

pub async fn schedule(
    conn: &mut PgConnection,
    kind: TaskKind,
    task: NewTask,
    at: DateTime<Utc>,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO gateway_tasks (kind, order_id, refund_id, request_id, payload, next_attempt_at) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(kind.as_str())
    .bind(task.order_id.map(|o| o.0))
    .bind(task.refund_id.map(|r| r.0))
    .bind(task.request_id)
    .bind(if task.payload.is_null() { Value::Object(Default::default()) } else { task.payload })
    .bind(at)
    .fetch_one(conn)
    .await?)
}

#[derive(sqlx::FromRow)]
struct TaskRow {
    id: i64,
    kind: String,
    order_id: Option<Uuid>,
    refund_id: Option<Uuid>,
    request_id: Option<String>,
    payload: Value,
    attempt: i32,
}

/// Claims up to `limit` due tasks with a lease until `lease_until`. A worker
/// that dies mid-call loses its lease and the task becomes due again.
pub async fn claim_due(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Task>, StoreError> {
    let rows: Vec<TaskRow> = sqlx::query_as(
        "UPDATE gateway_tasks SET locked_until = $2, updated_at = now() WHERE id IN ( \
           SELECT id FROM gateway_tasks WHERE state = 'pending' AND next_attempt_at <= $1 \
             AND (locked_until IS NULL OR locked_until < $1) \
           ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
         RETURNING id, kind, order_id, refund_id, request_id, payload, attempt",
    )
    .bind(now)
    .bind(lease_until)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Task {
                id: r.id,
                kind: TaskKind::parse(&r.kind)
                    .ok_or_else(|| StoreError::Corrupt(format!("task kind {}", r.kind)))?,
                order_id: r.order_id.map(OrderId),
                refund_id: r.refund_id.map(RefundId),
                request_id: r.request_id,
                payload: r.payload,
                attempt: r.attempt,
            })
        })
        .collect()
}

pub async fn finish(
    conn: &mut PgConnection,
    id: i64,
    failed: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE gateway_tasks SET state = $2, last_error = $3, attempt = attempt + 1, locked_until = NULL, \
         updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(if failed.is_some() { "failed" } else { "done" })
    .bind(failed)
    .execute(conn)
    .await?;
    Ok(())
}

/// Counts the attempt and schedules the next one.
pub async fn retry_at(
    conn: &mut PgConnection,
    id: i64,
    at: DateTime<Utc>,
    error: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE gateway_tasks SET attempt = attempt + 1, next_attempt_at = $2, last_error = $3, \
         locked_until = NULL, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(at)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// Reschedules without counting an attempt (the task waited on something else).
pub async fn postpone(
    conn: &mut PgConnection,
    id: i64,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE gateway_tasks SET next_attempt_at = $2, locked_until = NULL, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(at)
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether another pending task of `kind` exists for the order (a close waits
/// for an in-flight prepay, so a payment cannot be created after its close).
pub async fn has_pending(
    conn: &mut PgConnection,
    order_id: OrderId,
    kind: TaskKind,
    except: i64,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM gateway_tasks WHERE order_id = $1 AND kind = $2 AND state = 'pending' AND id <> $3)",
    )
    .bind(order_id.0)
    .bind(kind.as_str())
    .bind(except)
    .fetch_one(conn)
    .await?)
}

/// The earliest time any pending task is due (the runner sleeps until then).
pub async fn next_due(conn: &mut PgConnection) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(
        sqlx::query_scalar(
            "SELECT min(next_attempt_at) FROM gateway_tasks WHERE state = 'pending'",
        )
        .fetch_one(conn)
        .await?,
    )
}
