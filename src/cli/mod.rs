//! The command line of docs/contract.md §1. Exit codes: 0 success, 1 could
//! not run, 3 not found. Every command's `--help` ends with an example.

pub mod dlq;
mod progress;
pub mod recon;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "payrecon",
    version,
    about = "Payments back office: orders, gateways, reconciliation",
    after_help = "Examples:
  payrecon run
  payrecon --config /etc/payrecon.toml order show 0193a5c2-7d4e-7b21-9c1f-5e8a0b6d2f10
  PAYRECON__AMQP__PREFIX=shop2 payrecon dlq list

Settings: --config FILE, else config/default.toml then config/local.toml;
PAYRECON__SECTION__KEY environment variables override any key."
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
    #[command(after_help = "Example:
  PAYRECON__AMQP__PREFIX=shop payrecon run

Runs until SIGINT or SIGTERM, then stops consuming, settles what is in
flight and exits 0.")]
    Run,
    /// Apply the database migrations and exit.
    #[command(after_help = "Example:
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/payrecon payrecon migrate

Creates the database if it is missing. The daemon migrates at start too.")]
    Migrate,
    /// Orders.
    #[command(after_help = "Example:
  payrecon order show 0193a5c2-7d4e-7b21-9c1f-5e8a0b6d2f10 --json")]
    Order {
        #[command(subcommand)]
        command: OrderCommand,
    },
    /// Reconciliation runs and reports.
    #[command(after_help = "Examples:
  payrecon recon run --channel wechat_pay --date 2026-11-24
  payrecon recon report --channel alipay --date 2026-11-24 --format html --output report.html
  payrecon recon list --limit 5")]
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
    /// Dead letters: list, replay, purge.
    #[command(after_help = "Examples:
  payrecon dlq list
  payrecon dlq replay --id 0193a5c2-7d4e-7b21-9c1f-5e8a0b6d2f10
  payrecon dlq purge --older-than 7d --yes

Works on P.requests.dlq and P.notifications.dlq (P = amqp.prefix).")]
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// The gateway simulator alone.
    #[command(after_help = "Example:
  payrecon gateway-sim --listen 127.0.0.1:8090

Serves WeChat Pay's v3 paths and Alipay's /gateway.do with the keys in
simulator.keys_dir (created where missing), and the /sim control API.")]
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
    #[command(after_help = "Examples:
  payrecon order show 0193a5c2-7d4e-7b21-9c1f-5e8a0b6d2f10
  payrecon order show 0193a5c2-7d4e-7b21-9c1f-5e8a0b6d2f10 --json

Exits 3 when there is no such order.")]
    Show {
        /// The order's id (a UUID).
        order_id: String,
        /// The order object of docs/contract.md §4 as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReconCommand {
    /// Reconcile one channel's business day now.
    #[command(after_help = "Examples:
  payrecon recon run --channel wechat_pay --date 2026-11-24
  payrecon recon run --channel alipay --date 2026-11-24 --bill-file ./alipay-bill-2026-11-24.csv

Prints the run id and the summary. Exits 0 when the run completed, even
with discrepancies; 1 when it could not run. Shows a progress bar on a
terminal, progress log lines otherwise.")]
    Run {
        /// wechat_pay or alipay.
        #[arg(long)]
        channel: String,
        /// The business day, YYYY-MM-DD (in jobs.reconcile.timezone).
        #[arg(long)]
        date: String,
        /// Read the bill from this file (the gateway's own format) instead of downloading it.
        #[arg(long)]
        bill_file: Option<PathBuf>,
    },
    /// Print a run's report.
    #[command(after_help = "Examples:
  payrecon recon report --run 0193a5c2-7d4e-7b21-9c1f-5e8a0b6d2f10
  payrecon recon report --channel wechat_pay --date 2026-11-24 --format csv --output recon.csv

Exits 3 when there is no such run.")]
    Report {
        /// The run's id (from `recon run` or `recon list`).
        #[arg(long, conflicts_with_all = ["channel", "date"])]
        run: Option<String>,
        /// With --date: the latest run of that channel and day.
        #[arg(long, requires = "date")]
        channel: Option<String>,
        /// YYYY-MM-DD, with --channel.
        #[arg(long, requires = "channel")]
        date: Option<String>,
        #[arg(long, default_value = "table", value_parser = ["table", "json", "csv", "html"])]
        format: String,
        /// Write here (replaced atomically) instead of to stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Recent runs, newest first.
    #[command(after_help = "Example:
  payrecon recon list --limit 5")]
    List {
        /// How many runs.
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
