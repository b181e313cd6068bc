//! The gauges read at scrape time (orders by status, outbox lag, dead-letter
//! depth, the last reconciliation, readiness): always current, nothing to
//! keep in step. Each read is bounded, so a scrape answers in time with a
//! dependency down; a gauge that could not be read keeps its last value,
//! and `payrecon_ready` says which dependency is missing.

use std::time::Duration;

use sqlx::PgPool;

use super::HttpState;
use crate::domain::recon::Category;
use crate::domain::{Channel, OrderStatus};
use crate::store::{self, StoreError};

/// Well under a scraper's or a balancer's timeout (10 s by default for both).
const READ_BUDGET: Duration = Duration::from_secs(2);

/// What `/readyz` reports.
pub struct Readiness {
    pub database: bool,
    pub broker: bool,
}

/// Readiness with a bounded `SELECT 1`, recorded in `payrecon_ready` too.
pub async fn readiness(s: &HttpState) -> Readiness {
    let database = s.started.get() && {
        let probe = sqlx::query("SELECT 1").execute(&s.pool);
        matches!(tokio::time::timeout(READ_BUDGET, probe).await, Ok(Ok(_)))
    };
    record(Readiness {
        database,
        broker: s.broker.is_ready(),
    })
}

fn record(r: Readiness) -> Readiness {
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    metrics::gauge!("payrecon_ready", "dependency" => "database").set(flag(r.database));
    metrics::gauge!("payrecon_ready", "dependency" => "broker").set(flag(r.broker));
    r
}

/// Reads every scrape-time gauge, the database's and the broker's at once.
pub async fn refresh(s: &HttpState) {
    let database = async {
        if !s.started.get() {
            return false;
        }
        match tokio::time::timeout(READ_BUDGET, database_gauges(s)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "metrics: database gauges not read");
                false
            }
            Err(_) => false,
        }
    };
    let (database, ()) = tokio::join!(database, dead_letter_gauges(s));
    record(Readiness {
        database,
        broker: s.broker.is_ready(),
    });
}

async fn database_gauges(s: &HttpState) -> Result<(), StoreError> {
    let mut conn = acquire(&s.pool).await?;
    let counts = store::orders::count_by_status(&mut conn).await?;
    for status in OrderStatus::ALL {
        let n = counts
            .iter()
            .find(|(st, _)| st == status.as_str())
            .map_or(0, |(_, n)| *n);
        metrics::gauge!("payrecon_orders", "status" => status.as_str()).set(n as f64);
    }
    let (unpublished, oldest) = store::outbox::lag(&mut conn).await?;
    metrics::gauge!("payrecon_outbox_unpublished_events").set(unpublished as f64);
    metrics::gauge!("payrecon_outbox_oldest_unpublished_seconds").set(oldest);
    let last = store::recon::last_successes(&mut conn).await?;
    for channel in Channel::ALL {
        let run = last.iter().find(|l| l.channel == channel.as_str());
        if run.is_none() && !s.gateways.contains_key(&channel) {
            continue;
        }
        // 0 for a channel never reconciled: "too long ago" for an alert.
        metrics::gauge!("payrecon_recon_last_success_timestamp_seconds", "channel" => channel.as_str())
            .set(run.map_or(0.0, |r| r.finished_at));
        for category in Category::ALL {
            let n = run
                .and_then(|r| r.discrepancies.iter().find(|(c, _)| c == category.as_str()))
                .map_or(0, |(_, n)| *n);
            metrics::gauge!("payrecon_recon_last_discrepancies", "channel" => channel.as_str(), "category" => category.as_str())
                .set(n as f64);
        }
    }
    Ok(())
}

async fn acquire(pool: &PgPool) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, StoreError> {
    Ok(pool.acquire().await?)
}

async fn dead_letter_gauges(s: &HttpState) {
    let queues: Vec<&str> = s
        .dead_letter_queues
        .iter()
        .map(|(_, q)| q.as_str())
        .collect();
    let read = tokio::time::timeout(READ_BUDGET, s.broker.queue_depths(&queues)).await;
    let Ok(Some(depths)) = read else { return };
    for ((label, _), depth) in s.dead_letter_queues.iter().zip(depths) {
        if let Some(depth) = depth {
            metrics::gauge!("payrecon_dlq_depth", "queue" => *label).set(f64::from(depth));
        }
    }
}
