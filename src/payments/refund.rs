//! `refund.request` → the gateway's refund, with the refund's own
//! `out_refund_no` on every attempt. The result comes from the response, a
//! refund notification or a refund query, whichever is first; settling is
//! idempotent, so the others find the refund final and do nothing.

use serde_json::json;
use sqlx::PgConnection;

use super::{Payments, Step};
use crate::domain::{OrderEvent, OrderStatus, RefundId};
use crate::gateway::{RefundRequest, RefundState, RefundStatus as GatewayRefund};
use crate::messaging::contracts::Event;
use crate::store::refunds::{self, RefundStatus};
use crate::store::tasks::Task;
use crate::store::{orders, outbox, StoreError};

pub(super) async fn attempt(p: &Payments, task: &Task) -> Result<Step, StoreError> {
    let Some(refund_id) = task.refund_id else {
        return Ok(Step::Failed("refund task without refund".into()));
    };
    let (refund, order) = {
        let mut conn = p.pool.acquire().await?;
        let refund = refunds::get_for_update(&mut conn, refund_id).await?;
        let order = match &refund {
            Some(r) => orders::get(&mut conn, r.order_id).await?,
            None => None,
        };
        (refund, order)
    };
    let (Some(refund), Some(order)) = (refund, order) else {
        return Ok(Step::Failed("refund or order not found".into()));
    };
    if refund.status.is_final() {
        return Ok(Step::Done);
    }
    let Some(gateway) = p.gateway(order.payment_method) else {
        return Ok(Step::Failed("the channel is not enabled".into()));
    };
    let otn = order.out_trade_no();
    let orn = refund.out_refund_no();
    // After an attempt with an unknown outcome, ask before asking again.
    if task.attempt > 0 {
        match gateway.query_refund(&otn, &orn).await {
            Ok(status) if status.state != RefundState::NotFound => {
                return apply(p, task, refund_id, status).await
            }
            Ok(_) => {}
            Err(e) if e.is_retryable() && !p.settling_exhausted(task) => {
                return Ok(Step::Retry(format!("refund query: {e}")))
            }
            Err(e) => return Ok(Step::Failed(format!("refund query: {e}"))),
        }
        // Out of attempts and the gateway (asked, and answering) has no such
        // refund: it failed, and no money moved.
        if p.attempts_exhausted(task) {
            let mut tx = p.pool.begin().await?;
            let why = format!("no answer to refund in {} attempts", task.attempt);
            settle_refund(
                &mut tx,
                refund_id,
                RefundOutcome::Failed(why),
                None,
                task.request_id.as_deref(),
            )
            .await?;
            tx.commit().await?;
            return Ok(Step::Done);
        }
    }
    let request = RefundRequest {
        out_trade_no: otn,
        out_refund_no: orn,
        amount: refund.amount,
        total: order.total_amount,
        reason: refund.reason.clone(),
        notify_url: p.notify_url(order.payment_method),
    };
    match gateway.refund(&request).await {
        Ok(status) => apply(p, task, refund_id, status).await,
        // Money may have moved: the next run asks the gateway before anything
        // else, even after the last attempt.
        Err(e) if e.is_unknown_outcome() || (e.is_retryable() && !p.is_last_attempt(task)) => {
            mark_processing(p, refund_id).await?;
            Ok(Step::Retry(e.to_string()))
        }
        Err(e) => {
            let mut tx = p.pool.begin().await?;
            settle_refund(
                &mut tx,
                refund_id,
                RefundOutcome::Failed(e.to_string()),
                None,
                task.request_id.as_deref(),
            )
            .await?;
            tx.commit().await?;
            Ok(Step::Done)
        }
    }
}

async fn mark_processing(p: &Payments, id: RefundId) -> Result<(), StoreError> {
    let mut conn = p.pool.acquire().await?;
    refunds::mark_processing(&mut conn, id).await
}

