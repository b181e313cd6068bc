//! What a dead letter says about itself: the headers the daemon (or the
//! broker) put on it when it was dead-lettered, read once into `DeadLetter`.

use chrono::{DateTime, TimeZone, Utc};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde::Serialize;

/// The reason text of docs/contract.md §2.
pub const ERROR_HEADER: &str = "x-payrecon-error";
/// When the daemon dead-lettered the message (AMQP timestamp, seconds).
pub const DEAD_LETTERED_AT_HEADER: &str = "x-payrecon-dead-lettered-at";
/// When `dlq replay` put the message back (AMQP timestamp, seconds).
pub const REPLAYED_AT_HEADER: &str = "x-payrecon-replayed-at";

/// Headers that describe one stay in a dead-letter queue: dropped on replay,
/// so a replayed message that fails again is described by its new failure
/// only, and the broker's delivery count starts afresh.
const STAY_HEADERS: [&str; 9] = [
    ERROR_HEADER,
    DEAD_LETTERED_AT_HEADER,
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
];

/// One dead letter as `dlq list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// The AMQP message_id, or (for a dead letter without one) a digest of
    /// its body and dead-lettering time: see `derived_id`.
    pub id: String,
    /// The dead-letter queue it sits in.
    pub queue: String,
    /// Why it was dead-lettered: our `x-payrecon-error`, or the broker's
    /// x-death reason (e.g. `delivery_limit`).
    pub reason: Option<String>,
    /// The envelope's `type`, when the body is JSON that has one.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub request_id: Option<String>,
    pub dead_lettered_at: Option<DateTime<Utc>>,
    /// The broker's `x-delivery-count` in the dead-letter queue: how often
    /// it was handed out (and returned) there, by listings among others.
    pub deliveries: i64,
}

impl DeadLetter {
    pub fn read(queue: &str, props: &BasicProperties, body: &[u8]) -> DeadLetter {
        let headers = props.headers().as_ref();
        let header = |name: &str| headers.and_then(|h| h.inner().get(name));
        let death = header("x-death").and_then(first_death);
        let dead_lettered_at = header(DEAD_LETTERED_AT_HEADER)
            .and_then(as_time)
            .or_else(|| death.and_then(|d| d.inner().get("time")).and_then(as_time));
        let reason = header(ERROR_HEADER).and_then(as_text).or_else(|| {
            let death = death?.inner();
            let why = death.get("reason").and_then(as_text)?;
            let from = death.get("queue").and_then(as_text).unwrap_or_default();
            Some(format!("broker dead-lettered ({why}) from {from}"))
        });
        let envelope: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let field = |name: &str| {
            envelope
                .as_ref()
                .and_then(|e| e.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let id = match props.message_id() {
            Some(id) if !id.as_str().is_empty() => id.to_string(),
            _ => derived_id(body, dead_lettered_at),
        };
        DeadLetter {
            id,
            queue: queue.to_string(),
            reason,
            kind: field("type"),
            request_id: field("request_id"),
            dead_lettered_at,
            deliveries: header("x-delivery-count").and_then(as_int).unwrap_or(0),
        }
    }

    /// How long it has been dead; `None` when nothing says when it died.
    pub fn age(&self, now: DateTime<Utc>) -> Option<chrono::Duration> {
        self.dead_lettered_at.map(|at| now - at)
    }
}

/// The id of a dead letter that has no message_id (one dead-lettered by the
/// broker, or by a daemon older than `mark`): `sha256-` and the first 16 hex
/// digits of SHA-256 over the body and the dead-lettering time in seconds.
/// Stable for as long as the message sits in the queue; two dead letters
/// with the same body and second are the same for replay.
pub fn derived_id(body: &[u8], dead_lettered_at: Option<DateTime<Utc>>) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(body);
    if let Some(at) = dead_lettered_at {
        ctx.update(&at.timestamp().to_be_bytes());
    }
    let digest = hex::encode(ctx.finish().as_ref());
    format!("sha256-{}", digest.get(..16).unwrap_or(&digest))
}

/// The properties of a message being dead-lettered by the daemon: the
/// reason, the time, and a message_id when the sender set none, so that
/// `dlq replay --id` can name it.
pub fn mark(props: BasicProperties, reason: &str, now: DateTime<Utc>) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(
        ShortString::from(ERROR_HEADER),
        AMQPValue::LongString(LongString::from(reason)),
    );
    headers.insert(
        ShortString::from(DEAD_LETTERED_AT_HEADER),
        AMQPValue::Timestamp(now.timestamp().max(0) as u64),
    );
    let props = props.with_headers(headers);
    match props.message_id() {
        Some(id) if !id.as_str().is_empty() => props,
        _ => props.with_message_id(ShortString::from(uuid::Uuid::now_v7().to_string())),
    }
}

