-- diesel-idempotent: calls made in phases, with recovery points
-- (PostgreSQL). Times are UTC. Each phase commits on its own; a retry
-- resumes from the last recovery point once the holder's lease has ended.
CREATE TABLE IF NOT EXISTS idempotency_phased_calls (
    namespace      VARCHAR(255) NOT NULL,
    scope          VARCHAR(255) NOT NULL DEFAULT '',
    key            VARCHAR(255) NOT NULL,
    fingerprint    VARCHAR(128) NOT NULL,
    recovery_point VARCHAR(255) NOT NULL,
    point_state    TEXT,
    response       TEXT,
    lease_token    VARCHAR(64),
    locked_until   TIMESTAMP,
    phases         INTEGER      NOT NULL DEFAULT 0,
    created_at     TIMESTAMP    NOT NULL,
    updated_at     TIMESTAMP    NOT NULL,
    expires_at     TIMESTAMP    NOT NULL,
    PRIMARY KEY (namespace, scope, key)
);
CREATE INDEX IF NOT EXISTS idempotency_phased_calls_expires_at_idx
    ON idempotency_phased_calls (expires_at);
