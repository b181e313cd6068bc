//! Does the relay's own link still pay off over TLS? (issue 18: "tokio-
//! rustls around confirm_link, or lapin's own publisher if that is simpler
//! at the same speed — measure it".) One private node with a TLS listener;
//! the same order.created-sized events, in the relay's windows of 500,
//! published with confirms to `P.events` (bound to a durable queue) by the
//! link and by lapin (`publisher::publish_all`, as the daemon published
//! before the link), over TLS and, for reference, plain. Rounds alternate
//! the four so that the shared machine's load hits them alike; the median
//! round is printed (events/s and this process's CPU µs per event).
//!
//! A measurement, not a check, so `cargo test` skips it (CI time):
//! `cargo test --test faults amqp_tls_rate -- --ignored --nocapture`
//! (PAYRECON_TLS_RATE_N events per run, default 20000).

use std::time::Instant;

use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::{Channel, Connection, ConnectionProperties};
use payrecon::messaging::broker_tls::BrokerTls;
use payrecon::messaging::confirm_link::ConfirmLink;
use payrecon::messaging::publisher::{self, Outgoing};
use payrecon::messaging::topology::{self, Names};

use crate::amqp_tls::{test_connection, TlsNode};
use crate::common::unique;

#[path = "../../benches/support/cpu.rs"]
#[allow(dead_code)]
mod cpu;

const WINDOW: usize = 500;
const ROUNDS: usize = 3;

#[derive(Clone, Copy, Debug)]
enum Way {
    LinkTls,
    LapinTls,
    LinkPlain,
    LapinPlain,
}

struct Target {
    names: Names,
    queue: String,
    tls: BrokerTls,
    amqps: String,
    amqp: String,
    ca: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it with --ignored --nocapture"]
async fn amqp_tls_rate_link_against_lapin() {
    let n: usize = std::env::var("PAYRECON_TLS_RATE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let node = TlsNode::start("ar").await;
    let prefix = unique("tlsrate");
    let names = Names::new(&prefix);
    let amqps = node.rabbit.amqps_url("localhost");
    let ca = node.ca("ca");
    let conn = test_connection(&amqps, &ca).await;
    let admin = conn.create_channel().await.expect("channel");
    topology::declare(&admin, &names).await.expect("topology");
    let queue = format!("{prefix}.sink");
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    crate::common::bind_to_events(&admin, &queue, durable, &names.events).await;
    let target = Target {
        tls: BrokerTls::from_settings(&node.amqp(amqps.clone(), &ca, &prefix)).expect("ca"),
        names,
        queue,
        amqps,
        amqp: node.rabbit.amqp_url(),
        ca,
    };
    let body = event_body();
    let ways = [Way::LinkTls, Way::LapinTls, Way::LinkPlain, Way::LapinPlain];
    let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); ways.len()];
    for _ in 0..ROUNDS {
        for (i, way) in ways.iter().enumerate() {
            results[i].push(run(&target, *way, &body, n, &admin).await);
        }
    }
    eprintln!(
        "\n{n} events of {} bytes per run, windows of {WINDOW}, median of {ROUNDS} rounds",
        body.len()
    );
    eprintln!(
        "{:<14} {:>10} {:>14}",
        "publisher", "events/s", "CPU µs/event"
    );
    for (way, runs) in ways.iter().zip(results.iter_mut()) {
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (rate, cpu) = runs[runs.len() / 2];
        eprintln!("{:<14} {:>10.0} {:>14.1}", format!("{way:?}"), rate, cpu);
    }
    let _ = conn.close(200, "done".into()).await;
}

/// One run: `n` events by `way`; (events/s, CPU µs per event of this
/// process, lapin's I/O thread included). Every event must be confirmed
/// and routed to the sink.
async fn run(t: &Target, way: Way, body: &[u8], n: usize, admin: &Channel) -> (f64, f64) {
    let exchange = t.names.events.as_str();
    let make = |count: usize| -> Vec<Outgoing<'_>> {
        (0..count)
            .map(|_| Outgoing {
                exchange,
                routing_key: "order.created",
                body,
                properties: publisher::json_properties().with_type("order.created".into()),
            })
            .collect()
    };
    let name = format!("{}-rate", t.names.events);
    // Connected before the clock starts, as the daemon's relay is.
    let mut link = match way {
        Way::LinkTls => Some(ConfirmLink::connect_with(&t.amqps, &name, &t.tls).await),
        Way::LinkPlain => Some(ConfirmLink::connect(&t.amqp, &name).await),
        _ => None,
    }
    .map(|l| l.expect("link"));
    let lapin = match way {
        Way::LapinTls => Some(confirm_channel(test_connection(&t.amqps, &t.ca).await).await),
        Way::LapinPlain => {
            let conn = Connection::connect(&t.amqp, ConnectionProperties::default())
                .await
                .expect("plain connection");
            Some(confirm_channel(conn).await)
        }
        _ => None,
    };
    let cpu = cpu::CpuTicks::now();
    let start = Instant::now();
    let mut sent = 0;
    while sent < n {
        let count = WINDOW.min(n - sent);
        let acked = match (&mut link, &lapin) {
            (Some(link), _) => link.publish_all(make(count)).await.expect("link publish"),
            (None, Some((_, ch))) => publisher::publish_all(ch, make(count))
                .await
                .expect("lapin publish"),
            (None, None) => unreachable!("one publisher per way"),
        };
        assert!(acked.iter().all(|a| *a), "{way:?}: a nack");
        sent += count;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (this_cpu, _, _) = cpu::CpuTicks::now().per_message_since(&cpu, n);
    if let Some(link) = link {
        link.close().await;
    }
    if let Some((conn, _)) = lapin {
        let _ = conn.close(200, "done".into()).await;
    }
    let purged = admin
        .queue_purge(t.queue.as_str().into(), QueuePurgeOptions::default())
        .await
        .expect("purge");
    assert_eq!(purged as usize, n, "{way:?}: events routed to the sink");
    (n as f64 / elapsed, this_cpu)
}

async fn confirm_channel(conn: Connection) -> (Connection, Channel) {
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    (conn, ch)
}

/// An order.created as payrecon prints it, for the events' size.
fn event_body() -> Vec<u8> {
    use payrecon::messaging::contracts::SerializedEvent;
    use payrecon::messaging::requests::{parse_request, Request};
    let request = serde_json::json!({"type": "order.place", "request_id": "rate",
        "sent_at": "2026-11-24T10:00:00+08:00", "data": crate::common::place_data("wechat_pay")});
    let env = parse_request(request.to_string().as_bytes()).expect("request");
    let Request::PlaceOrder(place) = env.body else {
        panic!("an order.place");
    };
    let new = place.into_new_order(chrono::Duration::minutes(30));
    let order = payrecon::domain::Order::place(new, chrono::Utc::now()).expect("order");
    SerializedEvent::order_created(&order, "rate")
        .payload
        .into_bytes()
}
