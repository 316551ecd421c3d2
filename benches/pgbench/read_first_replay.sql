-- A replay, replay = "read_first": one plain read of the record, outside
-- any transaction, answers it. 1 statement.
SELECT "idempotency_records"."fingerprint", "idempotency_records"."response", "idempotency_records"."expires_at" FROM "idempotency_records" WHERE (("idempotency_records"."namespace" = 'bench.pay_read_first') AND (("idempotency_records"."scope" = '') AND ("idempotency_records"."key" = 'bench-replay'))) LIMIT 1;
