use std::time::Duration;

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use payrecon::app::Daemon;
use payrecon::config::Secret;
use tokio::time::Instant;

use crate::common::{Broker, TestEnv};
use crate::proxy::Proxy;
use crate::support::{
    assert_each_once, close_connection_named, connection_pids, daemon_connection_pids,
    place_orders, ready_daemon, wait_readyz, ReadinessWatch,
};

/// The broker closes the daemon's connection twice in a row (as a broker
/// restart would); requests keep arriving before, during and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_connection_loss_reconnects_and_loses_nothing() {
    let env = TestEnv::new("rbroker");
    let mut broker = Broker::connect(&env).await;
    let (daemon, base) = ready_daemon(&env).await;
    let mut ids = place_orders(&broker, "before", 0..20, Duration::ZERO).await;
    for round in 0..2 {
        let name = format!("payrecon-{}", env.name);
        ids.extend(close_under_load(&broker, &base, name, &format!("during{round}")).await);
    }
    ids.extend(place_orders(&broker, "after", 0..20, Duration::ZERO).await);
    assert_each_once(&env, &mut broker, &ids, false).await;
    // The old connections are gone, not leaked beside the new one.
    assert_eq!(daemon_connection_pids(&env.name).await.len(), 1);
    daemon.stop().await;
}

/// The broker closes the daemon's events link (its publishing connection)
/// while orders are placed: the session is rebuilt, every order is placed
/// once and every order.created still goes out (a chunk in flight may go
/// out twice, with its event_id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_link_loss_reconnects_and_loses_no_event() {
    let env = TestEnv::new("rlink");
    let mut broker = Broker::connect(&env).await;
    let (daemon, base) = ready_daemon(&env).await;
    let link = format!("payrecon-{}-events", env.name);
    let mut ids = place_orders(&broker, "before", 0..20, Duration::ZERO).await;
    ids.extend(close_under_load(&broker, &base, link.clone(), "during").await);
    ids.extend(place_orders(&broker, "after", 0..20, Duration::ZERO).await);
    assert_each_once(&env, &mut broker, &ids, false).await;
    // One link again, not a leaked old one beside the new.
    assert_eq!(connection_pids(&link).await.len(), 1);
    daemon.stop().await;
}

/// Closes the connection named `name` from the broker's side while 40
/// orders (`tag`) arrive, and waits for the daemon to go unready and come
/// back. The orders' request ids.
async fn close_under_load(broker: &Broker, base: &str, name: String, tag: &str) -> Vec<String> {
    let watch = ReadinessWatch::start(base.to_string());
    let closer = tokio::spawn(async move { close_connection_named(&name).await });
    // rabbitmqctl takes a while to start: these straddle the close.
    let ids = place_orders(broker, tag, 0..40, Duration::from_millis(25)).await;
    closer.await.expect("closer");
    watch.wait_unready(15).await;
    wait_readyz(base, 200, 30).await;
    assert!(watch.finish().await);
    ids
}

/// The network between the daemon and the broker goes away for a while
/// (sockets reset, reconnects refused): `/readyz` stays 503 for the whole
/// outage, and once the network is back the daemon reconnects by itself and
/// processes what was published meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_unreachable_for_a_while_is_unready_then_recovers() {
    let env = TestEnv::new("rbrnet");
    let mut broker = Broker::connect(&env).await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let mut settings = env.settings.clone();
    settings.amqp.url = Secret(proxy.amqp_url());
    let daemon = Daemon::start(settings).await.expect("daemon starts");
    let base = format!("http://{}", daemon.http_addr);
    wait_readyz(&base, 200, 20).await;
    let mut ids = place_orders(&broker, "before", 0..20, Duration::ZERO).await;
    proxy.cut();
    wait_readyz(&base, 503, 10).await;
    ids.extend(place_orders(&broker, "during", 0..30, Duration::ZERO).await);
    // Unready throughout: the reconnect attempts fail and say so.
    let client = reqwest::Client::new();
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let status = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz")
            .status();
        assert_eq!(status, 503, "ready while the broker is unreachable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.restore();
    wait_readyz(&base, 200, 30).await;
    ids.extend(place_orders(&broker, "after", 0..20, Duration::ZERO).await);
    assert_each_once(&env, &mut broker, &ids, false).await;
    daemon.stop().await;
}

/// Whether `queue` exists, asked on a throwaway channel (a passive declare
/// of a missing queue closes the channel it was sent on).
async fn queue_exists(broker: &Broker, queue: &str) -> bool {
    let Ok(ch) = broker.conn.create_channel().await else {
        return false;
    };
    let opts = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let exists = ch
        .queue_declare(queue.into(), opts, FieldTable::default())
        .await
        .is_ok();
    let _ = ch.close(200, "probe".into()).await;
    exists
}

/// The requests queue is deleted under the running daemon (an operator's
/// slip, a broker that lost its definitions): the server cancels the
/// consumer, the daemon rebuilds the session and the topology, and
/// consumes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_requests_queue_is_redeclared_and_consumed() {
    let env = TestEnv::new("rbrdel");
    let mut broker = Broker::connect(&env).await;
    let (daemon, _) = ready_daemon(&env).await;
    let mut ids = place_orders(&broker, "before", 0..10, Duration::ZERO).await;
    let orders = {
        let pool = sqlx::PgPool::connect(env.settings.database.url.expose())
            .await
            .expect("test db");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
                .fetch_one(&pool)
                .await
                .expect("count");
            if n == ids.len() as i64 {
                break pool;
            }
            assert!(Instant::now() < deadline, "first requests not processed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    orders.close().await;
    let requests = broker.names.requests.clone();
    let ch = broker.conn.create_channel().await.expect("channel");
    ch.queue_delete(requests.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete queue");
    let _ = ch.close(200, "done".into()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !queue_exists(&broker, &requests).await {
        assert!(
            Instant::now() < deadline,
            "the daemon never declared its requests queue again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ids.extend(place_orders(&broker, "after", 0..20, Duration::ZERO).await);
    assert_each_once(&env, &mut broker, &ids, false).await;
    assert_eq!(daemon_connection_pids(&env.name).await.len(), 1);
    daemon.stop().await;
}
