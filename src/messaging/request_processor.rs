//! `P.requests`: one transaction per batch. A request whose handling fails
//! for a reason other than a passing database problem is a poison message:
//! the batch is retried without it and it is dead-lettered, so one bad
//! message never sinks the others.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::Utc;
use lapin::message::Delivery;
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;

use super::consumer::{BatchProcessor, BatchResult, ProcessError};
use super::contracts::Event;
use super::handler::{self, HandlerConfig};
use super::place_batch;
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
    type Parsed = Vec<Result<Envelope<Request>, Invalid>>;

    /// Parses every body once; the keys are the orders the batch names.
    /// Requests without an order id (a place with a generated id,
    /// recon.run) and invalid ones (they touch no order) conflict with
    /// nothing; a repeated request id is serialized by the inbox's unique
    /// index.
    fn parse(&self, batch: &[Delivery]) -> (Self::Parsed, Option<HashSet<String>>) {
        let parsed: Self::Parsed = batch.iter().map(|d| parse_request(&d.data)).collect();
        let keys = parsed
            .iter()
            .flatten()
            .filter_map(|env| env.body.order_id())
            .map(|id| id.to_string())
            .collect();
        (parsed, Some(keys))
    }

    async fn process(
        &self,
        batch: &[Delivery],
        parsed: &Self::Parsed,
    ) -> Result<BatchResult, ProcessError> {
        let mut poison: HashMap<usize, String> = HashMap::new();
        // The bulk path cannot tell which of its requests failed; after a
        // non-transient failure the batch is redone one by one to find it.
        let mut bulk = true;
        loop {
            let now = Utc::now();
            let mut tx = self.pool.begin().await.map_err(transient)?;
            let mut outcomes = Vec::with_capacity(parsed.len());
            let mut run: Vec<usize> = Vec::new();
            let mut failed = None;
            for (i, item) in parsed.iter().enumerate() {
                if poison.contains_key(&i) {
                    continue;
                }
                if bulk && matches!(item, Ok(env) if matches!(env.body, Request::PlaceOrder(_))) {
                    run.push(i);
                    continue;
                }
                if let Err(e) = self
                    .flush_places(&mut tx, parsed, &mut run, &mut outcomes, now)
                    .await
                {
                    failed = Some((None, e));
                    break;
                }
                if let Err(e) = self
                    .apply_one(&mut tx, item, &batch[i].data, &mut outcomes, now)
                    .await
                {
                    failed = Some((Some(i), e));
                    break;
                }
            }
            if failed.is_none() {
                if let Err(e) = self
                    .flush_places(&mut tx, parsed, &mut run, &mut outcomes, now)
                    .await
                {
                    failed = Some((None, e));
                }
            }
            match failed {
                None => {}
                Some((_, e)) if e.is_transient() => return Err(transient(e)),
                Some((None, e)) => {
                    tracing::warn!(error = %e, "bulk apply failed; redoing the batch one request at a time");
                    bulk = false;
                    continue;
                }
                Some((Some(i), e)) => {
                    tracing::error!(error = %e, "request failed to process; dead-lettering it and retrying the rest");
                    poison.insert(i, format!("processing failed: {e}"));
                    continue; // `tx` is dropped: rolled back.
                }
            }
            tx.commit().await.map_err(transient)?;
            // Counted per (type, outcome), not per message: a label lookup
            // per message costs more than the rest of its bookkeeping.
            let mut counts: HashMap<(String, &'static str), u64> = HashMap::new();
            for key in outcomes {
                *counts.entry(key).or_default() += 1;
            }
            for ((kind, outcome), n) in counts {
                metrics::counter!("payrecon_messages_total", "queue" => "requests", "type" => kind, "outcome" => outcome).increment(n);
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
            // Dead-lettered after a processing failure: counted too, so the
            // message rates by outcome add up to what was consumed.
            for i in poison.keys() {
                if let Some(Ok(env)) = parsed.get(*i) {
                    metrics::counter!("payrecon_messages_total", "queue" => "requests", "type" => env.kind.clone(), "outcome" => "failed").increment(1);
                }
            }
            dead_letters.extend(poison);
            // Only requests other than order.place schedule gateway work.
            let scheduled_work = parsed
                .iter()
                .flatten()
                .any(|env| !matches!(env.body, Request::PlaceOrder(_)));
            return Ok(BatchResult {
                dead_letters,
                scheduled_work,
            });
        }
    }
}

impl RequestProcessor {
    async fn flush_places(
        &self,
        conn: &mut PgConnection,
        parsed: &[Result<Envelope<Request>, Invalid>],
        run: &mut Vec<usize>,
        outcomes: &mut Vec<(String, &'static str)>,
        now: chrono::DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if run.is_empty() {
            return Ok(());
        }
        let envs: Vec<&Envelope<Request>> = run
            .iter()
            .filter_map(|i| parsed[*i].as_ref().ok())
            .collect();
        let results = place_batch::apply_places(conn, &self.config, &envs, now).await?;
        outcomes.extend(
            results
                .iter()
                .map(|o| ("order.place".to_string(), o.label())),
        );
        run.clear();
        Ok(())
    }

    async fn apply_one(
        &self,
        conn: &mut PgConnection,
        item: &Result<Envelope<Request>, Invalid>,
        raw: &[u8],
        outcomes: &mut Vec<(String, &'static str)>,
        now: chrono::DateTime<Utc>,
    ) -> Result<(), StoreError> {
        match item {
            Ok(env) => {
                let span = tracing::info_span!("request", request_id = %env.request_id, request_type = %env.kind,
                    order_id = env.body.order_id().map(|o| o.to_string()).unwrap_or_default());
                let outcome = handler::apply(conn, &self.config, env, now)
                    .instrument(span)
                    .await?;
                outcomes.push((env.kind.clone(), outcome.label()));
                Ok(())
            }
            Err(invalid) => reject_invalid(conn, invalid, raw).await,
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
