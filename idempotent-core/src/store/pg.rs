//! PostgreSQL: the claim is `INSERT .. ON CONFLICT DO NOTHING`, which waits
//! for an uncommitted competing insert of the same key and then either
//! inserts (the other rolled back) or does nothing (it committed). Run at
//! READ COMMITTED (the default) so the following load sees that commit.
//!
//! The claim and the load of a record that holds the key are one statement
//! ([`ClaimOrLoad`]); a second `SELECT` follows only when the insert waited
//! for a competitor that committed, whose row the statement's own snapshot
//! predates. Every statement here is a prepared statement that Diesel caches
//! per connection: one round trip each after the first.

use chrono::NaiveDateTime;
use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamp};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

use super::{Claimed, IdempotentConnection, StoredState, on_conflict_claim, shared_statements};
use crate::record::NewRecord;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// The claim and, on a conflict, the record that holds the key, in one
/// statement:
///
/// ```sql
/// WITH ins AS (INSERT INTO idempotency_records (..) VALUES ($1, .. $7)
///              ON CONFLICT DO NOTHING RETURNING 1)
/// SELECT EXISTS (SELECT 1 FROM ins), r.fingerprint, r.response, r.expires_at
/// FROM (SELECT 1) AS one LEFT JOIN idempotency_records AS r
///   ON r.namespace = $1 AND r.scope = $2 AND r."key" = $3
/// ```
///
/// The `SELECT` reads the statement's snapshot, taken before the insert
/// ran: it sees a record committed before the statement began, never the
/// row `ins` inserted, nor one whose commit the insert waited for (then
/// the answer is "not inserted, no row", and the caller loads it).
///
/// A hand-written query rather than `sql_query` so that Diesel caches its
/// prepared statement (a static query id).
struct ClaimOrLoad<'a> {
    record: &'a NewRecord<'a>,
}

impl QueryId for ClaimOrLoad<'_> {
    type QueryId = ClaimOrLoad<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for ClaimOrLoad<'_> {
    type SqlType = (Bool, Nullable<Text>, Nullable<Text>, Nullable<Timestamp>);
}

impl QueryFragment<Pg> for ClaimOrLoad<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let r = self.record;
        out.push_sql(
            "WITH ins AS (INSERT INTO idempotency_records \
             (namespace, scope, \"key\", fingerprint, response, created_at, expires_at) VALUES (",
        );
        out.push_bind_param::<Text, _>(r.namespace)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(r.scope)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(r.key)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(r.fingerprint)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&r.response)?;
        out.push_sql(", ");
        out.push_bind_param::<Timestamp, _>(&r.created_at)?;
        out.push_sql(", ");
        out.push_bind_param::<Timestamp, _>(&r.expires_at)?;
        // `$1`..`$3` are the first three parameters bound above.
        out.push_sql(
            ") ON CONFLICT DO NOTHING RETURNING 1) \
             SELECT EXISTS (SELECT 1 FROM ins), r.fingerprint, r.response, r.expires_at \
             FROM (SELECT 1) AS one LEFT JOIN idempotency_records AS r \
             ON r.namespace = $1 AND r.scope = $2 AND r.\"key\" = $3",
        );
        Ok(())
    }
}

impl RunQueryDsl<PgConnection> for ClaimOrLoad<'_> {}

/// `SELECT current_setting('lock_timeout'), set_config('lock_timeout', '1ms', true)`:
/// the setting before, and lock waits cut to 1 ms for the transaction.
struct DisableLockWaits;

impl QueryId for DisableLockWaits {
    type QueryId = DisableLockWaits;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for DisableLockWaits {
    type SqlType = (Text, Text);
}

impl QueryFragment<Pg> for DisableLockWaits {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(
            "SELECT current_setting('lock_timeout'), set_config('lock_timeout', '1ms', true)",
        );
        Ok(())
    }
}

impl RunQueryDsl<PgConnection> for DisableLockWaits {}

/// `SELECT set_config('lock_timeout', $1, true)`: restores the setting.
struct RestoreLockWaits<'a> {
    previous: &'a str,
}

impl QueryId for RestoreLockWaits<'_> {
    type QueryId = RestoreLockWaits<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for RestoreLockWaits<'_> {
    type SqlType = Text;
}

impl QueryFragment<Pg> for RestoreLockWaits<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("SELECT set_config('lock_timeout', ");
        out.push_bind_param::<Text, _>(self.previous)?;
        out.push_sql(", true)");
        Ok(())
    }
}

impl RunQueryDsl<PgConnection> for RestoreLockWaits<'_> {}

impl IdempotentConnection for PgConnection {
    fn claim_or_load(&mut self, record: &NewRecord<'_>) -> QueryResult<Claimed> {
        let (inserted, fingerprint, response, expires_at) =
            ClaimOrLoad { record }
                .get_result::<(bool, Option<String>, Option<String>, Option<NaiveDateTime>)>(
                    self,
                )?;
        if inserted {
            return Ok(Claimed::Inserted);
        }
        match (fingerprint, expires_at) {
            (Some(fingerprint), Some(expires_at)) => Ok(Claimed::Existing(StoredState {
                fingerprint,
                response,
                expires_at,
            })),
            // The insert waited for a competitor that committed after this
            // statement's snapshot was taken: read the record again.
            _ => Ok(self
                .load(record.id())?
                .map_or(Claimed::Vanished, Claimed::Existing)),
        }
    }

    fn without_lock_waits<R>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<R, crate::Error>,
    ) -> Result<Option<R>, crate::Error> {
        // `lock_timeout` applies to every wait on a row lock: the one an
        // uncommitted competing insert of the same key holds, and the one
        // a concurrent take-over of an expired record holds.
        let (previous, _) = DisableLockWaits.get_result::<(String, String)>(self)?;
        match f(self) {
            Ok(value) => {
                RestoreLockWaits {
                    previous: &previous,
                }
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
