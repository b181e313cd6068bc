//! Fault tests: the daemon against failures of its dependencies and of
//! itself. Tests that stop or restart a service start private instances of
//! it (faults/services.rs) and never touch the shared servers.

mod common;

#[path = "faults/services.rs"]
mod services;
#[path = "faults/stream.rs"]
mod stream;

#[path = "faults/restarts.rs"]
mod restarts;
