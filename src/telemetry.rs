//! Logs: JSON lines when stdout is not a terminal (collected by machines),
//! human-readable otherwise. `RUST_LOG` filters; default `info`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init() {
    init_with_default("info");
}

/// As `init`, with another level when `RUST_LOG` is unset (tests use `warn`:
/// dozens of daemons at `info` bury a failure's own output).
pub fn init_with_default(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // try_init: a second call (tests) is harmless.
    let _ = if std::io::stderr().is_terminal() {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    };
}

/// Registers the main series at zero, so dashboards and alerts see them (at
/// 0) from the first scrape instead of only after the first occurrence.
pub fn register_metrics() {
    use crate::domain::Channel;
    for channel in Channel::ALL {
        for outcome in ["completed", "failed", "skipped"] {
            metrics::counter!("payrecon_recon_runs_total", "channel" => channel.as_str(), "outcome" => outcome).increment(0);
        }
        for operation in [
            "prepay",
            "query",
            "close",
            "refund",
            "query_refund",
            "download_bill",
        ] {
            metrics::counter!("payrecon_gateway_calls_total", "channel" => channel.as_str(), "operation" => operation, "outcome" => "ok")
                .increment(0);
        }
    }
    metrics::counter!("payrecon_events_published_total").increment(0);
    metrics::counter!("payrecon_broker_reconnects_total").increment(0);
}
