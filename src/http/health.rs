//! Liveness, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

use super::HttpState;
use crate::store::orders;

pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready only while both PostgreSQL and RabbitMQ are reachable: a balancer
/// sends no notifications to an instance that could not enqueue them.
pub async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    // Bounded: a probe must answer within a balancer's timeout even when the
    // database hangs instead of refusing.
    let probe = sqlx::query("SELECT 1").execute(&s.pool);
    let db = matches!(
        tokio::time::timeout(std::time::Duration::from_secs(2), probe).await,
        Ok(Ok(_))
    );
    let broker = s.broker.is_ready();
    let status = if db && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({ "database": db, "broker": broker })),
    )
}

pub async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    // Orders by status are read at scrape time: always current, no bookkeeping.
    if let Ok(mut conn) = s.pool.acquire().await {
        if let Ok(counts) = orders::count_by_status(&mut conn).await {
            for status in crate::domain::OrderStatus::ALL {
                let n = counts
                    .iter()
                    .find(|(st, _)| st == status.as_str())
                    .map_or(0, |(_, n)| *n);
                metrics::gauge!("payrecon_orders", "status" => status.as_str()).set(n as f64);
            }
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}
