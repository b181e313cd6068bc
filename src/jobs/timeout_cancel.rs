//! Cancels orders left unpaid past their `expires_at` — but never blind: a
//! started payment is first asked about at the gateway (the buyer may have
//! paid a second ago, the notification still on its way), and closed there
//! before the order is cancelled, so it cannot be paid afterwards.
//!
//! Work goes in bounded batches locked with `FOR UPDATE SKIP LOCKED`, so
//! several instances share a backlog. No network call happens inside a
//! transaction: started payments are leased (`timeout_claimed_until`) in the
//! batch transaction, asked about after it, and each outcome is applied in a
//! short transaction that re-checks the order.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use serde_json::json;
use sqlx::PgPool;

use super::{Job, JobCounts, JobError};
use crate::domain::{Channel, OrderEvent, OrderStatus};
use crate::gateway::{CloseOutcome, Gateway, GatewayError, PaymentStatus, TradeState};
use crate::messaging::contracts::Event;
use crate::store::jobs::{self as store, ExpiredOrder};
use crate::store::payments::{self, ConfirmOutcome, PaidSource};
use crate::store::tasks::{self, TaskKind};
use crate::store::{orders, outbox, StoreError};

pub const JOB_NAME: &str = "timeout_cancel";
pub const CANCEL_REASON: &str = "timeout";
/// Orders locked per batch transaction: big enough that a backlog of
/// thousands takes few round trips, small enough that the locks (and a
/// crashed instance's leases) cover little at a time.
pub const DEFAULT_BATCH: u32 = 100;

pub struct TimeoutCancel {
    pool: PgPool,
    gateways: HashMap<Channel, Arc<dyn Gateway>>,
    batch_size: i64,
    concurrency: usize,
    claim_lease: Duration,
    retry_after: Duration,
    anomaly_recheck: Duration,
}

/// What became of one started payment.
enum Settled {
    Cancelled,
    Paid,
    /// The gateway could not answer (or the database failed us): left for
    /// a later tick.
    Deferred,
    /// Paid at the gateway with another amount: an anomaly is recorded and
    /// the order stays unpaid for people (and reconciliation) to decide.
    Anomaly,
    /// Someone else moved the order meanwhile (a notification, a cancel).
    Elsewhere,
}

impl TimeoutCancel {
    pub fn new(
        pool: PgPool,
        gateways: HashMap<Channel, Arc<dyn Gateway>>,
        batch_size: u32,
    ) -> Self {
        TimeoutCancel {
            pool,
            gateways,
            batch_size: i64::from(batch_size.max(1)),
            concurrency: 8,
            // Longer than a gateway call with its retries: while it lasts no
            // other instance asks about the same order. A crash mid-call
            // delays the order by this much, no more.
            claim_lease: Duration::minutes(10),
            // Any positive lease keeps a deferred order out of the rest of
            // this run; the next tick asks again.
            retry_after: Duration::seconds(1),
            anomaly_recheck: Duration::hours(1),
        }
    }

    /// How many gateway conversations run at once.
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    pub fn with_retry_after(mut self, d: Duration) -> Self {
        self.retry_after = d.max(Duration::milliseconds(1));
        self
    }

    /// One pass over every order expired before `now` (the injected clock).
    pub async fn run_at(&self, now: DateTime<Utc>) -> Result<JobCounts, JobError> {
        let mut counts = JobCounts::with_keys(&["cancelled", "paid", "deferred"]);
        loop {
            let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
            let batch = store::lock_expired_batch(&mut tx, now, self.batch_size).await?;
            let (started, unstarted): (Vec<ExpiredOrder>, Vec<ExpiredOrder>) = batch
                .iter()
                .cloned()
                .partition(|o| o.payment_state.is_started());
            for o in &unstarted {
                // Locked by the batch query: nobody can have moved it.
                if cancel_pending(&mut tx, o, now).await? {
                    counts.incr("cancelled");
                    metrics::counter!("payrecon_timeout_orders_total", "outcome" => "cancelled")
                        .increment(1);
                }
            }
            let ids: Vec<_> = started.iter().map(|o| o.order_id).collect();
            store::lease_timeout(&mut tx, &ids, now + self.claim_lease).await?;
            tx.commit().await.map_err(StoreError::from)?;

            let calls: Vec<_> = started.iter().map(|o| self.settle(o, now)).collect();
            let settled: Vec<Settled> = futures::stream::iter(calls)
                .buffer_unordered(self.concurrency)
                .collect()
                .await;
            for s in settled {
                match s {
                    Settled::Cancelled => counts.incr("cancelled"),
                    Settled::Paid => counts.incr("paid"),
                    Settled::Deferred => counts.incr("deferred"),
                    Settled::Anomaly => counts.incr("anomalies"),
                    Settled::Elsewhere => counts.incr("settled_elsewhere"),
                }
            }
            // Every order of the batch has left `pending_payment` or holds a
            // lease beyond `now`, so the next query cannot return it again.
            if (batch.len() as i64) < self.batch_size {
                return Ok(counts);
            }
        }
    }

