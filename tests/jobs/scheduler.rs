//! Slots run once across instances, overlapping runs are skipped, crashed
//! runs stop blocking, missed slots are caught up once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use payrecon::config::parse_offset;
use payrecon::jobs::{Job, JobCounts, JobError, Scheduler, SlotOutcome};
use payrecon::store::jobs::{self as runs, Claim, RunOutcome};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::support::TestDb;

/// Counts its runs and the slots they were for; optionally takes a while,
/// or waits for a permit (so a test decides when it ends).
#[derive(Default)]
struct Probe {
    slots: Mutex<Vec<DateTime<Utc>>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
    duration: StdDuration,
    gate: Option<Arc<Semaphore>>,
    started: Option<Arc<Semaphore>>,
    fail: bool,
}

#[async_trait]
impl Job for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }

    async fn run_once(&self, slot: DateTime<Utc>) -> Result<JobCounts, JobError> {
        let now_running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now_running, Ordering::SeqCst);
        self.slots.lock().unwrap().push(slot);
        if let Some(started) = &self.started {
            started.add_permits(1);
        }
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        tokio::time::sleep(self.duration).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        if self.fail {
            return Err(JobError::Failed("the probe was told to fail".into()));
        }
        let mut counts = JobCounts::new();
        counts.add("work", 3);
        Ok(counts)
    }
}

fn utc() -> chrono::FixedOffset {
    parse_offset("UTC").unwrap()
}

fn scheduler(instance: &str, expr: &str, job: Arc<Probe>) -> Scheduler {
    let mut s = Scheduler::new().with_instance(instance);
    s.add("probe", expr, utc(), job).unwrap();
    s
}

fn minute(t: DateTime<Utc>) -> DateTime<Utc> {
    t - Duration::seconds(t.timestamp() % 60)
        - Duration::nanoseconds(t.timestamp_subsec_nanos() as i64)
}

async fn rows(db: &TestDb) -> Vec<runs::JobRun> {
    let mut conn = db.pool.acquire().await.unwrap();
    runs::runs(&mut conn, "probe").await.unwrap()
}

#[tokio::test]
async fn a_slot_runs_once_even_for_an_instance_with_a_skewed_clock() {
    let db = TestDb::new().await;
    let job = Arc::new(Probe::default());
    let a = scheduler("a", "0 * * * * *", job.clone());
    let b = scheduler("b", "0 * * * * *", job.clone());
    let slot = minute(Utc::now());

    let first = a
        .run_slot_now(&db.pool, "probe", slot, slot + Duration::milliseconds(5))
        .await
        .unwrap();
    assert!(
        matches!(&first, SlotOutcome::Succeeded(c) if c.get("work") == 3),
        "{first:?}"
    );
    // b's clock is 40 s behind: it reaches the same slot long after a's run ended.
    let late = b
        .run_slot_now(&db.pool, "probe", slot, slot + Duration::seconds(40))
        .await
        .unwrap();
    assert_eq!(late, SlotOutcome::Taken);
    // And a clock 3 s ahead reaches it before: still the same row.
    let early = b
        .run_slot_now(&db.pool, "probe", slot, slot - Duration::seconds(3))
        .await
        .unwrap();
    assert_eq!(early, SlotOutcome::Taken);

    assert_eq!(job.slots.lock().unwrap().clone(), vec![slot]);
    let recorded = rows(&db).await;
    assert_eq!(recorded.len(), 1);
    let run = &recorded[0];
    assert_eq!(
        (run.instance.as_str(), run.slot, run.outcome),
        ("a", slot, Some(RunOutcome::Succeeded))
    );
    assert_eq!(run.counts, serde_json::json!({"work": 3}));
    assert!(run.finished_at.is_some() && run.error.is_none());
    db.finish(&[]).await;
}

