-- diesel-idempotent: the transactional outbox (MySQL 8 / MariaDB 10.6+).
-- Times are UTC. One row per effect, written in the transaction of the call
-- that caused it and delivered at least once by a dispatcher after that
-- commit. utf8mb4_bin: effect ids compare byte for byte.
CREATE TABLE IF NOT EXISTS idempotency_outbox (
    id           VARCHAR(255) NOT NULL,
    kind         VARCHAR(255) NOT NULL,
    payload      LONGTEXT     NOT NULL,
    state        VARCHAR(16)  NOT NULL DEFAULT 'pending',
    attempts     INTEGER      NOT NULL DEFAULT 0,
    available_at DATETIME(6)  NOT NULL,
    last_error   TEXT         NULL,
    created_at   DATETIME(6)  NOT NULL,
    finished_at  DATETIME(6)  NULL,
    PRIMARY KEY (id),
    KEY idempotency_outbox_due_idx (state, available_at),
    KEY idempotency_outbox_finished_idx (state, finished_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
