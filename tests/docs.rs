//! `docs/contract.md` is what upstream apps program against, so its examples
//! are checked against the code: every ```json block parses, every request
//! example passes the daemon's own parser, and the order objects, events and
//! the report carry exactly the fields the code writes. No database or
//! broker: this is about the wire shapes only.

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;
use uuid::Uuid;

use payrecon::domain::recon::{
    summarize, BillSourceKind, BillTotals, Category, Discrepancy, ReconRun, Report, Resolution,
    RunStatus,
};
use payrecon::domain::{Channel, LineItem, Money, NewOrder, Order, OrderId, OrderStatus};
use payrecon::jobs::report::report_json;
use payrecon::messaging::contracts::order_json;
use payrecon::messaging::requests::{parse_notification_envelope, parse_request};

const REQUEST_TYPES: [&str; 7] = [
    "order.place",
    "payment.request",
    "order.cancel",
    "order.ship",
    "order.confirm_receipt",
    "refund.request",
    "recon.run",
];

/// Every event type of §4 with the fields its `data` holds besides `order`,
/// and whether it carries the order.
const EVENT_TYPES: [(&str, &[&str], bool); 13] = [
    ("order.created", &[], true),
    ("payment.prepared", &["prepay"], true),
    ("payment.failed", &["error"], true),
    ("order.paid", &["source"], true),
    ("order.shipped", &[], true),
    ("order.completed", &[], true),
    ("order.cancelled", &["reason"], true),
    ("refund.succeeded", &["refund"], true),
    ("refund.failed", &["refund", "error"], true),
    ("order.refunded", &[], true),
    (
        "payment.anomaly",
        &[
            "kind",
            "channel",
            "out_trade_no",
            "gateway_amount",
            "gateway_transaction_id",
        ],
        true,
    ),
    (
        "request.rejected",
        &["request_type", "reason", "message"],
        false,
    ),
    (
        "recon.completed",
        &["run_id", "channel", "date", "summary"],
        false,
    ),
];

fn contract() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/contract.md");
    std::fs::read_to_string(path).expect("docs/contract.md is readable")
}

