//! `order.cancel` of an order whose payment was started: close it at the
//! gateway first. Only a confirmed close cancels the order; a gateway that
//! says "already paid" makes the order paid instead.

use chrono::Utc;
use serde_json::json;

use super::{Payments, Step};
use crate::domain::{OrderEvent, OrderStatus};
use crate::gateway::{CloseOutcome, PaymentStatus};
use crate::messaging::contracts::Event;
use crate::store::payments::{confirm_payment, GatewayPayment, PaidSource};
use crate::store::tasks::{self, Task, TaskKind};
use crate::store::{orders, outbox, StoreError};

pub(super) async fn attempt(p: &Payments, task: &Task) -> Result<Step, StoreError> {
    let Some(order_id) = task.order_id else {
        return Ok(Step::Failed("close task without order".into()));
    };
    let order = {
        let mut conn = p.pool.acquire().await?;
        // A prepay still in flight could create the payment after our close.
        if tasks::has_pending(&mut conn, order_id, TaskKind::Prepay, task.id).await? {
            return Ok(Step::Postpone(std::time::Duration::from_millis(500)));
        }
        orders::get(&mut conn, order_id).await?
    };
    let Some(order) = order.filter(|o| o.status == OrderStatus::PendingPayment) else {
        return Ok(Step::Done);
    };
    let Some(gateway) = p.gateway(order.payment_method) else {
        return Ok(Step::Failed("the channel is not enabled".into()));
    };
    let reason = task
        .payload
        .get("reason")
        .and_then(|v| v.as_str())
        .unwrap_or("cancelled")
        .to_string();
    match gateway.close(&order.out_trade_no()).await {
        Ok(CloseOutcome::Closed) => {
            cancel_order(p, order_id, &reason, task.request_id.as_deref()).await?;
            Ok(Step::Done)
        }
        Ok(CloseOutcome::AlreadyPaid(status)) => confirm_from_query(p, &order, &status, task).await,
        Err(e) if e.is_retryable() && !p.is_last_attempt(task) => Ok(Step::Retry(e.to_string())),
        // Not cancelled blind: the order stays pending and the timeout job retries later.
        Err(e) => Ok(Step::Failed(e.to_string())),
    }
}

/// A payment the gateway reported as paid in a query or close answer. None
/// when the answer lacks the amount or the transaction id: the amount is what
/// confirmation checks against the total, so it is never assumed.
pub fn paid_payment(
    channel: crate::domain::Channel,
    out_trade_no: &str,
    status: &PaymentStatus,
    now: chrono::DateTime<Utc>,
) -> Option<GatewayPayment> {
    Some(GatewayPayment {
        channel,
        out_trade_no: out_trade_no.to_string(),
        transaction_id: status.transaction_id.clone()?,
        amount: status.amount?,
        paid_at: status.paid_at.unwrap_or(now),
    })
}

/// The gateway said the order is paid: confirm it (the same checks as a
/// notification: amount equal to the total, order still pending).
pub(crate) async fn confirm_from_query(
    p: &Payments,
    order: &crate::domain::Order,
    status: &PaymentStatus,
    task: &Task,
) -> Result<Step, StoreError> {
    let Some(payment) = paid_payment(
        order.payment_method,
        &order.out_trade_no(),
        status,
        Utc::now(),
    ) else {
        return Ok(Step::Retry(
            "the gateway reports it paid without amount or transaction id".into(),
        ));
    };
    let mut tx = p.pool.begin().await?;
    confirm_payment(
        &mut tx,
        &payment,
        PaidSource::Query,
        task.request_id.as_deref(),
    )
    .await?;
    tx.commit().await?;
    Ok(Step::Done)
}

async fn cancel_order(
    p: &Payments,
    order_id: crate::domain::OrderId,
    reason: &str,
    rid: Option<&str>,
) -> Result<(), StoreError> {
    let mut tx = p.pool.begin().await?;
    if let Some(mut order) = orders::get_for_update(&mut tx, order_id).await? {
        if order.cancel(reason, Utc::now()).is_ok() {
            orders::update(&mut tx, &order, OrderStatus::PendingPayment).await?;
            outbox::enqueue(
                &mut tx,
                &Event::for_order(
                    OrderEvent::Cancelled.event_type(),
                    &order,
                    rid,
                    json!({ "reason": reason }),
                ),
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}
