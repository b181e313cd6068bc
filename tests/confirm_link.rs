//! The relay's publishing link against the real RabbitMQ: what it publishes
//! arrives byte for byte, confirms map to the right messages, and every way
//! the broker can refuse or drop it is an error, never a hang.

mod common;

use std::time::Duration;

use common::{consume_no_ack, Broker, TestEnv, AMQP};
use futures::StreamExt;
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use payrecon::messaging::confirm_link::{ConfirmLink, LinkError};
use payrecon::messaging::publisher::{self, Outgoing};

async fn link(env: &TestEnv) -> ConfirmLink {
    ConfirmLink::connect(AMQP, &format!("{}-link", env.name))
        .await
        .expect("link")
}

/// An exclusive queue bound to the test's events exchange under `key`.
async fn bound_queue(broker: &Broker, name: &str, key: &str, args: FieldTable) {
    let opts = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    broker
        .channel
        .queue_declare(name.into(), opts, args)
        .await
        .expect("queue");
    broker
        .channel
        .queue_bind(
            name.into(),
            broker.names.events.as_str().into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
}

fn event<'a>(exchange: &'a str, key: &'a str, body: &'a [u8], id: &str) -> Outgoing<'a> {
    Outgoing {
        exchange,
        routing_key: key,
        body,
        properties: publisher::json_properties()
            .with_message_id(ShortString::from(id))
            .with_type(ShortString::from(key)),
    }
}

#[tokio::test]
async fn publishes_each_message_byte_for_byte_in_order_and_confirms_it() {
    let env = TestEnv::new("link_order");
    let broker = Broker::connect(&env).await;
    let queue = format!("{}.copy", env.name);
    bound_queue(&broker, &queue, "copy.#", FieldTable::default()).await;
    let exchange = broker.names.events.clone();
    // Windows of 500 as the relay sends them, and bodies that span several
    // frames (the broker offers 128 KiB frames): 300 KB is three.
    let bodies: Vec<Vec<u8>> = (0..1_001)
        .map(|i| match i {
            7 => vec![b'x'; 300_000],
            8 => Vec::new(),
            _ => format!("{{\"i\":{i},\"text\":\"支付 {i}\"}}").into_bytes(),
        })
        .collect();
    let ids: Vec<String> = (0..bodies.len()).map(|i| format!("id-{i}")).collect();
    let mut link = link(&env).await;
    for window in (0..bodies.len()).collect::<Vec<_>>().chunks(500) {
        let messages: Vec<_> = window
            .iter()
            .map(|&i| event(&exchange, "copy.created", &bodies[i], &ids[i]))
            .collect();
        let acked = link.publish_all(messages).await.expect("publish");
        assert_eq!(acked, vec![true; window.len()]);
    }
    let mut copies = consume_no_ack(&broker.channel, &queue).await;
    for (i, body) in bodies.iter().enumerate() {
        let d = tokio::time::timeout(Duration::from_secs(10), copies.next())
            .await
            .expect("a copy within 10 s")
            .expect("stream")
            .expect("delivery");
        assert_eq!(&d.data, body, "body {i}");
        let p = &d.properties;
        assert_eq!(
            p.message_id().as_ref().map(|s| s.as_str()),
            Some(ids[i].as_str())
        );
        assert_eq!(p.kind().as_ref().map(|s| s.as_str()), Some("copy.created"));
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(d.routing_key.as_str(), "copy.created");
    }
    link.close().await;
}

/// A queue that refuses publishes when full makes the broker nack exactly
/// the messages routed to it; the others in the same window are acked.
#[tokio::test]
async fn nacks_go_to_the_messages_the_broker_refused() {
    let env = TestEnv::new("link_nack");
    let broker = Broker::connect(&env).await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(0));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    bound_queue(&broker, &format!("{}.full", env.name), "refused", args).await;
    let exchange = broker.names.events.clone();
    let keys = ["kept", "refused", "kept", "refused", "refused", "kept"];
    let mut link = link(&env).await;
    for round in 0..2 {
        let messages: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| event(&exchange, k, b"{}", &format!("{round}-{i}")))
            .collect();
        let acked = link.publish_all(messages).await.expect("publish");
        assert_eq!(
            acked,
            vec![true, false, true, false, false, true],
            "round {round}"
        );
    }
    link.close().await;
}

