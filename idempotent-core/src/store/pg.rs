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

use super::{Claimed, IdempotentConnection, Load, StoredState, push_insert_values};
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
        out.push_sql("WITH ins AS (INSERT INTO idempotency_records");
        push_insert_values(&mut out, self.record)?;
        // `$1`..`$3` are the first three parameters bound above.
        out.push_sql(
            " ON CONFLICT DO NOTHING RETURNING 1) \
             SELECT EXISTS (SELECT 1 FROM ins), r.fingerprint, r.response, r.expires_at \
             FROM (SELECT 1) AS one LEFT JOIN idempotency_records AS r \
             ON r.namespace = $1 AND r.scope = $2 AND r.\"key\" = $3",
        );
        Ok(())
    }
}

/// The row [`ClaimOrLoad`] returns.
pub(crate) type ClaimOrLoadRow = (bool, Option<String>, Option<String>, Option<NaiveDateTime>);

/// What a [`ClaimOrLoad`] row says: `None` when the insert waited for a
/// competitor that committed after the statement's snapshot, whose record
/// must be read again.
fn claimed((inserted, fingerprint, response, expires_at): ClaimOrLoadRow) -> Option<Claimed> {
    if inserted {
        return Some(Claimed::Inserted);
    }
    match (fingerprint, expires_at) {
        (Some(fingerprint), Some(expires_at)) => Some(Claimed::Existing(StoredState {
            fingerprint,
            response,
            expires_at,
        })),
        _ => None,
    }
}

/// The setting a [`RestoreLockWaits`] puts back, if the statements in
/// between did not fail (a failure aborted the transaction, whose rollback
/// restores it).
fn lock_waits_to_restore(saved: Option<String>, failed: bool) -> Option<String> {
    saved.filter(|_| !failed)
}

impl RunQueryDsl<PgConnection> for ClaimOrLoad<'_> {}

/// `SELECT current_setting('lock_timeout'), set_config('lock_timeout', $1, true)`:
/// the setting before, and lock waits cut to `timeout` for the transaction.
struct LimitLockWaits<'a> {
    timeout: &'a str,
}

impl QueryId for LimitLockWaits<'_> {
    type QueryId = LimitLockWaits<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for LimitLockWaits<'_> {
    type SqlType = (Text, Text);
}

impl QueryFragment<Pg> for LimitLockWaits<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("SELECT current_setting('lock_timeout'), set_config('lock_timeout', ");
        out.push_bind_param::<Text, _>(self.timeout)?;
        out.push_sql(", true)");
        Ok(())
    }
}

impl RunQueryDsl<PgConnection> for LimitLockWaits<'_> {}

/// The `lock_timeout` that bounds a lock wait by `limit`: milliseconds,
/// rounded up, at least 1 (`Duration::ZERO`, no wait, is the shortest the
/// server knows: 0 would wait for ever), at most the server's maximum.
fn lock_timeout(limit: std::time::Duration) -> String {
    let millis = limit
        .as_nanos()
        .div_ceil(1_000_000)
        .clamp(1, i32::MAX as u128);
    format!("{millis}ms")
}

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

