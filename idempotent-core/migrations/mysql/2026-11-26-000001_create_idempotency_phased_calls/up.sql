-- diesel-idempotent: calls made in phases, with recovery points (MySQL 8 /
-- MariaDB 10.5+). Times are UTC. Each phase commits on its own; a retry
-- resumes from the last recovery point once the holder's lease has ended.
CREATE TABLE IF NOT EXISTS idempotency_phased_calls (
    namespace      VARCHAR(255) NOT NULL,
    scope          VARCHAR(255) NOT NULL DEFAULT '',
    `key`          VARCHAR(255) NOT NULL,
    fingerprint    VARCHAR(128) NOT NULL,
    recovery_point VARCHAR(255) NOT NULL,
    point_state    LONGTEXT     NULL,
    response       LONGTEXT     NULL,
    lease_token    VARCHAR(64)  NULL,
    locked_until   DATETIME(6)  NULL,
    phases         INTEGER      NOT NULL DEFAULT 0,
    created_at     DATETIME(6)  NOT NULL,
    updated_at     DATETIME(6)  NOT NULL,
    expires_at     DATETIME(6)  NOT NULL,
    PRIMARY KEY (namespace, scope, `key`),
    KEY idempotency_phased_calls_expires_at_idx (expires_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
