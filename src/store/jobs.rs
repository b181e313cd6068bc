//! Scheduled jobs: slot claims and run records (`job_runs`), and the timeout
//! job's batch of expired orders.
//!
//! Times are passed in rather than read from the database's `now()`, so the
//! caller's clock decides (and tests inject one).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Acquire, PgConnection};
use uuid::Uuid;

use super::StoreError;
use crate::domain::{Channel, OrderId, PaymentState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Succeeded,
    Failed,
    /// The slot came while another run of the job was still going.
    Skipped,
    /// Its lease ran out without the run finishing: the instance died.
    Abandoned,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::Failed => "failed",
            RunOutcome::Skipped => "skipped",
            RunOutcome::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "succeeded" => RunOutcome::Succeeded,
            "failed" => RunOutcome::Failed,
            "skipped" => RunOutcome::Skipped,
            "abandoned" => RunOutcome::Abandoned,
            _ => return None,
        })
    }
}

/// The answer to "may I run this slot?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Ours: run it, then `finish` the row.
    Claimed { run_id: i64 },
    /// Ours, but another run of the job (`running`) still holds its lease:
    /// the slot is already recorded as skipped.
    Overlap { run_id: i64, running: i64 },
    /// Another instance claimed this slot first.
    Taken,
}

/// Claims `(job, slot)`. Runs in its own transaction.
///
/// The unique row is what makes a slot run once. The advisory lock, held
/// only for this short transaction, serialises claims of one job so that
/// "is another run still going?" and our insert are one atomic step: without
/// it two instances claiming *different* slots at once would each miss the
/// other's uncommitted row and run side by side.
pub async fn claim_slot(
    conn: &mut PgConnection,
    job: &str,
    slot: DateTime<Utc>,
    instance: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Claim, StoreError> {
    claim(conn, job, slot, instance, (now, lease_until), true).await
}

/// Claims `(job, slot)` for a job whose runs may overlap (`Job::exclusive`
/// false): the slot is still run once across instances, but a run still
/// going elsewhere does not skip it.
pub async fn claim_slot_alongside(
    conn: &mut PgConnection,
    job: &str,
    slot: DateTime<Utc>,
    instance: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Claim, StoreError> {
    claim(conn, job, slot, instance, (now, lease_until), false).await
}

async fn claim(
    conn: &mut PgConnection,
    job: &str,
    slot: DateTime<Utc>,
    instance: &str,
    (now, lease_until): (DateTime<Utc>, DateTime<Utc>),
    exclusive: bool,
) -> Result<Claim, StoreError> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('payrecon.job_runs:' || $1, 0))")
        .bind(job)
        .execute(&mut *tx)
        .await?;
    let abandoned = sqlx::query(
        "UPDATE job_runs SET finished_at = $2, outcome = 'abandoned', \
         error = 'lease expired before the run finished' \
         WHERE job = $1 AND finished_at IS NULL AND lease_until <= $2",
    )
    .bind(job)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if abandoned > 0 {
        tracing::warn!(job, runs = abandoned, "marked crashed runs abandoned");
        metrics::counter!("payrecon_job_runs_total", "job" => job.to_string(), "outcome" => "abandoned")
            .increment(abandoned);
    }
    let run_id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO job_runs (job, slot, instance, started_at, lease_until) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (job, slot) DO NOTHING RETURNING id",
    )
    .bind(job)
    .bind(slot)
    .bind(instance)
    .bind(now)
    .bind(lease_until)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(run_id) = run_id else {
        tx.commit().await?;
        return Ok(Claim::Taken);
    };
    if !exclusive {
        tx.commit().await?;
        return Ok(Claim::Claimed { run_id });
    }
    let running: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM job_runs WHERE job = $1 AND finished_at IS NULL AND id <> $2 \
         ORDER BY id LIMIT 1",
    )
    .bind(job)
    .bind(run_id)
    .fetch_optional(&mut *tx)
    .await?;
    let claim = match running {
        Some(running) => {
            sqlx::query(
                "UPDATE job_runs SET finished_at = $2, outcome = 'skipped', error = $3 WHERE id = $1",
            )
            .bind(run_id)
            .bind(now)
            .bind(format!("run {running} was still running"))
            .execute(&mut *tx)
            .await?;
            Claim::Overlap { run_id, running }
        }
        None => Claim::Claimed { run_id },
    };
    tx.commit().await?;
    Ok(claim)
}

