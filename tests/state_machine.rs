//! The order state machine (`domain::order`) under random sequences of
//! commands and gateway payment reports, with no I/O. The events are the
//! ones the domain itself names for each step (`OrderEvent::event_type`,
//! `PaymentVerdict::event_type`), which are what the store emits.
//!
//! After every step: money is never negative, refunded ≤ paid, a paid
//! order is never cancelled, a cancelled order is never paid (its payment
//! is an anomaly), a refused step changes nothing, and every change emits
//! exactly one event: the status move's, and `refund.succeeded` for money
//! refunded.

use chrono::{Duration, TimeZone, Utc};
use payrecon::domain::{
    Channel, LineItem, Money, NewOrder, Order, OrderEvent, OrderId, OrderStatus, PaymentAnomaly,
    PaymentVerdict,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    /// A verified gateway payment report of the total plus `delta` fen.
    Paid {
        delta: i64,
        transaction: u8,
    },
    Cancel,
    Ship,
    ConfirmReceipt,
    /// A refund request of `amount` that the gateway then carries out.
    Refund {
        amount: i64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (prop_oneof![3 => Just(0i64), 1 => -5i64..5, 1 => any::<i32>().prop_map(i64::from)], any::<u8>())
            .prop_map(|(delta, transaction)| Step::Paid { delta, transaction }),
        2 => Just(Step::Cancel),
        2 => Just(Step::Ship),
        2 => Just(Step::ConfirmReceipt),
        3 => prop_oneof![1i64..50, 1i64..20_000, Just(i64::MAX)].prop_map(|amount| Step::Refund { amount }),
    ]
}

fn order(items: &[(u32, i64)]) -> Order {
    let new = NewOrder {
        order_id: OrderId::generate(),
        user_id: "u1".into(),
        items: items
            .iter()
            .enumerate()
            .map(|(i, (q, p))| LineItem {
                product_id: format!("p{i}"),
                quantity: *q,
                unit_price: Money::from_fen(*p).unwrap(),
            })
            .collect(),
        payment_method: Channel::WechatPay,
        pay_timeout: Duration::minutes(30),
    };
    Order::place(new, Utc.with_ymd_and_hms(2026, 11, 24, 2, 0, 0).unwrap()).unwrap()
}

/// Applies one step as the worker does, returning the events it emits.
fn apply(o: &mut Order, step: &Step, t: i64) -> Vec<&'static str> {
    let now = Utc.timestamp_opt(1_795_000_000 + t, 0).unwrap();
    match step {
        Step::Paid { delta, transaction } => {
            let Some(amount) = o
                .total_amount
                .fen()
                .checked_add(*delta)
                .and_then(|a| Money::from_fen(a).ok())
            else {
                return vec![]; // not a verifiable amount: refused at parse
            };
            let verdict = o
                .apply_gateway_payment(&format!("tx{transaction}"), amount, now)
                .expect("the verdict decides only legal moves");
            verdict.event_type().into_iter().collect()
        }
        Step::Cancel => o
            .cancel("r", now)
            .map(|()| vec![OrderEvent::Cancelled.event_type()])
            .unwrap_or_default(),
        Step::Ship => o
            .ship(None, Some("SF1".into()), now)
            .map(|()| vec![OrderEvent::Shipped.event_type()])
            .unwrap_or_default(),
        Step::ConfirmReceipt => o
            .confirm_receipt(now)
            .map(|()| vec![OrderEvent::ReceiptConfirmed.event_type()])
            .unwrap_or_default(),
        Step::Refund { amount } => {
            let amount = Money::from_fen(*amount).unwrap();
            if o.check_refund(amount, Money::ZERO).is_err() {
                return vec![];
            }
            match o
                .record_refund(amount)
                .expect("a checked refund is recorded")
            {
                true => vec!["refund.succeeded", OrderEvent::FullyRefunded.event_type()],
                false => vec!["refund.succeeded"],
            }
        }
    }
}

