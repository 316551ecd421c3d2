//! The storage surface, one implementation per SQL dialect.
//!
//! [`IdempotentConnection`] is implemented for each enabled backend's Diesel
//! connection. Its methods are the few statements the patterns need (claim,
//! load, take over an expired record, complete, purge); the decisions made
//! from their answers live once, in [`crate::pattern`].

use std::any::Any;
use std::num::NonZeroU32;
use std::panic::{self, AssertUnwindSafe};

use chrono::NaiveDateTime;
use diesel::backend::Backend;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Nullable, Text, Timestamp};
use diesel::{QueryResult, RunQueryDsl};

use crate::record::{NewRecord, RecordId};

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod pg;
#[cfg(feature = "sqlite")]
mod sqlite;

/// What a load returns: the fields the decision needs.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredState {
    pub fingerprint: String,
    pub response: Option<String>,
    pub expires_at: NaiveDateTime,
}

/// What a claim found: the key was free, or a record already holds it.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// The record was inserted: this call holds the key.
    Inserted,
    /// A record holds the key; these are its fields.
    Existing(StoredState),
    /// The insert found a record, and it was gone when loaded (purged in
    /// between): claim again.
    Vanished,
}

/// A Diesel connection the `#[idempotent]` attribute can keep records on.
///
/// Implemented for `SqliteConnection` (feature `sqlite`) and `PgConnection`
/// (feature `postgres`). Use it as the bound of a generic connection:
///
/// ```
/// # extern crate idempotent_core as diesel_idempotent;
/// # use diesel_idempotent::IdempotentConnection;
/// fn handler<C: IdempotentConnection>(conn: &mut C) { /* ... */ }
/// ```
///
/// The methods are the library's storage statements; they are not part of
/// the stable API and are hidden from the documentation.
pub trait IdempotentConnection:
    diesel::Connection<TransactionManager = diesel::connection::AnsiTransactionManager> + Sized
{
    /// Whether a plain `SELECT` can take and wait for row locks: InnoDB
    /// turns it into a locking read inside a SERIALIZABLE transaction.
    #[doc(hidden)]
    const PLAIN_READS_MAY_LOCK: bool = false;

    /// Whether a transaction is open on this connection.
    #[doc(hidden)]
    fn in_transaction(&mut self) -> QueryResult<bool> {
        use diesel::connection::{AnsiTransactionManager, TransactionManager};
        AnsiTransactionManager::transaction_manager_status_mut(self)
            .transaction_depth()
            .map(|depth| depth.is_some())
    }

    /// Runs the embedded migrations that create the record table on this
    /// backend; returns how many were applied.
    #[doc(hidden)]
    fn migrate(&mut self) -> Result<usize, crate::Error>;

    /// Runs `f` in a transaction, or in a savepoint when one is already open.
    #[doc(hidden)]
    fn idempotent_transaction<R, E, F>(&mut self, f: F) -> Result<R, E>
    where
        F: FnOnce(&mut Self) -> Result<R, E>,
        E: From<diesel::result::Error>,
    {
        self.transaction(f)
    }

    /// Inserts the claim unless a record with its id exists, waiting for an
    /// uncommitted competing claim to commit or roll back. `true` = inserted.
    #[doc(hidden)]
    fn claim(&mut self, record: &NewRecord<'_>) -> QueryResult<bool>;

    /// Runs `f` with row-lock waits disabled (`on_conflict = "reject"`):
    /// a statement that would wait for another transaction's lock fails at
    /// once, and then this returns `Ok(None)` (the transaction may be
    /// aborted: roll it back). PostgreSQL sets `lock_timeout` to 1 ms for
    /// the transaction and restores it after; MariaDB sets
    /// `innodb_lock_wait_timeout` to 0 (MySQL 8 raises it to 1 s). SQLite
    /// serializes writers before any claim, so there `f` just runs.
    #[doc(hidden)]
    fn without_lock_waits<R>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<R, crate::Error>,
    ) -> Result<Option<R>, crate::Error> {
        f(self).map(Some)
    }

    /// The record with this id, if one is visible.
    #[doc(hidden)]
    fn load(&mut self, id: RecordId<'_>) -> QueryResult<Option<StoredState>>;

    /// Inserts `record` unless its id is taken (waiting, like [`Self::claim`],
    /// for an uncommitted competitor), and otherwise returns the record that
    /// holds it. PostgreSQL does both in one statement; elsewhere it is the
    /// claim followed, on a conflict, by [`Self::load`].
    #[doc(hidden)]
    fn claim_or_load(&mut self, record: &NewRecord<'_>) -> QueryResult<Claimed> {
        if self.claim(record)? {
            return Ok(Claimed::Inserted);
        }
        Ok(self
            .load(record.id())?
            .map_or(Claimed::Vanished, Claimed::Existing))
    }

    /// The record with this id as a plain read sees it: no lock taken, none
    /// waited for, so a record another transaction has not committed is
    /// invisible. The read of `replay = "read_first"`, sent outside the
    /// library's transaction.
    #[doc(hidden)]
    fn read_committed(&mut self, id: RecordId<'_>) -> QueryResult<Option<StoredState>> {
        self.load(id)
    }

    /// Replaces a record that expired at or before `now` by `record`.
    /// `true` = replaced; `false` = it is gone or was renewed meanwhile.
    #[doc(hidden)]
    fn take_over(&mut self, record: &NewRecord<'_>, now: NaiveDateTime) -> QueryResult<bool>;

    /// Stores the result of the claimed call; returns the rows changed.
    #[doc(hidden)]
    fn complete(&mut self, id: RecordId<'_>, response: &str) -> QueryResult<usize>;

    /// The column lists of `table`'s unique indexes (primary key included)
    /// that make a row unique at every insert: expression and partial
    /// indexes, and deferrable constraints (checked at COMMIT), are left out.
    #[doc(hidden)]
    fn unique_indexes(&mut self, table: &str) -> QueryResult<Vec<Vec<String>>>;

    /// Whether the open transaction reads from a snapshot that may predate
    /// rows other transactions committed since (REPEATABLE READ or
    /// SERIALIZABLE on PostgreSQL and MySQL). `false` on SQLite, whose
    /// writers are serialized.
    #[doc(hidden)]
    fn reads_from_snapshot(&mut self) -> QueryResult<bool> {
        Ok(false)
    }

    /// Deletes at most `limit` records expired at or before `now`.
    #[doc(hidden)]
    fn purge_batch(&mut self, now: NaiveDateTime, limit: i64) -> QueryResult<usize>;
}

/// How a guarded transaction ended without a value.
pub(crate) enum Unwound<E> {
    /// The closure returned this error; everything it did was rolled back.
    Failed(E),
    /// The closure panicked; everything it did was rolled back. Resume it
    /// with [`std::panic::resume_unwind`].
    Panicked(Box<dyn Any + Send + 'static>),
}

impl<E: From<diesel::result::Error>> From<diesel::result::Error> for Unwound<E> {
    fn from(e: diesel::result::Error) -> Self {
        Unwound::Failed(E::from(e))
    }
}

/// The transaction depth of `conn` (0 outside a transaction).
pub(crate) fn transaction_depth<C: IdempotentConnection>(conn: &mut C) -> QueryResult<u32> {
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    AnsiTransactionManager::transaction_manager_status_mut(conn)
        .transaction_depth()
        .map(|depth| depth.map_or(0, NonZeroU32::get))
}

/// Rolls back every transaction level above `depth` (savepoints the code
/// inside left open, e.g. a `conn.transaction(..)` that a panic unwound).
fn roll_back_to<C: IdempotentConnection>(conn: &mut C, depth: u32) -> QueryResult<()> {
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    while transaction_depth(conn)? > depth {
        AnsiTransactionManager::rollback_transaction(conn)?;
    }
    Ok(())
}

/// The error of a body that returned with `levels` transaction levels of its
/// own still open.
fn left_open(levels: u32) -> diesel::result::Error {
    diesel::result::Error::DatabaseError(
        diesel::result::DatabaseErrorKind::Unknown,
        Box::new(format!(
            "the function returned with {levels} transaction level(s) of its own still open \
             (a panic caught inside a nested transaction, or a transaction begun and never \
             ended); everything the call did was rolled back and nothing was stored: end \
             every transaction the function begins"
        )),
    )
}

/// Fails when a transaction level above `depth` is still open: code that
/// returned normally left it open, and nothing more may be sent inside it.
pub(crate) fn ensure_closed_above<C: IdempotentConnection>(
    conn: &mut C,
    depth: u32,
) -> QueryResult<()> {
    match transaction_depth(conn)? {
        now if now > depth => Err(left_open(now - depth)),
        _ => Ok(()),
    }
}

/// Runs user code the library calls outside its own transaction (a
/// getOrCreate lookup): if it panics, every transaction level it opened is
/// rolled back before the panic goes on.
pub(crate) fn restoring_depth<C, R>(conn: &mut C, f: impl FnOnce(&mut C) -> R) -> R
where
    C: IdempotentConnection,
{
    let Ok(depth) = transaction_depth(conn) else {
        return f(conn);
    };
    match panic::catch_unwind(AssertUnwindSafe(|| f(conn))) {
        Ok(result) => result,
        Err(payload) => {
            let _ = roll_back_to(conn, depth);
            panic::resume_unwind(payload)
        }
    }
}

/// Runs `f` in the library's transaction ([`IdempotentConnection::idempotent_transaction`]:
/// a transaction, or a savepoint inside the caller's) and leaves the
/// connection at exactly the depth it had before, whatever `f` does:
///
/// - `Ok`: committed (released), unless `f` returned with a level of its own
///   still open (it caught a panic inside a nested transaction, or began
///   one by hand): then everything is rolled back and the call fails with a
///   database error that says so, since committing would have stored a
///   result for effects that were never committed;
/// - `Err`: every level `f` opened and the library's own are rolled back;
/// - a panic anywhere in `f` (the body, a nested `conn.transaction(..)`,
///   a `Serialize` or `Deserialize` impl) is caught, every level above the
///   caller's is rolled back, and the panic is returned to be resumed.
///
/// Diesel's own `transaction` does not catch panics: without this, a panic
/// inside a nested transaction leaves the outer levels open, with the claim
/// and its locks held.
pub(crate) fn guarded_transaction<C, R, E, F>(conn: &mut C, f: F) -> Result<R, Unwound<E>>
where
    C: IdempotentConnection,
    E: From<diesel::result::Error>,
    F: FnOnce(&mut C) -> Result<R, E>,
{
    let outside = transaction_depth(conn)?;
    let inside = outside + 1;
    let result = conn.idempotent_transaction(|conn| {
        match panic::catch_unwind(AssertUnwindSafe(|| f(conn))) {
            Ok(Ok(value)) => match ensure_closed_above(conn, inside) {
                Ok(()) => Ok(value),
                Err(left_open) => {
                    roll_back_to(conn, inside)?;
                    Err(Unwound::Failed(E::from(left_open)))
                }
            },
            // Best effort in both cases: the error or panic matters more
            // than a failed rollback, after which Diesel marks the
            // connection broken and its next use reports it. (An error may
            // also be the refusal of a level the body left open.)
            Ok(Err(e)) => {
                let _ = roll_back_to(conn, inside);
                Err(Unwound::Failed(e))
            }
            Err(payload) => {
                let _ = roll_back_to(conn, inside);
                Err(Unwound::Panicked(payload))
            }
        }
    });
    if result.is_err() {
        // Normally a no-op: the library's own level was rolled back above.
        let _ = roll_back_to(conn, outside);
    }
    result
}

/// `UPDATE idempotency_records SET response = ? WHERE <the record's id>`:
/// stores a claimed call's result.
///
/// Diesel's `update` DSL is never a cached prepared statement (it marks
/// itself unsafe to cache), so every call would be parsed and planned
/// again; this query has a static query id, which Diesel caches per
/// connection like its other statements.
#[doc(hidden)]
pub struct Complete<'a> {
    pub(crate) id: RecordId<'a>,
    pub(crate) response: &'a str,
}

/// `UPDATE idempotency_records SET fingerprint = ?, response = ?,
/// created_at = ?, expires_at = ? WHERE <the record's id> AND expires_at <= ?`:
/// replaces a record that expired. Cached like [`Complete`].
#[doc(hidden)]
pub struct TakeOver<'a> {
    pub(crate) record: &'a NewRecord<'a>,
    pub(crate) now: NaiveDateTime,
}

impl QueryId for Complete<'_> {
    type QueryId = Complete<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryId for TakeOver<'_> {
    type QueryId = TakeOver<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

/// ` WHERE namespace = ? AND scope = ? AND "key" = ?` (`key` quoted as the
/// dialect quotes identifiers: MySQL reserves it).
fn push_record_id<'b, DB>(out: &mut AstPass<'_, 'b, DB>, id: &RecordId<'b>) -> QueryResult<()>
where
    DB: Backend + HasSqlType<Text>,
    str: ToSql<Text, DB>,
{
    out.push_sql(" WHERE namespace = ");
    out.push_bind_param::<Text, str>(id.namespace)?;
    out.push_sql(" AND scope = ");
    out.push_bind_param::<Text, str>(id.scope)?;
    out.push_sql(" AND ");
    out.push_identifier("key")?;
    out.push_sql(" = ");
    out.push_bind_param::<Text, str>(id.key)
}

impl<DB> QueryFragment<DB> for Complete<'_>
where
    DB: Backend + HasSqlType<Text>,
    str: ToSql<Text, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("UPDATE idempotency_records SET response = ");
        out.push_bind_param::<Text, str>(self.response)?;
        push_record_id(&mut out, &self.id)
    }
}

