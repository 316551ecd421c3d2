-- A first call of the `hash` pattern: the claim-first statements, with the
-- key a fresh 67-byte `v2:` digest, as the pattern derives it (the server
-- makes it from two md5s of a random number, under a microsecond), so that
-- the primary key's work on long random keys is part of the floor.
-- 5 statements.
\set key random(1, 9000000000000000000)
\set amount random(1, 1000000)
BEGIN;
WITH ins AS (INSERT INTO idempotency_records (namespace, scope, "key", fingerprint, response, created_at, expires_at) VALUES ('bench.record_click', '', 'v2:' || md5(:key::text) || md5(:key::text || '.'), 'v2:5d41402abc4b2a76b9719d911017c592a1b8b3b5e0f2f0a1c3e4d5b6a7f8e9d0', NULL, LOCALTIMESTAMP, LOCALTIMESTAMP + interval '24 hours') ON CONFLICT DO NOTHING RETURNING 1) SELECT EXISTS (SELECT 1 FROM ins), r.fingerprint, r.response, r.expires_at FROM (SELECT 1) AS one LEFT JOIN idempotency_records AS r ON r.namespace = 'bench.record_click' AND r.scope = '' AND r."key" = 'v2:' || md5(:key::text) || md5(:key::text || '.');
INSERT INTO "payments" ("amount") VALUES (:amount) RETURNING "payments"."id";
UPDATE idempotency_records SET response = '1' WHERE namespace = 'bench.record_click' AND scope = '' AND "key" = 'v2:' || md5(:key::text) || md5(:key::text || '.');
COMMIT;