async fn apply(
    p: &Payments,
    task: &Task,
    id: RefundId,
    status: GatewayRefund,
) -> Result<Step, StoreError> {
    let outcome = match status.state {
        RefundState::Succeeded => RefundOutcome::Succeeded,
        RefundState::Failed(why) => RefundOutcome::Failed(why),
        RefundState::Processing | RefundState::NotFound => {
            mark_processing(p, id).await?;
            // Poll until final; a refund notification may settle it first.
            return Ok(if p.settling_exhausted(task) {
                Step::Failed("refund still processing".into())
            } else {
                Step::Retry("processing".into())
            });
        }
    };
    let mut tx = p.pool.begin().await?;
    settle_refund(
        &mut tx,
        id,
        outcome,
        status.gateway_refund_id.as_deref(),
        task.request_id.as_deref(),
    )
    .await?;
    tx.commit().await?;
    Ok(Step::Done)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    Succeeded,
    Failed(String),
}

/// Makes a refund final (once): on success the order's refunded amount grows
/// and it becomes `refunded` when that reaches what was paid.
pub async fn settle_refund(
    conn: &mut PgConnection,
    id: RefundId,
    outcome: RefundOutcome,
    gateway_refund_id: Option<&str>,
    request_id: Option<&str>,
) -> Result<(), StoreError> {
    let Some(mut refund) = refunds::get_for_update(conn, id).await? else {
        return Ok(());
    };
    if refund.status.is_final() {
        return Ok(());
    }
    let Some(mut order) = orders::get_for_update(conn, refund.order_id).await? else {
        return Ok(());
    };
    if let Some(gid) = gateway_refund_id {
        refund.gateway_refund_id = Some(gid.to_string());
    }
    let rid = request_id
        .or(refund.request_id.as_deref())
        .map(str::to_string);
    let (status, failure) = match &outcome {
        RefundOutcome::Succeeded => (RefundStatus::Succeeded, None),
        RefundOutcome::Failed(why) => (RefundStatus::Failed, Some(why.as_str())),
    };
    refunds::set_status(
        conn,
        id,
        status,
        refund.gateway_refund_id.as_deref(),
        failure,
    )
    .await?;
    let refund_json = json!({
        "refund_id": refund.refund_id,
        "amount": refund.amount.fen(),
        "status": status.as_str(),
        "gateway_refund_id": refund.gateway_refund_id,
    });
    if outcome != RefundOutcome::Succeeded {
        let extra = json!({ "refund": refund_json, "error": failure });
        return outbox::enqueue(
            conn,
            &Event::for_order("refund.failed", &order, rid.as_deref(), extra),
        )
        .await;
    }
    let expected: OrderStatus = order.status;
    let fully = order
        .record_refund(refund.amount)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    orders::update(conn, &order, expected).await?;
    outbox::enqueue(
        conn,
        &Event::for_order(
            "refund.succeeded",
            &order,
            rid.as_deref(),
            json!({ "refund": refund_json }),
        ),
    )
    .await?;
    if fully {
        outbox::enqueue(
            conn,
            &Event::for_order(
                OrderEvent::FullyRefunded.event_type(),
                &order,
                rid.as_deref(),
                serde_json::Value::Null,
            ),
        )
        .await?;
    }
    Ok(())
}

/// Settles by `out_refund_no` (refund notifications name it).
pub async fn settle_by_out_refund_no(
    conn: &mut PgConnection,
    out_refund_no: &str,
    outcome: RefundOutcome,
    gateway_refund_id: Option<&str>,
    request_id: Option<&str>,
) -> Result<bool, StoreError> {
    let Some(refund) = refunds::get_by_out_refund_no_for_update(conn, out_refund_no).await? else {
        return Ok(false);
    };
    settle_refund(
        conn,
        refund.refund_id,
        outcome,
        gateway_refund_id,
        request_id,
    )
    .await?;
    Ok(true)
}
