//! Applies one parsed request inside the caller's transaction: inbox claim,
//! domain transition, store writes, outbox events. No network call happens
//! here; gateway work is scheduled as a durable task (store::tasks) that the
//! payments runner executes after the commit.

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};
use sqlx::PgConnection;

use super::contracts::Event;
use super::requests::{Envelope, Request};
use crate::domain::{
    Money, Order, OrderEvent, OrderId, OrderStatus, PaymentState, RefundError, RefundId,
};
use crate::store::refunds::{self, Refund, RefundStatus};
use crate::store::tasks::{self, NewTask, TaskKind};
use crate::store::{inbox, orders, outbox, StoreError};

#[derive(Debug, Clone)]
pub struct HandlerConfig {
    pub pay_timeout: Duration,
}

/// A business rule the request broke (acknowledged, `request.rejected`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub message: String,
}

fn reject(reason: &'static str, message: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    Rejected(&'static str),
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Rejected(_) => "rejected",
        }
    }
}

pub async fn apply(
    conn: &mut PgConnection,
    cfg: &HandlerConfig,
    env: &Envelope<Request>,
    now: DateTime<Utc>,
) -> Result<Outcome, StoreError> {
    let rid = env.request_id.as_str();
    match inbox::claim(conn, rid, &env.kind, &env.digest).await? {
        inbox::Claim::Duplicate => return Ok(Outcome::Duplicate),
        inbox::Claim::Reused => {
            let r = reject(
                "request_id_reused",
                format!("request_id {rid} was already used for a different request"),
            );
            // Not recorded in the inbox: the row belongs to the original request.
            emit_rejection(conn, env, &r).await?;
            return Ok(Outcome::Rejected(r.reason));
        }
        inbox::Claim::New => {}
    }
    match dispatch(conn, cfg, env, now).await? {
        Ok(()) => Ok(Outcome::Applied),
        Err(r) => {
            inbox::set_outcome(conn, rid, r.reason).await?;
            emit_rejection(conn, env, &r).await?;
            Ok(Outcome::Rejected(r.reason))
        }
    }
}

async fn emit_rejection(
    conn: &mut PgConnection,
    env: &Envelope<Request>,
    r: &Rejection,
) -> Result<(), StoreError> {
    let event = Event::new(
        "request.rejected",
        Some(env.request_id.as_str()),
        rejection_data(&env.kind, r.reason, &r.message),
    );
    outbox::enqueue(conn, &event).await
}

pub fn rejection_data(request_type: &str, reason: &str, message: &str) -> Value {
    json!({ "request_type": request_type, "reason": reason, "message": message })
}

type Handled = Result<Result<(), Rejection>, StoreError>;

async fn dispatch(
    conn: &mut PgConnection,
    cfg: &HandlerConfig,
    env: &Envelope<Request>,
    now: DateTime<Utc>,
) -> Handled {
    let rid = Some(env.request_id.as_str());
    match &env.body {
        Request::PlaceOrder(place) => {
            let new = place.clone().into_new_order(cfg.pay_timeout);
            let order = match Order::place(new, now) {
                Ok(o) => o,
                Err(e) => return Ok(Err(reject("invalid_request", e.to_string()))),
            };
            if !orders::insert(conn, &order).await? {
                return Ok(Err(reject(
                    "order_exists",
                    format!("order {} already exists", order.order_id),
                )));
            }
            outbox::enqueue(
                conn,
                &Event::for_order("order.created", &order, rid, Value::Null),
            )
            .await?;
            Ok(Ok(()))
        }
        Request::PaymentRequest {
            order_id,
            amount,
            payment_method,
        } => {
            let mut order = match load(conn, *order_id).await? {
                Ok(o) => o,
                Err(r) => return Ok(Err(r)),
            };
            if order.status != OrderStatus::PendingPayment {
                return Ok(Err(reject(
                    "invalid_state",
                    format!("order is {}", order.status),
                )));
            }
            if *amount != order.total_amount {
                return Ok(Err(reject(
                    "amount_mismatch",
                    format!(
                        "amount {} is not the total {}",
                        amount.fen(),
                        order.total_amount.fen()
                    ),
                )));
            }
            if *payment_method != order.payment_method {
                return Ok(Err(reject(
                    "payment_method_mismatch",
                    format!("order is paid with {}", order.payment_method),
                )));
            }
            let expected = order.status;
            order.payment_state = PaymentState::Preparing;
            orders::update(conn, &order, expected).await?;
            let task = NewTask {
                order_id: Some(*order_id),
                request_id: rid.map(str::to_string),
                ..Default::default()
            };
            tasks::schedule(conn, TaskKind::Prepay, task, now).await?;
            Ok(Ok(()))
        }
        Request::CancelOrder { order_id, reason } => {
            cancel(conn, *order_id, reason, rid, now).await
        }
        Request::ShipOrder {
            order_id,
            carrier,
            tracking_no,
        } => {
            let carrier = carrier.clone();
            let tracking_no = tracking_no.clone();
            transition(
                conn,
                *order_id,
                rid,
                OrderEvent::Shipped,
                Value::Null,
                |o| o.ship(carrier, tracking_no, now),
            )
            .await
        }
        Request::ConfirmReceipt { order_id } => {
            transition(
                conn,
                *order_id,
                rid,
                OrderEvent::ReceiptConfirmed,
                Value::Null,
                |o| o.confirm_receipt(now),
            )
            .await
        }
        Request::Refund {
            order_id,
            amount,
            reason,
            refund_id,
        } => refund(conn, *order_id, *amount, reason, *refund_id, rid, now).await,
        Request::ReconRun { channel, date } => {
            let task = NewTask {
                request_id: rid.map(str::to_string),
                payload: json!({ "channel": channel.as_str(), "date": date.to_string() }),
                ..Default::default()
            };
            tasks::schedule(conn, TaskKind::Recon, task, now).await?;
            Ok(Ok(()))
        }
    }
}

