//! SQLite: the claim is `INSERT .. ON CONFLICT DO NOTHING`; writers are
//! serialized by the database lock, so a top-level call begins with
//! `BEGIN IMMEDIATE` and a competing writer waits in SQLite's busy handler
//! (set `PRAGMA busy_timeout` on every connection that shares the file).
//! A bounded wait (`wait_for`) is a busy timeout of its own for that
//! `BEGIN`.

use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::sql_types::{BigInt, Timestamp};
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

use super::{Claim, IdempotentConnection, Load, push_insert_values};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

impl QueryFragment<Sqlite> for Claim<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql("INSERT INTO idempotency_records");
        push_insert_values(&mut out, self.record)?;
        out.push_sql(" ON CONFLICT DO NOTHING");
        Ok(())
    }
}

/// The `BEGIN` of the library's level: `BEGIN IMMEDIATE` at the top, so the
/// database lock is taken before the claim; a savepoint inside a caller's
/// transaction.
fn begin_sql(depth: Option<std::num::NonZeroU32>) -> Option<&'static str> {
    depth.is_none().then_some("BEGIN IMMEDIATE")
}

/// What `PRAGMA busy_timeout` answers: the connection's busy timeout, in
/// milliseconds.
#[derive(QueryableByName)]
struct BusyTimeout {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    timeout: i32,
}

/// The busy timeout that bounds a wait for the database lock by `limit`:
/// milliseconds, rounded up, at least 1 (0 would not wait at all), at most
/// what SQLite takes.
fn busy_timeout_ms(limit: Duration) -> i32 {
    let millis = limit
        .as_nanos()
        .div_ceil(1_000_000)
        .clamp(1, i32::MAX as u128);
    i32::try_from(millis).unwrap_or(i32::MAX)
}

impl IdempotentConnection for SqliteConnection {
    const DB_SYSTEM: &'static str = "sqlite";

    fn begin_idempotent(&mut self) -> QueryResult<()> {
        use diesel::connection::{AnsiTransactionManager, TransactionManager};
        let depth =
            AnsiTransactionManager::transaction_manager_status_mut(self).transaction_depth()?;
        match begin_sql(depth) {
            Some(sql) => AnsiTransactionManager::begin_transaction_sql(self, sql),
            None => AnsiTransactionManager::begin_transaction(self),
        }
    }

    /// `BEGIN IMMEDIATE` with the connection's busy timeout set to `limit`
    /// for it: the timeout before is read, set, and put back after the
    /// `BEGIN`, whether it began or gave up (SQLITE_BUSY, "database is
    /// locked"). Inside a caller's transaction the level is a savepoint,
    /// which takes no lock: nothing to bound.
    fn begin_idempotent_within(&mut self, limit: Duration) -> QueryResult<()> {
        use diesel::connection::{AnsiTransactionManager, TransactionManager};
        let depth =
            AnsiTransactionManager::transaction_manager_status_mut(self).transaction_depth()?;
        let Some(sql) = begin_sql(depth) else {
            return AnsiTransactionManager::begin_transaction(self);
        };
        let previous = diesel::sql_query("PRAGMA busy_timeout")
            .get_result::<BusyTimeout>(self)?
            .timeout;
        diesel::sql_query(format!("PRAGMA busy_timeout = {}", busy_timeout_ms(limit)))
            .execute(self)?;
        let begun = AnsiTransactionManager::begin_transaction_sql(self, sql);
        let restored = diesel::sql_query(format!("PRAGMA busy_timeout = {previous}")).execute(self);
        match (begun, restored) {
            (Err(e), _) => Err(e),
            (Ok(()), Ok(_)) => Ok(()),
            // The connection would go on with the call's limit as its busy
            // timeout: end the transaction and report the failure.
            (Ok(()), Err(e)) => {
                let _ = AnsiTransactionManager::rollback_transaction(self);
                Err(e)
            }
        }
    }

    super::claim_then_load!([] [] [::diesel::RunQueryDsl], IdempotentConnection);
    super::record_statements!([] [] [::diesel::RunQueryDsl], load: Load);
    super::migrate_statement!(MIGRATIONS);
    super::admin_statements!();

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
}

#[cfg(feature = "async")]
mod nonblocking {
    use std::time::Duration;

    use diesel::QueryResult;
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;

    use diesel::sqlite::SqliteConnection;

    use crate::store::driver::LockWaits;
    use crate::store::nonblocking::AsyncIdempotentConnection;
    use crate::store::{IdempotentConnection, Load};

    /// Rolls back every level of `conn` above `depth`.
    fn roll_back_to(conn: &mut SqliteConnection, depth: u32) -> QueryResult<()> {
        while AnsiTransactionManager::transaction_manager_status_mut(conn)
            .transaction_depth()?
            .is_some_and(|now| now.get() > depth)
        {
            AnsiTransactionManager::rollback_transaction(conn)?;
        }
        Ok(())
    }

    impl AsyncIdempotentConnection for SyncConnectionWrapper<SqliteConnection> {
        const DB_SYSTEM: &'static str = "sqlite";

        async fn begin_idempotent(&mut self, _: Option<Duration>) -> QueryResult<()> {
            self.spawn_blocking(|conn| conn.begin_idempotent()).await
        }

        async fn begin_idempotent_within(
            &mut self,
            _: Option<Duration>,
            limit: Duration,
        ) -> QueryResult<()> {
            self.spawn_blocking(move |conn| conn.begin_idempotent_within(limit))
                .await
        }

        async fn limit_lock_waits(&mut self, _: Duration) -> QueryResult<LockWaits> {
            Ok(None)
        }

        async fn restore_lock_waits(&mut self, _: LockWaits, _: bool) -> QueryResult<()> {
            Ok(())
        }

        async fn reads_from_snapshot(&mut self) -> QueryResult<bool> {
            Ok(false)
        }

        fn abandon(&mut self, depth: u32) {
            // The rollback runs on the wrapper's blocking thread, like every
            // statement, and the drop waits for it to finish (this thread
            // parks; the blocking thread wakes it): the connection is usable,
            // and no longer shared with a running task, when the drop
            // returns. Dropping the wrapper's future unfinished instead
            // would wait with tokio's `block_in_place`, which panics on a
            // current-thread runtime.
            let rollback = self.spawn_blocking(move |conn| roll_back_to(conn, depth));
            let _ = crate::store::driver::block_on(rollback);
        }

        crate::store::claim_then_load!(
            [async] [.await] [::diesel_async::RunQueryDsl],
            AsyncIdempotentConnection
        );
        crate::store::record_statements!(
            [async] [.await] [::diesel_async::RunQueryDsl],
            load: Load
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::busy_timeout_ms;

    #[test]
    fn busy_timeouts_round_up_to_whole_milliseconds() {
        assert_eq!(busy_timeout_ms(Duration::ZERO), 1);
        assert_eq!(busy_timeout_ms(Duration::from_micros(1)), 1);
        assert_eq!(busy_timeout_ms(Duration::from_millis(300)), 300);
        assert_eq!(busy_timeout_ms(Duration::from_micros(300_001)), 301);
        assert_eq!(busy_timeout_ms(Duration::MAX), i32::MAX);
    }
}