impl<DB> QueryFragment<DB> for TakeOver<'_>
where
    DB: Backend + HasSqlType<Text> + HasSqlType<Timestamp>,
    str: ToSql<Text, DB>,
    NaiveDateTime: ToSql<Timestamp, DB>,
    for<'x> Option<&'x str>: ToSql<Nullable<Text>, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let r = self.record;
        out.push_sql("UPDATE idempotency_records SET fingerprint = ");
        out.push_bind_param::<Text, str>(r.fingerprint)?;
        out.push_sql(", response = ");
        out.push_bind_param::<Nullable<Text>, Option<&str>>(&r.response)?;
        out.push_sql(", created_at = ");
        out.push_bind_param::<Timestamp, NaiveDateTime>(&r.created_at)?;
        out.push_sql(", expires_at = ");
        out.push_bind_param::<Timestamp, NaiveDateTime>(&r.expires_at)?;
        push_record_id(&mut out, &r.id())?;
        out.push_sql(" AND expires_at <= ");
        out.push_bind_param::<Timestamp, NaiveDateTime>(&self.now)
    }
}

impl<Conn> RunQueryDsl<Conn> for Complete<'_> {}
impl<Conn> RunQueryDsl<Conn> for TakeOver<'_> {}

/// One column of a unique index, as each dialect's catalog query returns it.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
#[derive(diesel::QueryableByName)]
struct IndexColumn {
    #[diesel(sql_type = diesel::sql_types::Text)]
    index_name: String,
    /// `None` for an expression (`lower(email)`).
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    column_name: Option<String>,
}