/// PostgreSQL's own statements, written once for both drivers (see
/// [`super::record_statements`]).
macro_rules! pg_statements {
    ([$($async:ident)?] [$($await:tt)*] [$($dsl:tt)*], $conn:ident) => {
        $($async)? fn claim_or_load(&mut self, record: &NewRecord<'_>) -> QueryResult<Claimed> {
            use $($dsl)* as _;
            let row = ClaimOrLoad { record }.get_result::<ClaimOrLoadRow>(self) $($await)* ?;
            match claimed(row) {
                Some(claimed) => Ok(claimed),
                None => Ok(<Self as $conn>::load(self, record.id()) $($await)* ?
                    .map_or(Claimed::Vanished, Claimed::Existing)),
            }
        }

        // `lock_timeout` applies to every wait on a row lock: the one an
        // uncommitted competing insert of the same key holds, and the one a
        // concurrent take-over of an expired record holds.
        $($async)? fn limit_lock_waits(
            &mut self,
            limit: std::time::Duration,
        ) -> QueryResult<Option<String>> {
            use $($dsl)* as _;
            let timeout = lock_timeout(limit);
            let (previous, _) = LimitLockWaits { timeout: &timeout }
                .get_result::<(String, String)>(self)
                $($await)* ?;
            Ok(Some(previous))
        }

        $($async)? fn restore_lock_waits(
            &mut self,
            saved: Option<String>,
            failed: bool,
        ) -> QueryResult<()> {
            use $($dsl)* as _;
            if let Some(previous) = lock_waits_to_restore(saved, failed) {
                RestoreLockWaits {
                    previous: &previous,
                }
                .execute(self)
                $($await)* ?;
            }
            Ok(())
        }

        $($async)? fn reads_from_snapshot(&mut self) -> QueryResult<bool> {
            use $($dsl)* as _;
            let level = diesel::sql_query(ISOLATION_LEVEL).get_result::<Level>(self) $($await)* ?;
            Ok(snapshot_level(&level.level))
        }

        $crate::store::record_statements!([$($async)?] [$($await)*] [$($dsl)*], load: Load);
    };
}

/// The transaction's isolation level, as [`Level`].
const ISOLATION_LEVEL: &str = "SELECT current_setting('transaction_isolation') AS level";

#[derive(QueryableByName)]
struct Level {
    #[diesel(sql_type = Text)]
    level: String,
}

/// Whether a transaction at `level` reads from a snapshot that may predate
/// rows committed since.
fn snapshot_level(level: &str) -> bool {
    matches!(level, "repeatable read" | "serializable")
}

impl IdempotentConnection for PgConnection {
    const DB_SYSTEM: &'static str = "postgresql";

    pg_statements!([] [] [::diesel::RunQueryDsl], IdempotentConnection);
    super::migrate_statement!(MIGRATIONS);
    super::admin_statements!();

