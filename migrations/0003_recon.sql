-- Reconciliation runs and their findings (CONTRACT §6).
--
-- A run is `running` while it reads the bill; its discrepancies, summary and
-- `completed` status are written in one transaction at the end, so a failed
-- or crashed run never leaves a half report. `heartbeat_at` is the running
-- run's lease: a run whose process died stops beating and is taken over.

CREATE TABLE recon_runs (
    run_id        UUID PRIMARY KEY,
    channel       TEXT NOT NULL CHECK (channel IN ('wechat_pay', 'alipay')),
    business_date DATE NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    trigger       TEXT NOT NULL,
    bill_source   TEXT NOT NULL CHECK (bill_source IN ('gateway', 'file')),
    started_at    TIMESTAMPTZ NOT NULL,
    heartbeat_at  TIMESTAMPTZ NOT NULL,
    finished_at   TIMESTAMPTZ,
    summary       JSONB,
    error         TEXT
);

-- One run per channel at a time, across every instance: a second INSERT of a
-- running run for the same channel fails on this index.
CREATE UNIQUE INDEX recon_runs_one_running ON recon_runs (channel) WHERE status = 'running';
CREATE INDEX recon_runs_day ON recon_runs (channel, business_date, started_at DESC);
CREATE INDEX recon_runs_started ON recon_runs (started_at DESC);

CREATE TABLE recon_discrepancies (
    run_id                 UUID NOT NULL REFERENCES recon_runs (run_id) ON DELETE CASCADE,
    seq                    INT NOT NULL,          -- report order
    category               TEXT NOT NULL CHECK (category IN ('amount_mismatch', 'missing_local',
                               'missing_gateway', 'status_mismatch', 'paid_after_cancel',
                               'refund_mismatch', 'duplicate')),
    out_trade_no           TEXT NOT NULL,
    order_id               UUID,
    local_amount           BIGINT,
    gateway_amount         BIGINT,
    local_status           TEXT,
    gateway_status         TEXT,
    gateway_transaction_id TEXT,
    resolution             TEXT NOT NULL CHECK (resolution IN ('open', 'auto_repaired')),
    PRIMARY KEY (run_id, seq)
);

-- Local refunds of a business day, for refund_mismatch.
CREATE INDEX refunds_created_at ON refunds (created_at);
