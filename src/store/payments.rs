//! The one way a payment is confirmed, whoever learned of it (a
//! notification, a gateway query, reconciliation). It checks what the
//! contract demands before money state moves (amount equals the total, the
//! order is still waiting for payment), and records an anomaly otherwise.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgConnection;

use super::{orders, outbox, StoreError};
use crate::domain::{
    Channel, Money, Order, OrderEvent, OrderId, OrderStatus, PaymentAnomaly, PaymentVerdict,
};
use crate::messaging::contracts::Event;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaidSource {
    Notification,
    Query,
    Reconciliation,
}

impl PaidSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PaidSource::Notification => "notification",
            PaidSource::Query => "query",
            PaidSource::Reconciliation => "reconciliation",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnomalyKind {
    AmountMismatch,
    PaidAfterCancel,
    UnknownOrder,
}

impl From<PaymentAnomaly> for AnomalyKind {
    fn from(a: PaymentAnomaly) -> Self {
        match a {
            PaymentAnomaly::AmountMismatch => AnomalyKind::AmountMismatch,
            PaymentAnomaly::PaidAfterCancel => AnomalyKind::PaidAfterCancel,
        }
    }
}

impl AnomalyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::AmountMismatch => "amount_mismatch",
            AnomalyKind::PaidAfterCancel => "paid_after_cancel",
            AnomalyKind::UnknownOrder => "unknown_order",
        }
    }
}

/// What the gateway says was paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayPayment {
    pub channel: Channel,
    pub out_trade_no: String,
    pub transaction_id: String,
    pub amount: Money,
    pub paid_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfirmOutcome {
    /// pending_payment → paid; `order.paid` enqueued.
    Confirmed(Order),
    /// Already paid (a replay, or learned twice): nothing changed.
    AlreadyPaid(Order),
    /// Not moved to paid; `payment.anomaly` enqueued unless this exact anomaly was already recorded.
    Anomaly(AnomalyKind),
}

pub async fn confirm_payment(
    conn: &mut PgConnection,
    payment: &GatewayPayment,
    source: PaidSource,
    request_id: Option<&str>,
) -> Result<ConfirmOutcome, StoreError> {
    let order = match OrderId::from_out_trade_no(&payment.out_trade_no) {
        Some(id) => orders::get_for_update(conn, id).await?,
        None => None,
    };
    let Some(mut order) = order.filter(|o| o.payment_method == payment.channel) else {
        record_anomaly(conn, AnomalyKind::UnknownOrder, payment, None, request_id).await?;
        return Ok(ConfirmOutcome::Anomaly(AnomalyKind::UnknownOrder));
    };
    let verdict = order
        .apply_gateway_payment(&payment.transaction_id, payment.amount, payment.paid_at)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    match verdict {
        PaymentVerdict::Confirmed => {
            orders::update(conn, &order, OrderStatus::PendingPayment).await?;
            let event = Event::for_order(
                OrderEvent::PaymentConfirmed.event_type(),
                &order,
                request_id,
                json!({ "source": source.as_str() }),
            );
            outbox::enqueue(conn, &event).await?;
            Ok(ConfirmOutcome::Confirmed(order))
        }
        PaymentVerdict::Anomaly(anomaly) => {
            let kind = AnomalyKind::from(anomaly);
            record_anomaly(conn, kind, payment, Some(&order), request_id).await?;
            Ok(ConfirmOutcome::Anomaly(kind))
        }
        PaymentVerdict::AlreadyPaid => {
            if order.gateway_transaction_id.as_deref() != Some(payment.transaction_id.as_str()) {
                tracing::warn!(order_id = %order.order_id, gateway_transaction_id = %payment.transaction_id,
                    "payment reported with another transaction id for an order already paid");
            }
            Ok(ConfirmOutcome::AlreadyPaid(order))
        }
    }
}

/// The common case of a batch of notifications in three statements rather
/// than three per payment: every payment the order's own rules confirm
/// (`Order::apply_gateway_payment`) is confirmed as `confirm_payment` would,
/// with one locking read, one update and one insert of the `order.paid`
/// events. Returns, per payment, whether it was confirmed here; the others
/// are for `confirm_payment`, after these: anomalies, replays, unknown
/// orders, and a second payment for an order of the batch (which must see
/// the first's effect).
pub async fn confirm_many(
    conn: &mut PgConnection,
    payments: &[(&GatewayPayment, Option<&str>)],
    source: PaidSource,
) -> Result<Vec<bool>, StoreError> {
    let ids: Vec<uuid::Uuid> = payments
        .iter()
        .filter_map(|(p, _)| OrderId::from_out_trade_no(&p.out_trade_no).map(|id| id.0))
        .collect();
    let mut locked: HashMap<uuid::Uuid, Order> = orders::get_many_for_update(conn, &ids)
        .await?
        .into_iter()
        .map(|o| (o.order_id.0, o))
        .collect();
    let mut confirmed = Vec::new();
    let mut events = Vec::new();
    let mut done = Vec::with_capacity(payments.len());
    for (p, request_id) in payments {
        let order = OrderId::from_out_trade_no(&p.out_trade_no)
            .and_then(|id| locked.remove(&id.0))
            .filter(|o| o.payment_method == p.channel);
        let Some(mut order) = order else {
            done.push(false);
            continue;
        };
        let verdict = order
            .apply_gateway_payment(&p.transaction_id, p.amount, p.paid_at)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let is_confirmed = verdict == PaymentVerdict::Confirmed;
        if is_confirmed {
            events.push(Event::for_order(
                OrderEvent::PaymentConfirmed.event_type(),
                &order,
                *request_id,
                json!({ "source": source.as_str() }),
            ));
            confirmed.push(order);
        }
        done.push(is_confirmed);
    }
    let paid: Vec<&Order> = confirmed.iter().collect();
    orders::update_paid_many(conn, &paid).await?;
    outbox::enqueue_many(conn, &events).await?;
    Ok(done)
}

/// Records the anomaly once per (channel, out_trade_no, kind, transaction):
/// a replayed notification finds the row and emits nothing.
async fn record_anomaly(
    conn: &mut PgConnection,
    kind: AnomalyKind,
    p: &GatewayPayment,
    order: Option<&Order>,
    request_id: Option<&str>,
) -> Result<(), StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO payment_anomalies (kind, channel, out_trade_no, order_id, gateway_amount, gateway_transaction_id) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(kind.as_str())
    .bind(p.channel.as_str())
    .bind(&p.out_trade_no)
    .bind(order.map(|o| o.order_id.0))
    .bind(p.amount.fen())
    .bind(&p.transaction_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(());
    }
    tracing::warn!(kind = kind.as_str(), out_trade_no = %p.out_trade_no, "payment anomaly");
    metrics::counter!("payrecon_payment_anomalies_total", "kind" => kind.as_str()).increment(1);
    let extra = json!({
        "kind": kind.as_str(),
        "channel": p.channel.as_str(),
        "out_trade_no": p.out_trade_no,
        "gateway_amount": p.amount.fen(),
        "gateway_transaction_id": p.transaction_id,
    });
    let event = match order {
        Some(o) => Event::for_order("payment.anomaly", o, request_id, extra),
        None => Event::new("payment.anomaly", request_id, extra),
    };
    outbox::enqueue(conn, &event).await
}