/// The text of every ```json block, with the line it starts on.
fn json_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        match &mut current {
            None if line.trim_end() == "```json" => current = Some((i + 1, String::new())),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.extend(current.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    assert!(current.is_none(), "a ```json block is not closed");
    blocks
}

fn examples() -> Vec<(usize, Value)> {
    let text = contract();
    json_blocks(&text)
        .into_iter()
        .map(|(line, body)| {
            let value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("docs/contract.md line {line}: not JSON: {e}"));
            (line, value)
        })
        .collect()
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn is_request(v: &Value) -> bool {
    v.get("event_id").is_none() && v.get("request_id").is_some() && v.get("data").is_some()
}

fn is_event(v: &Value) -> bool {
    v.get("event_id").is_some()
}

#[test]
fn every_json_block_parses() {
    let blocks = json_blocks(&contract());
    assert!(blocks.len() >= 25, "only {} json blocks", blocks.len());
    for (line, body) in blocks {
        if let Err(e) = serde_json::from_str::<Value>(&body) {
            panic!("docs/contract.md line {line}: not JSON: {e}");
        }
    }
}

#[test]
fn request_examples_pass_the_request_parser() {
    let mut seen = BTreeSet::new();
    for (line, v) in examples().iter().filter(|(_, v)| is_request(v)) {
        let kind = str_field(v, "type").unwrap_or_default();
        if kind == "gateway.notification" {
            continue;
        }
        let body = serde_json::to_vec(v).expect("a Value prints");
        match parse_request(&body) {
            Ok(env) => {
                assert_eq!(env.kind, kind, "line {line}");
                assert_eq!(env.body.type_name(), kind, "line {line}");
            }
            Err(e) => panic!(
                "docs/contract.md line {line}: {kind} refused: {}",
                e.message
            ),
        }
        seen.insert(kind.to_string());
    }
    let missing: Vec<_> = REQUEST_TYPES
        .iter()
        .filter(|t| !seen.contains(**t))
        .collect();
    assert!(missing.is_empty(), "no example of {missing:?}");
}

#[test]
fn notification_examples_pass_the_notification_parser() {
    let mut channels = BTreeSet::new();
    for (line, v) in examples().iter().filter(|(_, v)| is_request(v)) {
        if str_field(v, "type") != Some("gateway.notification") {
            continue;
        }
        let body = serde_json::to_vec(v).expect("a Value prints");
        let env = parse_notification_envelope(&body)
            .unwrap_or_else(|e| panic!("docs/contract.md line {line}: refused: {}", e.message));
        let channel = str_field(&env.body, "channel").expect("data.channel");
        channel
            .parse::<Channel>()
            .unwrap_or_else(|_| panic!("line {line}: unknown channel {channel}"));
        assert!(env.body["headers"].is_object(), "line {line}: headers");
        assert!(env.body["body"].is_string(), "line {line}: body");
        channels.insert(channel.to_string());
    }
    assert_eq!(channels.len(), 2, "one notification per channel");
}

/// An order as the code prints it: the field names every example must have.
fn code_order() -> Value {
    let new = NewOrder {
        order_id: OrderId::generate(),
        user_id: "u1".into(),
        items: vec![LineItem {
            product_id: "p1".into(),
            quantity: 2,
            unit_price: Money::from_fen(1999).expect("fen"),
        }],
        payment_method: Channel::WechatPay,
        pay_timeout: chrono::Duration::minutes(30),
    };
    order_json(&Order::place(new, Utc::now()).expect("a valid order"))
}

fn check_order(line: usize, order: &Value) {
    assert_eq!(
        keys(order),
        keys(&code_order()),
        "line {line}: order fields"
    );
    let id: Uuid = str_field(order, "order_id")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("line {line}: order_id is not a UUID"));
    assert_eq!(
        str_field(order, "out_trade_no"),
        Some(id.simple().to_string().as_str()),
        "line {line}: out_trade_no is the order id's 32 hex digits"
    );
    let status = str_field(order, "status").unwrap_or_default();
    assert!(
        OrderStatus::ALL.iter().any(|s| s.as_str() == status),
        "line {line}: status {status}"
    );
    let total: i64 = order["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["quantity"].as_i64().unwrap_or(0) * i["unit_price"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(order["total_amount"].as_i64(), Some(total), "line {line}");
    for key in ["paid_amount", "refunded_amount"] {
        assert!(order[key].as_i64().is_some(), "line {line}: {key} in fen");
    }
    for key in ["created_at", "expires_at"] {
        rfc3339(line, &order[key]);
    }
}

fn rfc3339(line: usize, v: &Value) -> DateTime<chrono::FixedOffset> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .unwrap_or_else(|| panic!("line {line}: {v} is not an RFC 3339 time"))
}

#[test]
fn event_examples_have_the_fields_the_code_writes() {
    let mut seen = BTreeSet::new();
    for (line, v) in examples().iter().filter(|(_, v)| is_event(v)) {
        let line = *line;
        assert_eq!(
            keys(v),
            ["data", "event_id", "occurred_at", "request_id", "type"]
                .map(String::from)
                .into(),
            "line {line}: envelope fields"
        );
        str_field(v, "event_id")
            .and_then(|s| s.parse::<Uuid>().ok())
            .unwrap_or_else(|| panic!("line {line}: event_id is not a UUID"));
        rfc3339(line, &v["occurred_at"]);
        assert!(
            v["request_id"].is_null() || v["request_id"].is_string(),
            "line {line}"
        );
        let kind = str_field(v, "type").unwrap_or_default();
        let (_, extra, with_order) = EVENT_TYPES
            .iter()
            .find(|(t, _, _)| *t == kind)
            .unwrap_or_else(|| panic!("line {line}: unknown event type {kind}"));
        let data = &v["data"];
        let mut expected: BTreeSet<String> = extra.iter().map(|s| s.to_string()).collect();
        // An anomaly about an `out_trade_no` we do not know has no order.
        let unknown_order = str_field(data, "kind") == Some("unknown_order");
        if *with_order && !unknown_order {
            expected.insert("order".into());
            check_order(line, &data["order"]);
        }
        assert_eq!(keys(data), expected, "line {line}: data of {kind}");
        seen.insert(kind.to_string());
    }
    let missing: Vec<_> = EVENT_TYPES
        .iter()
        .map(|(t, _, _)| *t)
        .filter(|t| !seen.contains(*t))
        .collect();
    assert!(missing.is_empty(), "no example of {missing:?}");
}

