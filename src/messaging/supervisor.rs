//! Keeps the broker side alive. Each session opens a connection, declares
//! the topology, and runs the consumers and the outbox relay; when any of
//! them fails (broker restart, network loss) the whole session is torn down
//! and rebuilt with backoff. lapin's own recovery is not relied upon: after
//! a reconnect every in-flight delivery comes again, and the inbox turns the
//! replay into a no-op.
//!
//! With several brokers in `amqp.url`, a session that fails (lost, or never
//! connected) hands over to the next address, round-robin: the consumers
//! and the relay's link always move together, to one broker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use sqlx::PgPool;
use tokio::sync::{Notify, RwLock};
use tokio_util::sync::CancellationToken;

use super::broker_error;
use super::broker_tls::BrokerTls;
use super::confirm_link::{ConfirmLink, LinkError};
use super::consumer::{self, ConsumerSpec};
use super::notification_processor::NotificationProcessor;
use super::relay;
use super::request_processor::RequestProcessor;
use super::topology::{self, Names};
use crate::config::{AmqpSettings, Secret};

/// What the rest of the daemon sees of the broker.
#[derive(Default)]
pub struct BrokerState {
    ready: AtomicBool,
    publisher: RwLock<Option<Channel>>,
    /// The session's connection, for `/metrics` to open a short-lived
    /// channel on: a passive declare of a missing queue closes its channel,
    /// so none of the working channels is lent out for it.
    connection: RwLock<Option<Arc<Connection>>>,
    /// host:port of the live session's broker, for `/readyz`.
    address: std::sync::Mutex<Option<String>>,
}

impl BrokerState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// host:port of the broker the live session is on (no credentials).
    pub fn address(&self) -> Option<String> {
        self.address.lock().map(|a| a.clone()).unwrap_or(None)
    }

    /// A confirm-mode channel of the live session, if there is one.
    pub async fn publisher(&self) -> Option<Channel> {
        self.publisher.read().await.clone()
    }

    /// The number of messages in each of `queues` (None for a queue that
    /// could not be read), or None without a live session.
    pub async fn queue_depths(&self, queues: &[&str]) -> Option<Vec<Option<u32>>> {
        let conn = self.connection.read().await.clone()?;
        let channel = conn.create_channel().await.ok()?;
        let mut depths = Vec::with_capacity(queues.len());
        for queue in queues {
            let options = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let declared = channel
                .queue_declare((*queue).into(), options, FieldTable::default())
                .await;
            depths.push(declared.ok().map(|q| q.message_count()));
        }
        let _ = channel.close(200, "read".into()).await;
        Some(depths)
    }

    async fn set(&self, session: Option<(Arc<Connection>, Channel, String)>) {
        self.ready.store(session.is_some(), Ordering::SeqCst);
        let (session, address) = match session {
            Some((conn, channel, address)) => (Some((conn, channel)), Some(address)),
            None => (None, None),
        };
        if let Ok(mut a) = self.address.lock() {
            *a = address;
        }
        let (conn, channel) = session.unzip();
        *self.publisher.write().await = channel;
        *self.connection.write().await = conn;
    }
}

pub struct Processors {
    pub requests: Arc<RequestProcessor>,
    pub notifications: Arc<NotificationProcessor>,
}

/// Batches never exceed this, whatever the prefetch: a transaction of a few
/// hundred small requests commits in milliseconds.
const MAX_BATCH: usize = 256;
const BATCH_WAIT: Duration = Duration::from_millis(5);
/// Batches in flight at once: one committing while the next runs its
/// statements. Deeper pipelines measured no faster (the prefetch window,
/// not the depth, bounds what is in flight).
const PIPELINE_DEPTH: usize = 2;
const FIRST_PAUSE: Duration = Duration::from_millis(200);
/// Closing a session that failed must not hold up the reconnect when the
/// socket is already gone.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

