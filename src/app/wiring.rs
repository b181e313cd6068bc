//! The joints between the core and the parts built beside it: gateways and
//! their simulator, scheduled jobs, reconciliation.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Gateways;
use crate::cli::ReconCommand;
use crate::config::Settings;
use crate::payments::ReconRunner;

/// Starts the in-process simulator when a gateway is in simulator mode and
/// builds the enabled gateways.
pub async fn start_gateways(
    _settings: &Settings,
    _tasks: &mut JoinSet<()>,
    _shutdown: &CancellationToken,
) -> anyhow::Result<(Gateways, Option<String>)> {
    Ok((HashMap::new(), None))
}

pub fn recon_runner(
    _settings: &Settings,
    _pool: &PgPool,
    _gateways: &Gateways,
) -> Option<Arc<dyn ReconRunner>> {
    None
}

pub fn spawn_jobs(
    _settings: &Settings,
    _pool: &PgPool,
    _gateways: &Gateways,
    _tasks: &mut JoinSet<()>,
    _shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    Ok(())
}

pub fn recon_routes(_pool: &PgPool) -> Option<axum::Router> {
    None
}

pub async fn recon_command(_command: ReconCommand, _settings: &Settings) -> anyhow::Result<i32> {
    anyhow::bail!("reconciliation is being integrated")
}

pub async fn gateway_sim(_settings: &Settings, _listen: Option<String>) -> anyhow::Result<i32> {
    anyhow::bail!("the simulator is being integrated")
}
