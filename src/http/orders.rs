//! `GET /orders/{order_id}`: the order object of docs/contract.md §4.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::HttpState;
use crate::domain::OrderId;
use crate::messaging::contracts::order_json;
use crate::store::orders;

pub async fn show(State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<OrderId>() else {
        return (StatusCode::NOT_FOUND, "no such order").into_response();
    };
    let mut conn = match s.pool.acquire().await {
        Ok(c) => c,
        Err(_) => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
    };
    match orders::get(&mut conn, id).await {
        Ok(Some(order)) => Json(order_json(&order)).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such order").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "order lookup failed");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}
