-- diesel-idempotent: the transactional outbox (PostgreSQL). Times are UTC.
-- One row per effect, written in the transaction of the call that caused it
-- and delivered at least once by a dispatcher after that commit.
CREATE TABLE IF NOT EXISTS idempotency_outbox (
    id           VARCHAR(255) NOT NULL PRIMARY KEY,
    kind         VARCHAR(255) NOT NULL,
    payload      TEXT         NOT NULL,
    state        VARCHAR(16)  NOT NULL DEFAULT 'pending',
    attempts     INTEGER      NOT NULL DEFAULT 0,
    available_at TIMESTAMP    NOT NULL,
    last_error   TEXT,
    created_at   TIMESTAMP    NOT NULL,
    finished_at  TIMESTAMP
);
CREATE INDEX IF NOT EXISTS idempotency_outbox_due_idx
    ON idempotency_outbox (state, available_at);
CREATE INDEX IF NOT EXISTS idempotency_outbox_finished_idx
    ON idempotency_outbox (state, finished_at);
