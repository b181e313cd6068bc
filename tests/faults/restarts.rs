//! The daemon survives restarts of its broker and of its database in the
//! middle of a 20,000-request stream (issue 15). Each test runs its own
//! private RabbitMQ node or PostgreSQL cluster (tests/faults/services.rs)
//! and restarts that one; the shared servers are never touched beyond the
//! broker test's own database on the shared PostgreSQL.

use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::Duration;

use payrecon::app::Daemon;
use payrecon::config::{Secret, Settings};
use sqlx::PgPool;
use tokio::time::Instant;

use crate::common::readiness::{wait_readyz, ReadinessWatch};
use crate::common::TestEnv;
use crate::services::{PrivatePostgres, PrivateRabbit};
use crate::stream::{queue_depth, wait_count, Delivered, Stream, StreamReport, Tap};

/// Tests that stop a service run one at a time: two at once would slow
/// each other's recovery past any sane bound on two shared cores.
pub static SERIAL: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(|| tokio::sync::Mutex::new(()));

const MESSAGES: usize = 20_000;
/// Requests per second: slow enough that the stream is still flowing when
/// each restart comes, whatever the machine's speed.
const RATE: usize = 1_000;
const RESTARTS: usize = 2;
/// How long a dependency stays down when the test holds it down.
const HOLD: Duration = Duration::from_secs(5);

/// One outage as the daemon saw it.
pub struct Outage {
    pub how: &'static str,
    /// From the stop command until `/readyz` said 200 again.
    pub down: Duration,
    /// Events committed while the broker was away (none for the database).
    pub committed_meanwhile: HashSet<String>,
}

fn with_fast_jobs(mut settings: Settings) -> Settings {
    // Every second, so orders placed with a 2 s pay timeout are cancelled
    // while the broker is still down.
    settings.jobs.timeout_cancel.schedule = "* * * * * *".into();
    settings
}

async fn ready_daemon(settings: Settings) -> (Daemon, String) {
    let daemon = Daemon::start(settings).await.expect("daemon starts");
    let base = format!("http://{}", daemon.http_addr);
    wait_readyz(&base, 200, 60).await;
    (daemon, base)
}

async fn max_outbox_id(db: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM outbox")
        .fetch_one(db)
        .await
        .expect("max outbox id")
}

async fn events_after(db: &PgPool, id: i64) -> HashSet<String> {
    let ids: Vec<String> = sqlx::query_scalar("SELECT event_id::text FROM outbox WHERE id > $1")
        .bind(id)
        .fetch_all(db)
        .await
        .expect("outbox rows");
    ids.into_iter().collect()
}

/// The broker node's application is stopped twice while requests stream
/// in (5 s each time), and started again: the daemon stays up, is unready
/// exactly while the broker is away, reconnects by itself, and once all is
/// over every request made one order and one `order.created`, and every
/// event the timeout job committed during the outage went out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarts_midstream_lose_nothing() {
    let _serial = SERIAL.lock().await;
    let rabbit = PrivateRabbit::start("rr").await;
    let url = rabbit.amqp_url();
    let mut env = TestEnv::new("frbroker");
    env.settings.amqp.url = Secret(url.clone());
    let tap = Tap::declare(&url, &env.names()).await;
    let (daemon, base) = ready_daemon(with_fast_jobs(env.settings.clone())).await;
    let db = PgPool::connect(env.settings.database.url.expose())
        .await
        .expect("test db");
    let watch = ReadinessWatch::start(base.clone());
    let stream = Stream::start(url.clone(), env.names().requests, "brk", MESSAGES, RATE);
    let mut outages = Vec::new();
    for k in 1..=RESTARTS {
        stream.wait_sent(MESSAGES * k / (RESTARTS + 1), 300).await;
        let t0 = Instant::now();
        rabbit.stop_app().await;
        wait_readyz(&base, 503, 30).await;
        // What commits from here on was written with no broker to take it.
        let before = max_outbox_id(&db).await;
        tokio::time::sleep(HOLD).await;
        // Still unready at the end of the outage: no flapping back to 200.
        wait_readyz(&base, 503, 1).await;
        let committed_meanwhile = events_after(&db, before).await;
        rabbit.start_app().await;
        wait_readyz(&base, 200, 120).await;
        outages.push(Outage {
            how: "rabbitmqctl stop_app, 5 s, start_app",
            down: t0.elapsed(),
            committed_meanwhile,
        });
    }
    let report = stream.finish().await;
    check_each_once(&db, &url, &env, &tap, &report, &outages).await;
    assert_eq!(watch.no_answer(), 0, "/readyz went unanswered: the daemon");
    assert!(watch.finish().await);
    db.close().await;
    daemon.stop().await;
}

