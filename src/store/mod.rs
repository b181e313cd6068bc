//! All SQL lives here. Functions take a `&mut PgConnection` so the caller
//! decides the transaction: a message's inbox row, its state change and its
//! outbox events commit together or not at all.

pub mod copy;
pub mod inbox;
pub mod jobs;
pub mod orders;
pub mod outbox;
pub mod payments;
pub mod placement;
pub mod recon;
pub mod refunds;
pub mod tasks;
mod tls;

/// For the broker's TLS too (messaging::broker_tls).
pub use tls::install_crypto_provider;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::config::DatabaseSettings;

pub type Tx<'a> = sqlx::Transaction<'a, sqlx::Postgres>;

/// `pool.begin()` that a caller dropped mid-way cannot leave half done.
/// sqlx 0.8 counts a transaction only once BEGIN has been answered, so a
/// future dropped while waiting for that answer hands the pool back a
/// connection still inside a transaction, where the next borrower's
/// writes stay uncommitted and its locks held (transact-rs/sqlx#4393). The
/// relay is dropped that way whenever a broker restart ends its session.
/// Spawned, the BEGIN always completes, and a transaction nobody is left
/// to take is dropped there, which rolls it back.
pub async fn begin(pool: &PgPool) -> Result<Tx<'static>, sqlx::Error> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.begin().await })
        .await
        .map_err(|_| sqlx::Error::WorkerCrashed)?
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A conditional update matched no row: someone else changed it first.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A row that does not parse into the domain: a bug or manual edit.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("database url: {0}")]
    Url(String),
    #[error("PostgreSQL is not reachable at {addr} ({reason}); check database.url and that the server runs")]
    Unreachable { addr: String, reason: String },
    #[error("PostgreSQL at {addr} refused the login of user {user}: wrong user or password")]
    LoginRefused { addr: String, user: String },
    #[error("TLS to PostgreSQL at {addr} failed: {reason}; check sslmode and sslrootcert in database.url")]
    Tls { addr: String, reason: String },
}

impl StoreError {
    /// Connection-level trouble (the database is down or restarting): the
    /// work will succeed later, so it is retried, never dead-lettered.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Db(e) => is_transient_sqlx(e),
            StoreError::Conflict(_) | StoreError::Unreachable { .. } => true,
            _ => false,
        }
    }
}

fn is_transient_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // serialization_failure, deadlock_detected, admin_shutdown, cannot_connect_now
        e => has_sqlstate(e, &["40001", "40P01", "57P01", "57P03"]),
    }
}

/// SQLSTATE codes the store acts on.
pub(crate) mod sqlstate {
    pub const UNIQUE_VIOLATION: &str = "23505";
    pub const LOCK_NOT_AVAILABLE: &str = "55P03";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const DUPLICATE_DATABASE: &str = "42P04";
}

/// True when `e` is an error PostgreSQL reported with one of these codes.
pub(crate) fn has_sqlstate(e: &sqlx::Error, codes: &[&str]) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| codes.contains(&c.as_ref())),
        _ => false,
    }
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects, creating the database if it is missing, and applies migrations.
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, StoreError> {
    let pool = open(settings)?;
    prepare(settings, &pool).await?;
    Ok(pool)
}

/// A pool that connects on first use. The daemon holds it from the start,
/// before the database is reachable, and uses it once `prepare` succeeded.
pub fn open(settings: &DatabaseSettings) -> Result<PgPool, StoreError> {
    let options = connect_options(settings)?;
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections.max(2))
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options.disable_statement_logging()))
}

/// Creates the database if it is missing and applies the migrations. The
/// first connection is a plain one, so an unreachable server is reported
/// as such rather than as a pool timeout.
pub async fn prepare(settings: &DatabaseSettings, pool: &PgPool) -> Result<(), StoreError> {
    create_database_if_missing(&connect_options(settings)?).await?;
    MIGRATOR.run(pool).await?;
    Ok(())
}

fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, StoreError> {
    let url = settings.url.expose();
    tls::install_crypto_provider();
    tls::check_root_cert(url).map_err(StoreError::Url)?;
    PgConnectOptions::from_str(url).map_err(|e| StoreError::Url(e.to_string()))
}

/// Connects without migrating (for read-only CLI commands on a possibly
/// newer schema) — still creates nothing.
pub async fn connect_existing(settings: &DatabaseSettings) -> Result<PgPool, StoreError> {
    let options = connect_options(settings)?;
    PgPoolOptions::new()
        .max_connections(settings.max_connections.max(2))
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options.clone().disable_statement_logging())
        .await
        .map_err(|e| connect_error(&options, e))
}

/// A failed connection said with the address and user it tried (never the
/// password), so that the message says what to fix.
fn connect_error(options: &PgConnectOptions, e: sqlx::Error) -> StoreError {
    let addr = format!("{}:{}", options.get_host(), options.get_port());
    if let Some(reason) = tls::failure(&e, options.get_host(), options.get_ssl_mode()) {
        return StoreError::Tls { addr, reason };
    }
    if let sqlx::Error::Io(io) = &e {
        return StoreError::Unreachable {
            addr,
            reason: io.to_string(),
        };
    }
    // invalid_password, invalid_authorization_specification
    if has_sqlstate(&e, &["28P01", "28000"]) {
        return StoreError::LoginRefused {
            addr,
            user: options.get_username().to_string(),
        };
    }
    e.into()
}

async fn create_database_if_missing(options: &PgConnectOptions) -> Result<(), StoreError> {
    let Some(name) = options.get_database().map(str::to_string) else {
        return Ok(());
    };
    match PgConnection::connect_with(options).await {
        Ok(conn) => {
            let _ = conn.close().await;
            return Ok(());
        }
        Err(e) if has_sqlstate(&e, &[sqlstate::INVALID_CATALOG_NAME]) => {}
        Err(e) => return Err(connect_error(options, e)),
    }
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .map_err(|e| connect_error(options, e))?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match sqlx::query(&format!("CREATE DATABASE {quoted}"))
        .execute(&mut admin)
        .await
    {
        Ok(_) => tracing::info!(database = %name, "created database"),
        // Another instance created it between our check and our CREATE.
        Err(e)
            if has_sqlstate(
                &e,
                &[sqlstate::DUPLICATE_DATABASE, sqlstate::UNIQUE_VIOLATION],
            ) => {}
        Err(e) => return Err(e.into()),
    }
    let _ = admin.close().await;
    Ok(())
}
