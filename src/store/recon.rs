//! Reconciliation runs, their discrepancies, and (in `local`) the local
//! side of a channel-day as matching needs it.

mod local;

pub use local::{
    orders_by_out_trade_no, paid_in_window, paid_in_window_count, refunds_in_window, status_groups,
};

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use super::StoreError;
use crate::domain::recon::{
    BillSourceKind, Category, Discrepancy, ReconRun, Resolution, RunStatus, Summary,
};
use crate::domain::{Channel, Money, OrderId, OrderStatus};

/// A running run that has not beaten for this long belongs to a dead
/// process; a new run takes over (marks it failed). Runs beat every few
/// seconds while they work, so this only fires after a crash.
pub const LEASE_SECONDS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeginOutcome {
    Started,
    /// Another run of the channel is running (its id).
    Busy(Uuid),
}

pub struct NewRun<'a> {
    pub run_id: Uuid,
    pub channel: Channel,
    pub date: NaiveDate,
    pub trigger: &'a str,
    pub bill_source: BillSourceKind,
    pub started_at: DateTime<Utc>,
}

/// Records a run as `running`, unless the channel already has a live one.
pub async fn begin_run(
    conn: &mut PgConnection,
    run: &NewRun<'_>,
) -> Result<BeginOutcome, StoreError> {
    sqlx::query(
        "UPDATE recon_runs SET status = 'failed', finished_at = $2, \
           error = 'abandoned: its process stopped without finishing' \
         WHERE channel = $1 AND status = 'running' AND heartbeat_at < $2 - make_interval(secs => $3)",
    )
    .bind(run.channel.as_str())
    .bind(run.started_at)
    .bind(LEASE_SECONDS as f64)
    .execute(&mut *conn)
    .await?;
    let inserted = sqlx::query(
        "INSERT INTO recon_runs (run_id, channel, business_date, status, trigger, bill_source, started_at, heartbeat_at) \
         VALUES ($1, $2, $3, 'running', $4, $5, $6, $6) ON CONFLICT DO NOTHING",
    )
    .bind(run.run_id)
    .bind(run.channel.as_str())
    .bind(run.date)
    .bind(run.trigger)
    .bind(run.bill_source.as_str())
    .bind(run.started_at)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(BeginOutcome::Started);
    }
    let other: Option<Uuid> = sqlx::query_scalar(
        "SELECT run_id FROM recon_runs WHERE channel = $1 AND status = 'running'",
    )
    .bind(run.channel.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    match other {
        Some(id) => Ok(BeginOutcome::Busy(id)),
        // The other run finished between our INSERT and this SELECT.
        None => Err(StoreError::Conflict(
            "another run of the channel just finished; retry".into(),
        )),
    }
}

