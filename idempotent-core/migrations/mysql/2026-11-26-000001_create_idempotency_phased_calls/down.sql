DROP TABLE IF EXISTS idempotency_phased_calls;
