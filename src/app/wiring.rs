//! The joints between the core and the parts built beside it: gateways and
//! their simulator, scheduled jobs, reconciliation.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::shared_sim::{start_on, start_or_share, SimulatorInUse};
use super::Gateways;
use crate::cli::ReconCommand;
use crate::config::{GatewayMode, Settings};
use crate::gateway::factory::build_gateways;
use crate::jobs::reconcile::ReconContext;
use crate::payments::ReconRunner;
use crate::simulator::SimOptions;

/// In simulator mode: starts the in-process simulator, or shares the one
/// already at `simulator.listen` (`shared_sim.rs`); then builds the enabled
/// gateways.
pub async fn start_gateways(
    settings: &Settings,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Gateways, Option<String>)> {
    let g = &settings.gateways;
    let simulated = (g.wechat_pay.enabled && g.wechat_pay.mode == GatewayMode::Simulator)
        || (g.alipay.enabled && g.alipay.mode == GatewayMode::Simulator);
    let base_url = if simulated {
        let in_use = start_or_share(settings, shutdown.clone()).await?;
        let url = in_use.base_url();
        if let SimulatorInUse::Own(sim) = in_use {
            tasks.spawn(async move {
                if let Err(e) = sim.stopped().await {
                    tracing::warn!(error = %e, "simulator stopped with an error");
                }
            });
        }
        Some(url)
    } else {
        None
    };
    let gateways = build_gateways(settings, base_url.as_deref()).context("gateways")?;
    Ok((gateways, base_url))
}

/// What runs `recon.run` requests (docs/contract.md §3.7): the same reconciliation
/// as `payrecon recon run`, against this daemon's gateways.
pub fn recon_runner(
    settings: &Settings,
    pool: &PgPool,
    gateways: &Gateways,
) -> Option<Arc<dyn ReconRunner>> {
    Some(Arc::new(ReconContext::from_settings(
        settings,
        pool.clone(),
        gateways.clone(),
    )))
}

/// The cron-scheduled jobs; each slot runs once across all instances.
/// Returns the instance id the scheduler records with the runs it claims.
pub fn spawn_jobs(
    settings: &Settings,
    pool: &PgPool,
    gateways: &Gateways,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> anyhow::Result<String> {
    let mut scheduler = crate::jobs::Scheduler::new();
    let instance = scheduler.instance().to_string();
    crate::jobs::add_timeout_cancel(&mut scheduler, settings, pool.clone(), gateways.clone())
        .context("jobs.timeout_cancel")?;
    let recon = ReconContext::from_settings(settings, pool.clone(), gateways.clone());
    crate::jobs::reconcile::daily::add_reconcile(&mut scheduler, settings, recon)
        .context("jobs.reconcile")?;
    tasks.spawn(scheduler.run(pool.clone(), shutdown.clone()));
    Ok(instance)
}

pub fn recon_routes(pool: &PgPool) -> Option<axum::Router> {
    Some(crate::http::recon::router(
        crate::http::recon::ReconHttpState { pool: pool.clone() },
    ))
}

/// `payrecon recon …`. A `run` downloads the bill from the gateways; in
/// simulator mode that is the running daemon's simulator (it holds the
/// payments), at `simulator.listen`. `report` and `list` need no gateway.
pub async fn recon_command(command: ReconCommand, settings: &Settings) -> anyhow::Result<i32> {
    let pool = crate::store::connect(&settings.database)
        .await
        .context("database")?;
    let gateways = match &command {
        ReconCommand::Run { bill_file, .. } => {
            match build_gateways(
                settings,
                Some(&format!("http://{}", settings.simulator.listen)),
            ) {
                Ok(g) => g,
                // A bill file can still be reconciled; only the repair of a
                // status mismatch (which needs a gateway query) stays open.
                Err(e) if bill_file.is_some() => {
                    tracing::warn!(error = %e, "no gateway available; status mismatches will not be repaired");
                    Default::default()
                }
                Err(e) => return Err(e).context("gateways"),
            }
        }
        _ => Default::default(),
    };
    Ok(crate::cli::recon::run(
        command,
        ReconContext::from_settings(settings, pool, gateways),
    )
    .await)
}

/// `payrecon gateway-sim`: the simulator alone, until SIGINT/SIGTERM.
/// `notify_retry` replaces both gateways' re-send schedules.
pub async fn gateway_sim(
    settings: &Settings,
    listen: Option<String>,
    notify_retry: Option<Vec<std::time::Duration>>,
) -> anyhow::Result<i32> {
    let shutdown = CancellationToken::new();
    let listen = listen.unwrap_or_else(|| settings.simulator.listen.clone());
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("simulator.listen {listen}"))?;
    let mut opts = SimOptions::new(settings.simulator.clone());
    if let Some(schedule) = notify_retry {
        opts.wechat_notify_retry = schedule.clone();
        opts.alipay_notify_retry = schedule;
    }
    let sim = start_on(opts, listener, shutdown.clone()).await?;
    println!("gateway simulator listening on {}", sim.base_url());
    super::wait_for_signal().await;
    shutdown.cancel();
    sim.stopped().await?;
    Ok(crate::cli::exit::OK)
}
