-- A replay, replay = "in_transaction" (the default): the claim finds the
-- stored record and returns it in the same statement; nothing was written,
-- so the transaction rolls back. 3 statements. A mismatch sends the same
-- (the fingerprint is compared in the library).
BEGIN;
WITH ins AS (INSERT INTO idempotency_records (namespace, scope, "key", fingerprint, response, created_at, expires_at) VALUES ('bench.pay', '', 'bench-replay', 'v2:5d41402abc4b2a76b9719d911017c592a1b8b3b5e0f2f0a1c3e4d5b6a7f8e9d0', NULL, LOCALTIMESTAMP, LOCALTIMESTAMP + interval '24 hours') ON CONFLICT DO NOTHING RETURNING 1) SELECT EXISTS (SELECT 1 FROM ins), r.fingerprint, r.response, r.expires_at FROM (SELECT 1) AS one LEFT JOIN idempotency_records AS r ON r.namespace = 'bench.pay' AND r.scope = '' AND r."key" = 'bench-replay';
ROLLBACK;
