-- getOrCreate, the row exists: the lookup answers. 1 statement.
SELECT "users"."id" FROM "users" WHERE ("users"."email" = 'existing@example.com') LIMIT 1;
