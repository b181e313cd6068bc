//! `GET /recon/runs` and `GET /recon/runs/{run_id}[.csv|.html]` (docs/contract.md §5).
//! Bearer-token auth is applied around this router by the caller.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::recon::Report;
use crate::jobs::report;
use crate::store::{recon as store, StoreError};

#[derive(Clone)]
pub struct ReconHttpState {
    pub pool: PgPool,
}

pub fn router(state: ReconHttpState) -> Router {
    Router::new()
        .route("/recon/runs", get(list_runs))
        .route("/recon/runs/{file}", get(get_run))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct ListParams {
    limit: Option<i64>,
}

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 1000;

async fn list_runs(
    State(state): State<ReconHttpState>,
    Query(params): Query<ListParams>,
) -> Response {
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let result = async {
        let mut conn = state.pool.acquire().await.map_err(StoreError::from)?;
        store::list_runs(&mut conn, limit).await
    }
    .await;
    match result {
        Ok(runs) => Json(Value::Array(runs.iter().map(report::run_json).collect())).into_response(),
        Err(e) => internal(e),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
    Html,
}

/// `{run_id}`, `{run_id}.json`, `{run_id}.csv` or `{run_id}.html`.
fn parse_file(file: &str) -> Option<(Uuid, Format)> {
    let (id, format) = match file.rsplit_once('.') {
        Some((id, "csv")) => (id, Format::Csv),
        Some((id, "html")) => (id, Format::Html),
        Some((id, "json")) => (id, Format::Json),
        Some(_) => return None,
        None => (file, Format::Json),
    };
    Uuid::parse_str(id).ok().map(|id| (id, format))
}

async fn get_run(State(state): State<ReconHttpState>, Path(file): Path<String>) -> Response {
    let Some((run_id, format)) = parse_file(&file) else {
        return not_found();
    };
    let result = async {
        let mut conn = state.pool.acquire().await.map_err(StoreError::from)?;
        let Some(run) = store::get_run(&mut conn, run_id).await? else {
            return Ok(None);
        };
        let discrepancies = store::discrepancies(&mut conn, run_id).await?;
        Ok::<_, StoreError>(Some(Report { run, discrepancies }))
    }
    .await;
    let report = match result {
        Ok(Some(r)) => r,
        Ok(None) => return not_found(),
        Err(e) => return internal(e),
    };
    match format {
        Format::Json => Json(report::report_json(&report)).into_response(),
        Format::Csv => {
            let name = format!(
                "recon-{}-{}-{}.csv",
                report.run.channel, report.run.date, run_id
            );
            (
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("inline; filename=\"{name}\""),
                    ),
                ],
                report::render_csv(&report),
            )
                .into_response()
        }
        Format::Html => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8".to_string()),
                // The page needs nothing from anywhere: say so to the browser.
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'".to_string(),
                ),
            ],
            report::render_html(&report),
        )
            .into_response(),
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": "no such reconciliation run" })),
    )
        .into_response()
}

fn internal(e: StoreError) -> Response {
    tracing::error!(error = %e, "recon report query failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "error": "the report could not be read" })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_suffixes() {
        let id = Uuid::new_v4();
        assert_eq!(parse_file(&id.to_string()), Some((id, Format::Json)));
        assert_eq!(parse_file(&format!("{id}.csv")), Some((id, Format::Csv)));
        assert_eq!(parse_file(&format!("{id}.html")), Some((id, Format::Html)));
        assert_eq!(parse_file(&format!("{id}.pdf")), None);
        assert_eq!(parse_file("nope.csv"), None);
    }
}
