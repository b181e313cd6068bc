//! Daily reconciliation (docs/contract.md §6): one channel's business day, the
//! gateway's bill against our orders.
//!
//! A run is recorded `running` first (one per channel across all instances,
//! see `store::recon::begin_run`), then the bill streams through the matcher
//! on a blocking thread while lookups and matching happen here. Everything
//! the report consists of — discrepancies, summary, `completed`, the
//! `recon.completed` event — is written in one transaction at the end, so a
//! run that fails on line 812 of the bill leaves a `failed` run and nothing
//! else. The only change a run makes to orders is the repair of a
//! `status_mismatch`, and only after the gateway's own query confirms the
//! payment: the bill alone never moves money state.

pub mod daily;
mod repair;
mod stream;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, TimeZone, Utc};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::recon::{self, BillSourceKind, ReconRun, Report, RunStatus};
use crate::domain::{Channel, MoneyError};
use crate::gateway::bill::BillError;
use crate::gateway::{Gateway, GatewayError};
use crate::messaging::contracts::Event;
use crate::store::recon::{self as store, BeginOutcome, NewRun};
use crate::store::{outbox, StoreError};

/// Called with the number of bill rows read so far (for a progress bar).
pub type ProgressFn = Arc<dyn Fn(u64) + Send + Sync>;

#[derive(Clone)]
pub struct ReconContext {
    pub pool: PgPool,
    /// The enabled channels' gateways.
    pub gateways: HashMap<Channel, Arc<dyn Gateway>>,
    /// Business-day boundaries (`jobs.reconcile.timezone`).
    pub business_offset: FixedOffset,
    pub progress: Option<ProgressFn>,
}

