//! The one repair a run makes: a `status_mismatch` whose amounts agree is
//! asked of the gateway, and only a gateway that confirms the payment moves
//! the order to paid (through `store::payments::confirm_payment`, so the
//! same checks and the same `order.paid` event as any other confirmation).

use std::time::{Duration, Instant};

use chrono::Utc;

use super::{ReconContext, ReconError};
use crate::domain::recon::{Category, Discrepancy, ReconRun, Resolution};
use crate::gateway::{Gateway, GatewayError, PaymentStatus, TradeState};
use crate::store::payments::{self, ConfirmOutcome, GatewayPayment, PaidSource};
use crate::store::recon as store;
use crate::store::StoreError;

const HEARTBEAT: Duration = Duration::from_secs(10);

pub(super) async fn repair_status_mismatches(
    ctx: &ReconContext,
    run: &ReconRun,
    gateway: Option<&dyn Gateway>,
    discrepancies: &mut [Discrepancy],
) -> Result<(), ReconError> {
    let mut last_beat = Instant::now();
    for d in discrepancies.iter_mut() {
        // Many slow gateway queries must not let the run's lease lapse.
        if last_beat.elapsed() >= HEARTBEAT {
            let mut conn = ctx.pool.acquire().await?;
            store::heartbeat(&mut conn, run.run_id, Utc::now()).await?;
            last_beat = Instant::now();
        }
        if d.category != Category::StatusMismatch
            || d.local_amount.is_none()
            || d.local_amount != d.gateway_amount
        {
            continue;
        }
        let Some(gw) = gateway else {
            tracing::warn!(run.id = %run.run_id, out_trade_no = %d.out_trade_no,
                "no gateway to confirm a status_mismatch; left open");
            continue;
        };
        let status = match query(gw, &d.out_trade_no).await {
            Ok(s) => s,
            Err(e) => {
                // Unconfirmed stays open: the next run (or the timeout job) asks again.
                tracing::warn!(run.id = %run.run_id, out_trade_no = %d.out_trade_no, error = %e,
                    "gateway query failed; status_mismatch left open");
                continue;
            }
        };
        if status.state != TradeState::Paid {
            tracing::warn!(run.id = %run.run_id, out_trade_no = %d.out_trade_no, state = ?status.state,
                "the bill says paid but the gateway does not; left open");
            continue;
        }
        let (Some(amount), Some(transaction_id)) = (
            status.amount.or(d.gateway_amount),
            status
                .transaction_id
                .clone()
                .or_else(|| d.gateway_transaction_id.clone()),
        ) else {
            continue;
        };
        let payment = GatewayPayment {
            channel: run.channel,
            out_trade_no: d.out_trade_no.clone(),
            transaction_id,
            amount,
            paid_at: status.paid_at.unwrap_or_else(Utc::now),
        };
        let mut tx = ctx.pool.begin().await.map_err(StoreError::from)?;
        let outcome =
            payments::confirm_payment(&mut tx, &payment, PaidSource::Reconciliation, None).await?;
        tx.commit().await.map_err(StoreError::from)?;
        match outcome {
            ConfirmOutcome::Confirmed(_) | ConfirmOutcome::AlreadyPaid(_) => {
                tracing::info!(run.id = %run.run_id, out_trade_no = %d.out_trade_no,
                    "status_mismatch repaired: the gateway confirmed the payment");
                d.resolution = Resolution::AutoRepaired;
            }
            ConfirmOutcome::Anomaly(kind) => {
                tracing::warn!(run.id = %run.run_id, out_trade_no = %d.out_trade_no, kind = kind.as_str(),
                    "status_mismatch not repaired");
            }
        }
    }
    Ok(())
}

/// A query is read-only, so retrying it is always safe.
async fn query(gw: &dyn Gateway, out_trade_no: &str) -> Result<PaymentStatus, GatewayError> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match gw.query(out_trade_no).await {
            Err(e) if e.is_retryable() && attempt < 4 => {
                tokio::time::sleep(delay).await;
                delay *= 4;
                attempt += 1;
            }
            other => return other,
        }
    }
}
