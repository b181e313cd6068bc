//! A run's report in every format of docs/contract.md §6: JSON (the API's and
//! `--format json`), CSV (one row per discrepancy), HTML (what finance
//! opens and prints) and a terminal table. All are pure functions of a
//! [`Report`]; the JSON field names are written here and nowhere else.

mod csv;
mod html;
mod overview;
mod table;

use serde_json::{json, Value};

use crate::domain::recon::{ReconRun, Report};
use crate::messaging::contracts::rfc3339;

pub use self::csv::render_csv;
pub use html::render_html;
pub use overview::{category_totals, CategoryTotal};
pub use table::{render_runs_table, render_table, summary_lines};

/// The report object of docs/contract.md §6.
pub fn report_json(report: &Report) -> Value {
    let mut value = run_json(&report.run);
    if let Value::Object(map) = &mut value {
        map.insert(
            "discrepancies".into(),
            serde_json::to_value(&report.discrepancies).unwrap_or(Value::Array(Vec::new())),
        );
    }
    value
}

/// One run without its discrepancies (the list's items).
pub fn run_json(run: &ReconRun) -> Value {
    let mut value = json!({
        "run_id": run.run_id,
        "channel": run.channel.as_str(),
        "date": run.date.to_string(),
        "status": run.status.as_str(),
        "trigger": run.trigger,
        "started_at": rfc3339(run.started_at),
        "finished_at": run.finished_at.map(rfc3339),
        "bill_source": run.bill_source.as_str(),
        "summary": run.summary,
    });
    if let (Some(error), Value::Object(map)) = (&run.error, &mut value) {
        map.insert("error".into(), Value::String(error.clone()));
    }
    value
}

pub fn render_json(report: &Report) -> String {
    let mut text = serde_json::to_string_pretty(&report_json(report)).unwrap_or_default();
    text.push('\n');
    text
}

pub fn render_runs_json(runs: &[ReconRun]) -> String {
    let list: Vec<Value> = runs.iter().map(run_json).collect();
    let mut text = serde_json::to_string_pretty(&Value::Array(list)).unwrap_or_default();
    text.push('\n');
    text
}

/// `0.6667` → "66.67%": a rate for people, the JSON keeps the exact ratio.
pub(crate) fn percent(rate: f64) -> String {
    format!("{:.2}%", rate * 100.0)
}

/// Fen as yuan with two decimals ("12.34"), or "—" when absent.
pub(crate) fn yuan(fen: Option<i64>) -> String {
    match fen {
        Some(f) => crate::domain::format_signed_yuan(f, 2),
        None => "—".to_string(),
    }
}
