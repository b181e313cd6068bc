-- Scheduled jobs. One row per (job, slot): the unique key is what makes a
-- slot run exactly once across instances, whatever their clocks say — an
-- advisory lock alone would let an instance whose clock lags reach the same
-- slot after the first one released the lock, and run it again.

CREATE TABLE job_runs (
    id          BIGSERIAL PRIMARY KEY,
    job         TEXT NOT NULL,
    slot        TIMESTAMPTZ NOT NULL,         -- the schedule time, not the wake-up time
    instance    TEXT NOT NULL,                -- who claimed it
    started_at  TIMESTAMPTZ NOT NULL,
    -- Renewed by a heartbeat while the run lasts. A run whose lease ran out
    -- without finishing crashed: it no longer blocks the next slots.
    lease_until TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    outcome     TEXT CHECK (outcome IN ('succeeded', 'failed', 'skipped', 'abandoned')),
    counts      JSONB NOT NULL DEFAULT '{}',
    error       TEXT,
    UNIQUE (job, slot),
    CHECK ((finished_at IS NULL) = (outcome IS NULL))
);
-- "Is a run of this job still going?" is asked at every claim.
CREATE INDEX job_runs_unfinished ON job_runs (job) WHERE finished_at IS NULL;

-- The timeout job's lease on an order while it asks the gateway about it
-- (no network call happens inside a transaction, so the row lock cannot be
-- held across the call). Also keeps an order it could not settle out of the
-- batch until the lease runs out, so one run never loops on it.
ALTER TABLE orders ADD COLUMN timeout_claimed_until TIMESTAMPTZ;
