//! RabbitMQ: topology, batched consumers, the outbox relay.
