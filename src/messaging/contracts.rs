//! The wire JSON of CONTRACT §4 (events) — the only place event and order
//! field names are written. Requests (§3) are parsed in `requests.rs`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{json, Value};
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
        #[derive(Serialize)]
        struct Wire<'a> {
            event_id: &'a Uuid,
            #[serde(rename = "type")]
            kind: &'a str,
            occurred_at: String,
            request_id: &'a Option<String>,
            data: &'a Value,
        }
        let wire = Wire {
            event_id: &self.event_id,
            kind: &self.kind,
            occurred_at: rfc3339(self.occurred_at),
            request_id: &self.request_id,
            data: &self.data,
        };
        serde_json::to_string(&wire).unwrap_or_default()
    }
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, false)
}

fn opt_time(t: Option<DateTime<Utc>>) -> Value {
    t.map(|t| Value::String(rfc3339(t))).unwrap_or(Value::Null)
}

#[derive(Serialize)]
struct ItemJson<'a> {
    product_id: &'a str,
    quantity: u32,
    unit_price: i64,
}

/// The order object of CONTRACT §4.
pub fn order_json(o: &Order) -> Value {
    let items: Vec<ItemJson> = o
        .items
        .iter()
        .map(|i: &LineItem| ItemJson {
            product_id: &i.product_id,
            quantity: i.quantity,
            unit_price: i.unit_price.fen(),
        })
        .collect();
    json!({
        "order_id": o.order_id,
        "out_trade_no": o.out_trade_no(),
        "user_id": o.user_id,
        "items": items,
        "currency": o.currency,
        "total_amount": o.total_amount.fen(),
        "payment_method": o.payment_method.as_str(),
        "status": o.status.as_str(),
        "paid_amount": o.paid_amount.fen(),
        "refunded_amount": o.refunded_amount.fen(),
        "gateway_transaction_id": o.gateway_transaction_id,
        "created_at": rfc3339(o.created_at),
        "expires_at": rfc3339(o.expires_at),
        "paid_at": opt_time(o.paid_at),
        "shipped_at": opt_time(o.shipped_at),
        "completed_at": opt_time(o.completed_at),
        "cancelled_at": opt_time(o.cancelled_at),
        "cancel_reason": o.cancel_reason,
    })
}
