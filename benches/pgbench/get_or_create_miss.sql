-- getOrCreate, no row yet: the lookup, then the body in a transaction.
-- 4 statements.
\set email random(1, 9000000000000000000)
SELECT "users"."id" FROM "users" WHERE ("users"."email" = :email) LIMIT 1;
BEGIN;
INSERT INTO "users" ("email") VALUES (:email) RETURNING "users"."id";
COMMIT;
