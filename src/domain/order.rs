//! The order and its state machine. `OrderStatus::apply` is the only place
//! that decides which moves are legal; every mutating method on `Order` goes
//! through it, and the store writes with `WHERE status = <expected>` so a
//! concurrent change is a conflict rather than a lost update.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::{Channel, Money, MoneyError, OrderId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    PendingPayment,
    Paid,
    Shipped,
    Completed,
    Cancelled,
    Refunded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderEvent {
    PaymentConfirmed,
    Cancelled,
    Shipped,
    ReceiptConfirmed,
    FullyRefunded,
}

impl OrderEvent {
    /// The one event of docs/contract.md §4 that reports this move; whoever makes
    /// the move emits exactly this, once.
    pub fn event_type(self) -> &'static str {
        match self {
            OrderEvent::PaymentConfirmed => "order.paid",
            OrderEvent::Cancelled => "order.cancelled",
            OrderEvent::Shipped => "order.shipped",
            OrderEvent::ReceiptConfirmed => "order.completed",
            OrderEvent::FullyRefunded => "order.refunded",
        }
    }
}

/// What a gateway's word that the order was paid does to it (docs/contract.md §3):
/// decided here, with no I/O, for notifications, queries and
/// reconciliation alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentVerdict {
    /// pending_payment → paid; reported by `order.paid`.
    Confirmed,
    /// Paid already (a replay, or learned twice): nothing changes, nothing
    /// is emitted.
    AlreadyPaid,
    /// Not moved to paid; reported by `payment.anomaly` and recorded for
    /// the next reconciliation.
    Anomaly(PaymentAnomaly),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentAnomaly {
    /// The gateway's amount is not the order's total.
    AmountMismatch,
    /// The order was cancelled before the payment was learned of.
    PaidAfterCancel,
}

impl PaymentVerdict {
    /// The event this verdict is reported by, if any.
    pub fn event_type(self) -> Option<&'static str> {
        match self {
            PaymentVerdict::Confirmed => Some(OrderEvent::PaymentConfirmed.event_type()),
            PaymentVerdict::AlreadyPaid => None,
            PaymentVerdict::Anomaly(_) => Some("payment.anomaly"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an order in status {} cannot take {event:?}", from.as_str())]
pub struct InvalidTransition {
    pub from: OrderStatus,
    pub event: OrderEvent,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 6] = [
        OrderStatus::PendingPayment,
        OrderStatus::Paid,
        OrderStatus::Shipped,
        OrderStatus::Completed,
        OrderStatus::Cancelled,
        OrderStatus::Refunded,
    ];

    /// Which moves are legal. Exhaustive: a new status forces a decision here.
    pub fn apply(self, event: OrderEvent) -> Result<OrderStatus, InvalidTransition> {
        use {OrderEvent as E, OrderStatus as S};
        Ok(match (self, event) {
            (S::PendingPayment, E::PaymentConfirmed) => S::Paid,
            (S::PendingPayment, E::Cancelled) => S::Cancelled,
            (S::Paid, E::Shipped) => S::Shipped,
            (S::Shipped, E::ReceiptConfirmed) => S::Completed,
            (S::Paid | S::Shipped | S::Completed, E::FullyRefunded) => S::Refunded,
            (from, event) => return Err(InvalidTransition { from, event }),
        })
    }

    /// Money has been received for the order (it may since have been refunded).
    pub fn is_paid_or_later(self) -> bool {
        match self {
            OrderStatus::Paid
            | OrderStatus::Shipped
            | OrderStatus::Completed
            | OrderStatus::Refunded => true,
            OrderStatus::PendingPayment | OrderStatus::Cancelled => false,
        }
    }

    /// Statuses from which a refund may be requested (docs/contract.md §3.6).
    pub fn is_refundable(self) -> bool {
        matches!(
            self,
            OrderStatus::Paid | OrderStatus::Shipped | OrderStatus::Completed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::PendingPayment => "pending_payment",
            OrderStatus::Paid => "paid",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Completed => "completed",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Refunded => "refunded",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrderStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrderStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown order status {s:?}"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    pub product_id: String,
    pub quantity: u32,
    pub unit_price: Money,
}

/// Where the order's payment stands at the gateway, independent of the order
/// status: it decides whether a cancel must close a payment first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentState {
    /// No prepay was ever attempted: a cancel needs no gateway call.
    NotStarted,
    /// A prepay is being attempted (its outcome may be unknown).
    Preparing,
    Prepared,
    Failed,
}

impl PaymentState {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentState::NotStarted => "not_started",
            PaymentState::Preparing => "preparing",
            PaymentState::Prepared => "prepared",
            PaymentState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "not_started" => PaymentState::NotStarted,
            "preparing" => PaymentState::Preparing,
            "prepared" => PaymentState::Prepared,
            "failed" => PaymentState::Failed,
            _ => return None,
        })
    }

