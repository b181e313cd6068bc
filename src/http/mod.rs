//! The HTTP server (docs/contract.md §5): health, readiness, metrics, the gateway
//! notification ingress, orders, and the reconciliation reports.

mod auth;
mod gauges;
mod health;
mod notify;
mod notify_queue;
mod orders;
pub mod recon;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use sqlx::PgPool;

use crate::domain::Channel;
use crate::gateway::Gateway;
use crate::messaging::supervisor::BrokerState;

pub use auth::is_loopback_listen;
pub use notify_queue::NotifyQueue;

#[derive(Clone)]
pub struct HttpState {
    pub pool: PgPool,
    pub broker: Arc<BrokerState>,
    pub gateways: HashMap<Channel, Arc<dyn Gateway>>,
    /// Puts verified notifications on `P.notifications`.
    pub notify_queue: NotifyQueue,
    pub api_token: String,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The dead-letter queues by their `queue` label ("requests", …).
    pub dead_letter_queues: Vec<(&'static str, String)>,
    pub started: Started,
}

/// Set once the database is migrated and the consumers run. The server
/// listens before that (liveness is not readiness): `/healthz` and
/// `/metrics` answer from the first moment, `/readyz` says 503, and the
/// routes that need the database answer 503 until then.
#[derive(Clone, Default)]
pub struct Started(Arc<AtomicBool>);

impl Started {
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

async fn until_started(
    axum::extract::State(started): axum::extract::State<Started>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if started.get() {
        return next.run(req).await;
    }
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, "5")],
        "starting: waiting for the database",
    )
        .into_response()
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
    let gate = axum::middleware::from_fn_with_state(state.started.clone(), until_started);
    // The token is checked first: a caller without one learns nothing, not
    // even that the daemon is starting.
    let protected = protected
        .layer(gate.clone())
        .layer(axum::middleware::from_fn_with_state(
            state.api_token.clone(),
            auth::require_token,
        ));
    let notify = Router::new()
        .route(
            "/notify/{channel}",
            post(notify::ingress).layer(DefaultBodyLimit::max(
                crate::gateway::MAX_NOTIFICATION_BODY_BYTES,
            )),
        )
        .layer(gate)
        .with_state(state.clone());
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .with_state(state)
        .merge(notify)
        .merge(protected)
}
