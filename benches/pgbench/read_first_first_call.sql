-- A first call, replay = "read_first": the read finds nothing, then the
-- claim-first call. 6 statements.
\set key random(1, 9000000000000000000)
\set amount random(1, 1000000)
SELECT "idempotency_records"."fingerprint", "idempotency_records"."response", "idempotency_records"."expires_at" FROM "idempotency_records" WHERE (("idempotency_records"."namespace" = 'bench.pay_read_first') AND (("idempotency_records"."scope" = '') AND ("idempotency_records"."key" = :key))) LIMIT 1;
BEGIN;
WITH ins AS (INSERT INTO idempotency_records (namespace, scope, "key", fingerprint, response, created_at, expires_at) VALUES ('bench.pay_read_first', '', :key, 'v2:5d41402abc4b2a76b9719d911017c592a1b8b3b5e0f2f0a1c3e4d5b6a7f8e9d0', NULL, LOCALTIMESTAMP, LOCALTIMESTAMP + interval '24 hours') ON CONFLICT DO NOTHING RETURNING 1) SELECT EXISTS (SELECT 1 FROM ins), r.fingerprint, r.response, r.expires_at FROM (SELECT 1) AS one LEFT JOIN idempotency_records AS r ON r.namespace = 'bench.pay_read_first' AND r.scope = '' AND r."key" = :key;
INSERT INTO "payments" ("amount") VALUES (:amount) RETURNING "payments"."id";
UPDATE idempotency_records SET response = '1' WHERE namespace = 'bench.pay_read_first' AND scope = '' AND "key" = :key;
COMMIT;
