//! The command line of CONTRACT §1. Exit codes: 0 success, 1 could not run,
//! 3 not found.

pub mod recon;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "payrecon",
    version,
    about = "Payments back office: orders, gateways, reconciliation"
)]
pub struct Cli {
    /// Configuration file (default: config/default.toml, then config/local.toml).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: migrations, topology, consumers, scheduler, HTTP, simulator.
    Run,
    /// Apply the database migrations and exit.
    Migrate,
    /// Orders.
    Order {
        #[command(subcommand)]
        command: OrderCommand,
    },
    /// Reconciliation runs and reports.
    Recon {
        #[command(subcommand)]
        command: ReconCommand,
    },
    /// The gateway simulator alone.
    GatewaySim {
        /// Listen address (default: simulator.listen).
        #[arg(long)]
        listen: Option<String>,
        /// Delays between re-sends of an unacknowledged notification, e.g.
        /// `1s,2s,5s`, for both gateways (default: each gateway's real
        /// schedule, which waits 15 s / 4 min before the first re-send).
        /// For tests and demos that stop the receiver.
        #[arg(long, value_delimiter = ',', value_parser = parse_duration)]
        notify_retry: Option<Vec<std::time::Duration>>,
    },
}

#[derive(Debug, Subcommand)]
pub enum OrderCommand {
    /// Show one order.
    Show {
        order_id: String,
        /// The order object of CONTRACT §4 as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReconCommand {
    /// Reconcile one channel's business day now.
    Run {
        #[arg(long)]
        channel: String,
        #[arg(long)]
        date: String,
        /// Read the bill from this file (the gateway's own format) instead of downloading it.
        #[arg(long)]
        bill_file: Option<PathBuf>,
    },
    /// Print a run's report.
    Report {
        #[arg(long, conflicts_with_all = ["channel", "date"])]
        run: Option<String>,
        #[arg(long, requires = "date")]
        channel: Option<String>,
        #[arg(long, requires = "channel")]
        date: Option<String>,
        #[arg(long, default_value = "table", value_parser = ["table", "json", "csv", "html"])]
        format: String,
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Recent runs, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::config::HumanDuration::parse(text).map(|d| d.0)
}

/// Process exit codes of the contract.
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const NOT_FOUND: i32 = 3;
}

/// `order show` without `--json`: one field a line, for people.
pub fn print_order_table(order: &serde_json::Value) {
    let Some(fields) = order.as_object() else {
        return;
    };
    for (key, value) in fields {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "-".to_string(),
            other => other.to_string(),
        };
        println!("{key:<24} {text}");
    }
}