pub async fn heartbeat(
    conn: &mut PgConnection,
    run_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE recon_runs SET heartbeat_at = $2 WHERE run_id = $1 AND status = 'running'")
        .bind(run_id)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// Writes the findings and the `completed` status. Call inside the
/// transaction that also enqueues `recon.completed`.
pub async fn complete_run(
    conn: &mut PgConnection,
    run_id: Uuid,
    summary: &Summary,
    discrepancies: &[Discrepancy],
    finished_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    // Batches keep each statement's arrays a sensible size.
    for (batch_no, batch) in discrepancies.chunks(5000).enumerate() {
        let base = (batch_no * 5000) as i32;
        let seq: Vec<i32> = (0..batch.len() as i32).map(|i| base + i).collect();
        let col = |f: fn(&Discrepancy) -> Option<String>| batch.iter().map(f).collect::<Vec<_>>();
        let amounts = |f: fn(&Discrepancy) -> Option<Money>| {
            batch
                .iter()
                .map(|d| f(d).map(Money::fen))
                .collect::<Vec<_>>()
        };
        sqlx::query(
            "INSERT INTO recon_discrepancies (run_id, seq, category, out_trade_no, order_id, local_amount, \
               gateway_amount, local_status, gateway_status, gateway_transaction_id, resolution) \
             SELECT $1, * FROM UNNEST($2::int[], $3::text[], $4::text[], $5::uuid[], $6::bigint[], \
               $7::bigint[], $8::text[], $9::text[], $10::text[], $11::text[])",
        )
        .bind(run_id)
        .bind(&seq)
        .bind(col(|d| Some(d.category.as_str().to_string())))
        .bind(col(|d| Some(d.out_trade_no.clone())))
        .bind(batch.iter().map(|d| d.order_id.map(|o| o.0)).collect::<Vec<_>>())
        .bind(amounts(|d| d.local_amount))
        .bind(amounts(|d| d.gateway_amount))
        .bind(col(|d| d.local_status.map(|s| s.as_str().to_string())))
        .bind(col(|d| d.gateway_status.clone()))
        .bind(col(|d| d.gateway_transaction_id.clone()))
        .bind(col(|d| Some(d.resolution.as_str().to_string())))
        .execute(&mut *conn)
        .await?;
    }
    let updated = sqlx::query(
        "UPDATE recon_runs SET status = 'completed', finished_at = $2, heartbeat_at = $2, summary = $3 \
         WHERE run_id = $1 AND status = 'running'",
    )
    .bind(run_id)
    .bind(finished_at)
    .bind(sqlx::types::Json(summary))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated != 1 {
        return Err(StoreError::Conflict(format!(
            "run {run_id} is no longer running (taken over after a lost lease?)"
        )));
    }
    Ok(())
}

pub async fn fail_run(
    conn: &mut PgConnection,
    run_id: Uuid,
    error: &str,
    finished_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE recon_runs SET status = 'failed', finished_at = $2, error = $3 \
         WHERE run_id = $1 AND status = 'running'",
    )
    .bind(run_id)
    .bind(finished_at)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(FromRow)]
struct RunRow {
    run_id: Uuid,
    channel: String,
    business_date: NaiveDate,
    status: String,
    trigger: String,
    bill_source: String,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    summary: Option<sqlx::types::Json<Summary>>,
    error: Option<String>,
}

const RUN_COLUMNS: &str =
    "run_id, channel, business_date, status, trigger, bill_source, started_at, finished_at, summary, error";

impl TryFrom<RunRow> for ReconRun {
    type Error = StoreError;
    fn try_from(r: RunRow) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("recon run {}: {what}", r.run_id));
        Ok(ReconRun {
            run_id: r.run_id,
            channel: r.channel.parse().map_err(|_| corrupt("channel"))?,
            date: r.business_date,
            status: RunStatus::parse(&r.status).ok_or_else(|| corrupt("status"))?,
            trigger: r.trigger.clone(),
            bill_source: BillSourceKind::parse(&r.bill_source)
                .ok_or_else(|| corrupt("bill_source"))?,
            started_at: r.started_at,
            finished_at: r.finished_at,
            summary: r.summary.map(|j| j.0),
            error: r.error,
        })
    }
}

pub async fn get_run(
    conn: &mut PgConnection,
    run_id: Uuid,
) -> Result<Option<ReconRun>, StoreError> {
    let row: Option<RunRow> = sqlx::query_as(&format!(
        "SELECT {RUN_COLUMNS} FROM recon_runs WHERE run_id = $1"
    ))
    .bind(run_id)
    .fetch_optional(conn)
    .await?;
    row.map(ReconRun::try_from).transpose()
}

/// The latest run of a channel-day (any status).
pub async fn latest_run(
    conn: &mut PgConnection,
    channel: Channel,
    date: NaiveDate,
) -> Result<Option<ReconRun>, StoreError> {
    let row: Option<RunRow> = sqlx::query_as(&format!(
        "SELECT {RUN_COLUMNS} FROM recon_runs WHERE channel = $1 AND business_date = $2 \
         ORDER BY started_at DESC LIMIT 1"
    ))
    .bind(channel.as_str())
    .bind(date)
    .fetch_optional(conn)
    .await?;
    row.map(ReconRun::try_from).transpose()
}

