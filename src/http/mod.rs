//! The HTTP server (CONTRACT §5): health, readiness, metrics, the gateway
//! notification ingress, orders, and the reconciliation reports.

mod auth;
mod health;
mod notify;
mod orders;
pub mod recon;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use sqlx::PgPool;

use crate::domain::Channel;
use crate::gateway::Gateway;
use crate::messaging::supervisor::BrokerState;

pub use auth::is_loopback_listen;

#[derive(Clone)]
pub struct HttpState {
    pub pool: PgPool,
    pub broker: Arc<BrokerState>,
    pub gateways: HashMap<Channel, Arc<dyn Gateway>>,
    /// `P.notifications`: where verified notifications are enqueued.
    pub notifications_queue: String,
    pub api_token: String,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// `extra` carries routes other modules serve (the reconciliation reports);
/// they sit behind the same bearer-token check as `/orders`.
pub fn router(state: HttpState, extra: Option<Router>) -> Router {
    let protected = Router::new()
        .route("/orders/{order_id}", get(orders::show))
        .with_state(state.clone());
    let protected = match extra {
        Some(r) => protected.merge(r),
        None => protected,
    };
    let protected = protected.layer(axum::middleware::from_fn_with_state(
        state.api_token.clone(),
        auth::require_token,
    ));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route(
            "/notify/{channel}",
            post(notify::ingress).layer(DefaultBodyLimit::max(
                crate::gateway::MAX_NOTIFICATION_BODY_BYTES,
            )),
        )
        .with_state(state)
        .merge(protected)
}
