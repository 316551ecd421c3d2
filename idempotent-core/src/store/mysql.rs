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
use diesel::mysql::MysqlConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamp};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

use super::{IdempotentConnection, StoredState, shared_statements};
use crate::record::{NewRecord, RecordId, idempotency_records};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/mysql");

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    fingerprint: String,
    #[diesel(sql_type = Nullable<Text>)]
    response: Option<String>,
    #[diesel(sql_type = Timestamp)]
    expires_at: NaiveDateTime,
}

impl IdempotentConnection for MysqlConnection {
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
        diesel::sql_query(
            "SELECT fingerprint, response, expires_at FROM idempotency_records \
             WHERE namespace = ? AND scope = ? AND `key` = ? LOCK IN SHARE MODE",
        )
        .bind::<Text, _>(id.namespace)
        .bind::<Text, _>(id.scope)
        .bind::<Text, _>(id.key)
        .get_result::<Row>(self)
        .optional()
        .map(|row| {
            row.map(|row| StoredState {
                fingerprint: row.fingerprint,
                response: row.response,
                expires_at: row.expires_at,
            })
        })
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
