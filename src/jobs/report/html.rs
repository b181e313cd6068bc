//! The page finance opens: self-contained (inline CSS and SVG, no scripts,
//! no external resources), printable on A4, the summary first, then each
//! category at a glance with a chart, then the discrepancies grouped by
//! category with amounts in yuan. Every value is
//! HTML-escaped: bill content comes from outside.

use std::fmt::Write;

use super::{percent, yuan};
use crate::domain::recon::{Category, Discrepancy, Report};
use crate::messaging::contracts::rfc3339;

const STYLE: &str = "
body { font-family: -apple-system, 'Segoe UI', 'Noto Sans', 'PingFang SC', sans-serif; color: #222; margin: 2em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #999; }
.meta { color: #555; margin-bottom: 1.2em; }
table { border-collapse: collapse; margin-top: 0.5em; }
table.detail { width: 100%; }
code { white-space: nowrap; }
.note { color: #555; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.summary th { background: #f2f2f2; font-weight: normal; }
thead th { background: #e8e8e8; }
.status-failed { color: #a00; font-weight: bold; }
.none { color: #2a7a2a; }
table.overview tr.zero td { color: #888; }
figure.chart { margin: 1em 0; }
figure.chart svg { max-width: 100%; height: auto; }
@page { size: A4; margin: 1.2cm; }
@media print { body { margin: 0; font-size: 10pt; } h2, h3 { page-break-after: avoid; } tr, figure { page-break-inside: avoid; } table.detail { font-size: 8.5pt; } }
";

pub fn render_html(report: &Report) -> String {
    let run = &report.run;
    let mut h = String::with_capacity(8 * 1024);
    let title = format!("Reconciliation {} {}", run.channel.as_str(), run.date);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        esc(&title),
        esc(&title)
    );
    let _ = writeln!(
        h,
        "<div class=\"meta\">Run <code>{}</code> · status <span class=\"status-{}\">{}</span> · bill from {} · started {} · finished {}</div>",
        esc(&run.run_id.to_string()),
        esc(run.status.as_str()),
        esc(run.status.as_str()),
        esc(run.bill_source.as_str()),
        esc(&rfc3339(run.started_at)),
        esc(&run.finished_at.map(rfc3339).unwrap_or_else(|| "—".into()))
    );
    if let Some(error) = &run.error {
        let _ = writeln!(
            h,
            "<p class=\"status-failed\">The run failed: {}</p>",
            esc(error)
        );
    }
    if let Some(s) = &run.summary {
        h.push_str("<h2>Summary</h2>\n<table class=\"summary\" id=\"summary\">\n");
        let rows = [
            ("order_count", "Orders created", s.order_count.to_string()),
            (
                "total_amount",
                "Total amount (¥)",
                yuan(Some(s.total_amount)),
            ),
            (
                "average_amount",
                "Average amount (¥)",
                yuan(Some(s.average_amount)),
            ),
            ("paid_count", "Paid", s.paid_count.to_string()),
            ("failed_count", "Failed", s.failed_count.to_string()),
            ("pending_count", "Pending", s.pending_count.to_string()),
            ("success_rate", "Success rate", percent(s.success_rate)),
            ("bill_count", "Bill payments", s.bill_count.to_string()),
            ("bill_amount", "Bill amount (¥)", yuan(Some(s.bill_amount))),
            (
                "bill_refund_amount",
                "Bill refunds (¥)",
                yuan(Some(s.bill_refund_amount)),
            ),
            ("bill_fee", "Bill fees (¥)", yuan(Some(s.bill_fee))),
            ("matched_count", "Matched", s.matched_count.to_string()),
            (
                "matched_amount",
                "Matched amount (¥)",
                yuan(Some(s.matched_amount)),
            ),
            (
                "discrepancy_count",
                "Discrepancies",
                s.discrepancy_count.to_string(),
            ),
        ];
        for (key, label, value) in &rows {
            let _ = writeln!(
                h,
                "<tr id=\"{key}\"><th>{}</th><td class=\"num\">{}</td></tr>",
                esc(label),
                esc(value)
            );
        }
        h.push_str("</table>\n");
    }
    super::overview::render_overview(&mut h, report);
    h.push_str("<h2>Discrepancies</h2>\n<p class=\"note\">Amounts in yuan (¥). A status mismatch is repaired only after the gateway confirmed the payment; everything else is open for review.</p>\n");
    if report.discrepancies.is_empty() {
        h.push_str("<p class=\"none\">None: the bill and our records agree.</p>\n");
    }
    for category in Category::ALL {
        let group: Vec<&Discrepancy> = report
            .discrepancies
            .iter()
            .filter(|d| d.category == category)
            .collect();
        if !group.is_empty() {
            category_table(&mut h, category, &group);
        }
    }
    h.push_str("</body>\n</html>\n");
    h
}

fn category_table(h: &mut String, category: Category, group: &[&Discrepancy]) {
    let _ = write!(
        h,
        "<h3 id=\"{}\">{} <small>({}, {})</small></h3>\n<table class=\"detail\">\n<thead><tr><th>out_trade_no</th><th>order</th>\
         <th class=\"num\">ours (¥)</th><th class=\"num\">gateway (¥)</th><th>our status</th>\
         <th>gateway status</th><th>gateway transaction</th><th>resolution</th></tr></thead>\n<tbody>\n",
        category.as_str(),
        esc(category.title()),
        esc(category.as_str()),
        group.len()
    );
    for d in group {
        let _ = writeln!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&d.out_trade_no),
            esc(&d.order_id.map(|o| o.to_string()).unwrap_or_else(|| "—".into())),
            esc(&yuan(d.local_amount.map(|m| m.fen()))),
            esc(&yuan(d.gateway_amount.map(|m| m.fen()))),
            esc(d.local_status.map(|s| s.as_str()).unwrap_or("—")),
            esc(d.gateway_status.as_deref().unwrap_or("—")),
            esc(d.gateway_transaction_id.as_deref().unwrap_or("—")),
            esc(d.resolution.as_str())
        );
    }
    h.push_str("</tbody>\n</table>\n");
}

/// Escapes text for element content and quoted attribute values.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup() {
        assert_eq!(
            super::esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