    /// A payment may exist at the gateway.
    pub fn is_started(self) -> bool {
        !matches!(self, PaymentState::NotStarted)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub order_id: OrderId,
    pub user_id: String,
    pub items: Vec<LineItem>,
    pub currency: String,
    pub total_amount: Money,
    pub payment_method: Channel,
    pub status: OrderStatus,
    pub payment_state: PaymentState,
    pub paid_amount: Money,
    pub refunded_amount: Money,
    pub gateway_transaction_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub shipped_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub cancel_reason: Option<String>,
    pub carrier: Option<String>,
    pub tracking_no: Option<String>,
}

/// What `order.place` asks for, already parsed.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub order_id: OrderId,
    pub user_id: String,
    pub items: Vec<LineItem>,
    pub payment_method: Channel,
    pub pay_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    #[error("total amount: {0}")]
    Amount(#[from] MoneyError),
    #[error("an order must total more than 0 fen")]
    ZeroTotal,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefundError {
    #[error(transparent)]
    State(#[from] InvalidTransition),
    #[error("refund of {requested} exceeds the {remaining} left to refund")]
    ExceedsPaid { requested: Money, remaining: Money },
}

impl Order {
    pub fn place(new: NewOrder, now: DateTime<Utc>) -> Result<Order, PlaceError> {
        let mut total = Money::ZERO;
        for item in &new.items {
            total = total.checked_add(item.unit_price.checked_mul(item.quantity)?)?;
        }
        if total.is_zero() {
            return Err(PlaceError::ZeroTotal);
        }
        Ok(Order {
            order_id: new.order_id,
            user_id: new.user_id,
            items: new.items,
            currency: "CNY".to_string(),
            total_amount: total,
            payment_method: new.payment_method,
            status: OrderStatus::PendingPayment,
            payment_state: PaymentState::NotStarted,
            paid_amount: Money::ZERO,
            refunded_amount: Money::ZERO,
            gateway_transaction_id: None,
            created_at: now,
            expires_at: now + new.pay_timeout,
            paid_at: None,
            shipped_at: None,
            completed_at: None,
            cancelled_at: None,
            cancel_reason: None,
            carrier: None,
            tracking_no: None,
        })
    }

    pub fn out_trade_no(&self) -> String {
        self.order_id.out_trade_no()
    }

    fn transition(&mut self, event: OrderEvent) -> Result<(), InvalidTransition> {
        self.status = self.status.apply(event)?;
        Ok(())
    }

    pub fn mark_paid(
        &mut self,
        transaction_id: &str,
        amount: Money,
        paid_at: DateTime<Utc>,
    ) -> Result<(), InvalidTransition> {
        self.transition(OrderEvent::PaymentConfirmed)?;
        self.paid_amount = amount;
        self.gateway_transaction_id = Some(transaction_id.to_string());
        self.paid_at = Some(paid_at);
        Ok(())
    }

    /// The gateway says `amount` was paid in `transaction_id`: moves the
    /// order to paid only when it waits for exactly that amount.
    pub fn apply_gateway_payment(
        &mut self,
        transaction_id: &str,
        amount: Money,
        paid_at: DateTime<Utc>,
    ) -> Result<PaymentVerdict, InvalidTransition> {
        Ok(match self.status {
            OrderStatus::PendingPayment if amount != self.total_amount => {
                PaymentVerdict::Anomaly(PaymentAnomaly::AmountMismatch)
            }
            OrderStatus::PendingPayment => {
                self.mark_paid(transaction_id, amount, paid_at)?;
                PaymentVerdict::Confirmed
            }
            OrderStatus::Cancelled => PaymentVerdict::Anomaly(PaymentAnomaly::PaidAfterCancel),
            OrderStatus::Paid
            | OrderStatus::Shipped
            | OrderStatus::Completed
            | OrderStatus::Refunded => PaymentVerdict::AlreadyPaid,
        })
    }

    pub fn cancel(&mut self, reason: &str, now: DateTime<Utc>) -> Result<(), InvalidTransition> {
        self.transition(OrderEvent::Cancelled)?;
        self.cancelled_at = Some(now);
        self.cancel_reason = Some(reason.to_string());
        Ok(())
    }

    pub fn ship(
        &mut self,
        carrier: Option<String>,
        tracking_no: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(), InvalidTransition> {
        self.transition(OrderEvent::Shipped)?;
        self.shipped_at = Some(now);
        self.carrier = carrier;
        self.tracking_no = tracking_no;
        Ok(())
    }

    pub fn confirm_receipt(&mut self, now: DateTime<Utc>) -> Result<(), InvalidTransition> {
        self.transition(OrderEvent::ReceiptConfirmed)?;
        self.completed_at = Some(now);
        Ok(())
    }

    /// What may still be refunded.
    pub fn refundable(&self) -> Money {
        self.paid_amount
            .checked_sub(self.refunded_amount)
            .unwrap_or(Money::ZERO)
    }

    /// Checks that a refund of `amount` may be requested now, counting refunds
    /// already in flight (`reserved`) so two concurrent requests cannot
    /// together exceed what was paid.
    pub fn check_refund(&self, amount: Money, reserved: Money) -> Result<(), RefundError> {
        if !self.status.is_refundable() {
            return Err(InvalidTransition {
                from: self.status,
                event: OrderEvent::FullyRefunded,
            }
            .into());
        }
        let remaining = self
            .refundable()
            .checked_sub(reserved)
            .unwrap_or(Money::ZERO);
        if amount > remaining {
            return Err(RefundError::ExceedsPaid {
                requested: amount,
                remaining,
            });
        }
        Ok(())
    }

    /// Records a refund that succeeded at the gateway. Returns true when the
    /// order thereby became fully refunded.
    pub fn record_refund(&mut self, amount: Money) -> Result<bool, RefundError> {
        let remaining = self.refundable();
        if amount > remaining {
            return Err(RefundError::ExceedsPaid {
                requested: amount,
                remaining,
            });
        }
        self.refunded_amount =
            self.refunded_amount
                .checked_add(amount)
                .map_err(|_| RefundError::ExceedsPaid {
                    requested: amount,
                    remaining,
                })?;
        if self.refunded_amount == self.paid_amount {
            self.transition(OrderEvent::FullyRefunded)?;
            return Ok(true);
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fen(v: i64) -> Money {
        Money::from_fen(v).unwrap()
    }

    fn sample() -> Order {
        let new = NewOrder {
            order_id: OrderId::generate(),
            user_id: "u1".into(),
            items: vec![LineItem {
                product_id: "p1".into(),
                quantity: 2,
                unit_price: fen(1999),
            }],
            payment_method: Channel::WechatPay,
            pay_timeout: Duration::minutes(30),
        };
        Order::place(new, Utc::now()).unwrap()
    }

    #[test]
    fn happy_lifecycle() {
        let mut o = sample();
        assert_eq!(o.total_amount, fen(3998));
        o.mark_paid("tx1", fen(3998), Utc::now()).unwrap();
        o.ship(None, Some("SF1".into()), Utc::now()).unwrap();
        o.confirm_receipt(Utc::now()).unwrap();
        assert_eq!(o.status, OrderStatus::Completed);
        assert!(!o.record_refund(fen(1000)).unwrap());
        assert!(o.record_refund(fen(2998)).unwrap());
        assert_eq!(o.status, OrderStatus::Refunded);
    }

    #[test]
    fn illegal_moves_are_refused() {
        let mut o = sample();
        assert!(o.ship(None, None, Utc::now()).is_err());
        assert!(o.confirm_receipt(Utc::now()).is_err());
        o.cancel("changed mind", Utc::now()).unwrap();
        assert!(o.mark_paid("tx", fen(1), Utc::now()).is_err());
        assert_eq!(o.status, OrderStatus::Cancelled);
    }

    #[test]
    fn refunds_never_exceed_paid() {
        let mut o = sample();
        o.mark_paid("tx1", fen(3998), Utc::now()).unwrap();
        assert!(o.check_refund(fen(3999), Money::ZERO).is_err());
        assert!(o.check_refund(fen(2000), fen(2000)).is_err());
        assert!(o.check_refund(fen(1998), fen(2000)).is_ok());
        assert!(o.record_refund(fen(3999)).is_err());
    }

    #[test]
    fn totals_overflow_is_an_error() {
        let new = NewOrder {
            order_id: OrderId::generate(),
            user_id: "u1".into(),
            items: vec![LineItem {
                product_id: "p".into(),
                quantity: 3,
                unit_price: fen(i64::MAX / 2),
            }],
            payment_method: Channel::Alipay,
            pay_timeout: Duration::minutes(1),
        };
        assert!(matches!(
            Order::place(new, Utc::now()),
            Err(PlaceError::Amount(MoneyError::Overflow))
        ));
    }

    proptest::proptest! {
        /// Whatever sequence of events arrives, a cancelled order is never
        /// paid and a refunded one never moves again.
        #[test]
        fn terminal_states_stay_terminal(events in proptest::collection::vec(0u8..5, 0..20)) {
            let all = [OrderEvent::PaymentConfirmed, OrderEvent::Cancelled, OrderEvent::Shipped,
                       OrderEvent::ReceiptConfirmed, OrderEvent::FullyRefunded];
            let mut status = OrderStatus::PendingPayment;
            for e in events {
                let before = status;
                if let Ok(next) = status.apply(all[e as usize]) { status = next; }
                if matches!(before, OrderStatus::Cancelled | OrderStatus::Refunded) {
                    proptest::prop_assert_eq!(status, before);
                }
            }
        }
    }
}
