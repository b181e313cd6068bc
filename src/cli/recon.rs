//! `payrecon recon run|report|list` (docs/contract.md §1). Exit codes: 0 done (a run
//! with discrepancies is done), 1 could not run, 3 not found.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use uuid::Uuid;

use super::{exit, ReconCommand};
use crate::domain::recon::{ReconRun, Report};
use crate::domain::Channel;
use crate::jobs::reconcile::{run_reconciliation, BillSource, ReconContext, RunOutcome};
use crate::jobs::report;
use crate::store::{recon as store, StoreError};

pub async fn run(cmd: ReconCommand, ctx: ReconContext) -> i32 {
    match cmd {
        ReconCommand::Run {
            channel,
            date,
            bill_file,
        } => {
            let (Some(channel), Some(date)) = (parse_channel(&channel), parse_date(&date)) else {
                return exit::FAILED;
            };
            let source = match bill_file {
                Some(path) => BillSource::File(path),
                None => BillSource::Gateway,
            };
            run_now(ctx, channel, date, source).await
        }
        ReconCommand::Report {
            run,
            channel,
            date,
            format,
            output,
        } => {
            let report = match find_report(&ctx, run, channel, date).await {
                Ok(Some(r)) => r,
                Ok(None) => {
                    eprintln!("no such reconciliation run");
                    return exit::NOT_FOUND;
                }
                Err(code) => return code,
            };
            let text = match format.as_str() {
                "json" => report::render_json(&report),
                "csv" => report::render_csv(&report),
                "html" => report::render_html(&report),
                _ => report::render_table(&report),
            };
            emit(&text, output.as_deref())
        }
        ReconCommand::List { limit } => {
            let runs = async {
                let mut conn = ctx.pool.acquire().await.map_err(StoreError::from)?;
                store::list_runs(&mut conn, limit).await
            }
            .await;
            match runs {
                Ok(runs) => emit(&report::render_runs_table(&runs), None),
                Err(e) => {
                    eprintln!("error: {e}");
                    exit::FAILED
                }
            }
        }
    }
}

async fn run_now(
    mut ctx: ReconContext,
    channel: Channel,
    date: NaiveDate,
    source: BillSource,
) -> i32 {
    // A bar only for a person watching; logs and pipes get plain log lines.
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {elapsed} {pos} bill rows read ({per_sec})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    if let Some(bar) = &bar {
        let bar = bar.clone();
        ctx.progress = Some(Arc::new(move |rows| bar.set_position(rows)));
    }
    let outcome = run_reconciliation(&ctx, channel, date, source, "cli").await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match outcome {
        Ok(RunOutcome::Completed(report)) => {
            let text = format!(
                "run {}\n{}",
                report.run.run_id,
                report
                    .run
                    .summary
                    .as_ref()
                    .map(report::summary_lines)
                    .unwrap_or_default()
            );
            emit(&text, None)
        }
        Ok(RunOutcome::Skipped(other)) => {
            eprintln!("another reconciliation of {channel} is running (run {other}); not started");
            exit::FAILED
        }
        Err(e) => {
            eprintln!("reconciliation failed: {e}");
            exit::FAILED
        }
    }
}

async fn find_report(
    ctx: &ReconContext,
    run: Option<String>,
    channel: Option<String>,
    date: Option<String>,
) -> Result<Option<Report>, i32> {
    let found: Result<Option<ReconRun>, StoreError> = async {
        let mut conn = ctx.pool.acquire().await.map_err(StoreError::from)?;
        match (run, channel, date) {
            // A malformed id names no run.
            (Some(id), _, _) => match Uuid::parse_str(id.trim()) {
                Ok(id) => store::get_run(&mut conn, id).await,
                Err(_) => Ok(None),
            },
            (None, Some(channel), Some(date)) => {
                let (Some(channel), Some(date)) = (parse_channel(&channel), parse_date(&date))
                else {
                    return Err(StoreError::Conflict("bad arguments".into()));
                };
                store::latest_run(&mut conn, channel, date).await
            }
            _ => Err(StoreError::Conflict(
                "give --run, or --channel and --date".into(),
            )),
        }
    }
    .await;
    let run = match found {
        Ok(Some(run)) => run,
        Ok(None) => return Ok(None),
        Err(StoreError::Conflict(message)) => {
            eprintln!("error: {message}");
            return Err(exit::FAILED);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return Err(exit::FAILED);
        }
    };
    let mut conn = ctx.pool.acquire().await.map_err(|e| {
        eprintln!("error: {e}");
        exit::FAILED
    })?;
    match store::discrepancies(&mut conn, run.run_id).await {
        Ok(discrepancies) => Ok(Some(Report { run, discrepancies })),
        Err(e) => {
            eprintln!("error: {e}");
            Err(exit::FAILED)
        }
    }
}

fn parse_channel(text: &str) -> Option<Channel> {
    text.parse().map_err(|e| eprintln!("error: {e}")).ok()
}

fn parse_date(text: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| eprintln!("error: --date must be YYYY-MM-DD, got {text:?}"))
        .ok()
}

/// Writes to stdout, or to `path` through a temporary file renamed into
/// place, so a reader never sees half a report.
fn emit(text: &str, path: Option<&Path>) -> i32 {
    let result = match path {
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes()).and_then(|_| out.flush())
        }
        Some(path) => write_atomically(path, text.as_bytes()),
    };
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: writing the report: {e}");
            exit::FAILED
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report".into());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", Uuid::new_v4().simple()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    match written.and_then(|_| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}
