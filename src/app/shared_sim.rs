//! Which gateway simulator a daemon in simulator mode talks to. Several
//! instances on one host must see one gateway state (a payment prepared
//! through one is found by a query through another), so they share one
//! simulator: either `payrecon gateway-sim` (`simulator.embedded = false`) or
//! the embedded one of whichever instance bound `simulator.listen` first,
//! provided it has the same keys and ids (`GET /sim/identity`).

use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::simulator::identity::{self, ProbeError, SimIdentity};
use crate::simulator::{SimOptions, Simulator};

/// A simulator that is still creating its keys (first start, RSA keygen on
/// a busy machine) has bound its address but answers only afterwards.
const SHARE_PROBE_WAIT: Duration = Duration::from_secs(15);
/// `gateway-sim` loads existing keys at once; a longer silence means it is
/// not there (yet).
const EXTERNAL_PROBE_WAIT: Duration = Duration::from_secs(5);

/// The key files a daemon reads (its signing keys and the simulator's public
/// keys) plus the public halves the identity compares.
const DAEMON_KEY_FILES: [&str; 7] = [
    "wechat_merchant_private.pem",
    "wechat_merchant_public.pem",
    "wechat_platform_public.pem",
    "wechat_apiv3_key",
    "alipay_app_private.pem",
    "alipay_app_public.pem",
    "alipay_public.pem",
];

pub enum SimulatorInUse {
    /// Started by this daemon; it stops with it.
    Own(Simulator),
    /// Another process's, at this base URL.
    Shared(String),
}

impl SimulatorInUse {
    pub fn base_url(&self) -> String {
        match self {
            SimulatorInUse::Own(sim) => sim.base_url(),
            SimulatorInUse::Shared(url) => url.clone(),
        }
    }
}

pub async fn start_or_share(
    settings: &Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<SimulatorInUse> {
    let listen = settings.simulator.listen.as_str();
    if !settings.simulator.embedded {
        use_external(settings).await?;
        return Ok(SimulatorInUse::Shared(format!("http://{listen}")));
    }
    match TcpListener::bind(listen).await {
        Ok(listener) => start_on(
            SimOptions::new(settings.simulator.clone()),
            listener,
            shutdown,
        )
        .await
        .map(SimulatorInUse::Own),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            share_existing(settings).await?;
            Ok(SimulatorInUse::Shared(format!("http://{listen}")))
        }
        Err(e) => Err(anyhow::anyhow!("simulator.listen {listen}: {e}")),
    }
}

pub async fn start_on(
    opts: SimOptions,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<Simulator> {
    Simulator::start(opts, listener, shutdown)
        .await
        .context("simulator")
}

/// `embedded = true` and the address is taken: share it only if it is a
/// simulator this daemon can talk to, i.e. one with its keys and ids.
async fn share_existing(settings: &Settings) -> anyhow::Result<()> {
    let listen = &settings.simulator.listen;
    let found = identity::fetch(listen, SHARE_PROBE_WAIT)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "simulator.listen {listen} is already in use by something that is not a payrecon \
                 gateway simulator ({e}): choose another simulator.listen, free the address, or set \
                 simulator.embedded = false and run `payrecon gateway-sim` at simulator.listen"
            )
        })?;
    let expected = SimIdentity::from_keys_dir(&settings.simulator).map_err(|missing| {
        anyhow::anyhow!(
            "simulator.listen {listen} is served by a payrecon gateway simulator, but this \
             instance cannot read its keys ({missing}): use the same simulator.keys_dir as that \
             simulator, or choose another simulator.listen"
        )
    })?;
    check_same(listen, &expected, &found, SHARE_HINT)?;
    tracing::warn!(
        simulator.listen = %listen,
        "simulator.listen is already served by a payrecon gateway simulator with the same keys \
         (another instance's embedded one): using it instead of starting one; it stops with its \
         owner, so for instances that come and go run `payrecon gateway-sim` once and set \
         simulator.embedded = false"
    );
    Ok(())
}

const SHARE_HINT: &str = "use the same simulator.keys_dir (and simulator ids) as that simulator, \
     choose another simulator.listen, or set simulator.embedded = false and run `payrecon \
     gateway-sim` at simulator.listen with this instance's keys_dir";

const EXTERNAL_HINT: &str = "run `payrecon gateway-sim` at simulator.listen with the same \
     simulator.keys_dir (and simulator ids) as this instance";

/// `embedded = false`: the keys must be there (the simulator creates them);
/// the simulator itself may come later, but if something answers it must be
/// a simulator with these keys.
async fn use_external(settings: &Settings) -> anyhow::Result<()> {
    let sim = &settings.simulator;
    let listen = &sim.listen;
    // Fail rather than wait: a wrong keys_dir would otherwise look like a
    // daemon still starting, forever; exiting lets the process manager retry
    // and the log says why.
    if let Some(missing) = DAEMON_KEY_FILES
        .iter()
        .map(|f| sim.keys_dir.join(f))
        .find(|p| !p.exists())
    {
        anyhow::bail!(
            "simulator.embedded is false but {} is missing: start `payrecon gateway-sim` with the \
             same simulator.keys_dir ({}) first; it creates the keys",
            missing.display(),
            sim.keys_dir.display()
        );
    }
    let expected = SimIdentity::from_keys_dir(sim)
        .map_err(|bad| anyhow::anyhow!("simulator.keys_dir {}: {bad}", sim.keys_dir.display()))?;
    match identity::fetch(listen, EXTERNAL_PROBE_WAIT).await {
        Ok(found) => {
            check_same(listen, &expected, &found, EXTERNAL_HINT)?;
            tracing::info!(simulator.listen = %listen, "using the gateway simulator at simulator.listen");
            Ok(())
        }
        Err(ProbeError::Unreachable(e)) => {
            tracing::warn!(
                simulator.listen = %listen, error = %e,
                "no gateway simulator answers at simulator.listen yet; gateway calls are retried \
                 until `payrecon gateway-sim` runs there"
            );
            Ok(())
        }
        Err(ProbeError::NotASimulator(e)) => Err(anyhow::anyhow!(
            "simulator.listen {listen} is served by something that is not a payrecon gateway \
             simulator ({e}): {EXTERNAL_HINT}"
        )),
    }
}

fn check_same(
    listen: &str,
    expected: &SimIdentity,
    found: &SimIdentity,
    hint: &str,
) -> anyhow::Result<()> {
    let differ = expected.differences(found);
    if differ.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "simulator.listen {listen} is served by a payrecon gateway simulator with other keys or \
         ids (differing: {}): {hint}",
        differ.join(", ")
    )
}
