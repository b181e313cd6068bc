//! The `order.place` hot path in one statement: claim the request ids in
//! the inbox, insert the orders whose claim is new, and write the
//! `order.created` event of each order inserted. One round trip (and one
//! plan) per batch instead of three; the rows and outcomes are those of
//! `inbox::claim_many`, then `orders::insert` of each claimed request, then
//! `outbox::enqueue_many`.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::StoreError;
use crate::domain::Order;
use crate::messaging::contracts::SerializedEvent;

/// A request to place `order`, with its `order.created` event made ready.
pub struct Placement<'a> {
    pub request_id: &'a str,
    pub request_type: &'a str,
    pub body_hash: &'a [u8],
    pub order: &'a Order,
    pub created: &'a SerializedEvent,
}

/// What the statement did: the request ids it claimed (new in the inbox)
/// and the order ids it inserted. A claimed id whose order was not inserted
/// names an order that already existed.
#[derive(Debug, Default)]
pub struct Placed {
    pub claimed: HashSet<String>,
    pub inserted: HashSet<Uuid>,
}

/// `placements` must not repeat a request id or an order id (the caller
/// sends repeats of a batch through the one-by-one path): within one
/// statement, a repeated key could not tell which of its rows won.
pub async fn claim_insert_announce(
    conn: &mut PgConnection,
    placements: &[Placement<'_>],
) -> Result<Placed, StoreError> {
    if placements.is_empty() {
        return Ok(Placed::default());
    }
    let rids = column(placements, |p| p.request_id);
    let kinds = column(placements, |p| p.request_type);
    let users = column(placements, |p| p.order.user_id.as_str());
    let currencies = column(placements, |p| p.order.currency.as_str());
    let methods = column(placements, |p| p.order.payment_method.as_str());
    let statuses = column(placements, |p| p.order.status.as_str());
    let states = column(placements, |p| p.order.payment_state.as_str());
    let hashes: Vec<&[u8]> = column(placements, |p| p.body_hash);
    let ids: Vec<Uuid> = column(placements, |p| p.order.order_id.0);
    let otns: Vec<String> = column(placements, |p| p.order.out_trade_no());
    let items: Vec<sqlx::types::Json<&[crate::domain::LineItem]>> =
        column(placements, |p| sqlx::types::Json(p.order.items.as_slice()));
    let totals: Vec<i64> = column(placements, |p| p.order.total_amount.fen());
    let created: Vec<DateTime<Utc>> = column(placements, |p| p.order.created_at);
    let expires: Vec<DateTime<Utc>> = column(placements, |p| p.order.expires_at);
    let event_ids: Vec<Uuid> = column(placements, |p| p.created.event_id);
    let payloads: Vec<&str> = column(placements, |p| p.created.payload.as_str());
    let occurred: Vec<DateTime<Utc>> = column(placements, |p| p.created.occurred_at);
    let rows: Vec<(bool, String)> = sqlx::query_as(
        "WITH input AS ( \
           SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::uuid[], $5::text[], $6::text[], \
             $7::jsonb[], $8::text[], $9::bigint[], $10::text[], $11::text[], $12::text[], \
             $13::timestamptz[], $14::timestamptz[], $15::uuid[], $16::text[], $17::timestamptz[]) \
           AS t(request_id, request_type, body_hash, order_id, out_trade_no, user_id, items, currency, \
             total_amount, payment_method, status, payment_state, created_at, expires_at, event_id, payload, \
             occurred_at)), \
         claimed AS ( \
           INSERT INTO inbox (request_id, request_type, body_hash, outcome) \
           SELECT request_id, request_type, body_hash, 'processed' FROM input \
           ON CONFLICT (request_id) DO NOTHING RETURNING request_id), \
         inserted AS ( \
           INSERT INTO orders (order_id, out_trade_no, user_id, items, currency, total_amount, \
             payment_method, status, payment_state, created_at, expires_at) \
           SELECT order_id, out_trade_no, user_id, items, currency, total_amount, payment_method, \
             status, payment_state, created_at, expires_at \
           FROM input JOIN claimed USING (request_id) \
           ON CONFLICT (order_id) DO NOTHING RETURNING order_id), \
         announced AS ( \
           INSERT INTO outbox (event_id, routing_key, payload, created_at) \
           SELECT event_id, 'order.created', payload, occurred_at FROM input JOIN inserted USING (order_id)) \
         SELECT true, request_id FROM claimed UNION ALL SELECT false, order_id::text FROM inserted",
    )
    .bind(&rids)
    .bind(&kinds)
    .bind(&hashes)
    .bind(&ids)
    .bind(&otns)
    .bind(&users)
    .bind(&items)
    .bind(&currencies)
    .bind(&totals)
    .bind(&methods)
    .bind(&statuses)
    .bind(&states)
    .bind(&created)
    .bind(&expires)
    .bind(&event_ids)
    .bind(&payloads)
    .bind(&occurred)
    .fetch_all(conn)
    .await?;
    let mut placed = Placed::default();
    for (is_claim, key) in rows {
        if is_claim {
            placed.claimed.insert(key);
        } else if let Ok(id) = Uuid::parse_str(&key) {
            placed.inserted.insert(id);
        }
    }
    Ok(placed)
}

fn column<'a, T>(placements: &'a [Placement<'a>], f: impl Fn(&'a Placement<'a>) -> T) -> Vec<T> {
    placements.iter().map(f).collect()
}
