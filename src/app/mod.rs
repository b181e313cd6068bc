//! Wiring and supervision: builds every part from the settings, runs them
//! under one cancellation token, and shuts down in order on SIGINT/SIGTERM:
//! consumers stop taking deliveries and settle their batch, the relay drains
//! the outbox, jobs stop between slots, then the process exits 0.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::{exit, Cli, Command, OrderCommand};
use crate::config::{GatewayMode, Settings};
use crate::domain::{Channel, OrderId};
use crate::gateway::Gateway;
use crate::messaging::handler::HandlerConfig;
use crate::messaging::notification_processor::NotificationProcessor;
use crate::messaging::request_processor::RequestProcessor;
use crate::messaging::supervisor::{self, BrokerState, Processors};
use crate::messaging::topology::Names;
use crate::payments::{Payments, RetryPolicy};
use crate::{http, store};

mod shared_sim;
mod wiring;

/// Runs a command and returns the process exit code.
pub fn main(cli: Cli) -> i32 {
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("payrecon: {e}");
            return exit::FAILED;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("payrecon: cannot start the runtime: {e}");
            return exit::FAILED;
        }
    };
    runtime.block_on(dispatch(cli.command, settings))
}

async fn dispatch(command: Command, settings: Settings) -> i32 {
    let result = match command {
        Command::Run => run_until_signal(settings).await.map(|()| exit::OK),
        Command::Migrate => store::connect(&settings.database)
            .await
            .map(|_| exit::OK)
            .map_err(Into::into),
        Command::Order {
            command: OrderCommand::Show { order_id, json },
        } => show_order(&settings, &order_id, json).await,
        Command::Recon { command } => wiring::recon_command(command, &settings).await,
        Command::GatewaySim {
            listen,
            notify_retry,
        } => wiring::gateway_sim(&settings, listen, notify_retry).await,
        Command::Demo { keep, out_dir } => {
            crate::demo::run(&settings, crate::demo::DemoOptions { keep, out_dir }).await
        }
        Command::Dlq { command } => Ok(crate::cli::dlq::run(command, &settings.amqp).await),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("payrecon: {e:#}");
            exit::FAILED
        }
    }
}

async fn show_order(settings: &Settings, id: &str, json: bool) -> anyhow::Result<i32> {
    let Ok(id) = id.parse::<OrderId>() else {
        eprintln!("payrecon: {id:?} is not an order id");
        return Ok(exit::NOT_FOUND);
    };
    let pool = store::connect(&settings.database).await?;
    let mut conn = pool.acquire().await?;
    let Some(order) = store::orders::get(&mut conn, id).await? else {
        eprintln!("payrecon: no order {id}");
        return Ok(exit::NOT_FOUND);
    };
    let value = crate::messaging::contracts::order_json(&order);
    if json {
        println!("{value}");
    } else {
        crate::cli::print_order_table(&value);
    }
    Ok(exit::OK)
}

/// The process-wide Prometheus recorder (installed once; tests start
/// several daemons in one process).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