/// Newest first.
pub async fn list_runs(conn: &mut PgConnection, limit: i64) -> Result<Vec<ReconRun>, StoreError> {
    let rows: Vec<RunRow> = sqlx::query_as(&format!(
        "SELECT {RUN_COLUMNS} FROM recon_runs ORDER BY started_at DESC, run_id LIMIT $1"
    ))
    .bind(limit.max(0))
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(ReconRun::try_from).collect()
}

#[derive(FromRow)]
struct DiscrepancyRow {
    category: String,
    out_trade_no: String,
    order_id: Option<Uuid>,
    local_amount: Option<i64>,
    gateway_amount: Option<i64>,
    local_status: Option<String>,
    gateway_status: Option<String>,
    gateway_transaction_id: Option<String>,
    resolution: String,
}

pub async fn discrepancies(
    conn: &mut PgConnection,
    run_id: Uuid,
) -> Result<Vec<Discrepancy>, StoreError> {
    let rows: Vec<DiscrepancyRow> = sqlx::query_as(
        "SELECT category, out_trade_no, order_id, local_amount, gateway_amount, local_status, \
           gateway_status, gateway_transaction_id, resolution \
         FROM recon_discrepancies WHERE run_id = $1 ORDER BY seq",
    )
    .bind(run_id)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let corrupt =
                |what: &str| StoreError::Corrupt(format!("discrepancy of run {run_id}: {what}"));
            let money = |v: Option<i64>| {
                v.map(Money::from_fen)
                    .transpose()
                    .map_err(|e| corrupt(&e.to_string()))
            };
            Ok(Discrepancy {
                category: r.category.parse::<Category>().map_err(|e| corrupt(&e))?,
                out_trade_no: r.out_trade_no,
                order_id: r.order_id.map(OrderId),
                local_amount: money(r.local_amount)?,
                gateway_amount: money(r.gateway_amount)?,
                local_status: r
                    .local_status
                    .map(|s| s.parse::<OrderStatus>())
                    .transpose()
                    .map_err(|e| corrupt(&e))?,
                gateway_status: r.gateway_status,
                gateway_transaction_id: r.gateway_transaction_id,
                resolution: Resolution::parse(&r.resolution)
                    .ok_or_else(|| corrupt("resolution"))?,
            })
        })
        .collect()
}

/// The latest completed run of each channel that has one, for `/metrics`:
/// its finish (unix seconds) and its discrepancies per category (only the
/// categories it has).
#[derive(Debug, Clone, PartialEq)]
pub struct LastSuccess {
    pub channel: String,
    pub finished_at: f64,
    pub discrepancies: Vec<(String, i64)>,
}

pub async fn last_successes(conn: &mut PgConnection) -> Result<Vec<LastSuccess>, StoreError> {
    let rows: Vec<(String, f64, Option<String>, i64)> = sqlx::query_as(
        "WITH last AS ( \
             SELECT DISTINCT ON (channel) run_id, channel, finished_at FROM recon_runs \
             WHERE status = 'completed' AND finished_at IS NOT NULL \
             ORDER BY channel, finished_at DESC) \
         SELECT l.channel, EXTRACT(EPOCH FROM l.finished_at)::float8, d.category, count(d.run_id) \
         FROM last l LEFT JOIN recon_discrepancies d ON d.run_id = l.run_id \
         GROUP BY l.channel, l.finished_at, d.category",
    )
    .fetch_all(conn)
    .await?;
    let mut out: Vec<LastSuccess> = Vec::new();
    for (channel, finished_at, category, n) in rows {
        let i = match out.iter().position(|l| l.channel == channel) {
            Some(i) => i,
            None => {
                out.push(LastSuccess {
                    channel,
                    finished_at,
                    discrepancies: Vec::new(),
                });
                out.len() - 1
            }
        };
        if let Some(category) = category {
            out[i].discrepancies.push((category, n));
        }
    }
    Ok(out)
}