#[tokio::test]
async fn a_failed_run_is_recorded_with_its_error() {
    let db = TestDb::new().await;
    let job = Arc::new(Probe {
        fail: true,
        ..Probe::default()
    });
    let a = scheduler("a", "0 * * * * *", job.clone());
    let slot = minute(Utc::now());
    let outcome = a
        .run_slot_now(&db.pool, "probe", slot, Utc::now())
        .await
        .unwrap();
    assert!(matches!(outcome, SlotOutcome::Failed(ref e) if e.contains("told to fail")));
    let recorded = rows(&db).await;
    assert_eq!(recorded[0].outcome, Some(RunOutcome::Failed));
    assert!(recorded[0]
        .error
        .as_deref()
        .unwrap_or("")
        .contains("told to fail"));
    // The next slot is not held up by the failure.
    let next = a
        .run_slot_now(&db.pool, "probe", slot + Duration::minutes(1), Utc::now())
        .await
        .unwrap();
    assert!(matches!(next, SlotOutcome::Failed(_)));
    db.finish(&[]).await;
}

#[tokio::test]
async fn a_slot_that_comes_while_a_run_is_going_is_skipped() {
    let db = TestDb::new().await;
    let gate = Arc::new(Semaphore::new(0));
    let started = Arc::new(Semaphore::new(0));
    let job = Arc::new(Probe {
        gate: Some(gate.clone()),
        started: Some(started.clone()),
        ..Probe::default()
    });
    let a = Arc::new(scheduler("a", "0 * * * * *", job.clone()));
    let b = scheduler("b", "0 * * * * *", job.clone());
    let slot = minute(Utc::now());

    let (a2, pool) = (a.clone(), db.pool.clone());
    let long_run =
        tokio::spawn(async move { a2.run_slot_now(&pool, "probe", slot, Utc::now()).await });
    started.acquire().await.unwrap().forget();

    let next = slot + Duration::minutes(1);
    assert_eq!(
        b.run_slot_now(&db.pool, "probe", next, Utc::now())
            .await
            .unwrap(),
        SlotOutcome::Skipped
    );
    gate.add_permits(1);
    assert!(matches!(
        long_run.await.unwrap().unwrap(),
        SlotOutcome::Succeeded(_)
    ));

    let recorded = rows(&db).await;
    let outcomes: Vec<_> = recorded.iter().map(|r| (r.slot, r.outcome)).collect();
    assert_eq!(
        outcomes,
        vec![
            (slot, Some(RunOutcome::Succeeded)),
            (next, Some(RunOutcome::Skipped))
        ]
    );
    assert_eq!(job.slots.lock().unwrap().len(), 1);
    assert_eq!(job.max_running.load(Ordering::SeqCst), 1);
    db.finish(&[]).await;
}

#[tokio::test]
async fn a_crashed_run_blocks_the_job_only_until_its_lease_expires() {
    let db = TestDb::new().await;
    let job = Arc::new(Probe::default());
    let b = scheduler("b", "0 * * * * *", job.clone()).with_lease(StdDuration::from_secs(60));
    let t0 = minute(Utc::now());

    // Instance "dead" claims a slot and never finishes it.
    let mut conn = db.pool.acquire().await.unwrap();
    let claim = runs::claim_slot(
        &mut conn,
        "probe",
        t0,
        "dead",
        t0,
        t0 + Duration::seconds(60),
    )
    .await
    .unwrap();
    assert!(matches!(claim, Claim::Claimed { .. }));
    drop(conn);

    let t1 = t0 + Duration::minutes(1);
    let blocked = b
        .run_slot_now(&db.pool, "probe", t1, t0 + Duration::seconds(59))
        .await
        .unwrap();
    assert_eq!(blocked, SlotOutcome::Skipped);
    let t2 = t0 + Duration::minutes(2);
    let freed = b
        .run_slot_now(&db.pool, "probe", t2, t0 + Duration::seconds(61))
        .await
        .unwrap();
    assert!(matches!(freed, SlotOutcome::Succeeded(_)));

    let outcomes: Vec<_> = rows(&db)
        .await
        .iter()
        .map(|r| (r.instance.clone(), r.outcome))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("dead".to_string(), Some(RunOutcome::Abandoned)),
            ("b".to_string(), Some(RunOutcome::Skipped)),
            ("b".to_string(), Some(RunOutcome::Succeeded)),
        ]
    );
    db.finish(&[]).await;
}