pub async fn supervise(
    amqp: AmqpSettings,
    pool: PgPool,
    processors: Processors,
    state: Arc<BrokerState>,
    wake: Arc<Notify>,
    wake_work: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let wakers = consumer::Wakers {
        relay: wake.clone(),
        work: wake_work,
    };
    let names = Names::new(&amqp.prefix);
    let shared = Shared {
        amqp: &amqp,
        names: &names,
        pool: &pool,
        processors: &processors,
        state: &state,
        wake: &wake,
        wakers: &wakers,
        shutdown: &shutdown,
    };
    let urls = amqp.urls();
    let mut next = 0;
    let mut pause = FIRST_PAUSE;
    while !shutdown.is_cancelled() {
        let mut established = false;
        let url = &urls[next % urls.len()];
        next = (next + 1) % urls.len();
        match session(&shared, url, &mut established).await {
            Ok(()) => break,
            Err(e) => {
                state.set(None).await;
                if established {
                    // A session that ran is a fresh outage, not the next
                    // failure of a broker that is still away: reconnect soon
                    // instead of after the backoff of outages long past.
                    pause = FIRST_PAUSE;
                }
                let to = broker_error::parse_url(urls[next].expose())
                    .map(|u| broker_error::address(&u))
                    .unwrap_or_default();
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, next_broker = %to, "broker session ended; reconnecting");
                metrics::counter!("payrecon_broker_reconnects_total").increment(1);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(15));
            }
        }
    }
    state.set(None).await;
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Connect(#[from] super::broker_error::ConnectError),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("consumer: {0}")]
    Consumer(#[from] consumer::ConsumerError),
    #[error("relay: {0}")]
    Relay(#[from] relay::RelayError),
    #[error("events link: {0}")]
    Link(#[from] LinkError),
}

async fn confirm_channel(conn: &Connection) -> Result<Channel, lapin::Error> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// What every session borrows from the supervisor.
struct Shared<'a> {
    amqp: &'a AmqpSettings,
    names: &'a Names,
    pool: &'a PgPool,
    processors: &'a Processors,
    state: &'a BrokerState,
    wake: &'a Arc<Notify>,
    wakers: &'a consumer::Wakers,
    shutdown: &'a CancellationToken,
}

/// One connection's life. `established` is set once it consumes, so the
/// supervisor can tell a new outage from a broker that never came back.
async fn session(
    shared: &Shared<'_>,
    url: &Secret,
    established: &mut bool,
) -> Result<(), SessionError> {
    let Shared {
        amqp,
        names,
        pool,
        processors,
        state,
        wake,
        wakers,
        shutdown,
    } = *shared;
    // Named per prefix so ops (and the resilience tests) can tell which
    // daemon a connection on a shared broker belongs to.
    let props = ConnectionProperties::default()
        .with_connection_name(format!("payrecon-{}", amqp.prefix).into());
    let uri = broker_error::parse_url(url.expose())?;
    // Read each session: a CA file replaced meanwhile is the one trusted.
    let tls = BrokerTls::from_settings(amqp)?;
    let conn = tls.open_uri(uri.clone(), props).await?;
    let conn = Arc::new(conn);
    topology::declare(&conn.create_channel().await?, names).await?;
    let publisher = confirm_channel(&conn).await?;
    // Events go out on a link of their own (see confirm_link), named apart
    // from the consuming connection.
    let name = format!("payrecon-{}-events", amqp.prefix);
    let link = ConfirmLink::connect_with(url.expose(), &name, &tls).await?;
    let spec = |queue: &str| ConsumerSpec {
        queue: queue.to_string(),
        dlx: names.dlx.clone(),
        prefetch: amqp.prefetch,
        // Half the prefetch: the broker keeps delivering the next batch while
        // this one commits, so the consumer never idles on a round trip.
        max_batch: (usize::from(amqp.prefetch) / PIPELINE_DEPTH).clamp(1, MAX_BATCH),
        wait: BATCH_WAIT,
        depth: PIPELINE_DEPTH,
    };
    let requests = consumer::run(
        confirm_channel(&conn).await?,
        spec(&names.requests),
        processors.requests.clone(),
        wakers.clone(),
        shutdown.clone(),
    );
    let notifications = consumer::run(
        confirm_channel(&conn).await?,
        spec(&names.notifications),
        processors.notifications.clone(),
        wakers.clone(),
        shutdown.clone(),
    );
    let relay_done = CancellationToken::new();
    let relay = relay::run(
        pool.clone(),
        link,
        names.events.clone(),
        wake.clone(),
        relay_done.clone(),
    );
    let address = broker_error::address(&uri);
    state
        .set(Some((conn.clone(), publisher.clone(), address.clone())))
        .await;
    *established = true;
    tracing::info!(prefix = %amqp.prefix, broker = %address, "connected to the broker; consuming");
    let consumers = async {
        tokio::try_join!(requests, notifications)?;
        // Consumers have settled their last batches; let the relay drain them.
        relay_done.cancel();
        Ok::<(), SessionError>(())
    };
    let result = tokio::try_join!(consumers, async { relay.await.map_err(SessionError::from) });
    state.set(None).await;
    if result.is_ok() {
        // The relay has drained: close the publisher ourselves (see consumer::run).
        let _ = publisher.close(200, "shutting down".into()).await;
    }
    // Also after a failure: when only a channel died, the connection would
    // otherwise stay open and keep the old session's unacked deliveries
    // from being requeued to the new one.
    let _ = tokio::time::timeout(CLOSE_WAIT, conn.close(200, "session ended".into())).await;
    result.map(|_| ())
}
