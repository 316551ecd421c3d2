//! PostgreSQL: the claim is `INSERT .. ON CONFLICT DO NOTHING`, which waits
//! for an uncommitted competing insert of the same key and then either
//! inserts (the other rolled back) or does nothing (it committed). Run at
//! READ COMMITTED (the default) so the following load sees that commit.

use chrono::NaiveDateTime;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Timestamp};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

use super::{IdempotentConnection, on_conflict_claim, shared_statements};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

impl IdempotentConnection for PgConnection {
    fn without_lock_waits<R>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<R, crate::Error>,
    ) -> Result<Option<R>, crate::Error> {
        #[derive(QueryableByName)]
        struct Previous {
            #[diesel(sql_type = Text)]
            previous: String,
        }
        // `lock_timeout` applies to every wait on a row lock: the one an
        // uncommitted competing insert of the same key holds, and the one
        // a concurrent take-over of an expired record holds.
        let previous = diesel::sql_query(
            "SELECT current_setting('lock_timeout') AS previous, \
             set_config('lock_timeout', '1ms', true)",
        )
        .get_result::<Previous>(self)?
        .previous;
        match f(self) {
            Ok(value) => {
                diesel::sql_query("SELECT set_config('lock_timeout', $1, true)")
                    .bind::<Text, _>(previous)
                    .execute(self)?;
                Ok(Some(value))
            }
            // The transaction is aborted; its rollback restores the setting.
            Err(crate::Error::Database(e)) if crate::error::is_lock_timeout(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn purge_batch(&mut self, now: NaiveDateTime, limit: i64) -> QueryResult<usize> {
        // The outer `expires_at` test matters: a row renewed by a concurrent
        // take-over no longer qualifies when the delete re-checks it.
        diesel::sql_query(
            "DELETE FROM idempotency_records WHERE expires_at <= $1 AND \
             (namespace, scope, key) IN (SELECT namespace, scope, key FROM idempotency_records \
             WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind::<Timestamp, _>(now)
        .bind::<BigInt, _>(limit)
        .execute(self)
    }

    fn unique_indexes(&mut self, table: &str) -> QueryResult<Vec<Vec<String>>> {
        let rows: Vec<super::IndexColumn> = diesel::sql_query(
            "SELECT ic.relname::text AS index_name, a.attname::text AS column_name \
             FROM pg_index i \
             JOIN pg_class ic ON ic.oid = i.indexrelid \
             JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON true \
             LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indimmediate \
             AND i.indpred IS NULL AND k.n <= i.indnkeyatts \
             ORDER BY ic.relname, k.n",
        )
        .bind::<diesel::sql_types::Text, _>(table)
        .load(self)?;
        Ok(super::group_index_columns(rows))
    }

    fn reads_from_snapshot(&mut self) -> QueryResult<bool> {
        #[derive(QueryableByName)]
        struct Level {
            #[diesel(sql_type = Text)]
            level: String,
        }
        let level = diesel::sql_query("SELECT current_setting('transaction_isolation') AS level")
            .get_result::<Level>(self)?
            .level;
        Ok(matches!(level.as_str(), "repeatable read" | "serializable"))
    }

    on_conflict_claim!();
    shared_statements!(MIGRATIONS);
}
