//! A broker node lost (issue 18): three RabbitMQ nodes in one cluster, the
//! daemon's quorum queues replicated on all three, two `payrecon run`
//! instances listing every node in `amqp.url`, and 20,000 `order.place`
//! requests streaming in. Mid-stream the node that leads the requests
//! queue is stopped. Instance A was connected to that node and must move
//! to another; instance B was connected elsewhere and must keep consuming
//! while its queue elects a new leader. Every request must take effect
//! once and every event go out once, as in `restarts`.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;

use crate::cluster_support::{declare_topology, Frozen, Instance, RabbitCluster, NODES};
use crate::common::readiness::ReadinessWatch;
use crate::common::TestEnv;
use crate::restarts::{check_each_once, Outage, SERIAL};
use crate::stream::{Stream, Tap};

const MESSAGES: usize = 20_000;
const RATE: usize = 1_000;
/// Deliveries an instance may hold unacknowledged (`amqp.prefetch`'s
/// default): settling more than this after the stop means it received
/// requests after the stop, not only what it held before.
const PREFETCH: u64 = 256;
/// Both instances must consume again within this after the node is gone.
const CONSUMING_AGAIN_SECS: u64 = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_node_of_a_cluster_stopped_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let t_start = Instant::now();
    let cluster = RabbitCluster::start("fc").await;
    let mut env = TestEnv::new("fcluster");
    // Every second, so the stream's orders with a 2 s pay timeout are
    // cancelled during the run: events the daemons write on their own.
    env.settings.jobs.timeout_cancel.schedule = "* * * * * *".into();
    let names = env.names();

    // The topology declared on node 0 first: quorum queues get a replica on
    // every node of the cluster and (client-local) their leader on 0.
    declare_topology(&cluster.nodes[0].amqp_url(), &names).await;
    let quorum = cluster.quorum_of(0, &names.requests).await;
    assert_eq!(quorum.members.len(), NODES, "replicas: {quorum:?}");
    assert_eq!(quorum.online.len(), NODES, "online: {quorum:?}");
    let lost = cluster.index_of(&quorum.leader).expect("leader is ours");
    let (other, publish_on) = ((lost + 1) % NODES, (lost + 2) % NODES);
    // The tap's own queue leads on a node that stays.
    let tap = Tap::declare(&cluster.nodes[other].amqp_url(), &names).await;

    let a = Instance::start(&env, "a", &cluster.urls_from(lost)).await;
    let b = Instance::start(&env, "b", &cluster.urls_from(other)).await;
    let lost_addr = format!("127.0.0.1:{}", cluster.nodes[lost].port);
    assert_eq!(a.broker().await.as_deref(), Some(lost_addr.as_str()));
    assert_ne!(b.broker().await.as_deref(), Some(lost_addr.as_str()));
    let db = PgPool::connect(env.settings.database.url.expose())
        .await
        .expect("test db");
    let (watch_a, watch_b) = (
        ReadinessWatch::start(a.base.clone()),
        ReadinessWatch::start(b.base.clone()),
    );

    let publish_url = cluster.nodes[publish_on].amqp_url();
    let stream = Stream::start(publish_url, names.requests.clone(), "clu", MESSAGES, RATE);
    stream.wait_sent(MESSAGES / 3, 300).await;
    let sent_at_stop = stream.sent();
    let t0 = Instant::now();
    cluster.nodes[lost].stop_app().await;
    let stopped_in = t0.elapsed();
    let (after_a, after_b) = (a.requests_settled().await, b.requests_settled().await);
    let (consuming_a, consuming_b) = consuming_again(&a, &b, (after_a, after_b), &stream, t0).await;
    let new_quorum = cluster
        .wait_new_leader(other, &names.requests, lost, 30)
        .await;
    assert_eq!(new_quorum.members.len(), NODES, "{new_quorum:?}");
    assert_eq!(new_quorum.online.len(), NODES - 1, "{new_quorum:?}");
    let a_on = a.broker().await;
    assert!(
        a_on.is_some() && a_on.as_deref() != Some(lost_addr.as_str()),
        "A still on the lost node: {a_on:?}"
    );
    let report = stream.finish().await;

    let outages = [Outage {
        how: "leader node of a 3-node cluster stopped (stop_app)",
        down: consuming_a.max(consuming_b),
        committed_meanwhile: HashSet::new(),
    }];
    let url = cluster.nodes[other].amqp_url();
    check_each_once(&db, &url, &env, &tap, &report, &outages).await;
    let (total_a, total_b) = (a.requests_settled().await, b.requests_settled().await);
    for (who, watch) in [("A", &watch_a), ("B", &watch_b)] {
        assert_eq!(watch.no_answer(), 0, "/readyz of {who} went unanswered");
    }
    let (unready_a, spells_a) = watch_a.unready();
    let (unready_b, spells_b) = watch_b.unready();
    watch_a.finish().await;
    watch_b.finish().await;
    for i in [&a, &b] {
        assert_eq!(i.readyz().await.map(|r| r.0), Some(200), "{}", i.base);
    }
    eprintln!(
        "figures: cluster of {NODES}, requests queue led by node {lost} (gone after \
         {stopped_in:.1?}, ~{sent_at_stop} of {MESSAGES} requests in); new leader {}; A (was on the lost node) \
         consuming again after {:.1}s, on {}, /readyz 503 for {unready_a:.1?} in {spells_a} \
         spell(s); B consuming again after {:.1}s, /readyz 503 for {unready_b:.1?} in \
         {spells_b} spell(s); settled by A {total_a} ({} after the stop), by B {total_b} ({} \
         after); whole test {:.0}s",
        new_quorum.leader,
        consuming_a.as_secs_f64(),
        a_on.unwrap_or_default(),
        consuming_b.as_secs_f64(),
        total_a - after_a,
        total_b - after_b,
        t_start.elapsed().as_secs_f64(),
    );
    db.close().await;
    a.stop().await;
    b.stop().await;
    drop(tap);
}

