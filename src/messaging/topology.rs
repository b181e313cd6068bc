//! The broker topology of docs/contract.md §2, declared idempotently at every
//! (re)connect. Quorum queues with an explicit delivery limit: this broker
//! (3.10) has none by default, so a message that kills the consumer would
//! otherwise loop forever instead of reaching the dead-letter queue.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

/// Deliveries before the broker dead-letters a message on its own. Generous,
/// because a broker or consumer restart also counts as a delivery attempt
/// and a valid message must survive several of those.
pub const DELIVERY_LIMIT: i64 = 20;

#[derive(Debug, Clone)]
pub struct Names {
    pub requests: String,
    pub notifications: String,
    pub events: String,
    pub dlx: String,
    pub requests_dlq: String,
    pub notifications_dlq: String,
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        Names {
            requests: format!("{prefix}.requests"),
            notifications: format!("{prefix}.notifications"),
            events: format!("{prefix}.events"),
            dlx: format!("{prefix}.dlx"),
            requests_dlq: format!("{prefix}.requests.dlq"),
            notifications_dlq: format!("{prefix}.notifications.dlq"),
        }
    }

    /// The dead-letter queue of a work queue; dead letters are routed by the
    /// work queue's name.
    pub fn dlq_of(&self, queue: &str) -> &str {
        if queue == self.notifications {
            &self.notifications_dlq
        } else {
            &self.requests_dlq
        }
    }
}

fn s(v: &str) -> ShortString {
    v.into()
}

pub async fn declare(channel: &Channel, names: &Names) -> Result<(), lapin::Error> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            s(&names.dlx),
            ExchangeKind::Direct,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            s(&names.events),
            ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    for (queue, dlq) in [
        (&names.requests, &names.requests_dlq),
        (&names.notifications, &names.notifications_dlq),
    ] {
        declare_quorum(channel, dlq, None).await?;
        channel
            .queue_bind(
                s(dlq),
                s(&names.dlx),
                s(queue),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        declare_quorum(channel, queue, Some((&names.dlx, queue))).await?;
    }
    Ok(())
}

async fn declare_quorum(
    channel: &Channel,
    name: &str,
    dead_letter: Option<(&str, &str)>,
) -> Result<(), lapin::Error> {
    let mut args = FieldTable::default();
    args.insert(
        s("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    if let Some((dlx, routing_key)) = dead_letter {
        args.insert(
            s("x-delivery-limit"),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        args.insert(
            s("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from(dlx)),
        );
        args.insert(
            s("x-dead-letter-routing-key"),
            AMQPValue::LongString(LongString::from(routing_key)),
        );
    }
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel.queue_declare(s(name), options, args).await?;
    Ok(())
}
