-- diesel-idempotent: calls made in phases, with recovery points (SQLite).
-- Times are UTC. Each phase commits on its own; a retry resumes from the
-- last recovery point once the holder's lease has ended.
CREATE TABLE IF NOT EXISTS idempotency_phased_calls (
    namespace      TEXT      NOT NULL,
    scope          TEXT      NOT NULL DEFAULT '',
    key            TEXT      NOT NULL,
    fingerprint    TEXT      NOT NULL,
    recovery_point TEXT      NOT NULL,
    point_state    TEXT,
    response       TEXT,
    lease_token    TEXT,
    locked_until   TIMESTAMP,
    phases         INTEGER   NOT NULL DEFAULT 0,
    created_at     TIMESTAMP NOT NULL,
    updated_at     TIMESTAMP NOT NULL,
    expires_at     TIMESTAMP NOT NULL,
    PRIMARY KEY (namespace, scope, key)
);
CREATE INDEX IF NOT EXISTS idempotency_phased_calls_expires_at_idx
    ON idempotency_phased_calls (expires_at);
