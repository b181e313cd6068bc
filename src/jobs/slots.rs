//! One schedule slot, start to end: claim it in PostgreSQL, run the job
//! while a heartbeat keeps the claim's lease alive, record how it ended.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::scheduler::{SchedulerError, SlotOutcome};
use super::{Job, JobCounts, JobError};
use crate::store::jobs::{self as store, Claim, RunOutcome};

pub(crate) struct SlotRun<'a> {
    pub pool: &'a PgPool,
    pub name: &'a str,
    pub job: &'a dyn Job,
    pub instance: &'a str,
    pub lease: Duration,
}

impl SlotRun<'_> {
    /// Claims `slot` at `now` and, when the claim is ours, runs the job.
    /// An error means the claim could not be made (the database is
    /// unreachable): nothing ran, so the caller may simply try again.
    pub async fn run(
        &self,
        slot: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<SlotOutcome, SchedulerError> {
        let lease = chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::MAX);
        let claim = {
            let mut conn = self
                .pool
                .acquire()
                .await
                .map_err(crate::store::StoreError::from)?;
            let (name, instance, until) = (self.name, self.instance, now + lease);
            if self.job.exclusive() {
                store::claim_slot(&mut conn, name, slot, instance, now, until).await?
            } else {
                store::claim_slot_alongside(&mut conn, name, slot, instance, now, until).await?
            }
        };
        let run_id = match claim {
            Claim::Taken => {
                tracing::debug!(job = self.name, %slot, "slot claimed by another instance");
                return Ok(SlotOutcome::Taken);
            }
            Claim::Overlap { running, .. } => {
                tracing::info!(job = self.name, %slot, running_run = running,
                    "previous run still going: slot skipped");
                count_run(self.name, RunOutcome::Skipped);
                return Ok(SlotOutcome::Skipped);
            }
            Claim::Claimed { run_id } => run_id,
        };

        let started = Instant::now();
        tracing::info!(job = self.name, %slot, run_id, "job run started");
        let result = self.run_with_heartbeat(run_id, slot).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        let (outcome, counts, error) = match &result {
            Ok(counts) => (RunOutcome::Succeeded, counts.clone(), None),
            Err(e) => (RunOutcome::Failed, JobCounts::new(), Some(e.to_string())),
        };
        match &result {
            Ok(counts) => tracing::info!(job = self.name, %slot, run_id, duration_ms,
                counts = %counts.to_json(), "job run succeeded"),
            Err(e) => tracing::error!(job = self.name, %slot, run_id, duration_ms,
                error = %e, "job run failed"),
        }
        count_run(self.name, outcome);
        // A failed write here leaves the row open; its lease then runs out and
        // the next claim marks it abandoned, so nothing stays blocked.
        let finished = async {
            let mut conn = self.pool.acquire().await?;
            store::finish(
                &mut conn,
                run_id,
                Utc::now(),
                outcome,
                &counts.to_json(),
                error.as_deref(),
            )
            .await
        };
        if let Err(e) = finished.await {
            tracing::error!(job = self.name, run_id, error = %e, "could not record the end of a job run");
        }
        Ok(match result {
            Ok(counts) => SlotOutcome::Succeeded(counts),
            Err(e) => SlotOutcome::Failed(e.to_string()),
        })
    }

    async fn run_with_heartbeat(
        &self,
        run_id: i64,
        slot: DateTime<Utc>,
    ) -> Result<JobCounts, JobError> {
        // Three beats per lease: two may be lost (a slow database) before
        // another instance takes the run for dead.
        let every = (self.lease / 3).max(Duration::from_millis(100));
        let lease = chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::MAX);
        let heartbeat = async {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let beat = async {
                    let mut conn = self.pool.acquire().await?;
                    store::heartbeat(&mut conn, run_id, Utc::now() + lease).await
                };
                match beat.await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(
                        job = self.name,
                        run_id,
                        "run was given up as abandoned while still running"
                    ),
                    Err(e) => {
                        tracing::warn!(job = self.name, run_id, error = %e, "heartbeat failed")
                    }
                }
            }
        };
        tokio::select! {
            result = self.job.run_once(slot) => result,
            never = heartbeat => never,
        }
    }
}

fn count_run(job: &str, outcome: RunOutcome) {
    metrics::counter!("payrecon_job_runs_total", "job" => job.to_string(), "outcome" => outcome.as_str())
        .increment(1);
}
