//! Liveness, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

use super::{gauges, HttpState};

/// Alive as soon as the process listens, whatever its dependencies do: a
/// liveness probe that failed on a database outage would restart every
/// instance at once for nothing.
pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready only once started and while both PostgreSQL and RabbitMQ are
/// reachable: a balancer sends no notifications to an instance that could
/// not enqueue them.
pub async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    let r = gauges::readiness(&s).await;
    let status = if r.database && r.broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({
            "database": r.database,
            "broker": r.broker,
            // Which of amqp.url's brokers the daemon is on (host:port), null
            // while it is on none.
            "broker_address": s.broker.address(),
        })),
    )
}

pub async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    gauges::refresh(&s).await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}
