-- getOrCreate's unwrapped body: one INSERT of a new user in a transaction
-- of its own. 3 statements.
\set email random(1, 9000000000000000000)
BEGIN;
INSERT INTO "users" ("email") VALUES (:email) RETURNING "users"."id";
COMMIT;
