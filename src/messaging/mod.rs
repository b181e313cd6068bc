//! RabbitMQ: the topology, the batched consumers, request parsing and
//! handling, and the outbox relay.

pub mod contracts;
pub mod handler;
pub mod requests;
pub mod topology;