async fn load(
    conn: &mut PgConnection,
    id: OrderId,
) -> Result<Result<Order, Rejection>, StoreError> {
    Ok(orders::get_for_update(conn, id)
        .await?
        .ok_or_else(|| reject("order_not_found", format!("no order {id}"))))
}

/// A plain state-machine move that emits one event.
async fn transition(
    conn: &mut PgConnection,
    id: OrderId,
    rid: Option<&str>,
    event: OrderEvent,
    extra: Value,
    step: impl FnOnce(&mut Order) -> Result<(), crate::domain::InvalidTransition>,
) -> Handled {
    let mut order = match load(conn, id).await? {
        Ok(o) => o,
        Err(r) => return Ok(Err(r)),
    };
    let expected = order.status;
    if let Err(e) = step(&mut order) {
        return Ok(Err(reject("invalid_state", e.to_string())));
    }
    orders::update(conn, &order, expected).await?;
    outbox::enqueue(
        conn,
        &Event::for_order(event.event_type(), &order, rid, extra),
    )
    .await?;
    Ok(Ok(()))
}

async fn cancel(
    conn: &mut PgConnection,
    id: OrderId,
    reason: &str,
    rid: Option<&str>,
    now: DateTime<Utc>,
) -> Handled {
    let order = match load(conn, id).await? {
        Ok(o) => o,
        Err(r) => return Ok(Err(r)),
    };
    if order.status != OrderStatus::PendingPayment {
        return Ok(Err(reject(
            "invalid_state",
            format!("order is {}", order.status),
        )));
    }
    if order.payment_state.is_started() {
        // The gateway must close the payment first; the payments runner
        // cancels (or marks paid) when it knows the answer.
        let task = NewTask {
            order_id: Some(id),
            request_id: rid.map(str::to_string),
            payload: json!({ "reason": reason }),
            ..Default::default()
        };
        tasks::schedule(conn, TaskKind::Close, task, now).await?;
        return Ok(Ok(()));
    }
    let reason = reason.to_string();
    transition(
        conn,
        id,
        rid,
        OrderEvent::Cancelled,
        json!({ "reason": reason }),
        |o| o.cancel(&reason, now),
    )
    .await
}

async fn refund(
    conn: &mut PgConnection,
    order_id: OrderId,
    amount: Money,
    reason: &str,
    refund_id: Option<RefundId>,
    rid: Option<&str>,
    now: DateTime<Utc>,
) -> Handled {
    let order = match load(conn, order_id).await? {
        Ok(o) => o,
        Err(r) => return Ok(Err(r)),
    };
    let reserved = refunds::in_flight_amount(conn, order_id).await?;
    match order.check_refund(amount, reserved) {
        Ok(()) => {}
        Err(RefundError::State(e)) => return Ok(Err(reject("invalid_state", e.to_string()))),
        Err(e @ RefundError::ExceedsPaid { .. }) => {
            return Ok(Err(reject("refund_exceeds_paid", e.to_string())))
        }
    }
    let refund = Refund {
        refund_id: refund_id.unwrap_or_else(RefundId::new_random),
        order_id,
        amount,
        reason: reason.to_string(),
        status: RefundStatus::Pending,
        gateway_refund_id: None,
        request_id: rid.map(str::to_string),
        created_at: now,
    };
    if !refunds::insert(conn, &refund).await? {
        return Ok(Err(reject(
            "invalid_state",
            format!("refund {} already exists", refund.refund_id),
        )));
    }
    let task = NewTask {
        order_id: Some(order_id),
        refund_id: Some(refund.refund_id),
        request_id: rid.map(str::to_string),
        ..Default::default()
    };
    tasks::schedule(conn, TaskKind::Refund, task, now).await?;
    Ok(Ok(()))
}
