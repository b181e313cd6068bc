//! Publishing with publisher confirms: a message counts as sent only when
//! the broker acknowledged it.

use futures::future::join_all;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("broker refused (nack) the message")]
    Nacked,
}

pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub properties: BasicProperties,
}

pub fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
}

/// Adds (or replaces) one string header.
pub fn with_header(props: BasicProperties, name: &str, value: &str) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(
        ShortString::from(name),
        AMQPValue::LongString(LongString::from(value)),
    );
    props.with_headers(headers)
}

pub fn empty_headers() -> FieldTable {
    FieldTable::default()
}

/// Publishes every message, then waits for all confirms together (one
/// round trip of latency for the whole batch). Returns, per message, whether
/// the broker acknowledged it.
pub async fn publish_all(
    channel: &Channel,
    messages: Vec<Outgoing<'_>>,
) -> Result<Vec<bool>, PublishError> {
    let mut pending = Vec::with_capacity(messages.len());
    for m in messages {
        let confirm = channel
            .basic_publish(
                ShortString::from(m.exchange),
                ShortString::from(m.routing_key),
                BasicPublishOptions::default(),
                m.body,
                m.properties,
            )
            .await?;
        pending.push(confirm);
    }
    let mut acked = Vec::with_capacity(pending.len());
    for result in join_all(pending).await {
        acked.push(matches!(result?, Confirmation::Ack(_)));
    }
    Ok(acked)
}

pub async fn publish_one(channel: &Channel, message: Outgoing<'_>) -> Result<(), PublishError> {
    match publish_all(channel, vec![message]).await?.first() {
        Some(true) => Ok(()),
        _ => Err(PublishError::Nacked),
    }
}
