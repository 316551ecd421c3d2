-- The state every script starts from, run before each pgbench run by
-- scripts/bench.sh (after the library's migration created
-- idempotency_records): the body's tables, emptied, and the rows the replay
-- and hit scripts find. The tables are those of benches/overhead.rs.
SET client_min_messages = warning;
CREATE TABLE IF NOT EXISTS payments (id BIGSERIAL PRIMARY KEY, amount BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS users (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL UNIQUE);
TRUNCATE payments, users, idempotency_records;
-- The stored calls the replay scripts repeat: the finished record of one
-- payment, as the library wrote it, in each namespace the bench uses.
INSERT INTO payments (amount) VALUES (1200);
INSERT INTO idempotency_records (namespace, scope, "key", fingerprint, response, created_at, expires_at)
SELECT namespace, '', 'bench-replay',
       'v2:5d41402abc4b2a76b9719d911017c592a1b8b3b5e0f2f0a1c3e4d5b6a7f8e9d0', '1',
       LOCALTIMESTAMP, LOCALTIMESTAMP + interval '24 hours'
FROM (VALUES ('bench.pay'), ('bench.pay_optimistic'), ('bench.pay_read_first')) AS n (namespace);
INSERT INTO users (email) VALUES ('existing@example.com');
-- No ANALYZE: statistics of a table of a few rows make a sequential scan
-- look cheapest, and a prepared statement planned on them keeps scanning
-- as the run fills the table. After TRUNCATE the planner assumes a table
-- of some pages, as it does for the bench's tables, which it also empties.
