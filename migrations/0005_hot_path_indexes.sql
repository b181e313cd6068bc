-- The order.place hot path writes one orders row, one inbox row and one
-- outbox row per request; every index on them is paid on every insert.
-- Keep only the indexes something reads.

-- Payments by day are only looked up once paid: unpaid orders need no entry.
DROP INDEX orders_channel_paid_at;
CREATE INDEX orders_channel_paid_at ON orders (payment_method, paid_at) WHERE paid_at IS NOT NULL;

-- event_id is a random v4 UUID minted once per event; nothing looks rows up
-- by it, and the relay republishes by row id.
ALTER TABLE outbox DROP CONSTRAINT outbox_event_id_key;

-- out_trade_no is the order id's 32 hex digits (domain::OrderId::out_trade_no):
-- every lookup goes through the primary key, so its own unique index is a
-- second copy of the primary key paid on every insert.
ALTER TABLE orders DROP CONSTRAINT orders_out_trade_no_key;

-- The relay deletes what it published, so "unpublished" is every row and the
-- primary key already serves its ORDER BY id scan.
DROP INDEX outbox_unpublished;
