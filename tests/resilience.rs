//! Resilience of the daemon (issue: broker loss, database loss, shutdown).
//! The broker and the database are shared with other tests, so they are
//! never stopped: each test takes away only its own daemon's connection
//! (`rabbitmqctl close_connection`, `pg_terminate_backend`, `ALLOW_CONNECTIONS
//! false` on its private database) and then checks that every request took
//! effect exactly once.

mod common;

#[path = "resilience/proxy.rs"]
mod proxy;
#[path = "resilience/support.rs"]
mod support;

#[path = "resilience/binary.rs"]
mod binary;
#[path = "resilience/broker_loss.rs"]
mod broker_loss;
#[path = "resilience/database_loss.rs"]
mod database_loss;
#[path = "resilience/shutdown.rs"]
mod shutdown;
