//! RabbitMQ: the topology, the batched consumers, request parsing and
//! handling, and the outbox relay.

pub mod broker_error;
pub mod broker_tls;
pub mod confirm_link;
pub mod consumer;
pub mod contracts;
pub mod dlq;
pub mod handler;
pub mod notification_processor;
pub mod place_batch;
pub mod publisher;
pub mod relay;
pub mod request_processor;
pub mod requests;
pub mod supervisor;
pub mod topology;
