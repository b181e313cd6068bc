//! The hot path: a run of consecutive `order.place` requests is applied
//! with a fixed number of round trips (claim the inbox rows, insert the
//! orders, write the events), whatever the run's length. Outcomes are the
//! same as applying them one by one, in order (see `handler::apply`).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;

use super::contracts::Event;
use super::handler::{rejection_data, HandlerConfig, Outcome};
use super::requests::{Envelope, Request};
use crate::domain::Order;
use crate::store::inbox::{self, Claim};
use crate::store::{orders, outbox, StoreError};

pub async fn apply_places(
    conn: &mut PgConnection,
    cfg: &HandlerConfig,
    envs: &[&Envelope<Request>],
    now: DateTime<Utc>,
) -> Result<Vec<Outcome>, StoreError> {
    let keys: Vec<(&str, &str, &[u8])> = envs
        .iter()
        .map(|e| (e.request_id.as_str(), e.kind.as_str(), e.digest.as_slice()))
        .collect();
    let claims = inbox::claim_many(conn, &keys).await?;
    let mut outcomes = vec![Outcome::Duplicate; envs.len()];
    let mut events = Vec::with_capacity(envs.len());
    let mut new_orders: Vec<(usize, Order)> = Vec::new();
    for (i, (env, claim)) in envs.iter().zip(&claims).enumerate() {
        let rid = Some(env.request_id.as_str());
        match claim {
            Claim::Duplicate => {}
            Claim::Reused => {
                let message = format!(
                    "request_id {} was already used for a different request",
                    env.request_id
                );
                events.push(Event::new(
                    "request.rejected",
                    rid,
                    rejection_data(&env.kind, "request_id_reused", &message),
                ));
                outcomes[i] = Outcome::Rejected("request_id_reused");
            }
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
    let orders_only: Vec<&Order> = new_orders.iter().map(|(_, o)| o).collect();
    let mut inserted = orders::insert_many(conn, &orders_only).await?;
    for (i, order) in &new_orders {
        let env = envs[*i];
        let rid = Some(env.request_id.as_str());
        // `remove`: a second request in this batch with the same order id lost.
        if inserted.remove(&order.order_id.0) {
            events.push(Event::for_order("order.created", order, rid, Value::Null));
            outcomes[*i] = Outcome::Applied;
        } else {
            let message = format!("order {} already exists", order.order_id);
            events.push(Event::new(
                "request.rejected",
                rid,
                rejection_data(&env.kind, "order_exists", &message),
            ));
            inbox::set_outcome(conn, env.request_id.as_str(), "order_exists").await?;
            outcomes[*i] = Outcome::Rejected("order_exists");
        }
    }
    outbox::enqueue_many(conn, &events).await?;
    Ok(outcomes)
}
