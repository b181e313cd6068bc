//! The wire JSON of docs/contract.md §4 (events) — the only place event and order
//! field names are written. Requests (§3) are parsed in `requests.rs`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::domain::{LineItem, Order};

/// An event as published on `P.events` (routing key = `kind`).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_id: Uuid,
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    pub request_id: Option<String>,
    pub data: Value,
}

impl Event {
    pub fn new(kind: &str, request_id: Option<&str>, data: Value) -> Event {
        Event {
            event_id: Uuid::new_v4(),
            kind: kind.to_string(),
            occurred_at: Utc::now(),
            request_id: request_id.map(str::to_string),
            data,
        }
    }

    /// An event about an order: `data.order` plus the fields of `extra` (an
    /// object, or null for none).
    pub fn for_order(kind: &str, order: &Order, request_id: Option<&str>, extra: Value) -> Event {
        let mut data = serde_json::Map::new();
        data.insert("order".into(), order_json(order));
        if let Value::Object(fields) = extra {
            data.extend(fields);
        }
        Event::new(kind, request_id, Value::Object(data))
    }

    pub fn to_json(&self) -> String {
        // Serialized from borrowed fields: no copy of `data` on the hot path.
        Wire {
            event_id: &self.event_id,
            kind: &self.kind,
            occurred_at: rfc3339(self.occurred_at),
            request_id: self.request_id.as_deref(),
            data: &self.data,
        }
        .print()
    }
}

/// The envelope of every event on the wire (docs/contract.md §4).
#[derive(Serialize)]
struct Wire<'a, D: Serialize> {
    event_id: &'a Uuid,
    #[serde(rename = "type")]
    kind: &'a str,
    occurred_at: String,
    request_id: Option<&'a str>,
    data: D,
}

impl<D: Serialize> Wire<'_, D> {
    fn print(&self) -> String {
        // Serializing strings, numbers and maps with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, false)
}

#[derive(Serialize)]
struct ItemJson<'a> {
    product_id: &'a str,
    quantity: u32,
    unit_price: i64,
}

/// The order object of docs/contract.md §4. Fields in name order: the object is
/// the same whether printed from this struct or from a `Value` (whose map
/// sorts its keys).
#[derive(Serialize)]
struct OrderJson<'a> {
    cancel_reason: &'a Option<String>,
    cancelled_at: Option<String>,
    completed_at: Option<String>,
    created_at: String,
    currency: &'a str,
    expires_at: String,
    gateway_transaction_id: &'a Option<String>,
    items: Vec<ItemJson<'a>>,
    order_id: &'a Uuid,
    out_trade_no: String,
    paid_amount: i64,
    paid_at: Option<String>,
    payment_method: &'a str,
    refunded_amount: i64,
    shipped_at: Option<String>,
    status: &'a str,
    total_amount: i64,
    user_id: &'a str,
}

impl<'a> OrderJson<'a> {
    fn of(o: &'a Order) -> Self {
        OrderJson {
            cancel_reason: &o.cancel_reason,
            cancelled_at: o.cancelled_at.map(rfc3339),
            completed_at: o.completed_at.map(rfc3339),
            created_at: rfc3339(o.created_at),
            currency: &o.currency,
            expires_at: rfc3339(o.expires_at),
            gateway_transaction_id: &o.gateway_transaction_id,
            items: o
                .items
                .iter()
                .map(|i: &LineItem| ItemJson {
                    product_id: &i.product_id,
                    quantity: i.quantity,
                    unit_price: i.unit_price.fen(),
                })
                .collect(),
            order_id: &o.order_id.0,
            out_trade_no: o.out_trade_no(),
            paid_amount: o.paid_amount.fen(),
            paid_at: o.paid_at.map(rfc3339),
            payment_method: o.payment_method.as_str(),
            refunded_amount: o.refunded_amount.fen(),
            shipped_at: o.shipped_at.map(rfc3339),
            status: o.status.as_str(),
            total_amount: o.total_amount.fen(),
            user_id: &o.user_id,
        }
    }
}

/// The order object of docs/contract.md §4.
pub fn order_json(o: &Order) -> Value {
    serde_json::to_value(OrderJson::of(o)).unwrap_or_default()
}

/// An `order.created` event already in its wire form. Every `order.place`
/// writes one; printing it straight from the order costs a fraction of
/// building the `Value` tree of an `Event` first.
#[derive(Debug, Clone, PartialEq)]
pub struct SerializedEvent {
    pub event_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub payload: String,
}

impl SerializedEvent {
    pub fn order_created(order: &Order, request_id: &str) -> SerializedEvent {
        Self::order_created_with(Uuid::new_v4(), Utc::now(), order, request_id)
    }

    fn order_created_with(
        event_id: Uuid,
        occurred_at: DateTime<Utc>,
        order: &Order,
        request_id: &str,
    ) -> SerializedEvent {
        #[derive(Serialize)]
        struct Data<'a> {
            order: OrderJson<'a>,
        }
        let payload = Wire {
            event_id: &event_id,
            kind: "order.created",
            occurred_at: rfc3339(occurred_at),
            request_id: Some(request_id),
            data: Data {
                order: OrderJson::of(order),
            },
        }
        .print();
        SerializedEvent {
            event_id,
            occurred_at,
            payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Channel, Money, NewOrder, OrderId};

    fn order() -> Order {
        let new = NewOrder {
            order_id: OrderId::generate(),
            user_id: "用户 \"1\"".into(),
            items: vec![
                LineItem {
                    product_id: "p\n1".into(),
                    quantity: 2,
                    unit_price: Money::from_fen(1999).unwrap(),
                },
                LineItem {
                    product_id: "p2".into(),
                    quantity: 1,
                    unit_price: Money::from_fen(1).unwrap(),
                },
            ],
            payment_method: Channel::Alipay,
            pay_timeout: chrono::Duration::minutes(30),
        };
        Order::place(new, Utc::now()).unwrap()
    }

    /// The hot path's `order.created` is byte for byte the `Event` one, with
    /// unset and set optional fields alike.
    #[test]
    fn serialized_order_created_is_the_event_json() {
        let mut o = order();
        for round in 0..2 {
            let mut event = Event::for_order("order.created", &o, Some("rid-1"), Value::Null);
            let fast =
                SerializedEvent::order_created_with(event.event_id, event.occurred_at, &o, "rid-1");
            event.event_id = fast.event_id;
            assert_eq!(fast.payload, event.to_json(), "round {round}");
            if round == 0 {
                o.mark_paid("4200000001", o.total_amount, Utc::now())
                    .unwrap();
                o.cancel_reason = Some("why \\ not".into());
            }
        }
    }
}
