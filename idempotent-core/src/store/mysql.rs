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

use super::{Claim, IdempotentConnection, push_insert_values};
use crate::record::RecordId;

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

impl QueryFragment<Mysql> for Claim<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        out.push_sql("INSERT IGNORE INTO idempotency_records");
        push_insert_values(&mut out, self.record)
    }
}

/// `SET @diesel_idempotent_lock_wait = @@innodb_lock_wait_timeout,
/// innodb_lock_wait_timeout = N`: the setting before, kept for
/// [`RESTORE_LOCK_WAITS`], and each lock wait cut to `limit` for the
/// session, in whole seconds rounded up (the variable counts seconds):
/// `"300ms"` waits up to 1 s. `Duration::ZERO` sets 0, which MariaDB
/// takes as "do not wait" and MySQL 8 raises to 1 second.
fn limit_lock_waits_sql(limit: std::time::Duration) -> String {
    format!(
        "SET @diesel_idempotent_lock_wait = @@innodb_lock_wait_timeout, \
         innodb_lock_wait_timeout = {}",
        lock_wait_timeout_secs(limit)
    )
}

/// `innodb_lock_wait_timeout` for `limit`: whole seconds, rounded up, at
/// most the server's maximum (1 073 741 824).
fn lock_wait_timeout_secs(limit: std::time::Duration) -> u64 {
    let secs = limit
        .as_secs()
        .saturating_add(u64::from(limit.subsec_nanos() > 0));
    secs.min(1_073_741_824)
}

/// Puts the session's setting back. A lock wait timeout rolls back the
/// statement only (InnoDB's default), so the session is restored whether
/// the statements in between failed or not.
const RESTORE_LOCK_WAITS: &str = "SET innodb_lock_wait_timeout = @diesel_idempotent_lock_wait";

/// Whether the open transaction reads from a snapshot, from the session's
/// isolation level (see `reads_from_snapshot`).
fn snapshot_level(level: &str) -> bool {
    matches!(level, "REPEATABLE-READ" | "SERIALIZABLE")
}

/// The session variables that name the isolation level: MySQL 8 and
/// MariaDB 11.1+ `transaction_isolation`, older MariaDB `tx_isolation`.
const ISOLATION_VARIABLES: [&str; 2] = [
    "SELECT @@session.transaction_isolation AS level",
    "SELECT @@session.tx_isolation AS level",
];

#[derive(QueryableByName)]
struct Level {
    #[diesel(sql_type = Text)]
    level: String,
}

/// MySQL's own statements, written once for both drivers (see
/// [`super::record_statements`]). `read_committed` there is a consistent
/// (non-locking) read: outside a transaction it sees the latest committed
/// record; inside the caller's, that transaction's snapshot. At READ
/// UNCOMMITTED it would see a record that is not committed: `replay =
/// "read_first"` needs READ COMMITTED or stricter (InnoDB's default is
/// REPEATABLE READ).
macro_rules! mysql_statements {
    ([$($async:ident)?] [$($await:tt)*] [$($dsl:tt)*], $conn:ident) => {
        const PLAIN_READS_MAY_LOCK: bool = true;

        $($async)? fn limit_lock_waits(
            &mut self,
            limit: std::time::Duration,
        ) -> QueryResult<Option<String>> {
            use $($dsl)* as _;
            diesel::sql_query(limit_lock_waits_sql(limit)).execute(self) $($await)* ?;
            Ok(None)
        }

        $($async)? fn restore_lock_waits(&mut self, _: Option<String>, _: bool) -> QueryResult<()> {
            use $($dsl)* as _;
            diesel::sql_query(RESTORE_LOCK_WAITS).execute(self) $($await)* .map(drop)
        }

        $($async)? fn reads_from_snapshot(&mut self) -> QueryResult<bool> {
            use $($dsl)* as _;
            // InnoDB does not tell a transaction's own level reliably
            // (`information_schema.INNODB_TRX` is a cache refreshed at most
            // every 0.1 s), so the session's level decides: set it with `SET
            // SESSION TRANSACTION ISOLATION LEVEL ..`; a level set with `SET
            // TRANSACTION` for the next transaction only is not visible.
            // Unknown: InnoDB's default, REPEATABLE READ.
            for query in ISOLATION_VARIABLES {
                if let Ok(Level { level }) = diesel::sql_query(query).get_result::<Level>(self) $($await)* {
                    return Ok(snapshot_level(&level));
                }
            }
            Ok(true)
        }

        $crate::store::claim_then_load!([$($async)?] [$($await)*] [$($dsl)*], $conn);
        $crate::store::record_statements!([$($async)?] [$($await)*] [$($dsl)*], load: LockingLoad);
    };
}

