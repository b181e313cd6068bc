//! Scheduled jobs.