/// Groups index columns, in order, into one column list per index; an
/// index with an expression among its columns is left out (it does not
/// make its plain columns unique).
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
fn group_index_columns(rows: Vec<IndexColumn>) -> Vec<Vec<String>> {
    let mut indexes: Vec<(String, Option<Vec<String>>)> = Vec::new();
    for IndexColumn {
        index_name: index,
        column_name: column,
    } in rows
    {
        match indexes.last_mut() {
            Some((name, columns)) if *name == index => {
                *columns = columns.take().zip(column).map(|(mut columns, column)| {
                    columns.push(column);
                    columns
                });
            }
            _ => indexes.push((index, column.map(|column| vec![column]))),
        }
    }
    indexes
        .into_iter()
        .filter_map(|(_, columns)| columns)
        .collect()
}

/// The claim of the dialects with `ON CONFLICT DO NOTHING` (SQLite,
/// PostgreSQL). Expanded inside their `impl IdempotentConnection`.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
macro_rules! on_conflict_claim {
    () => {
        fn claim(&mut self, record: &$crate::record::NewRecord<'_>) -> ::diesel::QueryResult<bool> {
            use ::diesel::prelude::*;
            ::diesel::insert_into($crate::record::idempotency_records::table)
                .values(record)
                .on_conflict_do_nothing()
                .execute(self)
                .map(|rows| rows == 1)
        }

        fn load(
            &mut self,
            id: $crate::record::RecordId<'_>,
        ) -> ::diesel::QueryResult<Option<$crate::store::StoredState>> {
            use ::diesel::prelude::*;
            use $crate::record::idempotency_records::dsl as r;
            r::idempotency_records
                .find((id.namespace, id.scope, id.key))
                .select((r::fingerprint, r::response, r::expires_at))
                .first::<(String, Option<String>, ::chrono::NaiveDateTime)>(self)
                .optional()
                .map(|row| {
                    row.map(
                        |(fingerprint, response, expires_at)| $crate::store::StoredState {
                            fingerprint,
                            response,
                            expires_at,
                        },
                    )
                })
        }
    };
}
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) use on_conflict_claim;

/// The statements every dialect writes the same way in Diesel's DSL, given
/// its embedded migrations. Expanded inside each backend's impl.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
macro_rules! shared_statements {
    ($migrations:expr) => {
        fn migrate(&mut self) -> Result<usize, $crate::Error> {
            $crate::migrations::run_embedded(self, $migrations)
        }

        fn take_over(
            &mut self,
            record: &$crate::record::NewRecord<'_>,
            now: ::chrono::NaiveDateTime,
        ) -> ::diesel::QueryResult<bool> {
            use ::diesel::RunQueryDsl;
            $crate::store::TakeOver { record, now }
                .execute(self)
                .map(|rows| rows == 1)
        }

        fn complete(
            &mut self,
            id: $crate::record::RecordId<'_>,
            response: &str,
        ) -> ::diesel::QueryResult<usize> {
            use ::diesel::RunQueryDsl;
            $crate::store::Complete { id, response }.execute(self)
        }
    };
}
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub(crate) use shared_statements;
