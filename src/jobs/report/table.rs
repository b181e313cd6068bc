//! Plain-text output for a terminal: the summary as `label  value` lines,
//! then one aligned table of discrepancies (amounts in yuan).

use std::fmt::Write;

use super::{percent, yuan};
use crate::domain::recon::{ReconRun, Report};
use crate::messaging::contracts::rfc3339;

pub fn render_table(report: &Report) -> String {
    let run = &report.run;
    let mut out = String::new();
    let _ = writeln!(out, "run       {}", run.run_id);
    let _ = writeln!(
        out,
        "channel   {}   date {}   status {}   bill {}",
        run.channel,
        run.date,
        run.status.as_str(),
        run.bill_source.as_str()
    );
    let _ = writeln!(
        out,
        "started   {}   finished {}",
        rfc3339(run.started_at),
        run.finished_at.map(rfc3339).unwrap_or_else(|| "-".into())
    );
    if let Some(error) = &run.error {
        let _ = writeln!(out, "error     {error}");
    }
    if let Some(s) = &run.summary {
        out.push('\n');
        out.push_str(&summary_lines(s));
    }
    out.push('\n');
    if report.discrepancies.is_empty() {
        out.push_str("no discrepancies\n");
        return out;
    }
    let header = [
        "category",
        "out_trade_no",
        "ours",
        "gateway",
        "our status",
        "gateway status",
        "resolution",
    ];
    let rows: Vec<[String; 7]> = report
        .discrepancies
        .iter()
        .map(|d| {
            [
                d.category.as_str().to_string(),
                d.out_trade_no.clone(),
                yuan(d.local_amount.map(|m| m.fen())),
                yuan(d.gateway_amount.map(|m| m.fen())),
                d.local_status
                    .map(|s| s.as_str())
                    .unwrap_or("—")
                    .to_string(),
                d.gateway_status.clone().unwrap_or_else(|| "—".into()),
                d.resolution.as_str().to_string(),
            ]
        })
        .collect();
    out.push_str(&align(&header, &rows, &[2, 3]));
    out
}

/// The summary, one figure per line; shared with `recon run`'s output.
pub fn summary_lines(s: &crate::domain::recon::Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "orders        {:>8}   total ¥{}   average ¥{}",
        s.order_count,
        yuan(Some(s.total_amount)),
        yuan(Some(s.average_amount))
    );
    let _ = writeln!(
        out,
        "paid          {:>8}   failed {}   pending {}   success rate {}",
        s.paid_count,
        s.failed_count,
        s.pending_count,
        percent(s.success_rate)
    );
    let _ = writeln!(
        out,
        "bill payments {:>8}   amount ¥{}   refunds ¥{}   fees ¥{}",
        s.bill_count,
        yuan(Some(s.bill_amount)),
        yuan(Some(s.bill_refund_amount)),
        yuan(Some(s.bill_fee))
    );
    let _ = writeln!(
        out,
        "matched       {:>8}   amount ¥{}",
        s.matched_count,
        yuan(Some(s.matched_amount))
    );
    let by: Vec<String> = s
        .discrepancies_by_category
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "discrepancies {:>8}   {}",
        s.discrepancy_count,
        by.join(", ")
    );
    out
}

pub fn render_runs_table(runs: &[ReconRun]) -> String {
    let header = [
        "run_id",
        "channel",
        "date",
        "status",
        "started_at",
        "discrepancies",
    ];
    let rows: Vec<[String; 6]> = runs
        .iter()
        .map(|r| {
            [
                r.run_id.to_string(),
                r.channel.as_str().to_string(),
                r.date.to_string(),
                r.status.as_str().to_string(),
                rfc3339(r.started_at),
                r.summary
                    .as_ref()
                    .map(|s| s.discrepancy_count.to_string())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no reconciliation runs\n".to_string();
    }
    align(&header, &rows, &[5])
}

/// Left-aligned columns, except `right` (numbers), separated by two spaces.
fn align<const N: usize>(header: &[&str; N], rows: &[[String; N]], right: &[usize]) -> String {
    let width = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = header.iter().map(|h| width(h)).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = " ".repeat(widths[i].saturating_sub(width(c)));
                if right.contains(&i) {
                    format!("{pad}{c}")
                } else {
                    format!("{c}{pad}")
                }
            })
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}