impl ReconContext {
    /// The context of a process: the enabled channels' gateways and the
    /// business offset of `jobs.reconcile.timezone` (validated at load; UTC
    /// only if a hand-built `Settings` skipped validation).
    pub fn from_settings(
        settings: &crate::config::Settings,
        pool: PgPool,
        gateways: HashMap<Channel, Arc<dyn Gateway>>,
    ) -> ReconContext {
        ReconContext {
            pool,
            gateways,
            business_offset: settings
                .business_offset()
                .unwrap_or_else(|| chrono::Offset::fix(&Utc)),
            progress: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BillSource {
    /// Downloaded through the channel's bill API.
    Gateway,
    /// A file in the gateway's own format (`--bill-file`).
    File(PathBuf),
}

impl BillSource {
    fn kind(&self) -> BillSourceKind {
        match self {
            BillSource::Gateway => BillSourceKind::Gateway,
            BillSource::File(_) => BillSourceKind::File,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    Completed(Box<Report>),
    /// Another run of the channel is running (its id); nothing was done.
    Skipped(Uuid),
}

#[derive(Debug, thiserror::Error)]
pub enum ReconError {
    #[error("no gateway configured for {0} (is the channel enabled?)")]
    NoGateway(Channel),
    #[error("bill download: {0}")]
    Download(#[from] GatewayError),
    #[error(transparent)]
    Bill(#[from] BillError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("amounts: {0}")]
    Money(#[from] MoneyError),
    #[error("bill file: {0}")]
    Io(#[from] std::io::Error),
    #[error("the bill reader stopped unexpectedly")]
    ReaderLost,
}

impl From<sqlx::Error> for ReconError {
    fn from(e: sqlx::Error) -> Self {
        ReconError::Store(StoreError::Db(e))
    }
}

/// `[start, end)` of a business day in UTC.
pub fn business_window(date: NaiveDate, offset: FixedOffset) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = offset
        .from_local_datetime(&date.and_time(NaiveTime::MIN))
        .single()
        .map(|t| t.with_timezone(&Utc))
        // A fixed offset has no gaps or folds; this branch cannot be taken.
        .unwrap_or_else(|| date.and_time(NaiveTime::MIN).and_utc());
    (start, start + chrono::Duration::days(1))
}

/// The business day before the one `now` falls in (what the daily job reconciles).
pub fn previous_business_day(now: DateTime<Utc>, offset: FixedOffset) -> NaiveDate {
    let today = now.with_timezone(&offset).date_naive();
    today.pred_opt().unwrap_or(today)
}

/// Reconciles one channel's business day. `trigger` says who asked
/// (`cli`, `schedule`, `request:<id>`), for the record.
pub async fn run_reconciliation(
    ctx: &ReconContext,
    channel: Channel,
    date: NaiveDate,
    source: BillSource,
    trigger: &str,
) -> Result<RunOutcome, ReconError> {
    let run_id = Uuid::new_v4();
    let started_at = Utc::now();
    let new = NewRun {
        run_id,
        channel,
        date,
        trigger,
        bill_source: source.kind(),
        started_at,
    };
    let mut conn = ctx.pool.acquire().await?;
    if let BeginOutcome::Busy(other) = store::begin_run(&mut conn, &new).await? {
        tracing::info!(channel = %channel, %date, running = %other, "reconciliation already running; skipped");
        metrics::counter!("payrecon_recon_runs_total", "channel" => channel.as_str(), "outcome" => "skipped").increment(1);
        return Ok(RunOutcome::Skipped(other));
    }
    drop(conn);
    tracing::info!(run.id = %run_id, channel = %channel, %date, trigger, "reconciliation started");
    let run = ReconRun {
        run_id,
        channel,
        date,
        status: RunStatus::Running,
        trigger: trigger.to_string(),
        bill_source: source.kind(),
        started_at,
        finished_at: None,
        summary: None,
        error: None,
    };
    match execute(ctx, run, &source).await {
        Ok(report) => {
            metrics::counter!("payrecon_recon_runs_total", "channel" => channel.as_str(), "outcome" => "completed").increment(1);
            tracing::info!(run.id = %run_id, discrepancies = report.discrepancies.len(), "reconciliation completed");
            Ok(RunOutcome::Completed(Box::new(report)))
        }
        Err(e) => {
            metrics::counter!("payrecon_recon_runs_total", "channel" => channel.as_str(), "outcome" => "failed").increment(1);
            tracing::error!(run.id = %run_id, error = %e, "reconciliation failed");
            // If even this fails (database gone), the run stays `running`
            // until its lease runs out; the original error is what matters.
            let recorded = async {
                let mut conn = ctx.pool.acquire().await?;
                store::fail_run(&mut conn, run_id, &e.to_string(), Utc::now()).await
            }
            .await;
            if let Err(store_error) = recorded {
                tracing::error!(run.id = %run_id, error = %store_error, "could not record the failed run");
            }
            Err(e)
        }
    }
}

async fn execute(
    ctx: &ReconContext,
    mut run: ReconRun,
    source: &BillSource,
) -> Result<Report, ReconError> {
    let (from, to) = business_window(run.date, ctx.business_offset);
    let gateway = ctx.gateways.get(&run.channel).cloned();
    let download;
    let (path, expected_sha1): (&Path, Option<String>) = match source {
        BillSource::File(path) => (path, None),
        BillSource::Gateway => {
            let gw = gateway.as_ref().ok_or(ReconError::NoGateway(run.channel))?;
            download = TempBill::new(run.run_id);
            match fetch_bill(gw.as_ref(), run.date, &download.path).await {
                Ok(sha1) => (&download.path, sha1),
                Err(GatewayError::NoBill) => {
                    // WeChat Pay answers NO_STATEMENT_EXIST for a day without
                    // trades (Alipay: isp.bill_not_exist): an empty bill.
                    tracing::info!(run.id = %run.run_id, "the gateway has no bill for that day: reconciling against an empty bill");
                    download.write_empty(run.channel)?;
                    (&download.path, None)
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let matched = stream::match_bill(ctx, &run, path, expected_sha1, from, to).await?;
    let mut discrepancies = matched.discrepancies;
    repair::repair_status_mismatches(ctx, &run, gateway.as_deref(), &mut discrepancies).await?;

    let mut tx = ctx.pool.begin().await.map_err(StoreError::from)?;
    let groups = store::status_groups(&mut tx, run.channel, from, to).await?;
    let summary = recon::summarize(
        &groups,
        &matched.bill,
        matched.matched_count,
        matched.matched_amount,
        &discrepancies,
    );
    let finished_at = Utc::now();
    store::complete_run(&mut tx, run.run_id, &summary, &discrepancies, finished_at).await?;
    // A run asked for by a `recon.run` request names it (trigger `request:<id>`).
    let request_id = run.trigger.strip_prefix("request:");
    let event = Event::new(
        "recon.completed",
        request_id,
        json!({
            "run_id": run.run_id,
            "channel": run.channel.as_str(),
            "date": run.date.to_string(),
            "summary": summary,
        }),
    );
    outbox::enqueue(&mut tx, &event).await?;
    tx.commit().await.map_err(StoreError::from)?;
    run.status = RunStatus::Completed;
    run.finished_at = Some(finished_at);
    run.summary = Some(summary);
    Ok(Report { run, discrepancies })
}

/// Downloads with a few retries: the bill API is idempotent, and a
/// transient failure should not fail the whole day's run.
async fn fetch_bill(
    gw: &dyn Gateway,
    date: NaiveDate,
    dest: &Path,
) -> Result<Option<String>, GatewayError> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match gw.download_bill(date, dest).await {
            Ok(bill) => return Ok(bill.expected_sha1),
            Err(e) if e.is_retryable() && attempt < 4 => {
                tracing::warn!(gateway = %gw.channel(), attempt, error = %e, "bill download failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 4;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A downloaded bill in the temp dir, removed when the run ends.
struct TempBill {
    path: PathBuf,
}

impl TempBill {
    fn new(run_id: Uuid) -> Self {
        Self {
            path: std::env::temp_dir().join(format!("payrecon-bill-{run_id}")),
        }
    }

    /// A bill with no rows in the channel's own format.
    fn write_empty(&self, channel: Channel) -> std::io::Result<()> {
        std::fs::write(&self.path, crate::gateway::bill::empty_bill(channel))
    }
}

impl Drop for TempBill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reconciles the previous business day of every configured channel: the
/// daily job's body. A channel that is already being reconciled is skipped.
pub async fn run_previous_day(
    ctx: &ReconContext,
    now: DateTime<Utc>,
) -> Vec<(Channel, Result<RunOutcome, ReconError>)> {
    let date = previous_business_day(now, ctx.business_offset);
    let mut channels: Vec<Channel> = ctx.gateways.keys().copied().collect();
    channels.sort();
    let mut results = Vec::new();
    for channel in channels {
        let outcome = run_reconciliation(ctx, channel, date, BillSource::Gateway, "schedule").await;
        results.push((channel, outcome));
    }
    results
}

/// `recon.run` requests (docs/contract.md §3.7) arrive as durable tasks; they run
/// like `payrecon recon run`. An explicit request that finds the channel
/// busy waits for it (unlike the schedule, which just skips): the run that
/// holds the channel may well be the daily job, or another day's.
#[async_trait::async_trait]
impl crate::payments::ReconRunner for ReconContext {
    async fn run(
        &self,
        channel: Channel,
        date: NaiveDate,
        request_id: Option<&str>,
    ) -> Result<crate::payments::ReconAttempt, String> {
        let trigger = match request_id {
            Some(id) => format!("request:{id}"),
            None => "request".to_string(),
        };
        match run_reconciliation(self, channel, date, BillSource::Gateway, &trigger).await {
            Ok(RunOutcome::Completed(_)) => Ok(crate::payments::ReconAttempt::Completed),
            Ok(RunOutcome::Skipped(other)) => {
                tracing::info!(channel = %channel, %date, running = %other, "recon.run waits for the running reconciliation");
                Ok(crate::payments::ReconAttempt::Busy)
            }
            Err(e) => Err(e.to_string()),
        }
    }
}
