//! The cron loop. Each job has its own loop: compute the next slot in the
//! job's offset, sleep until it (or until shutdown), claim it in PostgreSQL,
//! run. The claim — a unique `(job, slot)` row — is what makes a slot run
//! once across instances; the slot is the schedule time itself, so two
//! instances agree on it even when their clocks (and wake-ups) differ.
//!
//! Restarts: on start, the latest slot that has passed is run once if no
//! instance recorded it (or anything newer) — a daemon that was down through
//! ten ticks catches up once, not ten times.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::slots::SlotRun;
use super::{Job, JobCounts};
use crate::store::{self, StoreError};

/// How long a run's claim lasts without a heartbeat. Long enough to ride
/// out a slow database; short enough that a crashed instance blocks the
/// job only briefly.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// Pause between claim attempts while the database is unreachable.
const CLAIM_RETRY: Duration = Duration::from_secs(2);

/// How long finished runs are kept: long enough to look back over a month
/// of incidents.
const RUN_RETENTION_DAYS: i64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("job {job}: schedule {expr:?}: {message}")]
    Schedule {
        job: String,
        expr: String,
        message: String,
    },
    #[error("no job named {0}")]
    UnknownJob(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What became of one slot on this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotOutcome {
    Succeeded(JobCounts),
    /// The job returned an error (recorded with the run).
    Failed(String),
    /// Another run of the job was still going: recorded as skipped.
    Skipped,
    /// Another instance claimed the slot; it runs there.
    Taken,
}

struct Entry {
    name: String,
    schedule: cron::Schedule,
    offset: FixedOffset,
    job: Arc<dyn Job>,
}

impl Entry {
    /// The first slot strictly after `after`.
    fn next_slot(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule
            .after(&after.with_timezone(&self.offset))
            .next()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The latest slot at or before `at`.
    fn latest_slot(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Walk back from the next slot: whether the cron crate's backward
        // step includes its start does not matter this way.
        let next = self.next_slot(at)?;
        let mut iter = self.schedule.after(&next.with_timezone(&self.offset));
        (0..3)
            .filter_map(|_| iter.next_back())
            .map(|t| t.with_timezone(&Utc))
            .find(|t| *t <= at)
    }
}

pub struct Scheduler {
    instance: String,
    lease: Duration,
    entries: Vec<Arc<Entry>>,
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::new()
    }
}

impl Scheduler {
    /// An instance id unique per process (recorded with each run it claims).
    pub fn new() -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
        let tag = uuid::Uuid::new_v4().simple().to_string();
        Scheduler {
            instance: format!("{host}-{}-{}", std::process::id(), &tag[..8]),
            lease: DEFAULT_LEASE,
            entries: Vec::new(),
        }
    }

    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = instance.into();
        self
    }

    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Registers `job` under `name` (the key of its runs) with a cron
    /// expression with seconds (6 or 7 fields), evaluated in `offset`.
    pub fn add(
        &mut self,
        name: &str,
        schedule: &str,
        offset: FixedOffset,
        job: Arc<dyn Job>,
    ) -> Result<(), SchedulerError> {
        let parsed = schedule
            .parse::<cron::Schedule>()
            .map_err(|e| SchedulerError::Schedule {
                job: name.to_string(),
                expr: schedule.to_string(),
                message: e.to_string(),
            })?;
        self.entries.retain(|e| e.name != name);
        self.entries.push(Arc::new(Entry {
            name: name.to_string(),
            schedule: parsed,
            offset,
            job,
        }));
        Ok(())
    }

    fn entry(&self, name: &str) -> Result<&Arc<Entry>, SchedulerError> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| SchedulerError::UnknownJob(name.to_string()))
    }

    /// The job's first slot strictly after `after`.
    pub fn next_slot(
        &self,
        name: &str,
        after: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, SchedulerError> {
        Ok(self.entry(name)?.next_slot(after))
    }

    /// The job's latest slot at or before `at`.
    pub fn latest_slot(
        &self,
        name: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, SchedulerError> {
        Ok(self.entry(name)?.latest_slot(at))
    }

    fn slot_run<'a>(&'a self, pool: &'a PgPool, entry: &'a Entry) -> SlotRun<'a> {
        SlotRun {
            pool,
            name: &entry.name,
            job: entry.job.as_ref(),
            instance: &self.instance,
            lease: self.lease,
        }
    }

    /// Claims and runs one slot of the named job now, as the loop would at
    /// that slot; `now` is the claim time (the injected clock).
    pub async fn run_slot_now(
        &self,
        pool: &PgPool,
        name: &str,
        slot: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<SlotOutcome, SchedulerError> {
        let entry = self.entry(name)?;
        self.slot_run(pool, entry).run(slot, now).await
    }

    /// The start-up catch-up at `now`: runs the latest passed slot if no
    /// instance recorded it or anything newer. None when there was nothing
    /// to catch up, or on the very first start of a job that opts out
    /// (`Job::catch_up_on_first_start`).
    pub async fn catch_up_now(
        &self,
        pool: &PgPool,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(DateTime<Utc>, SlotOutcome)>, SchedulerError> {
        let entry = self.entry(name)?;
        let Some(latest) = entry.latest_slot(now) else {
            return Ok(None);
        };
        let last = {
            let mut conn = pool.acquire().await.map_err(StoreError::from)?;
            store::jobs::last_slot(&mut conn, &entry.name).await?
        };
        if last.is_some_and(|last| last >= latest) {
            return Ok(None);
        }
        if last.is_none() && !entry.job.catch_up_on_first_start() {
            return Ok(None);
        }
        tracing::info!(job = %entry.name, slot = %latest, last_recorded = ?last, "catching up a missed slot");
        let outcome = self.slot_run(pool, entry).run(latest, now).await?;
        Ok(Some((latest, outcome)))
    }

    /// Runs every job's loop until `shutdown`. A run in progress is finished
    /// first (jobs work in bounded batches, so that is quick); the loops stop
    /// between slots.
    pub async fn run(self, pool: PgPool, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let mut loops = tokio::task::JoinSet::new();
        for entry in this.entries.clone() {
            loops.spawn(job_loop(
                this.clone(),
                entry,
                pool.clone(),
                shutdown.clone(),
            ));
        }
        while let Some(done) = loops.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "a job loop ended abnormally");
            }
        }
    }
}