/// Polls both instances until each has settled more than a prefetch window
/// beyond what it had when the node went; returns when each did, counted
/// from `t0`. Prints progress every 5 s, which is what a failure needs.
async fn consuming_again(
    a: &Instance,
    b: &Instance,
    after: (u64, u64),
    stream: &Stream,
    t0: Instant,
) -> (Duration, Duration) {
    let (mut when_a, mut when_b) = (None, None);
    let mut report = Instant::now();
    loop {
        let (now_a, now_b) = (a.requests_settled().await, b.requests_settled().await);
        if when_a.is_none() && now_a > after.0 + PREFETCH {
            when_a = Some(t0.elapsed());
        }
        if when_b.is_none() && now_b > after.1 + PREFETCH {
            when_b = Some(t0.elapsed());
        }
        if let (Some(a), Some(b)) = (when_a, when_b) {
            return (a, b);
        }
        if report.elapsed() > Duration::from_secs(5) {
            report = Instant::now();
            eprintln!(
                "after {:.0?}: sent {}, A settled {now_a} (on {:?}), B {now_b} (on {:?})",
                t0.elapsed(),
                stream.sent(),
                a.broker().await,
                b.broker().await
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(CONSUMING_AGAIN_SECS),
            "not both consuming {CONSUMING_AGAIN_SECS}s after the loss: A {when_a:?}, B \
             {when_b:?}\nA:\n{}\nB:\n{}",
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The leader node goes silent (SIGSTOP) instead of away. Slow (about two
/// minutes: the survivors wait for Erlang's `net_ticktime` before they drop
/// the silent member), so not in the default run:
/// `cargo test --test faults cluster_silent -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn the_leader_node_of_a_cluster_silent_loses_nothing() {
    const BATCH: usize = 3_000;
    let _serial = SERIAL.lock().await;
    let cluster = RabbitCluster::start("fs").await;
    let mut env = TestEnv::new("fsilent");
    env.settings.jobs.timeout_cancel.schedule = "* * * * * *".into();
    let names = env.names();
    declare_topology(&cluster.nodes[0].amqp_url(), &names).await;
    let quorum = cluster.quorum_of(0, &names.requests).await;
    let lost = cluster.index_of(&quorum.leader).expect("leader is ours");
    let (other, publish_on) = ((lost + 1) % NODES, (lost + 2) % NODES);
    let tap = Tap::declare(&cluster.nodes[other].amqp_url(), &names).await;
    let a = Instance::start(&env, "a", &cluster.urls_from(lost)).await;
    let b = Instance::start(&env, "b", &cluster.urls_from(other)).await;
    let db = PgPool::connect(env.settings.database.url.expose())
        .await
        .expect("test db");
    let publish_url = cluster.nodes[publish_on].amqp_url();
    let first = Stream::start(
        publish_url.clone(),
        names.requests.clone(),
        "s1",
        BATCH,
        RATE,
    );
    first.wait_sent(BATCH / 3, 300).await;
    let t0 = Instant::now();
    let frozen = Frozen::freeze(&cluster.nodes[lost]).await;
    let lost_addr = format!("127.0.0.1:{}", cluster.nodes[lost].port);
    let (mut left, mut moved) = (None, None);
    while moved.is_none() {
        let on = a.broker().await;
        match on.as_deref() {
            None => left = left.or(Some(t0.elapsed())),
            Some(addr) if addr != lost_addr => moved = Some(t0.elapsed()),
            Some(_) => {}
        }
        assert!(
            t0.elapsed() < Duration::from_secs(150),
            "A still on the silent node"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut report = first.finish().await;
    // After the move, both instances take a share of new requests.
    let (before_a, before_b) = (a.requests_settled().await, b.requests_settled().await);
    let second = Stream::start(publish_url, names.requests.clone(), "s2", BATCH, RATE);
    let second = second.finish().await;
    report.ids.extend(second.ids);
    report.timed += second.timed;
    let outages = [Outage {
        how: "leader node of a 3-node cluster silent (SIGSTOP)",
        down: moved.unwrap_or_default(),
        committed_meanwhile: HashSet::new(),
    }];
    let url = cluster.nodes[other].amqp_url();
    check_each_once(&db, &url, &env, &tap, &report, &outages).await;
    let (share_a, share_b) = (
        a.requests_settled().await - before_a,
        b.requests_settled().await - before_b,
    );
    assert!(
        share_a > 0 && share_b > 0,
        "second batch: A {share_a}, B {share_b}"
    );
    eprintln!(
        "figures: silent leader: A left it after {:.1?}, on a survivor after {:.1?}; second \
         batch of {BATCH} settled A {share_a}, B {share_b}",
        left.unwrap_or_default(),
        moved.unwrap_or_default()
    );
    db.close().await;
    a.stop().await;
    b.stop().await;
    drop(tap);
    drop(frozen);
}
