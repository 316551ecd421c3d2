-- diesel-idempotent: idempotency records (SQLite). Times are UTC.
CREATE TABLE IF NOT EXISTS idempotency_records (
    namespace   TEXT NOT NULL,
    scope       TEXT NOT NULL DEFAULT '',
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    response    TEXT,
    created_at  TIMESTAMP NOT NULL,
    expires_at  TIMESTAMP NOT NULL,
    PRIMARY KEY (namespace, scope, key)
);
CREATE INDEX IF NOT EXISTS idempotency_records_expires_at_idx
    ON idempotency_records (expires_at);
