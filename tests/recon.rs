//! Reconciliation end to end: bill parsers on real-format fixtures, runs
//! against a fresh PostgreSQL database per test, every discrepancy category
//! for each channel, malformed bills, the one-run-per-channel rule, and the
//! reports (HTTP, HTML in headless Chromium).

#[path = "recon/support.rs"]
mod support;

#[path = "recon/parsers.rs"]
mod parsers;

#[path = "recon/runs.rs"]
mod runs;

#[path = "recon/lifecycle.rs"]
mod lifecycle;

#[path = "recon/failures.rs"]
mod failures;

#[path = "recon/reports.rs"]
mod reports;

#[path = "recon/simulated.rs"]
mod simulated;
