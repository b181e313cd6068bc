//! `P.notifications`: raw gateway notifications (docs/contract.md §3.8). Each is
//! verified again here (signature, timestamp window, merchant/app id,
//! decryption) before anything else; an unverifiable one is dead-lettered
//! with the reason and changes nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use lapin::message::Delivery;
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;

use super::consumer::{BatchProcessor, BatchResult, ProcessError};
use super::requests::parse_notification_envelope;
use crate::domain::Channel;
use crate::gateway::{Gateway, Headers, Notification, RefundState, MAX_NOTIFICATION_BODY_BYTES};
use crate::payments::{settle_by_out_refund_no, RefundOutcome};
use crate::store::payments::{confirm_many, confirm_payment, GatewayPayment, PaidSource};
use crate::store::{inbox, StoreError};

pub const NOTIFICATION_TYPE: &str = "gateway.notification";

pub struct NotificationProcessor {
    pub pool: PgPool,
    pub gateways: HashMap<Channel, Arc<dyn Gateway>>,
}

#[derive(Deserialize)]
struct NotificationData {
    channel: Channel,
    #[serde(default)]
    headers: HashMap<String, String>,
    body: String,
}

/// A notification that passed verification, ready to apply.
struct Verified {
    request_id: String,
    digest: Vec<u8>,
    channel: Channel,
    notification: Notification,
}

fn transient(e: impl std::fmt::Display) -> ProcessError {
    ProcessError::Transient(e.to_string())
}

impl NotificationProcessor {
    /// Everything that needs no database: parse and verify. `received` is
    /// when the ingress enqueued it (the AMQP timestamp), so a notification
    /// that waited in the queue is judged by when it arrived, not by when a
    /// consumer got to it.
    fn verify(&self, d: &Delivery, now: DateTime<Utc>) -> Result<Verified, String> {
        let env = parse_notification_envelope(&d.data)
            .map_err(|e| format!("invalid_request: {}", e.message))?;
        if env.kind != NOTIFICATION_TYPE {
            return Err(format!("invalid_request: unknown type {:?}", env.kind));
        }
        let data: NotificationData = NotificationData::deserialize(&env.body)
            .map_err(|e| format!("invalid_request: {e}"))?;
        // The edge's limit again: the queue may be fed by something else.
        if data.body.len() > MAX_NOTIFICATION_BODY_BYTES {
            return Err(format!(
                "invalid_request: notification body of {} bytes exceeds the limit of {MAX_NOTIFICATION_BODY_BYTES}",
                data.body.len()
            ));
        }
        let gateway = self
            .gateways
            .get(&data.channel)
            .ok_or_else(|| format!("channel {} is not enabled", data.channel))?;
        let headers: Headers = data
            .headers
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let received = d
            .properties
            .timestamp()
            .and_then(|ts| Utc.timestamp_opt(ts as i64, 0).single())
            .filter(|ts| *ts <= now)
            .unwrap_or(now);
        let notification = gateway
            .verify_notification(&headers, data.body.as_bytes(), received)
            .map_err(|e| format!("verification failed: {e}"))?;
        Ok(Verified {
            request_id: env.request_id.as_str().to_string(),
            digest: env.digest,
            channel: data.channel,
            notification,
        })
    }
}

#[async_trait]
impl BatchProcessor for NotificationProcessor {
    /// Verified in `process`, against the clock of the attempt; a
    /// notification names no order until it is verified, so batches wait
    /// for each other.
    type Parsed = ();

    fn parse(&self, _batch: &[Delivery]) -> ((), Option<HashSet<String>>) {
        ((), None)
    }

    async fn process(&self, batch: &[Delivery], _: &()) -> Result<BatchResult, ProcessError> {
        let now = Utc::now();
        let checked: Vec<Result<Verified, String>> =
            batch.iter().map(|d| self.verify(d, now)).collect();
        let mut tx = self.pool.begin().await.map_err(transient)?;
        apply_all(&mut tx, checked.iter().flatten())
            .await
            .map_err(transient)?;
        tx.commit().await.map_err(transient)?;
        let dead_letters: Vec<(usize, String)> = checked
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().err().map(|why| (i, why.clone())))
            .collect();
        for r in &checked {
            let outcome = if r.is_ok() { "applied" } else { "rejected" };
            metrics::counter!("payrecon_messages_total", "queue" => "notifications", "type" => NOTIFICATION_TYPE, "outcome" => outcome).increment(1);
        }
        // Few and far between: always worth a look at the runner's queue.
        Ok(BatchResult {
            dead_letters,
            scheduled_work: true,
        })
    }
}

