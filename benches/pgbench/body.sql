-- The unwrapped body: one INSERT in a transaction of its own
-- (`conn.transaction(..)` around `insert_payment`). 3 statements.
\set amount random(1, 1000000)
BEGIN;
INSERT INTO "payments" ("amount") VALUES (:amount) RETURNING "payments"."id";
COMMIT;
