//! Fault tests (issue 15): `kill -9` under load against the real binary, and
//! gateway errors and timeouts injected by the simulator.

mod common;

#[path = "faults/crash_support.rs"]
mod crash_support;

#[path = "faults/crash.rs"]
mod crash;
#[path = "faults/crash_check.rs"]
mod crash_check;
#[path = "faults/gateway_faults.rs"]
mod gateway_faults;