#[tokio::test]
async fn a_missing_exchange_is_the_channel_closed_with_404() {
    let env = TestEnv::new("link_404");
    let mut link = link(&env).await;
    let nowhere = format!("{}.nowhere", env.name);
    let err = link
        .publish_all(vec![event(&nowhere, "k", b"{}", "1")])
        .await
        .expect_err("no such exchange");
    assert!(
        matches!(
            err,
            LinkError::Closed {
                what: "channel",
                code: 404,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn wrong_credentials_are_refused_not_waited_on() {
    let url = AMQP.replace("guest:guest", "guest:not-the-password");
    let started = std::time::Instant::now();
    let result = ConfirmLink::connect(&url, "payrecon-test-badauth").await;
    assert!(result.is_err(), "connected with a wrong password");
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// amqps:// to the plain port: the handshake fails at once, saying so
/// (tests/faults/amqp_tls.rs runs the link against a TLS listener).
#[tokio::test]
async fn amqps_to_a_plain_port_fails_with_a_clear_error() {
    let url = AMQP.replace("amqp://", "amqps://");
    let started = std::time::Instant::now();
    match ConfirmLink::connect(&url, "payrecon-test-tls").await {
        Err(e @ LinkError::Connect(_)) => {
            let e = e.to_string();
            assert!(e.contains("127.0.0.1:5672"), "{e}");
            assert!(e.contains("does not speak TLS"), "{e}");
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("connected over amqps to a plain port"),
    }
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// With a 1 s heartbeat the broker drops a link that stays silent for a few
/// seconds; `keep_alive` called as the relay does keeps it open.
#[tokio::test]
async fn heartbeats_keep_an_idle_link_open_and_silence_loses_it() {
    let env = TestEnv::new("link_hb");
    let broker = Broker::connect(&env).await;
    let exchange = broker.names.events.clone();
    let url = format!("{AMQP}?heartbeat=1");
    let mut kept = ConfirmLink::connect(&url, &format!("{}-kept", env.name))
        .await
        .expect("link");
    let mut silent = ConfirmLink::connect(&url, &format!("{}-silent", env.name))
        .await
        .expect("link");
    for _ in 0..20 {
        kept.keep_alive().await.expect("kept alive");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ok = kept
        .publish_all(vec![event(&exchange, "k", b"{}", "1")])
        .await
        .expect("the kept link still publishes");
    assert_eq!(ok, vec![true]);
    assert!(
        silent
            .publish_all(vec![event(&exchange, "k", b"{}", "2")])
            .await
            .is_err(),
        "the broker kept a link that sent no heartbeat for 5 s"
    );
    kept.close().await;
}

/// Properties the relay does not set today still go out whole (headers
/// included), so nothing depends on which of them an event uses.
#[tokio::test]
async fn headers_and_other_properties_go_out_whole() {
    let env = TestEnv::new("link_props");
    let broker = Broker::connect(&env).await;
    let queue = format!("{}.props", env.name);
    bound_queue(&broker, &queue, "props", FieldTable::default()).await;
    let exchange = broker.names.events.clone();
    let props = publisher::with_header(
        BasicProperties::default()
            .with_priority(3)
            .with_app_id("payrecon".into()),
        "x-payrecon-error",
        "why",
    );
    let mut link = link(&env).await;
    let message = Outgoing {
        exchange: &exchange,
        routing_key: "props",
        body: b"{}",
        properties: props.clone(),
    };
    assert_eq!(
        link.publish_all(vec![message]).await.expect("publish"),
        vec![true]
    );
    let got = broker.get_from(&queue, 10).await.expect("the message");
    assert_eq!(got.properties, props);
    link.close().await;
}