/// Extends a running run's lease. False when the run is no longer open
/// (another instance gave it up as abandoned).
pub async fn heartbeat(
    conn: &mut PgConnection,
    run_id: i64,
    lease_until: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let done =
        sqlx::query("UPDATE job_runs SET lease_until = $2 WHERE id = $1 AND finished_at IS NULL")
            .bind(run_id)
            .bind(lease_until)
            .execute(conn)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// Records how a run ended. Overwrites an `abandoned` mark: if the run did
/// finish after all (a long pause), what it did is the truth to keep.
pub async fn finish(
    conn: &mut PgConnection,
    run_id: i64,
    finished_at: DateTime<Utc>,
    outcome: RunOutcome,
    counts: &Value,
    error: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE job_runs SET finished_at = $2, outcome = $3, counts = $4, error = $5 WHERE id = $1",
    )
    .bind(run_id)
    .bind(finished_at)
    .bind(outcome.as_str())
    .bind(counts)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// The newest slot any instance recorded for the job, whatever its outcome.
pub async fn last_slot(
    conn: &mut PgConnection,
    job: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT max(slot) FROM job_runs WHERE job = $1")
            .bind(job)
            .fetch_one(conn)
            .await?,
    )
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobRun {
    pub id: i64,
    pub job: String,
    pub slot: DateTime<Utc>,
    pub instance: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// None while running.
    pub outcome: Option<RunOutcome>,
    pub counts: Value,
    pub error: Option<String>,
}

#[derive(sqlx::FromRow)]
struct JobRunRow {
    id: i64,
    job: String,
    slot: DateTime<Utc>,
    instance: String,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    outcome: Option<String>,
    counts: Value,
    error: Option<String>,
}

/// The job's runs, oldest slot first.
pub async fn runs(conn: &mut PgConnection, job: &str) -> Result<Vec<JobRun>, StoreError> {
    let rows: Vec<JobRunRow> = sqlx::query_as(
        "SELECT id, job, slot, instance, started_at, finished_at, outcome, counts, error \
         FROM job_runs WHERE job = $1 ORDER BY slot",
    )
    .bind(job)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let outcome = match r.outcome.as_deref() {
                None => None,
                Some(s) => Some(
                    RunOutcome::parse(s)
                        .ok_or_else(|| StoreError::Corrupt(format!("job run outcome {s}")))?,
                ),
            };
            Ok(JobRun {
                id: r.id,
                job: r.job,
                slot: r.slot,
                instance: r.instance,
                started_at: r.started_at,
                finished_at: r.finished_at,
                outcome,
                counts: r.counts,
                error: r.error,
            })
        })
        .collect()
}

/// An unpaid order past its deadline, as the timeout job first sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredOrder {
    pub order_id: OrderId,
    pub out_trade_no: String,
    pub channel: Channel,
    pub payment_state: PaymentState,
}

/// Locks the next `limit` orders still `pending_payment` after their
/// `expires_at`, oldest deadline first, for the caller's transaction.
///
/// Skipped: rows another instance holds (SKIP LOCKED, so several instances
/// share a backlog instead of queueing on it), orders under a timeout lease
/// (being asked about, or deferred after a gateway error), and orders with a
/// prepay or close task still pending — that task is settling the payment,
/// and a close sent while a prepay is in flight could be overtaken by it.
pub async fn lock_expired_batch(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<ExpiredOrder>, StoreError> {
    let rows: Vec<(Uuid, String, String, String)> = sqlx::query_as(
        "SELECT o.order_id, o.out_trade_no, o.payment_method, o.payment_state FROM orders o \
         WHERE o.status = 'pending_payment' AND o.expires_at < $1 \
           AND (o.timeout_claimed_until IS NULL OR o.timeout_claimed_until <= $1) \
           AND NOT EXISTS (SELECT 1 FROM gateway_tasks t WHERE t.order_id = o.order_id \
                           AND t.state = 'pending' AND t.kind IN ('prepay', 'close')) \
         ORDER BY o.expires_at LIMIT $2 FOR UPDATE OF o SKIP LOCKED",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(id, otn, method, state)| {
            let corrupt = |what: &str| StoreError::Corrupt(format!("order {id}: {what}"));
            Ok(ExpiredOrder {
                order_id: OrderId(id),
                out_trade_no: otn,
                channel: method.parse().map_err(|_| corrupt("payment_method"))?,
                payment_state: PaymentState::parse(&state)
                    .ok_or_else(|| corrupt("payment_state"))?,
            })
        })
        .collect()
}

/// Puts orders under the timeout job's lease until `until`.
pub async fn lease_timeout(
    conn: &mut PgConnection,
    ids: &[OrderId],
    until: DateTime<Utc>,
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
    sqlx::query("UPDATE orders SET timeout_claimed_until = $2 WHERE order_id = ANY($1)")
        .bind(&ids)
        .bind(until)
        .execute(conn)
        .await?;
    Ok(())
}

/// Removes the job's finished runs of slots before `before`: an
/// every-minute job writes half a million rows a year otherwise. The newest
/// slot always survives (it is far younger), so catch-up still knows it.
pub async fn prune_runs(
    conn: &mut PgConnection,
    job: &str,
    before: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "DELETE FROM job_runs WHERE job = $1 AND slot < $2 AND finished_at IS NOT NULL",
    )
    .bind(job)
    .bind(before)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
