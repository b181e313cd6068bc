//! The gateway simulator: WeChat Pay API v3 at the root (`/v3/…`) and
//! Alipay's open API at `/gateway.do`, signed with its own keys exactly as the
//! real gateways sign, so the gateways' own SDKs talk to it unchanged
//! (docs/contract.md §5, docs/gateways.md Part E). `/sim/…` is the control API for tests
//! and demos (see `control.rs`). State lives in memory for the process's life.

mod alipay;
mod alipay_bill;
mod alipay_proto;
mod calls;
mod control;
mod faults;
pub mod identity;
mod keys;
mod notify;
mod state;
mod wechat_auth;
mod wechat_bill;
mod wechat_pay;
mod wechat_refund;
mod zip_gbk;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::http::Response;
use axum::routing::{any, get};
use axum::Router;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::SimulatorSettings;
use crate::domain::Channel;

pub use faults::{FaultRequest, Faults};
pub use identity::SimIdentity;
pub use keys::SimKeys;
pub use wechat_auth::{parse_authorization, verify_request, AuthError, Authorization, Merchant};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simulator keys: {0}")]
    Keys(String),
    #[error("simulator I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("simulator server task failed: {0}")]
    Join(String),
    #[error("simulator HTTP client: {0}")]
    Client(String),
}

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub settings: SimulatorSettings,
    /// Delays between notification re-sends (defaults: the gateways' real
    /// schedules, docs/gateways.md A3 / B3). Tests pass short ones.
    pub wechat_notify_retry: Vec<Duration>,
    pub alipay_notify_retry: Vec<Duration>,
    /// How long a "timeout" fault holds the response (default 30 s).
    pub hang_for: Duration,
}

impl SimOptions {
    pub fn new(settings: SimulatorSettings) -> Self {
        let s = Duration::from_secs;
        let m = |v: u64| s(v * 60);
        SimOptions {
            settings,
            // 15 re-sends, 24 h 4 min in all.
            wechat_notify_retry: vec![
                s(15),
                s(15),
                s(30),
                m(3),
                m(10),
                m(20),
                m(30),
                m(30),
                m(30),
                m(60),
                m(180),
                m(180),
                m(180),
                m(360),
                m(360),
            ],
            alipay_notify_retry: vec![m(4), m(10), m(10), m(60), m(120), m(360), m(900)],
            hang_for: s(30),
        }
    }
}

/// What every handler shares.
pub(crate) struct Ctx {
    pub settings: SimulatorSettings,
    pub keys: SimKeys,
    pub store: Mutex<state::Store>,
    pub faults: Mutex<faults::FaultSet>,
    pub calls: Mutex<calls::CallLog>,
    pub ids: state::IdMint,
    pub wechat_notify_retry: Vec<Duration>,
    pub alipay_notify_retry: Vec<Duration>,
    pub hang_for: Duration,
    /// Notifications are sent with this client (no proxy: loopback only).
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

impl Ctx {
    /// A panic while holding the lock cannot leave the maps half-updated in a
    /// way worse than a lost request, so a poisoned lock is simply reused.
    pub fn store(&self) -> MutexGuard<'_, state::Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn faults(&self) -> MutexGuard<'_, faults::FaultSet> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn calls(&self) -> MutexGuard<'_, calls::CallLog> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sleeps, but wakes early on shutdown. `false` if shutdown came first.
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.shutdown.cancelled() => false,
        }
    }

    /// Runs one protocol call under the injected faults of `channel` and
    /// logs it. `failure` builds the channel's "system error" answer.
    pub async fn guarded<Fut>(
        &self,
        channel: Channel,
        label: calls::CallLabel,
        failure: impl FnOnce() -> Response<Body>,
        call: Fut,
    ) -> Response<Body>
    where
        Fut: Future<Output = Response<Body>>,
    {
        let (latency_ms, verdict) = self.faults().decide(channel);
        self.calls().record(channel, label, verdict);
        if latency_ms > 0 {
            self.sleep(Duration::from_millis(latency_ms)).await;
        }
        match verdict {
            faults::Verdict::Fail => failure(),
            faults::Verdict::Proceed => call.await,
            faults::Verdict::Hang => {
                let response = call.await;
                self.sleep(self.hang_for).await;
                response
            }
        }
    }
}

pub struct Simulator {
    addr: SocketAddr,
    ctx: Arc<Ctx>,
    server: JoinHandle<std::io::Result<()>>,
}

impl Simulator {
    /// Loads or creates the keys, then serves on `listener` until `shutdown`
    /// is cancelled. Notification re-sends stop at shutdown too.
    pub async fn start(
        opts: SimOptions,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> Result<Simulator, SimError> {
        let dir = opts.settings.keys_dir.clone();
        // RSA key generation takes a while: keep it off the async workers.
        let keys = tokio::task::spawn_blocking(move || SimKeys::load_or_create(&dir))
            .await
            .map_err(|e| SimError::Join(e.to_string()))??;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| SimError::Client(e.to_string()))?;
        let addr = listener.local_addr()?;
        let ctx = Arc::new(Ctx {
            settings: opts.settings,
            keys,
            store: Mutex::default(),
            faults: Mutex::default(),
            calls: Mutex::default(),
            ids: state::IdMint::default(),
            wechat_notify_retry: opts.wechat_notify_retry,
            alipay_notify_retry: opts.alipay_notify_retry,
            hang_for: opts.hang_for,
            http,
            shutdown: shutdown.clone(),
            tasks: TaskTracker::new(),
        });
        let app = router(ctx.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        });
        tracing::info!(simulator.addr = %addr, "gateway simulator listening");
        Ok(Simulator { addr, ctx, server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the base URL both SDKs and adapters are given.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn keys(&self) -> &SimKeys {
        &self.ctx.keys
    }

    /// Waits until the server has stopped (after `shutdown` was cancelled)
    /// and the notification senders have given up.
    pub async fn stopped(self) -> Result<(), SimError> {
        let served = self
            .server
            .await
            .map_err(|e| SimError::Join(e.to_string()))?;
        self.ctx.tasks.close();
        self.ctx.tasks.wait().await;
        served.map_err(SimError::Io)
    }
}

/// `payrecon gateway-sim`: binds `listen`, serves with the gateways' real
/// notification schedules until `shutdown` is cancelled, then waits for a
/// clean stop.
pub async fn run(
    settings: SimulatorSettings,
    listen: &str,
    shutdown: CancellationToken,
) -> Result<(), SimError> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let sim = Simulator::start(SimOptions::new(settings), listener, shutdown).await?;
    tracing::info!(simulator.base_url = %sim.base_url(), "gateway simulator ready");
    sim.stopped().await
}

fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/v3/{*rest}", any(wechat_pay::entry))
        .route(
            "/gateway.do",
            get(alipay::entry_get).post(alipay::entry_post),
        )
        .route(alipay_bill::DOWNLOAD_PATH, get(alipay_bill::download))
        .merge(control::routes())
        .with_state(ctx)
}
