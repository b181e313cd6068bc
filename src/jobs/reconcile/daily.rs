//! The daily job (`jobs.reconcile`): at each slot, the business day before
//! the slot's own day, for every enabled channel. The slot (not the clock)
//! picks the day, so a caught-up run reconciles the day it was meant to.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{run_previous_day, ReconContext, RunOutcome};
use crate::config::Settings;
use crate::jobs::{Job, JobCounts, JobError, Scheduler, SchedulerError};

pub const JOB_NAME: &str = "reconcile";

pub struct DailyReconcile {
    ctx: ReconContext,
}

impl DailyReconcile {
    pub fn new(ctx: ReconContext) -> Self {
        Self { ctx }
    }
}

/// Registers the daily reconciliation on `jobs.reconcile.schedule`, read in
/// `jobs.reconcile.timezone` (the business offset).
pub fn add_reconcile(
    scheduler: &mut Scheduler,
    settings: &Settings,
    ctx: ReconContext,
) -> Result<(), SchedulerError> {
    let offset = ctx.business_offset;
    scheduler.add(
        JOB_NAME,
        &settings.jobs.reconcile.schedule,
        offset,
        std::sync::Arc::new(DailyReconcile::new(ctx)),
    )
}

#[async_trait]
impl Job for DailyReconcile {
    fn name(&self) -> &'static str {
        JOB_NAME
    }

    /// A fresh installation does not reconcile the day before it existed:
    /// those runs (and their `recon.completed` events) would answer nobody's
    /// question and crowd `recon list`. Once the job has run, a daemon that
    /// was down through a slot catches it up.
    fn catch_up_on_first_start(&self) -> bool {
        false
    }

    /// Counts `completed`, `skipped` (another run of the channel was going),
    /// `failed` and the `discrepancies` found. A channel that failed fails
    /// the job's run (after the others ran), so the failure is recorded.
    async fn run_once(&self, slot: DateTime<Utc>) -> Result<JobCounts, JobError> {
        let mut counts = JobCounts::with_keys(&["completed", "skipped", "failed", "discrepancies"]);
        let mut failures = Vec::new();
        for (channel, outcome) in run_previous_day(&self.ctx, slot).await {
            match outcome {
                Ok(RunOutcome::Completed(report)) => {
                    counts.incr("completed");
                    counts.add("discrepancies", report.discrepancies.len() as u64);
                }
                Ok(RunOutcome::Skipped(_)) => counts.incr("skipped"),
                Err(e) => {
                    counts.incr("failed");
                    failures.push(format!("{channel}: {e}"));
                }
            }
        }
        if failures.is_empty() {
            Ok(counts)
        } else {
            Err(JobError::Failed(failures.join("; ")))
        }
    }
}
