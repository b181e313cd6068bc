//! What the daemons of a fault test did, read back: the events each order
//! got on the tap, and the timeout job's slots from its run records (which
//! instance claimed each, what each run cancelled).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use payrecon::jobs::timeout_cancel::JOB_NAME;
use payrecon::store::jobs::{JobRun, RunOutcome};
use serde_json::Value;
use sqlx::PgPool;
use tokio::time::Instant;

use crate::common::Broker;

/// What the event tap saw, per order: the event ids of each delivery of
/// `order.created` and `order.cancelled` (repeats included).
#[derive(Default)]
pub struct Tally {
    pub created: HashMap<String, Vec<String>>,
    pub cancelled: HashMap<String, Vec<String>>,
    /// event_id → the (type, order) it was first seen for.
    seen: HashMap<String, (String, String)>,
    /// An event_id delivered again for another type or order: never allowed.
    pub reused_ids: Vec<String>,
    pub other: usize,
    /// `occurred_at` of each `order.cancelled` delivery.
    pub cancelled_at: Vec<DateTime<Utc>>,
}

impl Tally {
    fn read(&mut self, e: &Value) {
        let kind = e["type"].as_str().unwrap_or_default().to_string();
        let order = e["data"]["order"]["order_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let event_id = e["event_id"].as_str().unwrap_or_default().to_string();
        if kind == "order.cancelled" {
            let at = e["occurred_at"].as_str().unwrap_or_default();
            if let Ok(at) = DateTime::parse_from_rfc3339(at) {
                self.cancelled_at.push(at.with_timezone(&Utc));
            }
        }
        let target = match kind.as_str() {
            "order.created" => &mut self.created,
            "order.cancelled" => &mut self.cancelled,
            _ => {
                self.other += 1;
                return;
            }
        };
        target
            .entry(order.clone())
            .or_default()
            .push(event_id.clone());
        let first = self
            .seen
            .entry(event_id.clone())
            .or_insert((kind.clone(), order.clone()));
        if *first != (kind, order) {
            self.reused_ids.push(event_id);
        }
    }

    /// Deliveries that repeated an event_id already delivered.
    pub fn redeliveries(&self) -> usize {
        let count = |m: &HashMap<String, Vec<String>>| -> usize {
            m.values()
                .map(|ids| ids.len() - ids.iter().collect::<HashSet<_>>().len())
                .sum()
        };
        count(&self.created) + count(&self.cancelled)
    }

    /// Orders of `kind`'s map with other than exactly one distinct event id.
    fn not_once<'a>(
        map: &'a HashMap<String, Vec<String>>,
        ids: &'a [String],
    ) -> Vec<(&'a String, Vec<String>)> {
        ids.iter()
            .filter_map(|id| {
                let events = map.get(id).cloned().unwrap_or_default();
                let distinct: HashSet<_> = events.iter().collect();
                (distinct.len() != 1).then_some((id, events))
            })
            .collect()
    }

    /// Every order of `ids` had exactly one `order.created` (if `created`)
    /// and one `order.cancelled` event id, no event concerned an order the
    /// test did not place, and no event id was reused.
    pub fn assert_each_once(&self, ids: &[String], created: bool) {
        let known: HashSet<&String> = ids.iter().collect();
        if created {
            let bad = Self::not_once(&self.created, ids);
            assert!(
                bad.is_empty(),
                "{} orders not created once: {:?}",
                bad.len(),
                &bad[..bad.len().min(5)]
            );
            assert!(
                self.created.keys().all(|k| known.contains(k)),
                "order.created for unknown orders"
            );
        }
        let bad = Self::not_once(&self.cancelled, ids);
        assert!(
            bad.is_empty(),
            "{} orders not cancelled once: {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
        assert!(
            self.cancelled.keys().all(|k| known.contains(k)),
            "order.cancelled for unknown orders"
        );
        assert!(
            self.reused_ids.is_empty(),
            "event ids reused: {:?}",
            self.reused_ids
        );
    }
}

/// Reads the tap until every one of `orders` orders has an `order.cancelled`
/// (and, with `created`, an `order.created`), panicking after `secs`; then
/// `quiet` more, to catch duplicates.
pub async fn collect(broker: &mut Broker, orders: usize, created: bool, secs: u64) -> Tally {
    let mut tally = Tally::default();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let done = |t: &Tally| t.cancelled.len() >= orders && (!created || t.created.len() >= orders);
    while !done(&tally) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, broker.try_next_event()).await {
            Ok(Some(e)) => tally.read(&e),
            Ok(None) => panic!("event stream ended"),
            Err(_) => panic!(
                "after {secs}s: {} of {orders} orders created, {} cancelled",
                tally.created.len(),
                tally.cancelled.len()
            ),
        }
    }
    let quiet = Duration::from_secs(2);
    while let Ok(Some(e)) = tokio::time::timeout(quiet, broker.try_next_event()).await {
        tally.read(&e);
    }
    tally
}