/// The move from `from` to `to`, if one is legal.
fn move_between(from: OrderStatus, to: OrderStatus) -> Option<OrderEvent> {
    [
        OrderEvent::PaymentConfirmed,
        OrderEvent::Cancelled,
        OrderEvent::Shipped,
        OrderEvent::ReceiptConfirmed,
        OrderEvent::FullyRefunded,
    ]
    .into_iter()
    .find(|e| from.apply(*e) == Ok(to))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_keep_the_promises(
        items in proptest::collection::vec((1u32..5, 0i64..5000), 1..4)
            .prop_filter("a total above 0", |items| items.iter().any(|(_, p)| *p > 0)),
        steps in proptest::collection::vec(step(), 0..40),
    ) {
        let mut o = order(&items);
        let mut was_paid = false;
        let mut was_cancelled = false;
        for (t, step) in steps.iter().enumerate() {
            let before = o.clone();
            let events = apply(&mut o, step, t as i64);

            prop_assert!(o.paid_amount.fen() >= 0 && o.refunded_amount.fen() >= 0);
            prop_assert!(o.refunded_amount <= o.paid_amount, "{:?}", o);
            prop_assert_eq!(o.total_amount, before.total_amount);

            // Exactly one event per change, and none without one (an
            // anomaly is recorded, but changes nothing on the order).
            let status_moved = o.status != before.status;
            let refunded = o.refunded_amount != before.refunded_amount;
            let mut expected: Vec<&str> = Vec::new();
            if refunded {
                expected.push("refund.succeeded");
            }
            if status_moved {
                let e = move_between(before.status, o.status);
                prop_assert!(e.is_some(), "illegal move {} -> {}", before.status, o.status);
                expected.push(e.unwrap().event_type());
            }
            let mut got: Vec<&str> = events.iter().copied().filter(|e| *e != "payment.anomaly").collect();
            got.sort();
            expected.sort();
            prop_assert_eq!(got, expected, "step {:?} from {:?}", step, before.status);
            if !status_moved && !refunded {
                prop_assert_eq!(&o, &before, "a step without an event changed the order");
            }

            // Paid means paid in full, and stays paid.
            if o.status.is_paid_or_later() {
                prop_assert_eq!(o.paid_amount, o.total_amount);
                prop_assert!(o.paid_at.is_some() && o.gateway_transaction_id.is_some());
            }
            if was_paid {
                prop_assert_ne!(o.status, OrderStatus::Cancelled, "a paid order was cancelled");
                prop_assert_eq!(o.paid_at, before.paid_at);
                prop_assert_eq!(&o.gateway_transaction_id, &before.gateway_transaction_id);
            }
            // A cancelled order is never paid: its payment is an anomaly.
            if was_cancelled {
                prop_assert_eq!(o.status, OrderStatus::Cancelled);
                prop_assert_eq!(o.paid_amount, Money::ZERO);
                if matches!(step, Step::Paid { .. }) && !events.is_empty() {
                    prop_assert_eq!(events.clone(), vec!["payment.anomaly"]);
                }
            }
            if o.status == OrderStatus::Refunded {
                prop_assert_eq!(o.refunded_amount, o.paid_amount);
            }
            was_paid |= o.status.is_paid_or_later();
            was_cancelled |= o.status == OrderStatus::Cancelled;
        }
    }

    /// The payment verdict alone, from every status: only a pending order
    /// of exactly that total is paid; everything else changes nothing.
    #[test]
    fn payment_verdicts(
        status_index in 0usize..6,
        delta in prop_oneof![Just(0i64), -3i64..3, 1i64..1_000_000],
    ) {
        let mut o = order(&[(2, 1999)]);
        o.status = OrderStatus::ALL[status_index];
        let before = o.clone();
        let amount = Money::from_fen((3998 + delta).max(0)).unwrap();
        let paid_at = Utc.timestamp_opt(1_795_000_000, 0).unwrap();
        let verdict = o.apply_gateway_payment("tx", amount, paid_at).unwrap();
        let expected = match before.status {
            OrderStatus::PendingPayment if amount == before.total_amount => PaymentVerdict::Confirmed,
            OrderStatus::PendingPayment => PaymentVerdict::Anomaly(PaymentAnomaly::AmountMismatch),
            OrderStatus::Cancelled => PaymentVerdict::Anomaly(PaymentAnomaly::PaidAfterCancel),
            _ => PaymentVerdict::AlreadyPaid,
        };
        prop_assert_eq!(verdict, expected);
        if verdict == PaymentVerdict::Confirmed {
            prop_assert_eq!(o.status, OrderStatus::Paid);
            prop_assert_eq!(o.paid_amount, amount);
            prop_assert_eq!(o.paid_at, Some(paid_at));
        } else {
            prop_assert_eq!(&o, &before);
        }
    }
}
