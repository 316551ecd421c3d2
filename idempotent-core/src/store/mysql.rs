//! MySQL / MariaDB (InnoDB): there is no `ON CONFLICT DO NOTHING`; the claim
//! is `INSERT IGNORE`, which waits for an uncommitted competing insert of the
//! same key (InnoDB locks the duplicate index record) and then inserts (the
//! other rolled back) or ignores the row (it committed). The only error
//! `IGNORE` could hide for this table is a too-long value, and the library
//! validates every value's length before it claims.
//!
//! The load that follows is a locking read (`LOCK IN SHARE MODE`), which
//! sees the latest committed record even at MySQL's default REPEATABLE READ,
//! whose snapshot may be older.

use chrono::NaiveDateTime;
use diesel::mysql::{Mysql, MysqlConnection};
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Nullable, Text, Timestamp};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

use super::{IdempotentConnection, StoredState, shared_statements};
use crate::record::{NewRecord, RecordId, idempotency_records};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/mysql");

/// `SELECT fingerprint, response, expires_at .. LOCK IN SHARE MODE` of one
/// record (MariaDB has no `FOR SHARE`, the only locking clause Diesel's DSL
/// writes for MySQL). Hand-written with a static query id so that Diesel
/// caches the prepared statement, as it does for its DSL.
struct LockingLoad<'a> {
    id: RecordId<'a>,
}

impl QueryId for LockingLoad<'_> {
    type QueryId = LockingLoad<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for LockingLoad<'_> {
    type SqlType = (Text, Nullable<Text>, Timestamp);
}

impl QueryFragment<Mysql> for LockingLoad<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        out.push_sql(
            "SELECT fingerprint, response, expires_at FROM idempotency_records \
             WHERE namespace = ",
        );
        out.push_bind_param::<Text, _>(self.id.namespace)?;
        out.push_sql(" AND scope = ");
        out.push_bind_param::<Text, _>(self.id.scope)?;
        out.push_sql(" AND `key` = ");
        out.push_bind_param::<Text, _>(self.id.key)?;
        out.push_sql(" LOCK IN SHARE MODE");
        Ok(())
    }
}

impl RunQueryDsl<MysqlConnection> for LockingLoad<'_> {}

fn stored_state(
    (fingerprint, response, expires_at): (String, Option<String>, NaiveDateTime),
) -> StoredState {
    StoredState {
        fingerprint,
        response,
        expires_at,
    }
}

impl IdempotentConnection for MysqlConnection {
    const PLAIN_READS_MAY_LOCK: bool = true;

    fn claim(&mut self, record: &NewRecord<'_>) -> QueryResult<bool> {
        diesel::insert_or_ignore_into(idempotency_records::table)
            .values(record)
            .execute(self)
            .map(|rows| rows == 1)
    }

    fn without_lock_waits<R>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<R, crate::Error>,
    ) -> Result<Option<R>, crate::Error> {
        // MariaDB accepts 0 (do not wait); MySQL 8 raises it to 1 second.
        diesel::sql_query(
            "SET @diesel_idempotent_lock_wait = @@innodb_lock_wait_timeout, \
             innodb_lock_wait_timeout = 0",
        )
        .execute(self)?;
        let result = f(self);
        // A lock wait timeout rolls back the statement only (InnoDB's
        // default), so the session can be restored either way.
        diesel::sql_query("SET innodb_lock_wait_timeout = @diesel_idempotent_lock_wait")
            .execute(self)?;
        match result {
            Ok(value) => Ok(Some(value)),
            Err(crate::Error::Database(e)) if crate::error::is_lock_timeout(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn load(&mut self, id: RecordId<'_>) -> QueryResult<Option<StoredState>> {
        LockingLoad { id }
            .get_result::<(String, Option<String>, NaiveDateTime)>(self)
            .optional()
            .map(|row| row.map(stored_state))
    }

    /// A consistent (non-locking) read: outside a transaction it sees the
    /// latest committed record; inside the caller's, that transaction's
    /// snapshot. At READ UNCOMMITTED it would see a record that is not
    /// committed: `replay = "read_first"` needs READ COMMITTED or stricter
    /// (InnoDB's default is REPEATABLE READ).
    fn read_committed(&mut self, id: RecordId<'_>) -> QueryResult<Option<StoredState>> {
        use crate::record::idempotency_records::dsl as r;
        r::idempotency_records
            .find((id.namespace, id.scope, id.key))
            .select((r::fingerprint, r::response, r::expires_at))
            .first::<(String, Option<String>, NaiveDateTime)>(self)
            .optional()
            .map(|row| row.map(stored_state))
    }

    fn purge_batch(&mut self, now: NaiveDateTime, limit: i64) -> QueryResult<usize> {
        diesel::sql_query(
            "DELETE FROM idempotency_records WHERE expires_at <= ? ORDER BY expires_at LIMIT ?",
        )
        .bind::<Timestamp, _>(now)
        .bind::<BigInt, _>(limit)
        .execute(self)
    }

    fn unique_indexes(&mut self, table: &str) -> QueryResult<Vec<Vec<String>>> {
        let rows: Vec<super::IndexColumn> = diesel::sql_query(
            "SELECT INDEX_NAME AS index_name, COLUMN_NAME AS column_name \
             FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND NON_UNIQUE = 0 \
             ORDER BY INDEX_NAME, SEQ_IN_INDEX",
        )
        .bind::<Text, _>(table)
        .load(self)?;
        Ok(super::group_index_columns(rows))
    }

    fn reads_from_snapshot(&mut self) -> QueryResult<bool> {
        #[derive(QueryableByName)]
        struct Level {
            #[diesel(sql_type = Text)]
            level: String,
        }
        // InnoDB does not tell a transaction's own level reliably
        // (`information_schema.INNODB_TRX` is a cache refreshed at most every
        // 0.1 s), so the session's level decides: set it with `SET SESSION
        // TRANSACTION ISOLATION LEVEL ..`; a level set with `SET TRANSACTION`
        // for the next transaction only is not visible. MySQL 8 and MariaDB
        // 11.1+ name the variable `transaction_isolation`, older MariaDB
        // `tx_isolation`. Unknown: InnoDB's default, REPEATABLE READ.
        for variable in ["transaction_isolation", "tx_isolation"] {
            let level = diesel::sql_query(format!("SELECT @@session.{variable} AS level"))
                .get_result::<Level>(self);
            if let Ok(Level { level }) = level {
                return Ok(matches!(level.as_str(), "REPEATABLE-READ" | "SERIALIZABLE"));
            }
        }
        Ok(true)
    }

    shared_statements!(MIGRATIONS);
}
