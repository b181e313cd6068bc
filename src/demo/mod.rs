//! `payrecon demo`: the whole system at work in under a minute, for a
//! newcomer. Against the running PostgreSQL and RabbitMQ, in a database and
//! a broker prefix of its own (removed afterwards unless `--keep`), it starts
//! a daemon with its in-process simulator, acts as the shop and its buyers,
//! and tells what happened. Everything goes through the real paths: requests
//! on the queue, payments at the simulator, signed notifications through the
//! HTTP ingress, the timeout job, and a reconciliation against a bill.

mod bill;
mod script;
mod tap;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::ConnectionProperties;

use crate::app::Daemon;
use crate::config::{GatewayMode, Secret, Settings};
use crate::messaging::broker_tls::BrokerTls;
use crate::messaging::topology::Names;

pub struct DemoOptions {
    /// Keep the demo's database and broker objects for a look afterwards.
    pub keep: bool,
    /// Where the reports go (default `.payrecon/demo/<name>`).
    pub out_dir: Option<PathBuf>,
}

/// Runs the demo and prints its story; the exit code of the CLI.
pub async fn run(settings: &Settings, opts: DemoOptions) -> anyhow::Result<i32> {
    let started = Instant::now();
    let name = format!(
        "payrecon_demo_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let s = demo_settings(settings, &name)?;
    let out_dir = match opts.out_dir {
        Some(d) => d,
        None => std::env::current_dir()?.join(".payrecon/demo").join(&name),
    };
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    println!("payrecon demo: database {name}, broker prefix {name}");
    let daemon = Daemon::start(s.clone())
        .await
        .context("starting the demo's daemon")?;
    let outcome = script::play(&s, &daemon, &out_dir).await;
    daemon.stop().await;
    if opts.keep {
        println!("\nKept: database {name} and the broker objects {name}.* (drop them when done).");
    } else if let Err(e) = remove(&s, &name).await {
        println!(
            "\nCould not remove everything the demo made ({e:#}): database {name}, queues {name}.*"
        );
    }
    outcome?;
    println!(
        "\nDone in {:.1} s. Open the report: file://{}",
        started.elapsed().as_secs_f64(),
        out_dir.join("report-wechat_pay.html").display()
    );
    Ok(crate::cli::exit::OK)
}

/// The operator's settings, pointed at the demo's own database and prefix,
/// with every port chosen by the system so a running daemon is undisturbed.
fn demo_settings(settings: &Settings, name: &str) -> anyhow::Result<Settings> {
    let mut s = settings.clone();
    let mut db =
        url::Url::parse(settings.database.url.expose()).context("database.url is not a URL")?;
    db.set_path(&format!("/{name}"));
    s.database.url = Secret(db.to_string());
    s.amqp.prefix = name.to_string();
    s.http.listen = "127.0.0.1:0".into();
    s.simulator.listen = "127.0.0.1:0".into();
    s.gateways.wechat_pay.enabled = true;
    s.gateways.wechat_pay.mode = GatewayMode::Simulator;
    s.gateways.alipay.enabled = true;
    s.gateways.alipay.mode = GatewayMode::Simulator;
    // Every second, so orders left unpaid are cancelled while one watches.
    s.jobs.timeout_cancel.schedule = "* * * * * *".into();
    Ok(s)
}

/// Drops the demo's database and deletes its queues and exchanges; each
/// side is tried even when the other fails, so a broker that went away
/// leaves no database behind.
async fn remove(s: &Settings, name: &str) -> anyhow::Result<()> {
    let broker = remove_broker_objects(s, name).await;
    let database = drop_database(s, name).await;
    broker.and(database)
}

async fn remove_broker_objects(s: &Settings, name: &str) -> anyhow::Result<()> {
    let names = Names::new(name);
    let tls = BrokerTls::from_settings(&s.amqp)?;
    let conn = tls
        .open(&s.amqp.first_url(), ConnectionProperties::default())
        .await?;
    let ch = conn.create_channel().await?;
    for q in [
        &names.requests,
        &names.notifications,
        &names.requests_dlq,
        &names.notifications_dlq,
    ] {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    for x in [&names.events, &names.dlx] {
        ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    let _ = conn.close(200, "demo done".into()).await;
    Ok(())
}

async fn drop_database(s: &Settings, name: &str) -> anyhow::Result<()> {
    let mut admin = url::Url::parse(s.database.url.expose())?;
    admin.set_path("/postgres");
    let pool = sqlx::PgPool::connect(admin.as_str()).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&pool)
        .await?;
    pool.close().await;
    Ok(())
}
