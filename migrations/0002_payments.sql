-- Gateway work that must survive a restart: every call to a gateway is a
-- task row with its retry schedule, so a crash between attempts resumes
-- where it stopped instead of forgetting (or doubling) a payment.

CREATE TABLE gateway_tasks (
    id              BIGSERIAL PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('prepay', 'close', 'refund', 'recon')),
    order_id        UUID REFERENCES orders (order_id),
    refund_id       UUID,
    request_id      TEXT,
    payload         JSONB NOT NULL DEFAULT '{}',
    state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
    attempt         INT NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    locked_until    TIMESTAMPTZ,          -- a worker's lease while it calls the gateway
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX gateway_tasks_due ON gateway_tasks (next_attempt_at) WHERE state = 'pending';
CREATE INDEX gateway_tasks_order ON gateway_tasks (order_id) WHERE state = 'pending';

CREATE TABLE refunds (
    refund_id         UUID PRIMARY KEY,
    order_id          UUID NOT NULL REFERENCES orders (order_id),
    out_refund_no     TEXT NOT NULL UNIQUE,
    amount            BIGINT NOT NULL CHECK (amount > 0),
    reason            TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'succeeded', 'failed')),
    gateway_refund_id TEXT,
    failure           TEXT,
    request_id        TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at       TIMESTAMPTZ
);
CREATE INDEX refunds_order ON refunds (order_id);