/// The timeout job's runs, oldest slot first.
pub async fn timeout_runs(pool: &PgPool) -> Vec<JobRun> {
    let mut conn = pool.acquire().await.expect("conn");
    payrecon::store::jobs::runs(&mut conn, JOB_NAME)
        .await
        .expect("job runs")
}

/// What the job-run rows say about the slots of the timeout job.
#[derive(Debug, Default)]
pub struct Slots {
    /// Rows, one per claimed slot.
    pub claimed: usize,
    /// Slots claimed more than once (the unique key forbids it; counted
    /// from the rows all the same).
    pub doubled: usize,
    /// Slots between the first and the last with no row although some
    /// live instance was not inside a run then (with slack for the claim):
    /// a slot nobody took.
    pub lost: usize,
    /// Missing slots that every live instance spent inside a run: the
    /// scheduler lets a busy instance pass over them.
    pub passed_busy: usize,
    /// Runs still open (no outcome).
    pub open: usize,
    pub abandoned: usize,
    /// Orders each instance's finished runs cancelled (`counts.cancelled`).
    pub cancelled_by: BTreeMap<String, u64>,
    /// Runs each instance claimed.
    pub runs_by: BTreeMap<String, usize>,
}

/// Reads the slots of the timeout job. `live`: the instances that ran
/// throughout (a missing slot is excused only while each of them was
/// inside a run).
pub fn slots(runs: &[JobRun], live: &[String]) -> Slots {
    let mut s = Slots::default();
    let mut per_slot: BTreeMap<DateTime<Utc>, usize> = BTreeMap::new();
    for r in runs {
        *per_slot.entry(r.slot).or_default() += 1;
        *s.runs_by.entry(r.instance.clone()).or_default() += 1;
        match r.outcome {
            None => s.open += 1,
            Some(RunOutcome::Abandoned) => s.abandoned += 1,
            Some(_) => {}
        }
        let cancelled = r
            .counts
            .get("cancelled")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        *s.cancelled_by.entry(r.instance.clone()).or_default() += cancelled;
    }
    s.claimed = runs.len();
    s.doubled = per_slot.values().filter(|n| **n > 1).count();
    let (Some(first), Some(last)) = (per_slot.keys().next(), per_slot.keys().last()) else {
        return s;
    };
    let slack = chrono::Duration::seconds(2);
    let mut t = *first;
    while t < *last {
        t += chrono::Duration::seconds(1);
        if per_slot.contains_key(&t) {
            continue;
        }
        let busy = |instance: &String| {
            runs.iter().any(|r| {
                &r.instance == instance
                    && r.started_at <= t + slack
                    && r.finished_at.is_none_or(|f| t <= f + slack)
            })
        };
        if live.iter().all(busy) {
            s.passed_busy += 1;
        } else {
            s.lost += 1;
        }
    }
    s
}

/// No instance ran two slots at once: its scheduler loop is sequential, so
/// overlapping runs of one instance would mean a slot ran twice.
pub fn assert_no_instance_overlaps_itself(runs: &[JobRun]) {
    let mut by: HashMap<&str, Vec<&JobRun>> = HashMap::new();
    for r in runs
        .iter()
        .filter(|r| r.outcome != Some(RunOutcome::Skipped))
    {
        by.entry(r.instance.as_str()).or_default().push(r);
    }
    for (instance, mut rs) in by {
        rs.sort_by_key(|r| r.started_at);
        for w in rs.windows(2) {
            if let Some(end) = w[0].finished_at {
                assert!(
                    end <= w[1].started_at,
                    "{instance} ran slots {} and {} at once",
                    w[0].slot,
                    w[1].slot
                );
            }
        }
    }
}

/// Waits (bounded) until no run of the timeout job is open.
pub async fn wait_runs_closed(pool: &PgPool, secs: u64) -> Vec<JobRun> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let runs = timeout_runs(pool).await;
        if runs.iter().all(|r| r.outcome.is_some()) {
            return runs;
        }
        assert!(
            Instant::now() < deadline,
            "timeout runs still open after {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
