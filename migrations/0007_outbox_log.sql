-- The outbox becomes an append-only log that the relay never deletes from
-- row by row.
--
-- Before, the relay deleted each event it published: a heap delete and a WAL
-- record per event, about a quarter of PostgreSQL's work per order.place,
-- and dead rows that only VACUUM reclaims (this machine's server runs with
-- autovacuum off, so the relay's scans walked over every event ever
-- published). Now:
--
-- * `tx` is the id of the transaction that wrote the row. The relay keeps,
--   in `outbox_relay`, the snapshot of its last finished pass: every row
--   visible in that snapshot is published. A pass publishes the rows
--   visible in a newer snapshot and not in that one (tx at or above its
--   xmax, or among its in-progress xids), in id order, and then stores the
--   newer snapshot. Like the old delete, this follows commit order, so two
--   events of one order (whose transactions are serialised by the order's
--   row lock) go out in the order they were written; a transaction that
--   commits late is picked up by the pass after its commit.
-- * Rows live in 8 partitions by id, 65536 ids each, used round-robin as the
--   id sequence advances. A partition whose every row is published is
--   emptied with TRUNCATE (store::outbox::reclaim): one cheap statement per
--   65536 events instead of one delete per event.

ALTER TABLE outbox RENAME TO outbox_v1;

CREATE SEQUENCE outbox_seq AS BIGINT;

CREATE TABLE outbox (
    id          BIGINT NOT NULL DEFAULT nextval('outbox_seq'),
    tx          XID8 NOT NULL DEFAULT pg_current_xact_id(),
    event_id    UUID NOT NULL,
    routing_key TEXT NOT NULL,
    payload     TEXT NOT NULL,       -- the exact JSON body, so a republish is byte-identical
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
) PARTITION BY LIST ((id / 65536 % 8));

CREATE TABLE outbox_s0 PARTITION OF outbox FOR VALUES IN (0);
CREATE TABLE outbox_s1 PARTITION OF outbox FOR VALUES IN (1);
CREATE TABLE outbox_s2 PARTITION OF outbox FOR VALUES IN (2);
CREATE TABLE outbox_s3 PARTITION OF outbox FOR VALUES IN (3);
CREATE TABLE outbox_s4 PARTITION OF outbox FOR VALUES IN (4);
CREATE TABLE outbox_s5 PARTITION OF outbox FOR VALUES IN (5);
CREATE TABLE outbox_s6 PARTITION OF outbox FOR VALUES IN (6);
CREATE TABLE outbox_s7 PARTITION OF outbox FOR VALUES IN (7);

-- The relay finds a round's rows by writing transaction.
CREATE INDEX outbox_tx ON outbox (tx);

ALTER SEQUENCE outbox_seq OWNED BY outbox.id;

-- Rows still in the old outbox were not published yet (the relay deleted
-- what it published; rows from before that have published_at set).
INSERT INTO outbox (id, event_id, routing_key, payload, created_at)
SELECT id, event_id, routing_key, payload, created_at
FROM outbox_v1 WHERE published_at IS NULL ORDER BY id;
SELECT setval('outbox_seq', COALESCE(max(id), 0) + 1, false) FROM outbox_v1;
DROP TABLE outbox_v1;

-- The relay's position. Every row visible in `published` went out. A pass
-- then publishes, in id order, the rows visible in `reading` and not in
-- `published`; `read_up_to` is how far in ids it got, so a pass that a crash
-- or a nack interrupted resumes there instead of from its start. At the end
-- of a pass `reading` becomes `published`. '1:1:' sees no transaction at
-- all, so every row is still to publish.
CREATE TABLE outbox_relay (
    only_row   BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
    published  PG_SNAPSHOT NOT NULL,
    reading    PG_SNAPSHOT,
    read_up_to BIGINT,
    CHECK ((reading IS NULL) = (read_up_to IS NULL))
);
INSERT INTO outbox_relay (published) VALUES ('1:1:');
