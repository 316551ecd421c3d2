-- diesel-idempotent: the transactional outbox (SQLite). Times are UTC.
-- One row per effect, written in the transaction of the call that caused it
-- and delivered at least once by a dispatcher after that commit.
CREATE TABLE IF NOT EXISTS idempotency_outbox (
    id           TEXT      NOT NULL PRIMARY KEY,
    kind         TEXT      NOT NULL,
    payload      TEXT      NOT NULL,
    state        TEXT      NOT NULL DEFAULT 'pending',
    attempts     INTEGER   NOT NULL DEFAULT 0,
    available_at TIMESTAMP NOT NULL,
    last_error   TEXT,
    created_at   TIMESTAMP NOT NULL,
    finished_at  TIMESTAMP
);
CREATE INDEX IF NOT EXISTS idempotency_outbox_due_idx
    ON idempotency_outbox (state, available_at);
CREATE INDEX IF NOT EXISTS idempotency_outbox_finished_idx
    ON idempotency_outbox (state, finished_at);
