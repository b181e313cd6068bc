-- The order lifecycle, the inbox (idempotency) and the outbox (events).
-- Amounts are BIGINT fen; a CHECK keeps a bug from writing a negative amount.

CREATE TABLE orders (
    order_id               UUID PRIMARY KEY,
    out_trade_no           TEXT NOT NULL UNIQUE,
    user_id                TEXT NOT NULL,
    items                  JSONB NOT NULL,
    currency               TEXT NOT NULL,
    total_amount           BIGINT NOT NULL CHECK (total_amount > 0),
    payment_method         TEXT NOT NULL CHECK (payment_method IN ('wechat_pay', 'alipay')),
    status                 TEXT NOT NULL CHECK (status IN ('pending_payment', 'paid', 'shipped', 'completed', 'cancelled', 'refunded')),
    payment_state          TEXT NOT NULL DEFAULT 'not_started'
                           CHECK (payment_state IN ('not_started', 'preparing', 'prepared', 'failed')),
    paid_amount            BIGINT NOT NULL DEFAULT 0 CHECK (paid_amount >= 0),
    refunded_amount        BIGINT NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0 AND refunded_amount <= paid_amount),
    gateway_transaction_id TEXT,
    created_at             TIMESTAMPTZ NOT NULL,
    expires_at             TIMESTAMPTZ NOT NULL,
    paid_at                TIMESTAMPTZ,
    shipped_at             TIMESTAMPTZ,
    completed_at           TIMESTAMPTZ,
    cancelled_at           TIMESTAMPTZ,
    cancel_reason          TEXT,
    carrier                TEXT,
    tracking_no            TEXT,
    updated_at             TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The timeout job scans unpaid orders by deadline.
CREATE INDEX orders_pending_expiry ON orders (expires_at) WHERE status = 'pending_payment';
-- Reconciliation reads a channel's payments of one business day.
CREATE INDEX orders_channel_paid_at ON orders (payment_method, paid_at);
CREATE INDEX orders_channel_created_at ON orders (payment_method, created_at);

-- Every request processed, by its sender's idempotency key. Written in the
-- same transaction as the request's effects, so a redelivery finds it.
CREATE TABLE inbox (
    request_id   TEXT PRIMARY KEY,
    request_type TEXT NOT NULL,
    body_hash    BYTEA NOT NULL,      -- sha256 of the canonical {type, data}: detects request_id reuse
    outcome      TEXT NOT NULL,       -- 'applied' or the rejection reason
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Events waiting for (or done with) publication. The relay publishes in id
-- order with publisher confirms and only then sets published_at.
CREATE TABLE outbox (
    id           BIGSERIAL PRIMARY KEY,
    event_id     UUID NOT NULL UNIQUE,
    routing_key  TEXT NOT NULL,
    payload      TEXT NOT NULL,       -- the exact JSON body, so a republish is byte-identical
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- Verified notifications that could not move an order (CONTRACT §3.8):
-- kept for the next reconciliation report.
CREATE TABLE payment_anomalies (
    id                     BIGSERIAL PRIMARY KEY,
    kind                   TEXT NOT NULL CHECK (kind IN ('amount_mismatch', 'paid_after_cancel', 'unknown_order')),
    channel                TEXT NOT NULL,
    out_trade_no           TEXT NOT NULL,
    order_id               UUID,
    gateway_amount         BIGINT,
    gateway_transaction_id TEXT,
    detected_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (channel, out_trade_no, kind, gateway_transaction_id)
);
