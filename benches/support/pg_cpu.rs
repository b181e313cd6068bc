//! CPU of one database's PostgreSQL backends. Other sessions share this
//! machine's server, so counting every `postgres` process (as `cpu.rs`
//! does) would charge a stage with their work; this reads only the
//! backends connected to the stage's own database. A backend's ticks leave
//! /proc when it exits, so read while the stage's connections are open.
//! Parallel query workers come and go within a statement and are missed:
//! for a statement that uses them the figure is a lower bound.

#![allow(dead_code)] // each bench binary uses its own part of this module

use sqlx::PgConnection;

/// Clock ticks (utime + stime; 100 per second) of the backends connected
/// to `database` now.
pub async fn backend_ticks(conn: &mut PgConnection, database: &str) -> u64 {
    let pids: Vec<i32> = sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = $1")
        .bind(database)
        .fetch_all(conn)
        .await
        .unwrap_or_default();
    pids.iter().filter_map(|pid| ticks_of(*pid)).sum()
}

/// The current database's name.
pub async fn database(conn: &mut PgConnection) -> String {
    sqlx::query_scalar("SELECT current_database()")
        .fetch_one(conn)
        .await
        .expect("current_database")
}

/// utime + stime of /proc/<pid>/stat: fields 14 and 15, counted after the
/// command name, which is in parentheses and may contain spaces.
fn ticks_of(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}