/// The database cluster is restarted twice while requests stream in:
/// once with `pg_ctlcluster restart -m fast`, once stopped for 5 s and
/// started again. Batches die mid-transaction; the daemon stays up, says
/// 503 while the database is away, and loses or doubles nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restarts_midstream_lose_nothing() {
    let _serial = SERIAL.lock().await;
    let pg = PrivatePostgres::start("pr").await;
    // A broker of its own too: the test then needs nothing shared, and a
    // shared broker under other tests' load cannot slow the recovery.
    let rabbit = PrivateRabbit::start("rd").await;
    let url = rabbit.amqp_url();
    let mut env = TestEnv::new("frdb");
    env.settings.database.url = Secret(pg.url(&env.name));
    env.settings.amqp.url = Secret(url.clone());
    let tap = Tap::declare(&url, &env.names()).await;
    let (daemon, base) = ready_daemon(with_fast_jobs(env.settings.clone())).await;
    let watch = ReadinessWatch::start(base.clone());
    let stream = Stream::start(url.clone(), env.names().requests, "dbr", MESSAGES, RATE);
    let mut outages = Vec::new();
    stream.wait_sent(MESSAGES / 3, 300).await;
    let blip = ReadinessWatch::start(base.clone());
    let t0 = Instant::now();
    pg.restart_fast().await;
    wait_readyz(&base, 200, 120).await;
    // A restart shorter than the probe's 2 s bound may go unseen: the
    // probe's connection attempt waits for the server and then succeeds.
    let (unready, spells) = blip.unready();
    eprintln!("figures: restart -m fast: /readyz 503 for {unready:?} in {spells} spell(s)");
    blip.finish().await;
    outages.push(Outage {
        how: "pg_ctlcluster restart -m fast",
        down: t0.elapsed(),
        committed_meanwhile: HashSet::new(),
    });
    stream.wait_sent(MESSAGES * 2 / 3, 300).await;
    let t0 = Instant::now();
    pg.stop_fast().await;
    wait_readyz(&base, 503, 30).await;
    tokio::time::sleep(HOLD).await;
    wait_readyz(&base, 503, 1).await;
    pg.start_again().await;
    wait_readyz(&base, 200, 120).await;
    outages.push(Outage {
        how: "pg_ctlcluster stop -m fast, 5 s, start",
        down: t0.elapsed(),
        committed_meanwhile: HashSet::new(),
    });
    let report = stream.finish().await;
    let db = PgPool::connect(env.settings.database.url.expose())
        .await
        .expect("test db");
    check_each_once(&db, &url, &env, &tap, &report, &outages).await;
    assert_eq!(watch.no_answer(), 0, "/readyz went unanswered");
    assert!(watch.finish().await);
    db.close().await;
    daemon.stop().await;
}