impl IdempotentConnection for MysqlConnection {
    const DB_SYSTEM: &'static str = "mysql";

    mysql_statements!([] [] [::diesel::RunQueryDsl], IdempotentConnection);
    super::migrate_statement!(MIGRATIONS);
    super::admin_statements!();

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
}

#[cfg(feature = "async")]
mod nonblocking {
    use std::time::Duration;

    use diesel::QueryResult;
    use diesel_async::{
        AnsiTransactionManager, AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection,
        TransactionManager,
    };

    use super::{
        ISOLATION_VARIABLES, Level, LockingLoad, RESTORE_LOCK_WAITS, limit_lock_waits_sql,
        snapshot_level,
    };
    use crate::store::nonblocking::{AsyncIdempotentConnection, depth};

    /// `wait_timeout` in whole seconds, rounded up (at least 1; MySQL's
    /// maximum is 31 536 000).
    fn wait_timeout_secs(after: Duration) -> u64 {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        secs.clamp(1, 31_536_000)
    }

    impl AsyncIdempotentConnection for AsyncMysqlConnection {
        const DB_SYSTEM: &'static str = "mysql";

        // MySQL has no per-transaction idle timeout: `abandon_after` sets
        // the session's `wait_timeout`, after which the server closes an
        // idle connection (and rolls back its transaction), and
        // `end_idempotent` puts the previous value back.
        async fn begin_idempotent(&mut self, abandon_after: Option<Duration>) -> QueryResult<()> {
            if let Some(after) = abandon_after {
                // One variable per level: a call nested in another restores
                // the outer call's value, not the session's.
                let level = depth(self)?;
                self.batch_execute(&format!(
                    "SET @diesel_idempotent_wait_timeout_{level} = @@session.wait_timeout, \
                     SESSION wait_timeout = {}",
                    wait_timeout_secs(after)
                ))
                .await?;
            }
            AnsiTransactionManager::begin_transaction(self).await
        }

        async fn end_idempotent(&mut self, abandon_after: Option<Duration>) -> QueryResult<()> {
            if abandon_after.is_none() {
                return Ok(());
            }
            let level = depth(self)?;
            self.batch_execute(&format!(
                "SET SESSION wait_timeout = @diesel_idempotent_wait_timeout_{level}"
            ))
            .await
        }

        fn abandon(&mut self, _depth: u32) {
            // The driver sends nothing unless polled: mark the connection
            // broken, so that a pool discards it (closing it ends the
            // transaction on the server) and a plain connection's next
            // transaction fails instead of becoming a savepoint of this one.
            <Self as AsyncConnection>::TransactionManager::transaction_manager_status_mut(self)
                .set_in_error();
            // A statement still running would keep the connection busy (and
            // a closing connection waiting for its result): `KILL QUERY` it
            // from a connection of its own. Best effort: it needs a tokio
            // runtime.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let token = self.cancel_token();
                runtime.spawn(async move {
                    let _ = token.cancel_query().await;
                });
            }
        }

        mysql_statements!(
            [async] [.await] [::diesel_async::RunQueryDsl],
            AsyncIdempotentConnection
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{limit_lock_waits_sql, lock_wait_timeout_secs};

    #[test]
    fn lock_wait_limits_round_up_to_whole_seconds() {
        assert_eq!(lock_wait_timeout_secs(Duration::ZERO), 0, "reject: no wait");
        assert_eq!(lock_wait_timeout_secs(Duration::from_millis(1)), 1);
        assert_eq!(lock_wait_timeout_secs(Duration::from_millis(300)), 1);
        assert_eq!(lock_wait_timeout_secs(Duration::from_secs(2)), 2);
        assert_eq!(lock_wait_timeout_secs(Duration::from_millis(2001)), 3);
        assert_eq!(lock_wait_timeout_secs(Duration::MAX), 1_073_741_824);
        assert_eq!(
            limit_lock_waits_sql(Duration::ZERO),
            "SET @diesel_idempotent_lock_wait = @@innodb_lock_wait_timeout, \
             innodb_lock_wait_timeout = 0"
        );
    }
}