#[tokio::test]
async fn a_restart_catches_up_only_the_latest_missed_slot_and_only_once() {
    let db = TestDb::new().await;
    let job = Arc::new(Probe::default());
    let a = scheduler("a", "0 * * * * *", job.clone());
    let b = scheduler("b", "0 * * * * *", job.clone());
    let noon = minute(Utc::now()) - Duration::hours(1);

    // Never run before: the latest slot counts as missed (this job does not
    // opt out of the first-start catch-up).
    let first = a
        .catch_up_now(&db.pool, "probe", noon + Duration::seconds(10))
        .await
        .unwrap();
    assert!(matches!(first, Some((s, SlotOutcome::Succeeded(_))) if s == noon));
    // Down for ten minutes, then two instances start at once.
    let restart = noon + Duration::minutes(10) + Duration::seconds(30);
    let from_a = a.catch_up_now(&db.pool, "probe", restart).await.unwrap();
    let from_b = b.catch_up_now(&db.pool, "probe", restart).await.unwrap();
    let latest = noon + Duration::minutes(10);
    assert!(
        matches!(from_a, Some((s, SlotOutcome::Succeeded(_))) if s == latest),
        "{from_a:?}"
    );
    assert_eq!(from_b, None);
    // Nothing missed since: no catch-up.
    assert_eq!(
        a.catch_up_now(&db.pool, "probe", restart + Duration::seconds(20))
            .await
            .unwrap(),
        None
    );

    assert_eq!(job.slots.lock().unwrap().clone(), vec![noon, latest]);
    assert_eq!(rows(&db).await.len(), 2);
    db.finish(&[]).await;
}

/// Runs `instances` real scheduler loops, each on its own pool, for `span`.
async fn run_daemons(
    db: &TestDb,
    job: Arc<Probe>,
    instances: usize,
    span: StdDuration,
) -> Vec<sqlx::PgPool> {
    let shutdown = CancellationToken::new();
    let mut pools = Vec::new();
    let mut loops = Vec::new();
    for i in 0..instances {
        let pool = db.second_pool().await;
        let s = scheduler(&format!("daemon{i}"), "* * * * * *", job.clone());
        loops.push(tokio::spawn(s.run(pool.clone(), shutdown.clone())));
        pools.push(pool);
    }
    tokio::time::sleep(span).await;
    shutdown.cancel();
    for l in loops {
        tokio::time::timeout(StdDuration::from_secs(10), l)
            .await
            .expect("loop stops")
            .unwrap();
    }
    pools
}

#[tokio::test]
async fn two_daemons_run_each_tick_once() {
    let db = TestDb::new().await;
    let job = Arc::new(Probe::default());
    let pools = run_daemons(&db, job.clone(), 2, StdDuration::from_millis(3600)).await;

    let mut slots = job.slots.lock().unwrap().clone();
    let ran = slots.len();
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), ran, "a slot ran twice: {slots:?}");
    assert!(ran >= 3, "only {ran} ticks ran in 3.6 s");
    let recorded = rows(&db).await;
    let succeeded: Vec<_> = recorded
        .iter()
        .filter(|r| r.outcome == Some(RunOutcome::Succeeded))
        .map(|r| r.slot)
        .collect();
    assert_eq!(succeeded, slots);
    db.finish(&pools).await;
}

#[tokio::test]
async fn a_job_longer_than_its_interval_is_not_started_twice() {
    let db = TestDb::new().await;
    let job = Arc::new(Probe {
        duration: StdDuration::from_millis(2200),
        ..Probe::default()
    });
    let pools = run_daemons(&db, job.clone(), 2, StdDuration::from_millis(4500)).await;

    assert_eq!(
        job.max_running.load(Ordering::SeqCst),
        1,
        "two runs overlapped"
    );
    let recorded = rows(&db).await;
    let skipped = recorded
        .iter()
        .filter(|r| r.outcome == Some(RunOutcome::Skipped))
        .count();
    let succeeded = recorded
        .iter()
        .filter(|r| r.outcome == Some(RunOutcome::Succeeded))
        .count();
    assert!(skipped >= 1, "no slot was skipped: {recorded:?}");
    assert_eq!(succeeded, job.slots.lock().unwrap().len());
    assert!(
        recorded.iter().all(|r| r.finished_at.is_some()),
        "a run was left open"
    );
    db.finish(&pools).await;
}
