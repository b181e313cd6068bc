//! `payment.request` → the gateway's prepay. Every attempt uses the order's
//! `out_trade_no`, which the gateways treat idempotently, and every retry
//! first asks the gateway what happened, so a timed-out prepay that did
//! succeed is neither doubled nor lost.

use serde_json::json;

use super::close::confirm_from_query;
use super::{Payments, Step};
use crate::domain::{Order, OrderStatus, PaymentState};
use crate::gateway::{GatewayError, PrepayRequest, TradeState};
use crate::messaging::contracts::Event;
use crate::store::tasks::{self, Task};
use crate::store::{orders, outbox, StoreError};

pub(super) async fn attempt(p: &Payments, task: &Task) -> Result<Step, StoreError> {
    let Some(order_id) = task.order_id else {
        return Ok(Step::Failed("prepay task without order".into()));
    };
    let order = {
        let mut conn = p.pool.acquire().await?;
        orders::get(&mut conn, order_id).await?
    };
    let Some(order) = order.filter(|o| o.status == OrderStatus::PendingPayment) else {
        return Ok(Step::Done); // paid, cancelled or gone meanwhile: nothing to prepare
    };
    let Some(gateway) = p.gateway(order.payment_method) else {
        return fail(
            p,
            &order,
            task,
            "CHANNEL_DISABLED",
            "the channel is not enabled",
        )
        .await;
    };
    if task.attempt > 0 {
        // Settle what the last attempt left unknown before doing anything else.
        match gateway.query(&order.out_trade_no()).await {
            Ok(status) if status.state == TradeState::Paid => {
                return confirm_from_query(p, &order, &status, task).await;
            }
            Ok(status) if status.state == TradeState::Closed => {
                return fail(
                    p,
                    &order,
                    task,
                    "ORDER_CLOSED",
                    "the payment was closed at the gateway",
                )
                .await;
            }
            Ok(_) => {} // not paid or not there: preparing again is safe
            Err(e) if e.is_retryable() && !p.settling_exhausted(task) => {
                return Ok(Step::Retry(format!("query: {e}")))
            }
            Err(e) => tracing::warn!(error = %e, "query before re-prepay failed; preparing anyway"),
        }
        // Out of attempts, and the query (known) says nothing was paid:
        // only now is the payment failed.
        if p.attempts_exhausted(task) {
            let message = format!("no answer to prepay in {} attempts", task.attempt);
            return fail(p, &order, task, "GATEWAY_UNAVAILABLE", &message).await;
        }
    }
    let request = PrepayRequest {
        out_trade_no: order.out_trade_no(),
        amount: order.total_amount,
        description: format!("Order {}", order.order_id),
        notify_url: p.notify_url(order.payment_method),
        expires_at: order.expires_at,
    };
    match gateway.prepay(&request).await {
        Ok(prepared) => {
            let mut tx = p.pool.begin().await?;
            if let Some(mut current) = orders::get_for_update(&mut tx, order_id).await? {
                if current.status == OrderStatus::PendingPayment {
                    current.payment_state = PaymentState::Prepared;
                    orders::update(&mut tx, &current, OrderStatus::PendingPayment).await?;
                }
                let event = Event::for_order(
                    "payment.prepared",
                    &current,
                    task.request_id.as_deref(),
                    json!({ "prepay": prepared.prepay }),
                );
                outbox::enqueue(&mut tx, &event).await?;
            }
            // Done in the event's own transaction: a daemon killed between
            // the two would otherwise run the task again after its lease and
            // emit a second payment.prepared (found by the kill -9 test).
            tasks::finish(&mut tx, task.id, None).await?;
            tx.commit().await?;
            Ok(Step::Recorded)
        }
        // An unknown outcome is retried even after the last attempt: the next
        // run queries first and decides from the answer (docs/contract.md §5).
        Err(e) if e.is_unknown_outcome() || (e.is_retryable() && !p.is_last_attempt(task)) => {
            Ok(Step::Retry(e.to_string()))
        }
        Err(e) => {
            let (code, message) = error_parts(&e);
            fail(p, &order, task, &code, &message).await
        }
    }
}

fn error_parts(e: &GatewayError) -> (String, String) {
    match e {
        GatewayError::Business { code, message } => (code.clone(), message.clone()),
        other => (other.kind().to_uppercase(), other.to_string()),
    }
}

/// `payment.failed`: the order keeps waiting (a new payment.request may try
/// again, the timeout job cancels it otherwise).
async fn fail(
    p: &Payments,
    order: &Order,
    task: &Task,
    code: &str,
    message: &str,
) -> Result<Step, StoreError> {
    let mut tx = p.pool.begin().await?;
    let Some(mut current) = orders::get_for_update(&mut tx, order.order_id).await? else {
        return Ok(Step::Done);
    };
    if current.status == OrderStatus::PendingPayment {
        current.payment_state = PaymentState::Failed;
        orders::update(&mut tx, &current, OrderStatus::PendingPayment).await?;
    }
    let data = json!({ "error": { "code": code, "message": message } });
    outbox::enqueue(
        &mut tx,
        &Event::for_order("payment.failed", &current, task.request_id.as_deref(), data),
    )
    .await?;
    // As for payment.prepared: the event and the task's end commit together.
    tasks::finish(&mut tx, task.id, None).await?;
    tx.commit().await?;
    Ok(Step::Recorded)
}
