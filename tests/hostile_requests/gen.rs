//! Hostile `P.requests` bodies: a valid request of each type with one
//! thing made wrong, and what the contract says must come of it.

use proptest::prelude::*;
use serde_json::{json, Value};

/// What a value at a place in `data` must be.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    /// An integer with a floor (every hostile number breaks it).
    Int,
    Text,
    Uuid,
    /// One of a few words (currency, payment_method, channel) or a date.
    Word,
}

/// The valid `data` of each request type, and its required fields. Order
/// ids are fresh, so a valid request is at worst `order_not_found`.
fn base(kind: &str) -> (Value, Vec<(&'static str, Slot)>) {
    let id = uuid::Uuid::new_v4().to_string();
    match kind {
        "order.place" => (
            json!({"user_id": "u1", "items": [{"product_id": "p1", "quantity": 2, "unit_price": 1999}],
                   "currency": "CNY", "payment_method": "wechat_pay"}),
            vec![
                ("user_id", Slot::Text),
                ("items/0/product_id", Slot::Text),
                ("items/0/quantity", Slot::Int),
                ("items/0/unit_price", Slot::Int),
                ("currency", Slot::Word),
                ("payment_method", Slot::Word),
            ],
        ),
        "payment.request" => (
            json!({"order_id": id, "amount": 3998, "payment_method": "alipay"}),
            vec![
                ("order_id", Slot::Uuid),
                ("amount", Slot::Int),
                ("payment_method", Slot::Word),
            ],
        ),
        "refund.request" => (
            json!({"order_id": id, "amount": 100, "reason": "r"}),
            vec![
                ("order_id", Slot::Uuid),
                ("amount", Slot::Int),
                ("reason", Slot::Text),
            ],
        ),
        "order.cancel" => (
            json!({"order_id": id, "reason": "r"}),
            vec![("order_id", Slot::Uuid), ("reason", Slot::Text)],
        ),
        "order.ship" => (
            json!({"order_id": id, "carrier": "SF", "tracking_no": "1"}),
            vec![("order_id", Slot::Uuid)],
        ),
        "order.confirm_receipt" => (json!({"order_id": id}), vec![("order_id", Slot::Uuid)]),
        _ => (
            json!({"channel": "alipay", "date": "2026-11-24"}),
            vec![("channel", Slot::Word), ("date", Slot::Word)],
        ),
    }
}

pub const KINDS: [&str; 7] = [
    "order.place",
    "payment.request",
    "refund.request",
    "order.cancel",
    "order.ship",
    "order.confirm_receipt",
    "recon.run",
];

/// JSON text no slot of its kind accepts (raw text: `1e400` and integers
/// beyond i64 cannot be built as a `Value`).
fn wrong_for(slot: Slot) -> Vec<String> {
    let nul = r#""a\u0000b""#.to_string();
    let mut common = vec![
        "null".into(),
        "true".into(),
        "[]".into(),
        "{}".into(),
        nested(10_000),
    ];
    let numbers = [
        "99999999999999999999999",
        "-9223372036854775809",
        "1e400",
        "-1e400",
        "1.5",
        "-1",
        "0.0",
    ];
    match slot {
        Slot::Int => {
            common.extend(numbers.iter().map(|n| n.to_string()));
            common.extend([r#""12""#.into(), nul]);
        }
        Slot::Text => common.extend(["12".into(), "1e400".into(), nul]),
        Slot::Uuid => common.extend([
            r#""not-a-uuid""#.into(),
            "12".into(),
            r#""00000000-0000-0000-0000-00000000000g""#.into(),
            nul,
        ]),
        Slot::Word => common.extend([r#""paypal""#.into(), "12".into(), "1e400".into(), nul]),
    }
    common
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// One hostile request, rendered once the run's request id is known.
#[derive(Debug, Clone)]
pub enum Hostile {
    /// `data` of `kind` with the value at `path` replaced by raw JSON text.
    Slot {
        kind: &'static str,
        path: &'static str,
        text: String,
    },
    /// `data` of `kind` without a required field.
    Missing {
        kind: &'static str,
        path: &'static str,
    },
    /// An order.place with this many items (0, 101, 10,000).
    Items(usize),
    /// `data` itself is raw JSON text that is not an object of the type.
    Data { kind: &'static str, text: String },
    /// The request id is this raw JSON text (too long, NUL, not a string).
    RequestId(String),
    /// The type is this raw JSON text.
    Type(String),
    /// `sent_at` that is not RFC 3339.
    SentAt(String),
    /// Bytes that are not a JSON document.
    Bytes(Vec<u8>),
    /// Well-formed, with numbers at their limits, naming an order that does
    /// not exist: a business rejection, not an invalid request.
    Business { kind: &'static str, amount: i64 },
}

/// What the contract says must happen.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// Dead-lettered; `request.rejected` invalid_request iff `Some`.
    Invalid(Option<String>),
    /// Acknowledged; `request.rejected` with this reason.
    Rejected(String, &'static str),
}

fn replace(data: &mut Value, path: &str, marker: &str) {
    let pointer = format!("/{path}");
    if let Some(v) = data.pointer_mut(&pointer) {
        *v = Value::String(marker.into());
    }
}

fn remove(data: &mut Value, path: &str) {
    let (parent, key) = match path.rsplit_once('/') {
        Some((p, k)) => (format!("/{p}"), k),
        None => (String::new(), path),
    };
    if let Some(Value::Object(m)) = data.pointer_mut(&parent) {
        m.remove(key);
    }
}

const MARK: &str = "@@HOSTILE@@";

fn envelope(kind_text: &str, rid_text: &str, sent_at: &str, data_text: &str) -> Vec<u8> {
    format!(
        r#"{{"type":{kind_text},"request_id":{rid_text},"sent_at":{sent_at},"data":{data_text}}}"#
    )
    .into_bytes()
}

impl Hostile {
    /// The body, and what must come of it, for request id `rid`.
    pub fn render(&self, rid: &str) -> (Vec<u8>, Expect) {
        let q = |s: &str| Value::String(s.into()).to_string();
        let sent = q("2026-11-24T10:00:00+08:00");
        let invalid = Expect::Invalid(Some(rid.to_string()));
        match self {
            Hostile::Slot { kind, path, text } => {
                let (mut data, _) = base(kind);
                replace(&mut data, path, MARK);
                let data = data.to_string().replace(&q(MARK), text);
                (envelope(&q(kind), &q(rid), &sent, &data), invalid)
            }
            Hostile::Missing { kind, path } => {
                let (mut data, _) = base(kind);
                remove(&mut data, path);
                (
                    envelope(&q(kind), &q(rid), &sent, &data.to_string()),
                    invalid,
                )
            }
            Hostile::Items(n) => {
                let (mut data, _) = base("order.place");
                let item = json!({"product_id": "p", "quantity": 1, "unit_price": 1});
                data["items"] = Value::Array(vec![item; *n]);
                (
                    envelope(&q("order.place"), &q(rid), &sent, &data.to_string()),
                    invalid,
                )
            }
            Hostile::Data { kind, text } => (envelope(&q(kind), &q(rid), &sent, text), invalid),
            Hostile::RequestId(text) => {
                let (data, _) = base("order.cancel");
                let text = text.replace(MARK, rid);
                (
                    envelope(&q("order.cancel"), &text, &sent, &data.to_string()),
                    Expect::Invalid(None),
                )
            }
            Hostile::Type(text) => {
                let (data, _) = base("order.cancel");
                (envelope(text, &q(rid), &sent, &data.to_string()), invalid)
            }
            Hostile::SentAt(text) => {
                let (data, _) = base("order.cancel");
                (
                    envelope(&q("order.cancel"), &q(rid), text, &data.to_string()),
                    invalid,
                )
            }
            Hostile::Bytes(bytes) => (bytes.clone(), Expect::Invalid(None)),
            Hostile::Business { kind, amount } => {
                let (mut data, _) = base(kind);
                data["amount"] = json!(amount);
                (
                    envelope(&q(kind), &q(rid), &sent, &data.to_string()),
                    Expect::Rejected(rid.to_string(), "order_not_found"),
                )
            }
        }
    }
}

fn slot_attacks() -> Vec<Hostile> {
    let mut all = Vec::new();
    for kind in KINDS {
        let (_, slots) = base(kind);
        for (path, slot) in slots {
            all.push(Hostile::Missing { kind, path });
            for text in wrong_for(slot) {
                all.push(Hostile::Slot { kind, path, text });
            }
        }
    }
    all
}

/// Every hostile request, drawn with equal weight per family.
pub fn hostile() -> impl Strategy<Value = Hostile> {
    let slots = proptest::sample::select(slot_attacks());
    let items = prop_oneof![Just(0usize), Just(101), Just(10_000)].prop_map(Hostile::Items);
    let data = (
        proptest::sample::select(KINDS.to_vec()),
        prop_oneof![
            Just(nested(10_000)),
            Just(format!("{{\"a\":{}}}", nested(10_000))),
            Just("[]".to_string()),
            Just("\"text\"".to_string()),
            Just("1e400".to_string()),
            Just("null".to_string()),
        ],
    )
        .prop_map(|(kind, text)| Hostile::Data { kind, text });
    let rid = prop_oneof![
        (65usize..2000).prop_map(|n| format!("\"{}\"", "r".repeat(n))),
        Just(format!(r#""{MARK}\u0000""#)),
        Just("\"\"".to_string()),
        Just("12".to_string()),
        Just("1e400".to_string()),
        Just("null".to_string()),
        Just(format!("[\"{MARK}\"]")),
    ]
    .prop_map(Hostile::RequestId);
    let kind = prop_oneof![
        Just("\"order.teleport\"".to_string()),
        Just(r#""order.place\u0000""#.to_string()),
        Just("12".to_string()),
        Just("null".to_string()),
        Just(nested(10_000)),
    ]
    .prop_map(Hostile::Type);
    let sent_at = prop_oneof![
        Just("\"yesterday\"".to_string()),
        Just("12".to_string()),
        Just(r#""2026-11-24T10:00:00+08:00\u0000""#.to_string()),
    ]
    .prop_map(Hostile::SentAt);
    // Not a JSON document: random bytes, cut-off JSON, a BOM, invalid UTF-8.
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512)
            .prop_filter("not JSON", |b| serde_json::from_slice::<Value>(b).is_err()),
        Just(b"{\"type\":\"order.place\",\"request_id\":\"x\"".to_vec()),
        Just(b"\xEF\xBB\xBF{}".to_vec()),
        Just(b"{\"request_id\":\"\xFF\"}".to_vec()),
    ]
    .prop_map(Hostile::Bytes);
    let business = (
        proptest::sample::select(vec!["payment.request", "refund.request"]),
        prop_oneof![Just(1i64), Just(i64::MAX), 1i64..i64::MAX],
    )
        .prop_map(|(kind, amount)| Hostile::Business { kind, amount });
    prop_oneof![slots, items, data, rid, kind, sent_at, bytes, business]
}
