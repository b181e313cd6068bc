//! Tools to take one daemon's broker or database away without touching the
//! shared servers, and to check afterwards that every request took effect
//! exactly once.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde_json::Value;
use sqlx::PgPool;
use tokio::time::Instant;

use payrecon::app::Daemon;

pub use crate::common::readiness::{wait_readyz, ReadinessWatch};
use crate::common::{place_data, Broker, TestEnv, PG_ADMIN};

/// Runs a shell-free command and returns its stdout; panics with stderr on failure.
pub async fn run_cmd(program: &str, args: &[&str]) -> String {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The broker-side pids of the connections the daemon of `prefix` opened
/// to consume (the supervisor names them `payrecon-<prefix>`).
pub async fn daemon_connection_pids(prefix: &str) -> Vec<String> {
    connection_pids(&format!("payrecon-{prefix}")).await
}

/// The broker-side pids of the connections named exactly `name`.
pub async fn connection_pids(name: &str) -> Vec<String> {
    let listing = run_cmd(
        "rabbitmqctl",
        &["-q", "list_connections", "pid", "client_properties"],
    )
    .await;
    let needle = format!("\"{name}\"");
    let needle_erl = format!("<<\"{name}\">>");
    listing
        .lines()
        .filter(|l| l.contains(&needle) || l.contains(&needle_erl))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Waits until exactly one connection is named `name` and closes it from the
/// server side, as a broker restart or a network cut would.
pub async fn close_connection_named(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        let pids = connection_pids(name).await;
        if let [pid] = pids.as_slice() {
            break pid.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no single connection named {name}: {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    run_cmd(
        "rabbitmqctl",
        &["-q", "close_connection", &pid, "resilience test"],
    )
    .await;
}

/// A daemon started on `env`'s settings and answering `/readyz`, and the
/// base URL of its HTTP endpoints.
pub async fn ready_daemon(env: &TestEnv) -> (Daemon, String) {
    let daemon = Daemon::start(env.settings.clone())
        .await
        .expect("daemon starts");
    let base = format!("http://{}", daemon.http_addr);
    wait_readyz(&base, 200, 20).await;
    (daemon, base)
}

/// A connection to the `postgres` database, from which the test's own
/// database can be cut off while the daemon uses it.
pub async fn pg_admin() -> PgPool {
    PgPool::connect(PG_ADMIN).await.expect("postgres admin")
}

/// Kills every session on `db` (the daemon's pool), as a database restart would.
pub async fn terminate_backends(admin: &PgPool, db: &str) -> u64 {
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(db)
    .execute(admin)
    .await
    .expect("terminate backends")
    .rows_affected()
}

pub async fn allow_connections(admin: &PgPool, db: &str, allow: bool) {
    sqlx::query(&format!(
        "ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS {allow}"
    ))
    .execute(admin)
    .await
    .expect("alter database");
}

/// Publishes `order.place` requests `<tag>-<i>` for i in `range`, `gap` apart.
pub async fn place_orders(
    broker: &Broker,
    tag: &str,
    range: std::ops::Range<usize>,
    gap: Duration,
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in range {
        let id = format!("{tag}-{i}");
        broker
            .request("order.place", &id, place_data("wechat_pay"))
            .await;
        ids.push(id);
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
    ids
}

/// `order.created` events seen on the tap, by causing request id.
#[derive(Default)]
pub struct Created {
    /// request_id → every event_id delivered for it (repeats included).
    pub by_request: HashMap<String, Vec<String>>,
    pub deliveries: usize,
}

impl Created {
    fn distinct_requests(&self) -> usize {
        self.by_request.len()
    }

    /// Deliveries that repeated an event_id already delivered: allowed only
    /// where the relay could not learn that a confirmed publish was recorded.
    pub fn redeliveries(&self) -> usize {
        let distinct: usize = self
            .by_request
            .values()
            .map(|ids| ids.iter().collect::<HashSet<_>>().len())
            .sum();
        self.deliveries - distinct
    }
}

/// Reads the tap until `order.created` was seen for all of `ids` (panics
/// after `secs`), then for `quiet` more to catch duplicates.
pub async fn collect_created(
    broker: &mut Broker,
    ids: &[String],
    secs: u64,
    quiet: Duration,
) -> Created {
    let mut created = Created::default();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let read = |created: &mut Created, e: Value| {
        if e["type"] == "order.created" {
            let rid = e["request_id"].as_str().unwrap_or_default().to_string();
            let eid = e["event_id"].as_str().unwrap_or_default().to_string();
            created.by_request.entry(rid).or_default().push(eid);
            created.deliveries += 1;
        }
    };
    while created.distinct_requests() < ids.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, broker.next_event(3600)).await {
            Ok(e) => read(&mut created, e),
            Err(_) => panic!(
                "only {} of {} order.created events after {secs}s",
                created.distinct_requests(),
                ids.len()
            ),
        }
    }
    while let Ok(e) = tokio::time::timeout(quiet, broker.next_event(3600)).await {
        read(&mut created, e);
    }
    created
}

/// Every request has exactly one order, one inbox row and one `order.created`
/// event id; nothing was dead-lettered and the outbox is drained. With
/// `exact`, no event was even delivered twice.
pub async fn assert_each_once(env: &TestEnv, broker: &mut Broker, ids: &[String], exact: bool) {
    let pool = PgPool::connect(env.settings.database.url.expose())
        .await
        .expect("test db");
    let want = ids.len() as i64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(&pool)
            .await
            .expect("count orders");
        assert!(orders <= want, "{orders} orders for {want} requests");
        if orders == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {orders} of {want} orders after 60s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let created = collect_created(broker, ids, 60, Duration::from_millis(1500)).await;
    for id in ids {
        let events = created.by_request.get(id).cloned().unwrap_or_default();
        let distinct: HashSet<_> = events.iter().collect();
        assert_eq!(distinct.len(), 1, "request {id}: order.created {events:?}");
    }
    assert_eq!(
        created.by_request.len(),
        ids.len(),
        "events for unknown requests"
    );
    if exact {
        assert_eq!(
            created.deliveries,
            ids.len(),
            "an event was published twice"
        );
    } else if created.redeliveries() > 0 {
        eprintln!(
            "note: {} order.created deliveries repeated an event_id (at-least-once relay)",
            created.redeliveries()
        );
    }
    let inbox: Vec<String> = sqlx::query_scalar("SELECT request_id FROM inbox")
        .fetch_all(&pool)
        .await
        .expect("inbox");
    let inbox: HashSet<String> = inbox.into_iter().collect();
    let expected: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(inbox, expected, "inbox rows differ from the requests sent");
    // A rejection (e.g. `request_id_reused` from a replay gone wrong) would
    // have replaced the inbox's initial outcome.
    let rejected: Vec<(String, String)> =
        sqlx::query_as("SELECT request_id, outcome FROM inbox WHERE outcome <> 'processed'")
            .fetch_all(&pool)
            .await
            .expect("outcomes");
    assert!(rejected.is_empty(), "rejected: {rejected:?}");
    let pending =
        payrecon::store::outbox::count_unpublished(&mut pool.acquire().await.expect("conn"))
            .await
            .expect("outbox");
    assert_eq!(pending, 0, "outbox not drained");
    pool.close().await;
    assert_eq!(queue_depth(broker, &broker.names.requests_dlq).await, 0);
    assert_eq!(queue_depth(broker, &broker.names.requests).await, 0);
}

/// Messages ready in a queue (a passive declare does not create it).
pub async fn queue_depth(broker: &Broker, queue: &str) -> u32 {
    broker
        .channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare")
        .message_count()
}
