//! The command line of docs/contract.md §1. Exit codes: 0 success, 1 could not run,
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
    /// Watch the whole system work in under a minute, in a database and
    /// broker prefix of its own (removed afterwards unless --keep).
    #[command(
        after_help = "Example:\n  payrecon demo            # prints the story and the report's path\n  payrecon demo --keep     # keep the demo's database and queues for a look"
    )]
    Demo {
        /// Keep the demo's database and broker objects afterwards.
        #[arg(long)]
        keep: bool,
        /// Where to write the reports and the bill (default .payrecon/demo/<name>).
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// The gateway simulator alone.
    GatewaySim {
        /// Listen address (default: simulator.listen).
        #[arg(long)]
        listen: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum OrderCommand {
    /// Show one order.
    Show {
        order_id: String,
        /// The order object of docs/contract.md §4 as JSON.
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
