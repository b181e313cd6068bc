//! The scheduler and the timeout-cancellation job against a real
//! PostgreSQL, each test on its own database.

#[path = "jobs/support.rs"]
mod support;

#[path = "jobs/scheduler.rs"]
mod scheduler;

#[path = "jobs/timeout.rs"]
mod timeout;

#[path = "jobs/gateway.rs"]
mod gateway;
