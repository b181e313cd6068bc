//! Fault tests: the daemon under conditions that try to break it.

mod common;

#[path = "faults/scale_runs.rs"]
mod scale_runs;
#[path = "faults/scale_support.rs"]
mod scale_support;

#[path = "faults/many_instances.rs"]
mod many_instances;
