-- A first call, mode = "optimistic": the body, then the record with its
-- result in one statement (it inserts, so it finds no other record).
-- 4 statements.
\set key random(1, 9000000000000000000)
\set amount random(1, 1000000)
BEGIN;
INSERT INTO "payments" ("amount") VALUES (:amount) RETURNING "payments"."id";
WITH ins AS (INSERT INTO idempotency_records (namespace, scope, "key", fingerprint, response, created_at, expires_at) VALUES ('bench.pay_optimistic', '', :key, 'v2:5d41402abc4b2a76b9719d911017c592a1b8b3b5e0f2f0a1c3e4d5b6a7f8e9d0', '1', LOCALTIMESTAMP, LOCALTIMESTAMP + interval '24 hours') ON CONFLICT DO NOTHING RETURNING 1) SELECT EXISTS (SELECT 1 FROM ins), r.fingerprint, r.response, r.expires_at FROM (SELECT 1) AS one LEFT JOIN idempotency_records AS r ON r.namespace = 'bench.pay_optimistic' AND r.scope = '' AND r."key" = :key;
COMMIT;
