//! The hot path: a run of consecutive `order.place` requests is applied
//! with a fixed number of round trips, whatever the run's length. Outcomes
//! are the same as applying them one by one, in order (see
//! `handler::apply`).
//!
//! Each request that is the first of the run with its request id and its
//! order id goes through the bulk path (`store::placement`). The others (a
//! repeated id, an order that does not validate) can depend on the ones
//! before them, so they follow, in order, through the inbox claim.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;

use super::contracts::{Event, SerializedEvent};
use super::handler::{rejection_data, HandlerConfig, Outcome};
use super::requests::{Envelope, Request};
use crate::domain::Order;
use crate::store::inbox::{self, Claim};
use crate::store::placement::{self, Placement};
use crate::store::{orders, outbox, StoreError};

pub async fn apply_places(
    conn: &mut PgConnection,
    cfg: &HandlerConfig,
    envs: &[&Envelope<Request>],
    now: DateTime<Utc>,
) -> Result<Vec<Outcome>, StoreError> {
    let mut seen_requests = HashSet::new();
    let mut seen_orders = HashSet::new();
    let mut fast: Vec<(usize, Order, SerializedEvent)> = Vec::new();
    let mut rest: Vec<usize> = Vec::new();
    for (i, env) in envs.iter().enumerate() {
        let first_request = seen_requests.insert(env.request_id.as_str());
        let order = match &env.body {
            Request::PlaceOrder(place) => {
                Order::place(place.clone().into_new_order(cfg.pay_timeout), now).ok()
            }
            _ => None,
        };
        match order {
            Some(order) if first_request && seen_orders.insert(order.order_id) => {
                let created = SerializedEvent::order_created(&order, env.request_id.as_str());
                fast.push((i, order, created));
            }
            _ => rest.push(i),
        }
    }
    let mut outcomes = vec![Outcome::Duplicate; envs.len()];
    let mut events = Vec::new();
    place_fresh(conn, envs, &fast, &mut outcomes, &mut events).await?;
    let rest_envs: Vec<&Envelope<Request>> = rest.iter().map(|i| envs[*i]).collect();
    let rest_outcomes = apply_in_order(conn, cfg, &rest_envs, now, &mut events).await?;
    for (i, outcome) in rest.iter().zip(rest_outcomes) {
        outcomes[*i] = outcome;
    }
    outbox::enqueue_many(conn, &events).await?;
    Ok(outcomes)
}

/// The bulk path (plain COPYs when every key is new, else the statement
/// that sorts claimed from not); rejections it finds are added to
/// `events`.
async fn place_fresh(
    conn: &mut PgConnection,
    envs: &[&Envelope<Request>],
    fast: &[(usize, Order, SerializedEvent)],
    outcomes: &mut [Outcome],
    events: &mut Vec<Event>,
) -> Result<(), StoreError> {
    let placements: Vec<Placement> = fast
        .iter()
        .map(|(i, order, created)| Placement {
            request_id: envs[*i].request_id.as_str(),
            request_type: envs[*i].kind.as_str(),
            body_hash: envs[*i].digest.as_slice(),
            order,
            created,
        })
        .collect();
    if placement::insert_all_new(conn, &placements).await? {
        for (i, _, _) in fast {
            outcomes[*i] = Outcome::Applied;
        }
        return Ok(());
    }
    let placed = placement::claim_insert_announce(conn, &placements).await?;
    let mut seen_before: Vec<usize> = Vec::new();
    for (i, order, _) in fast {
        let env = envs[*i];
        if !placed.claimed.contains(env.request_id.as_str()) {
            seen_before.push(*i);
        } else if placed.inserted.contains(&order.order_id.0) {
            outcomes[*i] = Outcome::Applied;
        } else {
            outcomes[*i] = reject_existing_order(conn, env, order, events).await?;
        }
    }
    // Processed in an earlier batch: the same body is a duplicate, another
    // body reuses the id.
    let ids: Vec<&str> = seen_before
        .iter()
        .map(|i| envs[*i].request_id.as_str())
        .collect();
    let stored = inbox::body_hashes(conn, &ids).await?;
    for i in seen_before {
        let env = envs[i];
        match stored.get(env.request_id.as_str()) {
            Some(hash) if *hash == env.digest => {}
            _ => outcomes[i] = reject_reused(env, events),
        }
    }
    Ok(())
}

fn reject_reused(env: &Envelope<Request>, events: &mut Vec<Event>) -> Outcome {
    let message = format!(
        "request_id {} was already used for a different request",
        env.request_id
    );
    events.push(Event::new(
        "request.rejected",
        Some(env.request_id.as_str()),
        rejection_data(&env.kind, "request_id_reused", &message),
    ));
    Outcome::Rejected("request_id_reused")
}

async fn reject_existing_order(
    conn: &mut PgConnection,
    env: &Envelope<Request>,
    order: &Order,
    events: &mut Vec<Event>,
) -> Result<Outcome, StoreError> {
    let message = format!("order {} already exists", order.order_id);
    events.push(Event::new(
        "request.rejected",
        Some(env.request_id.as_str()),
        rejection_data(&env.kind, "order_exists", &message),
    ));
    inbox::set_outcome(conn, env.request_id.as_str(), "order_exists").await?;
    Ok(Outcome::Rejected("order_exists"))
}

/// Requests that may depend on earlier ones of the batch, in order: the
/// inbox claim in one round trip, then each order.
async fn apply_in_order(
    conn: &mut PgConnection,
    cfg: &HandlerConfig,
    envs: &[&Envelope<Request>],
    now: DateTime<Utc>,
    events: &mut Vec<Event>,
) -> Result<Vec<Outcome>, StoreError> {
    if envs.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<(&str, &str, &[u8])> = envs
        .iter()
        .map(|e| (e.request_id.as_str(), e.kind.as_str(), e.digest.as_slice()))
        .collect();
    let claims = inbox::claim_many(conn, &keys).await?;
    let mut outcomes = vec![Outcome::Duplicate; envs.len()];
    let mut new_orders: Vec<(usize, Order)> = Vec::new();
    for (i, (env, claim)) in envs.iter().zip(&claims).enumerate() {
        let rid = Some(env.request_id.as_str());
        match claim {
            Claim::Duplicate => {}
            Claim::Reused => outcomes[i] = reject_reused(env, events),
            Claim::New => {
                let Request::PlaceOrder(place) = &env.body else {
                    continue;
                };
                match Order::place(place.clone().into_new_order(cfg.pay_timeout), now) {
                    Ok(order) => new_orders.push((i, order)),
                    Err(e) => {
                        events.push(Event::new(
                            "request.rejected",
                            rid,
                            rejection_data(&env.kind, "invalid_request", &e.to_string()),
                        ));
                        inbox::set_outcome(conn, env.request_id.as_str(), "invalid_request")
                            .await?;
                        outcomes[i] = Outcome::Rejected("invalid_request");
                    }
                }
            }
        }
    }
    // One insert each, in order (a second request of the batch with the same
    // order id finds the first one's row): this path only carries what the
    // one-statement path left out, a few requests of a batch at most.
    for (i, order) in &new_orders {
        let env = envs[*i];
        let rid = Some(env.request_id.as_str());
        if orders::insert(conn, order).await? {
            events.push(Event::for_order("order.created", order, rid, Value::Null));
            outcomes[*i] = Outcome::Applied;
        } else {
            outcomes[*i] = reject_existing_order(conn, env, order, events).await?;
        }
    }
    Ok(outcomes)
}