#[test]
fn bare_order_objects_have_the_fields_the_code_writes() {
    let orders: Vec<_> = examples()
        .into_iter()
        .filter(|(_, v)| v.get("out_trade_no").is_some() && v.get("items").is_some())
        .collect();
    assert!(!orders.is_empty(), "the order object has an example");
    for (line, order) in orders {
        check_order(line, &order);
    }
}

/// A report as the code prints it, with one discrepancy.
fn code_report() -> Value {
    let summary = summarize(&[], &BillTotals::default(), 0, 0, &[]);
    let run = ReconRun {
        run_id: Uuid::new_v4(),
        channel: Channel::WechatPay,
        date: NaiveDate::from_ymd_opt(2026, 11, 24).expect("a date"),
        status: RunStatus::Completed,
        trigger: "schedule".into(),
        bill_source: BillSourceKind::Gateway,
        started_at: Utc::now(),
        finished_at: Some(Utc::now()),
        summary: Some(summary),
        error: None,
    };
    let discrepancy = Discrepancy {
        category: Category::PaidAfterCancel,
        out_trade_no: "0".repeat(32),
        order_id: None,
        local_amount: None,
        gateway_amount: None,
        local_status: None,
        gateway_status: None,
        gateway_transaction_id: None,
        resolution: Resolution::Open,
    };
    report_json(&Report {
        run,
        discrepancies: vec![discrepancy],
    })
}

#[test]
fn the_report_example_has_the_fields_the_code_writes() {
    let reports: Vec<_> = examples()
        .into_iter()
        .filter(|(_, v)| v.get("discrepancies").is_some())
        .collect();
    assert_eq!(reports.len(), 1, "one report example");
    let (line, report) = &reports[0];
    let code = code_report();
    assert_eq!(keys(report), keys(&code), "line {line}: report fields");
    assert_eq!(
        keys(&report["summary"]),
        keys(&code["summary"]),
        "line {line}: summary fields"
    );
    assert_eq!(
        keys(&report["summary"]["discrepancies_by_category"]),
        keys(&code["summary"]["discrepancies_by_category"]),
        "line {line}: every category"
    );
    let items = report["discrepancies"].as_array().expect("a list");
    assert!(!items.is_empty(), "line {line}: a discrepancy is shown");
    for item in items {
        assert_eq!(
            keys(item),
            keys(&code["discrepancies"][0]),
            "line {line}: discrepancy fields"
        );
    }
    // The summary the `recon.completed` example carries is the report's.
    for (line, v) in examples().iter().filter(|(_, v)| is_event(v)) {
        if str_field(v, "type") == Some("recon.completed") {
            assert_eq!(
                keys(&v["data"]["summary"]),
                keys(&code["summary"]),
                "line {line}: recon.completed summary"
            );
        }
    }
}

fn repo_file(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// An operator paged by an alert finds what to do in the README's table.
#[test]
fn every_alert_has_a_runbook_entry_in_the_readme() {
    let rules = repo_file("config/prometheus-alerts.yml");
    let readme = repo_file("README.md");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 10, "only {} alerts", alerts.len());
    for alert in alerts {
        assert!(
            readme.contains(&format!("| `{alert}` |")),
            "README has no runbook row for {alert}"
        );
    }
}

/// The dashboard and the rules use only metric names the README lists, so a
/// renamed metric cannot leave a panel or an alert silently empty.
#[test]
fn config_metric_names_are_the_readme_ones() {
    let readme = repo_file("README.md");
    let dashboard = repo_file("config/grafana-dashboard.json");
    serde_json::from_str::<Value>(&dashboard).expect("the dashboard is JSON");
    let rules = repo_file("config/prometheus-alerts.yml");
    let mut names = BTreeSet::new();
    for text in [&dashboard, &rules] {
        for (i, _) in text.match_indices("payrecon_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            // Histogram series carry a suffix the exporter adds.
            let base = name.strip_suffix("_bucket").unwrap_or(&name).to_string();
            names.insert(base);
        }
    }
    assert!(names.len() >= 15, "{names:?}");
    for name in names {
        assert!(
            readme.contains(&format!("`{name}")),
            "{name} is used in config/ but not named in the README"
        );
    }
}
