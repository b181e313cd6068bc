//! `P.requests`: one transaction per batch. A request whose handling fails
//! for a reason other than a passing database problem is a poison message:
//! the batch is retried without it and it is dead-lettered, so one bad
//! message never sinks the others.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::Utc;
use lapin::message::Delivery;
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;

use super::consumer::{BatchProcessor, BatchResult, ProcessError};
use super::contracts::Event;
use super::handler::{self, HandlerConfig};
use super::requests::{parse_request, Envelope, Invalid, Request};
use crate::store::{inbox, outbox, StoreError};

pub struct RequestProcessor {
    pub pool: PgPool,
    pub config: HandlerConfig,
}

fn transient(e: impl std::fmt::Display) -> ProcessError {
    ProcessError::Transient(e.to_string())
}

#[async_trait]
impl BatchProcessor for RequestProcessor {
    async fn process(&self, batch: &[Delivery]) -> Result<BatchResult, ProcessError> {
        let parsed: Vec<Result<Envelope<Request>, Invalid>> =
            batch.iter().map(|d| parse_request(&d.data)).collect();
        let mut poison: HashMap<usize, String> = HashMap::new();
        loop {
            let now = Utc::now();
            let mut tx = self.pool.begin().await.map_err(transient)?;
            let mut outcomes = Vec::with_capacity(parsed.len());
            let mut failed = None;
            for (i, item) in parsed.iter().enumerate() {
                if poison.contains_key(&i) {
                    continue;
                }
                let result = match item {
                    Ok(env) => {
                        let span = tracing::info_span!("request", request_id = %env.request_id, request_type = %env.kind,
                            order_id = env.body.order_id().map(|o| o.to_string()).unwrap_or_default());
                        handler::apply(&mut tx, &self.config, env, now)
                            .instrument(span)
                            .await
                            .map(|o| outcomes.push((env.kind.clone(), o.label())))
                    }
                    Err(invalid) => reject_invalid(&mut tx, invalid, &batch[i].data).await,
                };
                match result {
                    Ok(()) => {}
                    Err(e) if e.is_transient() => return Err(transient(e)),
                    Err(e) => {
                        failed = Some((i, e));
                        break;
                    }
                }
            }
            if let Some((i, e)) = failed {
                tracing::error!(error = %e, "request failed to process; dead-lettering it and retrying the rest");
                poison.insert(i, format!("processing failed: {e}"));
                continue; // `tx` is dropped: rolled back.
            }
            tx.commit().await.map_err(transient)?;
            for (kind, outcome) in outcomes {
                metrics::counter!("payrecon_messages_total", "queue" => "requests", "type" => kind, "outcome" => outcome).increment(1);
            }
            let mut dead_letters: Vec<(usize, String)> = parsed
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    p.as_ref()
                        .err()
                        .map(|inv| (i, format!("invalid_request: {}", inv.message)))
                })
                .collect();
            for inv in parsed.iter().filter_map(|p| p.as_ref().err()) {
                let kind = inv.request_type.clone().unwrap_or_else(|| "unknown".into());
                metrics::counter!("payrecon_messages_total", "queue" => "requests", "type" => kind, "outcome" => "invalid").increment(1);
            }
            dead_letters.extend(poison);
            return Ok(BatchResult { dead_letters });
        }
    }
}

/// Tells the sender (when a request id could be read) that the request was
/// invalid — once, even when the broker redelivers it.
async fn reject_invalid(
    conn: &mut PgConnection,
    invalid: &Invalid,
    raw: &[u8],
) -> Result<(), StoreError> {
    let Some(rid) = &invalid.request_id else {
        return Ok(());
    };
    let kind = invalid.request_type.as_deref().unwrap_or("unknown");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, raw);
    if inbox::claim(conn, rid.as_str(), kind, digest.as_ref()).await? != inbox::Claim::New {
        return Ok(());
    }
    inbox::set_outcome(conn, rid.as_str(), "invalid_request").await?;
    let data = handler::rejection_data(kind, "invalid_request", &invalid.message);
    outbox::enqueue(
        conn,
        &Event::new("request.rejected", Some(rid.as_str()), data),
    )
    .await
}
