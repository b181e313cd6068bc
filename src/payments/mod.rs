//! The payments runner: executes the durable gateway tasks that request
//! handlers scheduled (prepay, close, refund, reconciliation), outside any
//! transaction, with exponential backoff and full jitter between attempts.
//! A call whose outcome is unknown is never taken as failed: the next attempt
//! queries the gateway before it decides anything.

mod close;
mod prepay;
mod refund;
mod retry;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{NaiveDate, Utc};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use close::paid_payment;
pub use refund::{settle_by_out_refund_no, settle_refund, RefundOutcome};
pub use retry::RetryPolicy;

use crate::domain::Channel;
use crate::gateway::Gateway;
use crate::store::tasks::{self, Task, TaskKind};
use crate::store::StoreError;

/// What a `recon.run` request's attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconAttempt {
    Completed,
    /// Another run of the channel is running (e.g. the daily job): the
    /// request waits for it instead of being dropped.
    Busy,
}

/// Runs a reconciliation for the `recon.run` request (implemented by `jobs`).
#[async_trait]
pub trait ReconRunner: Send + Sync {
    async fn run(
        &self,
        channel: Channel,
        date: NaiveDate,
        request_id: Option<&str>,
    ) -> Result<ReconAttempt, String>;
}

/// How long a `recon.run` request waits before it looks again at a busy channel.
const RECON_BUSY_WAIT: Duration = Duration::from_secs(1);

pub struct Payments {
    pub pool: PgPool,
    pub gateways: HashMap<Channel, Arc<dyn Gateway>>,
    pub notify_urls: HashMap<Channel, String>,
    pub retry: RetryPolicy,
    pub recon: Option<Arc<dyn ReconRunner>>,
}

/// What one attempt of a task decided.
#[derive(Debug)]
pub(crate) enum Step {
    Done,
    /// Done, and already marked so in the transaction of its event, so the
    /// task's end and its event commit together (nothing left to record).
    Recorded,
    /// Give up for good (recorded on the task).
    Failed(String),
    /// Try again after the backoff; the text is the error of this attempt.
    Retry(String),
    /// Wait without counting an attempt (e.g. for an in-flight prepay).
    Postpone(Duration),
}

/// How long a claimed task is ours: longer than any gateway call with its
/// timeout, so a live worker never loses a task it is still working on.
const LEASE: Duration = Duration::from_secs(120);
const CONCURRENCY: i64 = 16;

impl Payments {
    pub fn gateway(&self, channel: Channel) -> Option<&Arc<dyn Gateway>> {
        self.gateways.get(&channel)
    }

    pub fn notify_url(&self, channel: Channel) -> String {
        self.notify_urls.get(&channel).cloned().unwrap_or_default()
    }

    /// Works through due tasks until `shutdown`. `wake` is notified when a
    /// request scheduled a task, so new work does not wait for the poll.
    pub async fn run(self: Arc<Self>, wake: Arc<Notify>, shutdown: CancellationToken) {
        loop {
            let ran = match self.run_due().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "payments runner: database unavailable");
                    0
                }
            };
            if ran as i64 == CONCURRENCY {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Claims and executes the tasks due now; returns how many ran.
    pub async fn run_due(&self) -> Result<usize, StoreError> {
        let now = Utc::now();
        let lease = now + chrono::Duration::from_std(LEASE).unwrap_or_default();
        let claimed = {
            let mut conn = self.pool.acquire().await?;
            tasks::claim_due(&mut conn, now, lease, CONCURRENCY).await?
        };
        let n = claimed.len();
        futures::future::join_all(claimed.into_iter().map(|t| self.execute(t))).await;
        Ok(n)
    }

    async fn execute(&self, task: Task) {
        let span = tracing::info_span!(
            "task",
            task_id = task.id,
            kind = task.kind.as_str(),
            order_id = task.order_id.map(|o| o.to_string()).unwrap_or_default(),
            request_id = task.request_id.clone().unwrap_or_default(),
            attempt = task.attempt
        );
        async {
            let step = match task.kind {
                TaskKind::Prepay => prepay::attempt(self, &task).await,
                TaskKind::Close => close::attempt(self, &task).await,
                TaskKind::Refund => refund::attempt(self, &task).await,
                TaskKind::Recon => self.recon_task(&task).await,
            };
            let step = match step {
                Ok(step) => step,
                // The database failed mid-task: the lease expires and the task runs again.
                Err(e) => {
                    tracing::warn!(error = %e, "task interrupted by the database");
                    return;
                }
            };
            if let Err(e) = self.record(&task, step).await {
                tracing::warn!(error = %e, "could not record the task's outcome; it will run again");
            }
        }
        .instrument(span)
        .await
    }

    async fn record(&self, task: &Task, step: Step) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        match step {
            Step::Done => tasks::finish(&mut conn, task.id, None).await,
            Step::Recorded => Ok(()),
            Step::Failed(why) => {
                tracing::warn!(error = %why, "task failed for good");
                tasks::finish(&mut conn, task.id, Some(&why)).await
            }
            Step::Retry(why) => {
                let at = Utc::now() + self.retry.delay(task.attempt as u32 + 1);
                tracing::info!(error = %why, next_attempt_at = %at, "gateway call will be retried");
                tasks::retry_at(&mut conn, task.id, at, &why).await
            }
            Step::Postpone(d) => {
                let at = Utc::now() + chrono::Duration::from_std(d).unwrap_or_default();
                tasks::postpone(&mut conn, task.id, at).await
            }
        }
    }

    /// Whether this attempt is the last one `retry.max_attempts` allows.
    pub(crate) fn is_last_attempt(&self, task: &Task) -> bool {
        task.attempt as u32 + 1 >= self.retry.max_attempts
    }

    /// Whether `retry.max_attempts` calls that could change something were
    /// made: what is left is settling the last one's outcome by query.
    pub(crate) fn attempts_exhausted(&self, task: &Task) -> bool {
        task.attempt as u32 >= self.retry.max_attempts
    }

    /// Queries that settle an unknown outcome get as many attempts again.
    /// When those go unanswered too, a prepay ends failed (the order stays
    /// payable, so a notification still makes it paid) and a refund stays
    /// processing for a notification or reconciliation.
    pub(crate) fn settling_exhausted(&self, task: &Task) -> bool {
        task.attempt as u32 + 1 >= self.retry.max_attempts.saturating_mul(2)
    }

    async fn recon_task(&self, task: &Task) -> Result<Step, StoreError> {
        let channel = task
            .payload
            .get("channel")
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse::<Channel>().ok());
        let date = task
            .payload
            .get("date")
            .and_then(|v| v.as_str())
            .and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok());
        let (Some(channel), Some(date)) = (channel, date) else {
            return Ok(Step::Failed("recon task without channel or date".into()));
        };
        let Some(recon) = &self.recon else {
            return Ok(Step::Failed(
                "reconciliation is not available in this process".into(),
            ));
        };
        Ok(
            match recon.run(channel, date, task.request_id.as_deref()).await {
                Ok(ReconAttempt::Completed) => Step::Done,
                Ok(ReconAttempt::Busy) => Step::Postpone(RECON_BUSY_WAIT),
                Err(e) => Step::Failed(e),
            },
        )
    }
}