/// Claims the batch's notifications in the inbox and confirms its plain
/// payments together (a storm of notifications is mostly those); the rest
/// follow one by one, in the batch's order, seeing what those did.
async fn apply_all(
    conn: &mut PgConnection,
    verified: impl Iterator<Item = &Verified>,
) -> Result<(), StoreError> {
    let verified: Vec<&Verified> = verified.collect();
    let claims: Vec<(&str, &str, &[u8])> = verified
        .iter()
        .map(|v| {
            (
                v.request_id.as_str(),
                NOTIFICATION_TYPE,
                v.digest.as_slice(),
            )
        })
        .collect();
    let new: Vec<&Verified> = inbox::claim_many(conn, &claims)
        .await?
        .into_iter()
        .zip(&verified)
        .filter(|(claim, _)| *claim == inbox::Claim::New)
        .map(|(_, v)| *v)
        .collect();
    let payments: Vec<Option<GatewayPayment>> = new.iter().map(|v| gateway_payment(v)).collect();
    let batch: Vec<(&GatewayPayment, Option<&str>)> = new
        .iter()
        .zip(&payments)
        .filter_map(|(v, p)| p.as_ref().map(|p| (p, Some(v.request_id.as_str()))))
        .collect();
    // One flag per payment, in order: consumed only where there is a payment.
    let mut confirmed = confirm_many(conn, &batch, PaidSource::Notification)
        .await?
        .into_iter();
    for (v, payment) in new.into_iter().zip(&payments) {
        if let Some(p) = payment {
            if confirmed.next() == Some(true) {
                tracing::info!(out_trade_no = %p.out_trade_no, request_id = %v.request_id, "payment notification confirmed");
                continue;
            }
        }
        let span =
            tracing::info_span!("notification", request_id = %v.request_id, channel = %v.channel);
        apply_claimed(conn, v, payment.as_ref())
            .instrument(span)
            .await?;
    }
    Ok(())
}

fn gateway_payment(v: &Verified) -> Option<GatewayPayment> {
    match &v.notification {
        Notification::Payment {
            out_trade_no,
            transaction_id,
            amount,
            paid_at,
        } => Some(GatewayPayment {
            channel: v.channel,
            out_trade_no: out_trade_no.clone(),
            transaction_id: transaction_id.clone(),
            amount: *amount,
            paid_at: *paid_at,
        }),
        _ => None,
    }
}

/// One notification already claimed in the inbox (`payment`: its payment,
/// when it is one).
async fn apply_claimed(
    conn: &mut PgConnection,
    v: &Verified,
    payment: Option<&GatewayPayment>,
) -> Result<(), StoreError> {
    let rid = Some(v.request_id.as_str());
    if let Some(payment) = payment {
        let outcome = confirm_payment(conn, payment, PaidSource::Notification, rid).await?;
        tracing::info!(out_trade_no = %payment.out_trade_no, outcome = ?std::mem::discriminant(&outcome), "payment notification applied");
        return Ok(());
    }
    match &v.notification {
        // The caller passes a payment's `GatewayPayment`.
        Notification::Payment { .. } => {}
        Notification::Refund {
            out_refund_no,
            gateway_refund_id,
            state,
            ..
        } => {
            let outcome = match state {
                RefundState::Succeeded => RefundOutcome::Succeeded,
                RefundState::Failed(why) => RefundOutcome::Failed(why.clone()),
                RefundState::Processing | RefundState::NotFound => return Ok(()),
            };
            if !settle_by_out_refund_no(
                conn,
                out_refund_no,
                outcome,
                gateway_refund_id.as_deref(),
                rid,
            )
            .await?
            {
                tracing::warn!(out_refund_no = %out_refund_no, "refund notification for an unknown refund");
            }
        }
        Notification::Ignored(what) => tracing::info!(what = %what, "notification needs no action"),
    }
    Ok(())
}
