//! Scheduled jobs.

pub mod reconcile;
pub mod report;