/// The properties of a dead letter being replayed: the same message, without
/// the headers of its stay in the dead-letter queue.
pub fn for_replay(props: &BasicProperties, now: DateTime<Utc>) -> BasicProperties {
    let mut kept: FieldTable = props
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .filter(|(k, _)| {
                    !STAY_HEADERS.contains(&k.as_str()) && k.as_str() != "x-delivery-count"
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<std::collections::BTreeMap<_, _>>()
                .into()
        })
        .unwrap_or_default();
    kept.insert(
        ShortString::from(REPLAYED_AT_HEADER),
        AMQPValue::Timestamp(now.timestamp().max(0) as u64),
    );
    props.clone().with_headers(kept)
}

/// x-death holds one table per (queue, reason), the most recent first.
fn first_death(value: &AMQPValue) -> Option<&FieldTable> {
    match value {
        AMQPValue::FieldArray(deaths) => deaths.as_slice().iter().find_map(|d| match d {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        }),
        _ => None,
    }
}

fn as_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn as_int(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        _ => None,
    }
}

fn as_time(value: &AMQPValue) -> Option<DateTime<Utc>> {
    match value {
        AMQPValue::Timestamp(secs) => Utc.timestamp_opt(i64::try_from(*secs).ok()?, 0).single(),
        AMQPValue::LongString(s) => DateTime::parse_from_rfc3339(&s.to_string())
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        other => Utc.timestamp_opt(as_int(other)?, 0).single(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_letter_reads_back_with_its_reason_time_and_a_fresh_id() {
        let now = Utc.timestamp_opt(1_790_000_000, 0).unwrap();
        let props = mark(BasicProperties::default(), "not JSON", now);
        let body = br#"{"type":"order.ship","request_id":"r-1"}"#;
        let letter = DeadLetter::read("p.requests.dlq", &props, body);
        assert_eq!(letter.reason.as_deref(), Some("not JSON"));
        assert_eq!(letter.dead_lettered_at, Some(now));
        assert_eq!(letter.kind.as_deref(), Some("order.ship"));
        assert_eq!(letter.request_id.as_deref(), Some("r-1"));
        assert!(uuid::Uuid::parse_str(&letter.id).is_ok(), "{}", letter.id);
        // The sender's own message_id is kept.
        let own = BasicProperties::default().with_message_id("m-7".into());
        assert_eq!(
            mark(own, "x", now).message_id().as_ref().unwrap().as_str(),
            "m-7"
        );
    }

    #[test]
    fn broker_dead_letters_are_read_from_x_death_and_get_a_stable_derived_id() {
        let mut death = FieldTable::default();
        death.insert("time".into(), AMQPValue::Timestamp(1_790_000_000));
        death.insert(
            "reason".into(),
            AMQPValue::LongString("delivery_limit".into()),
        );
        death.insert("queue".into(), AMQPValue::LongString("p.requests".into()));
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
        );
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
        let props = BasicProperties::default().with_headers(headers);
        let a = DeadLetter::read("q", &props, b"garbage");
        let b = DeadLetter::read("q", &props, b"garbage");
        assert_eq!(a.id, b.id);
        assert!(a.id.starts_with("sha256-") && a.id.len() == 23, "{}", a.id);
        assert_ne!(a.id, DeadLetter::read("q", &props, b"other").id);
        assert_eq!(a.deliveries, 3);
        assert!(a.reason.unwrap().contains("delivery_limit"));
        assert_eq!(a.kind, None);
        // Replay drops the stay's headers and keeps the rest.
        let replayed = for_replay(&props, Utc::now());
        let h = replayed.headers().as_ref().unwrap();
        assert!(!h.contains_key("x-death") && !h.contains_key("x-delivery-count"));
        assert!(h.contains_key(REPLAYED_AT_HEADER));
    }
}
