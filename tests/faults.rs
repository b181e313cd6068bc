//! Fault tests: the daemon against failures of its dependencies and of
//! itself, under conditions that try to break it: `kill -9` under load,
//! broker and database restarts, a broker node lost, several instances,
//! gateway errors and timeouts. Tests that stop or restart a service start
//! private instances of it (faults/services.rs) and never touch the shared
//! servers.

mod common;

#[path = "faults/services.rs"]
mod services;
#[path = "faults/stream.rs"]
mod stream;

#[path = "faults/restarts.rs"]
mod restarts;

#[path = "faults/scale_runs.rs"]
mod scale_runs;
#[path = "faults/scale_support.rs"]
mod scale_support;

#[path = "faults/pki.rs"]
mod pki;

#[path = "faults/pg_tls.rs"]
mod pg_tls;

#[path = "faults/amqp_tls.rs"]
mod amqp_tls;
#[path = "faults/amqp_tls_rate.rs"]
mod amqp_tls_rate;

#[path = "faults/many_instances.rs"]
mod many_instances;

#[path = "faults/broker_failover.rs"]
mod broker_failover;

#[path = "faults/crash_support.rs"]
mod crash_support;

#[path = "faults/crash.rs"]
mod crash;
#[path = "faults/crash_check.rs"]
mod crash_check;
#[path = "faults/gateway_faults.rs"]
mod gateway_faults;
