//! payrecon: the back office of an online shop's payments.
//!
//! A tour, in the order a message travels:
//!
//! - [`messaging`] consumes `P.requests` and `P.notifications` from RabbitMQ in
//!   batches, parses each body once into a typed request, hands it to the
//!   handlers, and acknowledges only after the batch's transaction committed.
//!   Events leave through the transactional outbox, relayed with publisher
//!   confirms.
//! - [`domain`] holds what is true without I/O: `Money` in fen, typed ids, the
//!   order state machine (the only way an order changes state).
//! - [`store`] is all SQL (PostgreSQL via sqlx): orders, inbox, outbox, retries,
//!   reconciliation runs, job slots.
//! - [`gateway`] speaks WeChat Pay API v3 and Alipay (RSA2) behind one trait;
//!   [`simulator`] serves both protocols faithfully for tests and demos.
//! - [`jobs`] runs the cron-scheduled work: timeout cancellation and daily
//!   reconciliation, each slot exactly once across instances.
//! - [`http`] serves health, metrics, the notification ingress, orders and
//!   reconciliation reports.
//! - [`app`] wires it together and supervises it; [`cli`] and [`config`] are the
//!   edges.

pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod domain;
pub mod gateway;
pub mod http;
pub mod jobs;
pub mod messaging;
pub mod payments;
pub mod simulator;
pub mod store;
pub mod telemetry;
