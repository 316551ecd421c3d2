//! SQLite: the claim is `INSERT .. ON CONFLICT DO NOTHING`; writers are
//! serialized by the database lock, so a top-level call begins with
//! `BEGIN IMMEDIATE` and a competing writer waits in SQLite's busy handler
//! (set `PRAGMA busy_timeout` on every connection that shares the file).

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Timestamp};
use diesel::sqlite::SqliteConnection;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

use super::{IdempotentConnection, on_conflict_claim, shared_statements};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

impl IdempotentConnection for SqliteConnection {
    fn idempotent_transaction<R, E, F>(&mut self, f: F) -> Result<R, E>
    where
        F: FnOnce(&mut Self) -> Result<R, E>,
        E: From<diesel::result::Error>,
    {
        if self.in_transaction().map_err(E::from)? {
            self.transaction(f)
        } else {
            self.immediate_transaction(f)
        }
    }

    fn purge_batch(&mut self, now: NaiveDateTime, limit: i64) -> QueryResult<usize> {
        diesel::sql_query(
            "DELETE FROM idempotency_records WHERE expires_at <= ?1 AND \
             (namespace, scope, key) IN (SELECT namespace, scope, key FROM idempotency_records \
             WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)",
        )
        .bind::<Timestamp, _>(now)
        .bind::<BigInt, _>(limit)
        .execute(self)
    }

    fn unique_indexes(&mut self, table: &str) -> QueryResult<Vec<Vec<String>>> {
        let rows: Vec<super::IndexColumn> = diesel::sql_query(
            "SELECT il.name AS index_name, ii.name AS column_name \
             FROM pragma_index_list(?1) AS il, pragma_index_info(il.name) AS ii \
             WHERE il.\"unique\" = 1 AND il.partial = 0 ORDER BY il.name, ii.seqno",
        )
        .bind::<diesel::sql_types::Text, _>(table)
        .load(self)?;
        let mut indexes = super::group_index_columns(rows);
        // An `INTEGER PRIMARY KEY` is the rowid itself, which no index
        // lists; every primary key is unique, so take it from the table.
        let primary_key: Vec<super::IndexColumn> = diesel::sql_query(
            "SELECT 'primary key' AS index_name, name AS column_name \
             FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk",
        )
        .bind::<diesel::sql_types::Text, _>(table)
        .load(self)?;
        indexes.extend(super::group_index_columns(primary_key));
        Ok(indexes)
    }

    on_conflict_claim!();
    shared_statements!(MIGRATIONS);
}