/// Every request made exactly one order and one inbox row and had one
/// `order.created` event_id; every timed order was cancelled once; every
/// event in the outbox reached the tap and nothing else did; no request
/// was dead-lettered or left in the queue. Prints the figures.
pub async fn check_each_once(
    db: &PgPool,
    url: &str,
    env: &TestEnv,
    tap: &Tap,
    report: &StreamReport,
    outages: &[Outage],
) {
    let n = report.ids.len() as i64;
    let timed = report.timed as i64;
    wait_count(db, "SELECT count(*) FROM orders", n, 300).await;
    wait_count(
        db,
        "SELECT count(*) FROM orders WHERE status = 'cancelled'",
        timed,
        120,
    )
    .await;
    let mut conn = db.acquire().await.expect("conn");
    let deadline = Instant::now() + Duration::from_secs(120);
    while payrecon::store::outbox::count_unpublished(&mut conn)
        .await
        .expect("outbox")
        > 0
    {
        assert!(Instant::now() < deadline, "outbox not drained after 120s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(conn);
    let outbox: Vec<(String, String)> =
        sqlx::query_as("SELECT event_id::text, routing_key FROM outbox")
            .fetch_all(db)
            .await
            .expect("outbox rows");
    let created = outbox.iter().filter(|(_, k)| k == "order.created").count();
    let cancelled = outbox
        .iter()
        .filter(|(_, k)| k == "order.cancelled")
        .count();
    assert_eq!(created as i64, n, "order.created events in the outbox");
    assert_eq!(
        cancelled as i64, timed,
        "order.cancelled events in the outbox"
    );
    assert_eq!(
        outbox.len(),
        created + cancelled,
        "other events: {outbox:?}"
    );
    let want: HashSet<String> = outbox.into_iter().map(|(id, _)| id).collect();
    let events = tap.read(&want, 180, Duration::from_secs(2)).await;
    let got = Delivered::from_events(&events);
    assert_eq!(
        got.event_ids, want,
        "events on the tap differ from the outbox"
    );
    for id in &report.ids {
        let ids = got.by_subject.get(&("order.created".into(), id.clone()));
        assert_eq!(ids.map_or(0, HashSet::len), 1, "request {id}: {ids:?}");
    }
    assert_eq!(got.subjects("order.created"), report.ids.len());
    assert_eq!(got.subjects("order.cancelled") as i64, timed);
    assert!(
        got.by_subject.values().all(|ids| ids.len() == 1),
        "an order has two events of one type"
    );
    let inbox: Vec<(String, String)> = sqlx::query_as("SELECT request_id, outcome FROM inbox")
        .fetch_all(db)
        .await
        .expect("inbox");
    let sent: HashSet<&String> = report.ids.iter().collect();
    assert_eq!(inbox.len(), report.ids.len(), "inbox rows");
    for (rid, outcome) in &inbox {
        assert!(sent.contains(rid), "inbox row for unknown {rid}");
        assert_eq!(outcome, "processed", "request {rid}");
    }
    let names = env.names();
    assert_eq!(
        queue_depth(url, &names.requests_dlq).await,
        0,
        "dead letters"
    );
    assert_eq!(queue_depth(url, &names.requests).await, 0, "requests left");
    let mut during = 0;
    for o in outages {
        during += o.committed_meanwhile.len();
        assert!(o.committed_meanwhile.is_subset(&got.event_ids));
        eprintln!(
            "figures: outage [{}] down {:.1}s, {} events committed meanwhile",
            o.how,
            o.down.as_secs_f64(),
            o.committed_meanwhile.len()
        );
    }
    if outages.iter().any(|o| o.how.starts_with("rabbitmqctl")) {
        assert!(
            during > 0,
            "no event was committed while the broker was down"
        );
    }
    eprintln!(
        "figures: {} requests ({} republished over {} publisher reconnects), {} restarts, \
         orders {n}, cancelled by timeout {timed}, events {} (copies of an event_id: {}), \
         lost 0, doubled 0",
        report.ids.len(),
        report.republished,
        report.reconnects,
        outages.len(),
        want.len(),
        got.copies,
    );
}

/// The relay runs beside the consumers and is dropped mid-pass when they
/// fail (every broker restart). A BEGIN dropped before its answer came
/// must not leave a pooled connection inside a transaction: each drop
/// below lands at another point of `store::begin`, and after each the
/// pool's only connection must be back outside any transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_dropped_midway_leaves_no_open_transaction() {
    let env = TestEnv::new("frbegin");
    payrecon::store::connect(&env.settings.database)
        .await
        .expect("test db")
        .close()
        .await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(env.settings.database.url.expose())
        .await
        .expect("pool");
    let mut leaked = 0;
    for i in 0..2000 {
        {
            let begin = payrecon::store::begin(&pool);
            tokio::pin!(begin);
            let mut done = false;
            for _ in 0..i % 80 {
                if futures::poll!(begin.as_mut()).is_ready() {
                    done = true;
                    break;
                }
                tokio::task::yield_now().await;
            }
            if !done && i % 2 == 1 {
                let _ = tokio::time::timeout(Duration::from_millis(1), begin).await;
            }
        }
        // SAVEPOINT works only inside a transaction block.
        let outside = sqlx::query("SAVEPOINT probe").execute(&pool).await.is_err();
        if !outside {
            leaked += 1;
            sqlx::query("ROLLBACK")
                .execute(&pool)
                .await
                .expect("rollback");
        }
    }
    pool.close().await;
    assert_eq!(leaked, 0, "connections left inside a transaction");
}
