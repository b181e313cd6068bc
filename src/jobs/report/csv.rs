//! One row per discrepancy, the JSON's discrepancy fields as columns
//! (amounts in fen, like the JSON).

use crate::domain::recon::Report;

pub const COLUMNS: [&str; 9] = [
    "category",
    "out_trade_no",
    "order_id",
    "local_amount",
    "gateway_amount",
    "local_status",
    "gateway_status",
    "gateway_transaction_id",
    "resolution",
];

pub fn render_csv(report: &Report) -> String {
    let mut out = ::csv::WriterBuilder::new()
        .terminator(::csv::Terminator::CRLF)
        .from_writer(Vec::new());
    // Writing to a Vec cannot fail; a failure would only lose the row.
    let _ = out.write_record(COLUMNS);
    for d in &report.discrepancies {
        let amount =
            |m: Option<crate::domain::Money>| m.map(|m| m.fen().to_string()).unwrap_or_default();
        let _ = out.write_record([
            d.category.as_str().to_string(),
            text(&d.out_trade_no),
            d.order_id.map(|o| o.to_string()).unwrap_or_default(),
            amount(d.local_amount),
            amount(d.gateway_amount),
            d.local_status
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            d.gateway_status.as_deref().map(text).unwrap_or_default(),
            d.gateway_transaction_id
                .as_deref()
                .map(text)
                .unwrap_or_default(),
            d.resolution.as_str().to_string(),
        ]);
    }
    let bytes = out.into_inner().unwrap_or_default();
    String::from_utf8(bytes).unwrap_or_default()
}

/// Values that came from a gateway's bill end up in a spreadsheet: one
/// starting with a formula character is prefixed so it stays text.
fn text(value: &str) -> String {
    if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_string()
    }
}
