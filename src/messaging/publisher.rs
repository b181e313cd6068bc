//! Publishing with publisher confirms: a message counts as sent only when
//! the broker acknowledged it.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

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
///
/// lapin resolves each `basic_publish` only once its I/O thread has written
/// the frames, so awaiting them one by one costs two thread switches per
/// message. All publishes are started first, in order (frames and confirm
/// tags follow the order of first polls), then awaited together.
pub async fn publish_all(
    channel: &Channel,
    messages: Vec<Outgoing<'_>>,
) -> Result<Vec<bool>, PublishError> {
    let sends: Vec<_> = messages
        .into_iter()
        .map(|m| {
            Box::pin(channel.basic_publish(
                ShortString::from(m.exchange),
                ShortString::from(m.routing_key),
                BasicPublishOptions::default(),
                m.body,
                m.properties,
            ))
        })
        .collect();
    let mut confirms = Vec::with_capacity(sends.len());
    for sent in in_order(sends).await {
        confirms.push(sent?);
    }
    let mut acked = Vec::with_capacity(confirms.len());
    for result in join_all(confirms).await {
        acked.push(matches!(result?, Confirmation::Ack(_)));
    }
    Ok(acked)
}

/// Like `join_all`, but every pass polls the futures strictly in order, so
/// the first poll of each (where a publish queues its frames) happens in
/// the order of the list.
async fn in_order<F: Future + Unpin>(futures: Vec<F>) -> Vec<F::Output> {
    let mut slots: Vec<(F, Option<F::Output>)> = futures.into_iter().map(|f| (f, None)).collect();
    std::future::poll_fn(move |cx| {
        let mut pending = false;
        for (future, output) in slots.iter_mut() {
            if output.is_none() {
                match Pin::new(future).poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            return Poll::Pending;
        }
        Poll::Ready(slots.iter_mut().filter_map(|(_, o)| o.take()).collect())
    })
    .await
}

pub async fn publish_one(channel: &Channel, message: Outgoing<'_>) -> Result<(), PublishError> {
    match publish_all(channel, vec![message]).await?.first() {
        Some(true) => Ok(()),
        _ => Err(PublishError::Nacked),
    }
}