    async fn settle(&self, o: &ExpiredOrder, now: DateTime<Utc>) -> Settled {
        let outcome = self.ask_gateway(o).await;
        let applied = match outcome {
            Ok(Some(Decision::Cancel)) => self.cancel(o, now).await,
            Ok(Some(Decision::Paid(status))) => self.confirm(o, status, now).await,
            Ok(None) => Ok(Settled::Deferred),
            Err(e) => {
                tracing::warn!(order.id = %o.order_id, gateway = %o.channel, error = %e,
                    kind = e.kind(), "gateway did not answer; order left for the next tick");
                Ok(Settled::Deferred)
            }
        };
        let settled = match applied {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(order.id = %o.order_id, error = %e, "could not apply the timeout outcome");
                Settled::Deferred
            }
        };
        if matches!(settled, Settled::Deferred) {
            if let Err(e) = self.lease(o, now + self.retry_after).await {
                // The claim lease still holds it; it returns when that ends.
                tracing::warn!(order.id = %o.order_id, error = %e, "could not shorten the timeout lease");
            }
        }
        metrics::counter!("payrecon_timeout_orders_total", "outcome" => settled.label())
            .increment(1);
        settled
    }

    /// Query first; close only what is still unpaid. `Ok(None)`: nothing to
    /// decide yet (no adapter for the channel).
    async fn ask_gateway(&self, o: &ExpiredOrder) -> Result<Option<Decision>, GatewayError> {
        let Some(gateway) = self.gateways.get(&o.channel) else {
            tracing::warn!(order.id = %o.order_id, gateway = %o.channel, "no gateway configured; order left unpaid");
            return Ok(None);
        };
        let status = gateway.query(&o.out_trade_no).await?;
        Ok(Some(match status.state {
            TradeState::Paid | TradeState::Refunded => Decision::Paid(status),
            TradeState::Closed | TradeState::NotFound => Decision::Cancel,
            TradeState::NotPaid => match gateway.close(&o.out_trade_no).await? {
                CloseOutcome::Closed => Decision::Cancel,
                CloseOutcome::AlreadyPaid(status) => Decision::Paid(status),
            },
        }))
    }

    async fn cancel(&self, o: &ExpiredOrder, now: DateTime<Utc>) -> Result<Settled, StoreError> {
        let mut tx = self.pool.begin().await?;
        // A payment request that arrived after the batch was taken: its
        // prepay may create the payment we found absent. Let it finish first.
        if tasks::has_pending(&mut tx, o.order_id, TaskKind::Prepay, 0).await? {
            return Ok(Settled::Deferred);
        }
        let done = cancel_pending(&mut tx, o, now).await?;
        tx.commit().await?;
        Ok(if done {
            Settled::Cancelled
        } else {
            Settled::Elsewhere
        })
    }

    async fn confirm(
        &self,
        o: &ExpiredOrder,
        status: PaymentStatus,
        now: DateTime<Utc>,
    ) -> Result<Settled, StoreError> {
        let Some(payment) = crate::payments::paid_payment(o.channel, &o.out_trade_no, &status, now)
        else {
            tracing::warn!(order.id = %o.order_id, gateway = %o.channel,
                "gateway reports the payment paid without transaction id or amount; asking again later");
            return Ok(Settled::Deferred);
        };
        let mut tx = self.pool.begin().await?;
        let settled = match payments::confirm_payment(&mut tx, &payment, PaidSource::Query, None)
            .await?
        {
            ConfirmOutcome::Confirmed(_) => {
                tracing::info!(order.id = %o.order_id, "expired order was paid at the gateway");
                Settled::Paid
            }
            ConfirmOutcome::AlreadyPaid(_) => Settled::Elsewhere,
            ConfirmOutcome::Anomaly(kind) => {
                tracing::warn!(order.id = %o.order_id, kind = kind.as_str(), "expired order paid with an anomaly");
                store::lease_timeout(&mut tx, &[o.order_id], now + self.anomaly_recheck).await?;
                Settled::Anomaly
            }
        };
        tx.commit().await?;
        Ok(settled)
    }

    async fn lease(&self, o: &ExpiredOrder, until: DateTime<Utc>) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        store::lease_timeout(&mut conn, &[o.order_id], until).await
    }
}

enum Decision {
    Cancel,
    Paid(PaymentStatus),
}

impl Settled {
    fn label(&self) -> &'static str {
        match self {
            Settled::Cancelled => "cancelled",
            Settled::Paid => "paid",
            Settled::Deferred => "deferred",
            Settled::Anomaly => "anomaly",
            Settled::Elsewhere => "settled_elsewhere",
        }
    }
}

/// Cancels the order for timeout if it is still waiting for payment, with
/// its `order.cancelled` event, in the caller's transaction. False when it
/// had already moved on.
async fn cancel_pending(
    conn: &mut sqlx::PgConnection,
    o: &ExpiredOrder,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let Some(mut order) = orders::get_for_update(conn, o.order_id).await? else {
        return Ok(false);
    };
    if order.status != OrderStatus::PendingPayment {
        return Ok(false);
    }
    order
        .cancel(CANCEL_REASON, now)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    orders::update(conn, &order, OrderStatus::PendingPayment).await?;
    let event = Event::for_order(
        OrderEvent::Cancelled.event_type(),
        &order,
        None,
        json!({ "reason": CANCEL_REASON }),
    );
    outbox::enqueue(conn, &event).await?;
    tracing::info!(order.id = %o.order_id, "unpaid order cancelled for timeout");
    Ok(true)
}

#[async_trait]
impl Job for TimeoutCancel {
    fn name(&self) -> &'static str {
        JOB_NAME
    }

    /// Uses the wall clock, not the slot: a late (catch-up) run must still
    /// cancel what has expired by now.
    async fn run_once(&self, _slot: DateTime<Utc>) -> Result<JobCounts, JobError> {
        self.run_at(Utc::now()).await
    }

    /// Runs share a backlog through `FOR UPDATE SKIP LOCKED` and the
    /// timeout lease, so a slot need not wait for a run still going: with
    /// it skipped, one instance would carry a backlog of thousands alone.
    fn exclusive(&self) -> bool {
        false
    }
}