async fn run_until_signal(settings: Settings) -> anyhow::Result<()> {
    // Listening from the start: a daemon still waiting for its database must
    // stop on a signal too, and exit 0, since it holds nothing to settle.
    let signal = wait_for_signal();
    tokio::pin!(signal);
    let starting = Daemon::begin(settings).await?;
    let daemon = tokio::select! {
        started = starting.finish() => started?,
        _ = &mut signal => {
            tracing::info!("signal received while starting; exiting");
            return Ok(());
        }
    };
    signal.await;
    tracing::info!("signal received; shutting down");
    daemon.stop().await;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// A running daemon: what `payrecon run` is, and what tests start in-process.
pub struct Daemon {
    pub http_addr: SocketAddr,
    /// This daemon's name in `job_runs.instance`: which runs it claimed.
    pub instance: String,
    pub simulator_base_url: Option<String>,
    pub pool: PgPool,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

/// A daemon that listens and waits for its database: `/healthz` and
/// `/metrics` answer, `/readyz` and the routes that need the database say 503.
pub struct Starting {
    pub http_addr: SocketAddr,
    pub simulator_base_url: Option<String>,
    settings: Settings,
    pool: PgPool,
    gateways: Gateways,
    broker: Arc<BrokerState>,
    started: http::Started,
    /// Dropped unfinished (a signal while waiting), everything stops.
    shutdown: tokio_util::sync::DropGuard,
    tasks: JoinSet<()>,
}

impl Daemon {
    /// Starts and returns once the database is there and the daemon works.
    pub async fn start(settings: Settings) -> anyhow::Result<Daemon> {
        Daemon::begin(settings).await?.finish().await
    }

    /// Listens at once; what needs the database waits for `Starting::finish`.
    pub async fn begin(settings: Settings) -> anyhow::Result<Starting> {
        if settings.http.api_token.expose().is_empty()
            && !http::is_loopback_listen(&settings.http.listen)
        {
            anyhow::bail!(
                "http.api_token is empty but http.listen ({}) is not a loopback address; set a token",
                settings.http.listen
            );
        }
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let _ = metrics_handle();
        crate::telemetry::register_metrics();
        // Lazy: nothing is connected until `finish` has migrated.
        let pool = store::open(&settings.database)?;
        let listener = TcpListener::bind(&settings.http.listen)
            .await
            .with_context(|| format!("http.listen {}", settings.http.listen))?;
        let http_addr = listener.local_addr()?;
        let (gateways, simulator_base_url) =
            wiring::start_gateways(&settings, &mut tasks, &shutdown).await?;
        let names = Names::new(&settings.amqp.prefix);
        let broker = Arc::new(BrokerState::default());
        let started = http::Started::default();
        let (notify_queue, enqueuing) = http::NotifyQueue::start(
            broker.clone(),
            names.notifications.clone(),
            shutdown.clone(),
        );
        tasks.spawn(enqueuing);
        let state = http::HttpState {
            pool: pool.clone(),
            broker: broker.clone(),
            gateways: gateways.clone(),
            notify_queue,
            api_token: settings.http.api_token.expose().to_string(),
            metrics: metrics_handle(),
            dead_letter_queues: vec![
                ("requests", names.requests_dlq.clone()),
                ("notifications", names.notifications_dlq.clone()),
            ],
            started: started.clone(),
        };
        let app = http::router(state, wiring::recon_routes(&pool));
        let http_shutdown = shutdown.clone();
        tasks.spawn(async move {
            let serve = axum::serve(listener, app)
                .with_graceful_shutdown(async move { http_shutdown.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "http server failed");
            }
        });
        tracing::info!(http = %http_addr, "listening; waiting for the database");
        Ok(Starting {
            http_addr,
            simulator_base_url,
            settings,
            pool,
            gateways,
            broker,
            started,
            shutdown: shutdown.drop_guard(),
            tasks,
        })
    }
}

impl Starting {
    /// Waits for the database (retrying), migrates, and starts the work.
    pub async fn finish(self) -> anyhow::Result<Daemon> {
        let Starting {
            http_addr,
            simulator_base_url,
            settings,
            pool,
            gateways,
            broker,
            started,
            shutdown,
            tasks,
        } = self;
        // From here a failure drops `daemon`, which stops what runs.
        let mut daemon = Daemon {
            http_addr,
            instance: String::new(),
            simulator_base_url,
            pool: pool.clone(),
            shutdown: shutdown.disarm(),
            tasks,
        };
        let shutdown = daemon.shutdown.clone();
        let tasks = &mut daemon.tasks;
        prepare_with_retry(&settings, &pool, &shutdown).await?;
        // As for the database: a broker certificate we cannot trust stops
        // the daemon with the reason rather than a reconnect loop.
        crate::messaging::broker_tls::check_brokers(&settings.amqp).await?;
        let notify_urls = notify_urls(&settings, http_addr);
        let wake_relay = Arc::new(Notify::new());
        let payments = Arc::new(Payments {
            pool: pool.clone(),
            gateways: gateways.clone(),
            notify_urls,
            retry: RetryPolicy::from(&settings.retry),
            recon: wiring::recon_runner(&settings, &pool, &gateways),
        });
        let pay_timeout = chrono::Duration::from_std(settings.orders.pay_timeout.0)
            .context("orders.pay_timeout")?;
        let processors = Processors {
            requests: Arc::new(RequestProcessor {
                pool: pool.clone(),
                config: HandlerConfig { pay_timeout },
            }),
            notifications: Arc::new(NotificationProcessor {
                pool: pool.clone(),
                gateways: gateways.clone(),
            }),
        };
        let wake_payments = Arc::new(Notify::new());
        tasks.spawn(supervisor::supervise(
            settings.amqp.clone(),
            pool.clone(),
            processors,
            broker,
            wake_relay.clone(),
            wake_payments.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(payments.clone().run(wake_payments, shutdown.clone()));
        let instance = wiring::spawn_jobs(&settings, &pool, &gateways, tasks, &shutdown)?;
        started.set();
        tracing::info!(http = %http_addr, prefix = %settings.amqp.prefix, %instance, "payrecon running");
        daemon.instance = instance;
        Ok(daemon)
    }
}

impl Daemon {
    /// Stops everything in order and waits (bounded) for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(30), all)
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over; aborting the rest");
            self.tasks.abort_all();
        }
        self.pool.close().await;
    }
}

/// A daemon dropped without `stop` (a test that panicked, say) still stops:
/// otherwise its broker supervisor would outlive its owner and re-declare
/// queues that the owner is cleaning up.
impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// In simulator mode the in-process simulator must call back this very
/// daemon, wherever it listens; in live mode the configured URL is public.
fn notify_urls(settings: &Settings, http_addr: SocketAddr) -> HashMap<Channel, String> {
    let mut urls = HashMap::new();
    let w = &settings.gateways.wechat_pay;
    let a = &settings.gateways.alipay;
    let local = |c: Channel| format!("http://{http_addr}/notify/{}", c.as_str());
    urls.insert(
        Channel::WechatPay,
        if w.mode == GatewayMode::Simulator {
            local(Channel::WechatPay)
        } else {
            w.notify_url.clone()
        },
    );
    urls.insert(
        Channel::Alipay,
        if a.mode == GatewayMode::Simulator {
            local(Channel::Alipay)
        } else {
            a.notify_url.clone()
        },
    );
    urls
}

async fn prepare_with_retry(
    settings: &Settings,
    pool: &PgPool,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut pause = Duration::from_millis(500);
    loop {
        match store::prepare(&settings.database, pool).await {
            Ok(()) => return Ok(()),
            Err(e) if !worth_retrying(&e) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, "database unavailable; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => anyhow::bail!("stopped while waiting for the database"),
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// A bad URL or a migration that fails in itself would fail again; a
/// connection lost in the middle of the migrations would not.
fn worth_retrying(e: &store::StoreError) -> bool {
    use sqlx::migrate::MigrateError;
    match e {
        // A certificate or a server without TLS does not heal by waiting.
        store::StoreError::Url(_) | store::StoreError::Tls { .. } => false,
        store::StoreError::Migrate(MigrateError::Execute(
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut,
        )) => true,
        store::StoreError::Migrate(_) => false,
        _ => true,
    }
}

/// The gateways of the enabled channels (set by the gateway adapters).
pub type Gateways = HashMap<Channel, Arc<dyn Gateway>>;