async fn job_loop(
    this: Arc<Scheduler>,
    entry: Arc<Entry>,
    pool: PgPool,
    shutdown: CancellationToken,
) {
    let name = entry.name.clone();
    match this.catch_up_now(&pool, &name, Utc::now()).await {
        Ok(_) => {}
        Err(e) => tracing::warn!(job = %name, error = %e, "catch-up check failed"),
    }
    let mut after = Utc::now();
    loop {
        let Some(slot) = entry.next_slot(after) else {
            tracing::info!(job = %name, "schedule has no further slots");
            return;
        };
        if !sleep_until(slot, &shutdown).await {
            return;
        }
        // Retry a failed claim until the following slot is due: the database
        // may be back in a moment, and the slot is still worth running.
        let deadline = entry.next_slot(slot).unwrap_or(slot);
        loop {
            match this.slot_run(&pool, &entry).run(slot, Utc::now()).await {
                Ok(_) => break,
                Err(e) if Utc::now() + CLAIM_RETRY < deadline => {
                    tracing::warn!(job = %name, %slot, error = %e, "could not claim slot, retrying");
                    if !sleep_for(CLAIM_RETRY, &shutdown).await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(job = %name, %slot, error = %e, "could not claim slot, giving it up");
                    break;
                }
            }
        }
        prune(&pool, &name, slot).await;
        // A run longer than the interval does not replay the slots it
        // overran: they belonged to other instances or are gone.
        after = slot.max(Utc::now());
    }
}

async fn prune(pool: &PgPool, name: &str, slot: DateTime<Utc>) {
    let before = slot - chrono::Duration::days(RUN_RETENTION_DAYS);
    let pruned = async {
        let mut conn = pool.acquire().await?;
        store::jobs::prune_runs(&mut conn, name, before).await
    };
    if let Err(e) = pruned.await {
        tracing::warn!(job = %name, error = %e, "could not prune old job runs");
    }
}

/// False when shutdown came first.
async fn sleep_until(at: DateTime<Utc>, shutdown: &CancellationToken) -> bool {
    let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
    sleep_for(wait, shutdown).await
}

async fn sleep_for(wait: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep_until(tokio::time::Instant::now() + wait) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;

    struct Nop;

    #[async_trait]
    impl Job for Nop {
        fn name(&self) -> &'static str {
            "nop"
        }
        async fn run_once(
            &self,
            _slot: DateTime<Utc>,
        ) -> Result<JobCounts, super::super::JobError> {
            Ok(JobCounts::new())
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap()
    }

    fn scheduler(expr: &str, offset: &str) -> Scheduler {
        let mut s = Scheduler::new();
        let offset = crate::config::parse_offset(offset).unwrap();
        s.add("j", expr, offset, Arc::new(Nop)).unwrap();
        s
    }

    #[test]
    fn slots_every_minute() {
        let s = scheduler("0 * * * * *", "UTC");
        let next = |t| s.next_slot("j", at(t)).unwrap().unwrap();
        let latest = |t| s.latest_slot("j", at(t)).unwrap().unwrap();
        assert_eq!(next("2026-11-25T12:00:00Z"), at("2026-11-25T12:01:00Z"));
        assert_eq!(next("2026-11-25T12:00:00.500Z"), at("2026-11-25T12:01:00Z"));
        assert_eq!(next("2026-11-25T11:59:59.999Z"), at("2026-11-25T12:00:00Z"));
        assert_eq!(latest("2026-11-25T12:00:00Z"), at("2026-11-25T12:00:00Z"));
        assert_eq!(
            latest("2026-11-25T12:00:59.900Z"),
            at("2026-11-25T12:00:00Z")
        );
        assert_eq!(
            latest("2026-11-25T12:01:00.001Z"),
            at("2026-11-25T12:01:00Z")
        );
    }

    #[test]
    fn slots_follow_the_offset() {
        // 10:00 at +08:00 is 02:00 UTC.
        let s = scheduler("0 0 10 * * *", "+08:00");
        let next = s
            .next_slot("j", at("2026-11-25T03:00:00Z"))
            .unwrap()
            .unwrap();
        assert_eq!(next, at("2026-11-26T02:00:00Z"));
        let latest = s
            .latest_slot("j", at("2026-11-25T01:59:59Z"))
            .unwrap()
            .unwrap();
        assert_eq!(latest, at("2026-11-24T02:00:00Z"));
    }

    #[test]
    fn bad_expressions_are_refused() {
        let mut s = Scheduler::new();
        let utc = crate::config::parse_offset("UTC").unwrap();
        assert!(matches!(
            s.add("j", "every minute", utc, Arc::new(Nop)),
            Err(SchedulerError::Schedule { .. })
        ));
        assert!(matches!(
            s.next_slot("j", Utc::now()),
            Err(SchedulerError::UnknownJob(_))
        ));
    }
}
