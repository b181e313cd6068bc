//! Scheduled jobs. Each job is a [`Job`] whose `run_once` a test can call
//! directly; the [`scheduler::Scheduler`] decides when, claiming every cron
//! slot in PostgreSQL so that it runs once across all instances.

pub mod reconcile;
pub mod report;
pub mod scheduler;
mod slots;
pub mod timeout_cancel;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::config::Settings;
use crate::domain::Channel;
use crate::gateway::{Gateway, GatewayError};
use crate::store::StoreError;

pub use scheduler::{Scheduler, SchedulerError, SlotOutcome};
pub use timeout_cancel::TimeoutCancel;

/// Registers the timeout-cancellation job on `jobs.timeout_cancel.schedule`.
/// The schedule is read in the business offset (`jobs.reconcile.timezone`):
/// the contract gives this job no timezone of its own, and for its default
/// every-minute schedule the offset makes no difference.
pub fn add_timeout_cancel(
    scheduler: &mut Scheduler,
    settings: &Settings,
    pool: PgPool,
    gateways: HashMap<Channel, Arc<dyn Gateway>>,
) -> Result<(), SchedulerError> {
    let offset = settings
        .business_offset()
        .unwrap_or_else(|| chrono::Offset::fix(&Utc));
    let job = TimeoutCancel::new(pool, gateways, timeout_cancel::DEFAULT_BATCH);
    scheduler.add(
        timeout_cancel::JOB_NAME,
        &settings.jobs.timeout_cancel.schedule,
        offset,
        Arc::new(job),
    )
}

/// One unit of scheduled work.
#[async_trait]
pub trait Job: Send + Sync {
    fn name(&self) -> &'static str;

    /// Does the work of one schedule slot. `slot` is the schedule time the
    /// run belongs to (a catch-up run gets the missed slot, not the time it
    /// actually started), so a job whose work depends on the date (the daily
    /// reconciliation) does the same work whoever runs it and whenever.
    async fn run_once(&self, slot: DateTime<Utc>) -> Result<JobCounts, JobError>;

    /// Whether the very first start against a database (no run of this job
    /// recorded anywhere) catches up the latest passed slot. Later restarts
    /// always catch up what they missed.
    fn catch_up_on_first_start(&self) -> bool {
        true
    }

    /// Whether a slot that comes while another run of the job is still
    /// going is skipped (the default: reconciliation must not run twice at
    /// once). A job whose runs take their work under row locks says false:
    /// the slot then runs beside the one still going, so a backlog longer
    /// than the interval is shared by the instances instead of being
    /// carried by one while the others skip.
    fn exclusive(&self) -> bool {
        true
    }
}

/// What a run did, by name (`cancelled`, `paid`, …); stored as JSONB with
/// the run and logged. Names are the job's own choice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobCounts(BTreeMap<String, u64>);

impl JobCounts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the listed counts at zero, so a run that did nothing still
    /// reports every count its job has.
    pub fn with_keys(keys: &[&str]) -> Self {
        Self(keys.iter().map(|k| (k.to_string(), 0)).collect())
    }

    pub fn add(&mut self, key: &str, n: u64) {
        *self.0.entry(key.to_string()).or_insert(0) += n;
    }

    pub fn incr(&mut self, key: &str) {
        self.add(key, 1);
    }

    pub fn get(&self, key: &str) -> u64 {
        self.0.get(key).copied().unwrap_or(0)
    }

    pub fn merge(&mut self, other: &JobCounts) {
        for (k, v) in &other.0 {
            self.add(k, *v);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(*v)))
                .collect(),
        )
    }

    pub fn from_json(value: &serde_json::Value) -> Self {
        let mut counts = JobCounts::new();
        if let Some(map) = value.as_object() {
            for (k, v) in map {
                if let Some(n) = v.as_u64() {
                    counts.add(k, n);
                }
            }
        }
        counts
    }
}

/// Why a run failed. The scheduler records the text with the run; the next
/// slot simply tries again, so no variant needs a retry decision here.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("gateway: {0}")]
    Gateway(#[from] GatewayError),
    #[error("{0}")]
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_trip_through_json() {
        let mut c = JobCounts::with_keys(&["cancelled", "paid"]);
        c.incr("cancelled");
        c.add("deferred", 3);
        let json = c.to_json();
        assert_eq!(
            json,
            serde_json::json!({"cancelled": 1, "paid": 0, "deferred": 3})
        );
        assert_eq!(JobCounts::from_json(&json), c);
        let mut total = c.clone();
        total.merge(&c);
        assert_eq!(total.get("deferred"), 6);
        assert_eq!(total.get("missing"), 0);
    }

    #[tokio::test]
    async fn the_timeout_job_follows_its_configured_schedule() {
        let pool = PgPool::connect_lazy("postgres://postgres@127.0.0.1:5432/unused").unwrap();
        let mut settings = Settings::default();
        settings.jobs.timeout_cancel.schedule = "*/15 * * * * *".into();
        let mut scheduler = Scheduler::new();
        add_timeout_cancel(&mut scheduler, &settings, pool.clone(), HashMap::new()).unwrap();
        let t = DateTime::parse_from_rfc3339("2026-11-25T12:00:07Z")
            .unwrap()
            .with_timezone(&Utc);
        let next = scheduler
            .next_slot(timeout_cancel::JOB_NAME, t)
            .unwrap()
            .unwrap();
        assert_eq!(next.to_rfc3339(), "2026-11-25T12:00:15+00:00");

        settings.jobs.timeout_cancel.schedule = "sometimes".into();
        assert!(add_timeout_cancel(&mut scheduler, &settings, pool, HashMap::new()).is_err());
    }
}