    fn purge_batch(&mut self, now: NaiveDateTime, limit: i64) -> QueryResult<usize> {
        // `batch` picks and locks at most `limit` expired rows through the
        // `expires_at` index; the delete reads them again through the same
        // index, between the batch's first and last expiry. That range holds
        // the batch and at most the rows another purge or a take-over has
        // locked (skipped, never locked here), so a batch costs what its size
        // does, whatever the table's: one plan from 10,000 to 1,000,000 rows,
        // custom or generic. Joined on the primary key alone, the planner
        // hashes every expired row instead at 100,000 rows, and at any size
        // with the generic plan (BENCHMARKS.md, "Purge"). Only records
        // sharing one `expires_at` widen the range. No `ctid`: the
        // PostgreSQL-compatible distributed engines have none; a CTE with
        // `FOR UPDATE` runs once, from PostgreSQL 11 on.
        //
        // The outer `expires_at` test matters: a row renewed by a concurrent
        // take-over no longer qualifies when the delete re-checks it.
        diesel::sql_query(
            "WITH batch AS (SELECT namespace, scope, key, expires_at FROM idempotency_records \
             WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             DELETE FROM idempotency_records r USING batch b \
             WHERE r.namespace = b.namespace AND r.scope = b.scope AND r.key = b.key \
             AND r.expires_at <= $1 \
             AND r.expires_at BETWEEN (SELECT min(expires_at) FROM batch) \
             AND (SELECT max(expires_at) FROM batch)",
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
}

#[cfg(feature = "async")]
mod nonblocking {
    use std::future::Future;
    use std::num::NonZeroU32;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    use diesel::QueryResult;
    use diesel::connection::{
        InstrumentationEvent, TransactionDepthChange, TransactionManagerStatus,
    };
    use diesel::result::Error;
    use diesel_async::{
        AnsiTransactionManager, AsyncConnection, AsyncPgConnection, SimpleAsyncConnection,
        TransactionManager,
    };

    use super::{
        ClaimOrLoad, ClaimOrLoadRow, ISOLATION_LEVEL, Level, LimitLockWaits, RestoreLockWaits,
        claimed, lock_timeout, lock_waits_to_restore, snapshot_level,
    };
    use crate::record::NewRecord;
    use crate::store::nonblocking::{AsyncIdempotentConnection, depth};
    use crate::store::{Claimed, Load};

    /// Runs two futures concurrently; both outputs.
    async fn both<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
        let (mut a, mut b) = (pin!(a), pin!(b));
        let (mut a_out, mut b_out) = (None, None);
        std::future::poll_fn(|cx| {
            if a_out.is_none()
                && let Poll::Ready(out) = a.as_mut().poll(cx)
            {
                a_out = Some(out);
            }
            if b_out.is_none()
                && let Poll::Ready(out) = b.as_mut().poll(cx)
            {
                b_out = Some(out);
            }
            match (a_out.take(), b_out.take()) {
                (Some(a), Some(b)) => Poll::Ready((a, b)),
                (a, b) => {
                    (a_out, b_out) = (a, b);
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// `idle_in_transaction_session_timeout`, in milliseconds (at least 1;
    /// the server's maximum is `i32::MAX`).
    fn idle_timeout_ms(after: Duration) -> u128 {
        after.as_millis().clamp(1, i32::MAX as u128)
    }

    /// Ends the level begun at `depth` of a call whose future was dropped;
    /// with `cancel`, at the top, also cancels a statement still running.
    fn abandon_level(conn: &mut AsyncPgConnection, depth: u32, cancel: bool) {
        // The first poll hands the rollback to the connection's
        // background task, which sends it after any statement already
        // queued; the reply is not awaited. At the top, the whole
        // transaction; inside a caller's transaction, only the call's
        // savepoint, so that nothing the caller sends afterwards runs
        // outside the caller's transaction (and commits on its own).
        let rollback = match depth {
            0 => "ROLLBACK".to_owned(),
            _ => format!("ROLLBACK TO SAVEPOINT diesel_savepoint_{depth}"),
        };
        {
            let mut shared: &AsyncPgConnection = conn;
            let mut rollback = pin!(shared.batch_execute(&rollback));
            let _ = rollback
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()));
        }
        // At the top, a statement still running (the body's, or a claim
        // waiting for a lock) would hold the `ROLLBACK` back until it
        // ends: cancel it, as psql's Ctrl-C does, on a connection of
        // its own. Best effort: it needs a tokio runtime, and it is sent
        // without TLS (as libpq sends cancel requests). Inside a
        // caller's transaction the rollback waits instead: a cancel
        // could reach the caller's next statement.
        if cancel
            && depth == 0
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let token = conn.cancel_token();
            runtime.spawn(async move {
                let _ = token.cancel_query(tokio_postgres::NoTls).await;
            });
        }
        // Broken: a pool discards the connection, and the next
        // transaction on it (a caller's commit included) fails instead
        // of going on from a state the drop left unknown.
        <AsyncPgConnection as AsyncConnection>::TransactionManager::transaction_manager_status_mut(
            conn,
        )
        .set_in_error();
    }

    impl AsyncIdempotentConnection for AsyncPgConnection {
        const DB_SYSTEM: &'static str = "postgresql";

        async fn begin_idempotent(&mut self, abandon_after: Option<Duration>) -> QueryResult<()> {
            let Some(after) = abandon_after else {
                return AnsiTransactionManager::begin_transaction(self).await;
            };
            let set = format!(
                "SET LOCAL idle_in_transaction_session_timeout = {}",
                idle_timeout_ms(after)
            );
            if depth(self)? == 0 {
                // One simple query: both statements in one round trip.
                AnsiTransactionManager::begin_transaction_sql(self, &format!("BEGIN; {set}")).await
            } else {
                AnsiTransactionManager::begin_transaction(self).await?;
                self.batch_execute(&set).await
            }
        }

        async fn begin_and_claim_or_load(
            &mut self,
            abandon_after: Option<Duration>,
            record: &NewRecord<'_>,
        ) -> QueryResult<QueryResult<Claimed>> {
            if depth(self)? != 0 {
                self.begin_idempotent(abandon_after).await?;
                return Ok(self.claim_or_load(record).await);
            }
            let begin = match abandon_after {
                None => "BEGIN".to_owned(),
                Some(after) => format!(
                    "BEGIN; SET LOCAL idle_in_transaction_session_timeout = {}",
                    idle_timeout_ms(after)
                ),
            };
            // What `AnsiTransactionManager::begin_transaction` does, with
            // the claim pipelined behind the `BEGIN`: both futures are
            // polled together through shared references, so tokio-postgres
            // writes both requests before either answer comes back.
            if let TransactionManagerStatus::InError =
                AnsiTransactionManager::transaction_manager_status_mut(self)
            {
                return Err(Error::BrokenTransactionManager);
            }
            self.instrumentation()
                .on_connection_event(InstrumentationEvent::begin_transaction(NonZeroU32::MIN));
            let (begun, row) = {
                let (mut first, mut second): (&AsyncPgConnection, &AsyncPgConnection) =
                    (self, self);
                // The `BEGIN` is polled once before the claim's future is
                // made (which records the claim's start): tokio-postgres
                // queues the `BEGIN` first, and instrumentation sees the
                // two in the order they are sent.
                let mut begin = pin!(first.batch_execute(&begin));
                let mut begun = None;
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(out) = begin.as_mut().poll(cx) {
                        begun = Some(out);
                    }
                    Poll::Ready(())
                })
                .await;
                let claim = diesel_async::RunQueryDsl::get_result::<ClaimOrLoadRow>(
                    ClaimOrLoad { record },
                    &mut second,
                );
                match begun {
                    Some(begun) => (begun, claim.await),
                    None => both(begin, claim).await,
                }
            };
            // A `BEGIN` that failed opened nothing, and the claim behind it
            // must not have run on its own. Nothing else in the simple
            // query can fail the `BEGIN` (an error in its `SET LOCAL` comes
            // after the `BEGIN` and aborts the transaction, so the claim
            // fails too), and a call dropped while the two are on their way
            // sends no cancel request (`abandon_begin_and_claim`); what is
            // left is a connection lost in between, which the claim cannot
            // outlive.
            begun?;
            match AnsiTransactionManager::transaction_manager_status_mut(self) {
                TransactionManagerStatus::Valid(status) => {
                    status.change_transaction_depth(TransactionDepthChange::IncreaseDepth)?;
                }
                TransactionManagerStatus::InError => return Err(Error::BrokenTransactionManager),
            }
            Ok(match row {
                Ok(row) => match claimed(row) {
                    Some(claimed) => Ok(claimed),
                    None => <Self as AsyncIdempotentConnection>::load(self, record.id())
                        .await
                        .map(|found| found.map_or(Claimed::Vanished, Claimed::Existing)),
                },
                Err(e) => Err(e),
            })
        }

        fn abandon(&mut self, depth: u32) {
            abandon_level(self, depth, true);
        }

        fn abandon_begin_and_claim(&mut self) {
            // No cancel request: one that reached the `BEGIN` would fail
            // it, and the claim pipelined behind it would run, and commit,
            // on its own. The `ROLLBACK` follows the claim instead.
            abandon_level(self, 0, false);
        }

        pg_statements!(
            [async] [.await] [::diesel_async::RunQueryDsl],
            AsyncIdempotentConnection
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::lock_timeout;

    #[test]
    fn lock_wait_limits_round_up_to_whole_milliseconds() {
        assert_eq!(
            lock_timeout(Duration::ZERO),
            "1ms",
            "reject: the shortest wait"
        );
        assert_eq!(lock_timeout(Duration::from_micros(1)), "1ms");
        assert_eq!(lock_timeout(Duration::from_millis(300)), "300ms");
        assert_eq!(lock_timeout(Duration::from_micros(300_001)), "301ms");
        assert_eq!(lock_timeout(Duration::from_secs(2)), "2000ms");
        assert_eq!(lock_timeout(Duration::MAX), format!("{}ms", i32::MAX));
    }
}
