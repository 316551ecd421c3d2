-- diesel-idempotent: idempotency records (MySQL 8 / MariaDB 10.5+). Times are UTC.
-- utf8mb4_bin: keys compare byte for byte (the default collation would make
-- "Key" and "key" the same key).
CREATE TABLE IF NOT EXISTS idempotency_records (
    namespace   VARCHAR(255) NOT NULL,
    scope       VARCHAR(255) NOT NULL DEFAULT '',
    `key`       VARCHAR(255) NOT NULL,
    fingerprint VARCHAR(128) NOT NULL,
    response    LONGTEXT     NULL,
    created_at  DATETIME(6)  NOT NULL,
    expires_at  DATETIME(6)  NOT NULL,
    PRIMARY KEY (namespace, scope, `key`),
    KEY idempotency_records_expires_at_idx (expires_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
