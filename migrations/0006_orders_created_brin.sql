-- Orders are inserted in created_at order, so a BRIN index (a few pages,
-- next to nothing to maintain per insert) serves the daily reconciliation's
-- created_at range as well as a btree, which every order.place had to pay.
DROP INDEX orders_channel_created_at;
CREATE INDEX orders_created_at_brin ON orders USING brin (created_at);
