-- diesel-idempotent: idempotency records (PostgreSQL). Times are UTC.
CREATE TABLE IF NOT EXISTS idempotency_records (
    namespace   VARCHAR(255) NOT NULL,
    scope       VARCHAR(255) NOT NULL DEFAULT '',
    key         VARCHAR(255) NOT NULL,
    fingerprint VARCHAR(128) NOT NULL,
    response    TEXT,
    created_at  TIMESTAMP    NOT NULL,
    expires_at  TIMESTAMP    NOT NULL,
    PRIMARY KEY (namespace, scope, key)
);
CREATE INDEX IF NOT EXISTS idempotency_records_expires_at_idx
    ON idempotency_records (expires_at);
