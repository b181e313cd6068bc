//! The top of finance's page: each category with its count and amounts, and
//! a bar chart of what matched against what did not, by amount. Drawn as
//! inline SVG so the page stays one file that opens offline and prints.

use std::fmt::Write;

use super::html::esc;
use super::yuan;
use crate::domain::recon::{Category, Discrepancy, Report};

/// One category's totals, in fen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CategoryTotal {
    pub category: Category,
    pub count: usize,
    pub local: i64,
    pub gateway: i64,
    /// What the chart draws: per discrepancy the larger of the two sides,
    /// so a payment missing on one side still counts with its full amount.
    pub at_stake: i64,
}

pub fn category_totals(discrepancies: &[Discrepancy]) -> Vec<CategoryTotal> {
    Category::ALL
        .iter()
        .map(|&category| {
            let mut t = CategoryTotal {
                category,
                count: 0,
                local: 0,
                gateway: 0,
                at_stake: 0,
            };
            for d in discrepancies.iter().filter(|d| d.category == category) {
                let local = d.local_amount.map_or(0, |m| m.fen());
                let gateway = d.gateway_amount.map_or(0, |m| m.fen());
                t.count += 1;
                t.local = t.local.saturating_add(local);
                t.gateway = t.gateway.saturating_add(gateway);
                t.at_stake = t.at_stake.saturating_add(local.max(gateway));
            }
            t
        })
        .collect()
}

/// The overview table (every category, also those with none) and the chart.
pub fn render_overview(h: &mut String, report: &Report) {
    let totals = category_totals(&report.discrepancies);
    h.push_str(
        "<h2>Discrepancies at a glance</h2>\n<table class=\"overview\" id=\"overview\">\n\
         <thead><tr><th>category</th><th class=\"num\">count</th><th class=\"num\">ours (¥)</th>\
         <th class=\"num\">gateway (¥)</th><th class=\"num\">at stake (¥)</th></tr></thead>\n<tbody>\n",
    );
    for t in &totals {
        let class = if t.count == 0 { " class=\"zero\"" } else { "" };
        let _ = writeln!(
            h,
            "<tr id=\"overview-{key}\"{class}><td>{title} <small>({key})</small></td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            t.count,
            esc(&yuan(Some(t.local))),
            esc(&yuan(Some(t.gateway))),
            esc(&yuan(Some(t.at_stake))),
            key = t.category.as_str(),
            title = esc(t.category.title()),
        );
    }
    h.push_str("</tbody>\n</table>\n");
    let matched = report.run.summary.as_ref().map_or(0, |s| s.matched_amount);
    render_chart(h, matched, &totals);
}

const BAR_AREA: f64 = 420.0;
const LABEL_WIDTH: f64 = 230.0;
const ROW: f64 = 22.0;

/// Horizontal bars on one linear scale: matched money usually dwarfs the
/// discrepancies, which is the truth finance should see; a non-zero
/// category still gets a visible sliver and its figure beside it.
fn render_chart(h: &mut String, matched: i64, totals: &[CategoryTotal]) {
    let mut rows: Vec<(&str, &str, i64)> = vec![("Matched", "matched", matched)];
    rows.extend(
        totals
            .iter()
            .map(|t| (t.category.title(), t.category.as_str(), t.at_stake)),
    );
    let max = rows.iter().map(|r| r.2).max().unwrap_or(0).max(1);
    let height = ROW * rows.len() as f64 + 8.0;
    let width = LABEL_WIDTH + BAR_AREA + 110.0;
    let _ = writeln!(
        h,
        "<figure class=\"chart\"><svg id=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"Matched amount against each discrepancy category, in yuan\">"
    );
    for (i, (label, key, fen)) in rows.iter().enumerate() {
        let y = 4.0 + ROW * i as f64;
        let mut w = BAR_AREA * (*fen as f64) / (max as f64);
        if *fen > 0 && w < 2.0 {
            w = 2.0;
        }
        let fill = if *key == "matched" {
            "#4a8f4a"
        } else {
            "#c0504d"
        };
        let _ = writeln!(
            h,
            "<text x=\"{lx}\" y=\"{ty}\" text-anchor=\"end\" font-size=\"12\">{label}</text>\
             <rect data-category=\"{key}\" x=\"{LABEL_WIDTH}\" y=\"{y}\" width=\"{w:.1}\" height=\"{bh}\" fill=\"{fill}\"/>\
             <text x=\"{vx:.1}\" y=\"{ty}\" font-size=\"12\">¥{value}</text>",
            lx = LABEL_WIDTH - 6.0,
            ty = y + 13.0,
            bh = ROW - 6.0,
            vx = LABEL_WIDTH + w + 5.0,
            label = esc(label),
            value = esc(&yuan(Some(*fen))),
        );
    }
    h.push_str("</svg><figcaption class=\"note\">Matched amount against the amount at stake in each category (per discrepancy the larger of our amount and the gateway's), in yuan, one scale.</figcaption></figure>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::recon::Resolution;
    use crate::domain::Money;

    fn d(category: Category, local: Option<i64>, gateway: Option<i64>) -> Discrepancy {
        Discrepancy {
            category,
            out_trade_no: "x".into(),
            order_id: None,
            local_amount: local.map(|f| Money::from_fen(f).unwrap()),
            gateway_amount: gateway.map(|f| Money::from_fen(f).unwrap()),
            local_status: None,
            gateway_status: None,
            gateway_transaction_id: None,
            resolution: Resolution::Open,
        }
    }

    #[test]
    fn totals_cover_every_category_and_take_the_larger_side() {
        let t = category_totals(&[
            d(Category::AmountMismatch, Some(100), Some(90)),
            d(Category::AmountMismatch, Some(50), Some(70)),
            d(Category::MissingLocal, None, Some(300)),
        ]);
        assert_eq!(t.len(), 7);
        let am = &t[0];
        assert_eq!(
            (am.count, am.local, am.gateway, am.at_stake),
            (2, 150, 160, 170)
        );
        let ml = t
            .iter()
            .find(|t| t.category == Category::MissingLocal)
            .unwrap();
        assert_eq!((ml.count, ml.at_stake), (1, 300));
        assert!(t
            .iter()
            .filter(|t| !matches!(
                t.category,
                Category::AmountMismatch | Category::MissingLocal
            ))
            .all(|t| t.count == 0 && t.at_stake == 0));
    }
}
