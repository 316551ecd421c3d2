//! The storage surface, one implementation per SQL dialect.
//!
//! [`IdempotentConnection`] is implemented for each enabled backend's Diesel
//! connection. Its methods are the few statements the patterns need (claim,
//! load, take over an expired record, complete, purge) and those of the
//! operator tools in [`crate::admin`]; the decisions made from their answers
//! live once, in [`crate::pattern`].

// Without a backend there is nothing to implement the statements for.
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(unused_imports)
)]

use std::any::Any;

use chrono::NaiveDateTime;
use diesel::backend::Backend;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Nullable, Text, Timestamp};
use diesel::{QueryResult, RunQueryDsl};

use crate::admin::RecordState;
use crate::record::{IdempotencyRecord, NewRecord, RecordId};

pub(crate) mod driver;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "async")]
pub(crate) mod nonblocking;
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
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a blocking Diesel connection that diesel-idempotent can use",
    label = "a blocking Diesel connection is needed here",
    note = "use `PgConnection`, `MysqlConnection` or `SqliteConnection` (with the backend's \
            feature), or a generic `C: IdempotentConnection`",
    note = "a diesel-async connection (`AsyncPgConnection`, `AsyncMysqlConnection`, \
            `SyncConnectionWrapper<SqliteConnection>`) goes with an `async fn`: make the \
            function `async` (feature `async`)"
)]
pub trait IdempotentConnection:
    diesel::Connection<TransactionManager = diesel::connection::AnsiTransactionManager>
    + crate::outbox::OutboxStatements
    + crate::phased::PhasedStatements
    + Sized
{
    /// The database, as OpenTelemetry's `db.system.name` names it
    /// (`postgresql`, `mysql`, `sqlite`): a span field and a metric label.
    #[doc(hidden)]
    const DB_SYSTEM: &'static str;

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

    /// Begins the library's level: a transaction, or a savepoint when one
    /// is already open.
    #[doc(hidden)]
    fn begin_idempotent(&mut self) -> QueryResult<()> {
        use diesel::connection::{AnsiTransactionManager, TransactionManager};
        AnsiTransactionManager::begin_transaction(self)
    }

    /// Begins the library's level as [`Self::begin_idempotent`] does,
    /// waiting at most `limit` for a lock the `BEGIN` itself takes
    /// (`wait_for`): SQLite's `BEGIN IMMEDIATE` at the top, with the busy
    /// timeout set to `limit` for it and restored after it (also when it
    /// fails). A `BEGIN` that gave up fails with SQLite's busy error and
    /// opened nothing. Elsewhere the `BEGIN` waits for no lock.
    #[doc(hidden)]
    fn begin_idempotent_within(&mut self, limit: std::time::Duration) -> QueryResult<()> {
        let _ = limit;
        self.begin_idempotent()
    }

    /// Cuts each row-lock wait to `limit` (`wait_for`), or turns waits off
    /// with `Duration::ZERO` (`on_conflict = "reject"`): a statement
    /// that waited that long for another transaction's lock fails (the
    /// transaction may be aborted: roll it back). PostgreSQL sets
    /// `lock_timeout` for the transaction to the limit in milliseconds,
    /// rounded up (1 ms for no wait, since 0 would wait for ever); MySQL
    /// sets the session's `innodb_lock_wait_timeout` to the limit in whole
    /// seconds, rounded up (0 for no wait on MariaDB; MySQL 8 raises 0 to
    /// 1 s). SQLite serializes writers before any claim, so there it does
    /// nothing. Returns what [`Self::restore_lock_waits`] needs.
    #[doc(hidden)]
    fn limit_lock_waits(&mut self, limit: std::time::Duration) -> QueryResult<Option<String>> {
        let _ = limit;
        Ok(None)
    }

    /// Puts the lock-wait setting back, after the statements in between
    /// succeeded or `failed`.
    #[doc(hidden)]
    fn restore_lock_waits(&mut self, saved: Option<String>, failed: bool) -> QueryResult<()> {
        let _ = (saved, failed);
        Ok(())
    }

    /// The record with this id, if one is visible.
    #[doc(hidden)]
    fn load(&mut self, id: RecordId<'_>) -> QueryResult<Option<StoredState>>;

    /// Inserts `record` unless its id is taken (waiting for an uncommitted
    /// competing insert of the same key to commit or roll back), and
    /// otherwise returns the record that holds it. PostgreSQL does both in
    /// one statement; elsewhere it is the claim followed, on a conflict, by
    /// [`Self::load`].
    #[doc(hidden)]
    fn claim_or_load(&mut self, record: &NewRecord<'_>) -> QueryResult<Claimed>;

    /// The record with this id as a plain read sees it: no lock taken, none
    /// waited for, so a record another transaction has not committed is
    /// invisible. The read of `replay = "read_first"`, sent outside the
    /// library's transaction.
    #[doc(hidden)]
    fn read_committed(&mut self, id: RecordId<'_>) -> QueryResult<Option<StoredState>>;

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

    /// The record with this id, every column, expired or not (see
    /// [`admin_statements`] for this and the operator statements below).
    #[doc(hidden)]
    fn find_record(&mut self, id: RecordId<'_>) -> QueryResult<Option<IdempotencyRecord>>;

    /// At most `limit` records of `namespace` in `state` that have not
    /// expired at `now`: in flight oldest first, completed newest first.
    #[doc(hidden)]
    fn list_records(
        &mut self,
        namespace: &str,
        state: RecordState,
        now: NaiveDateTime,
        limit: i64,
    ) -> QueryResult<Vec<IdempotencyRecord>>;

    /// Deletes the record with this id if it was created at `created_at`
    /// (the record a read saw, not one that replaced it); returns the rows
    /// deleted.
    #[doc(hidden)]
    fn forget_record(&mut self, id: RecordId<'_>, created_at: NaiveDateTime) -> QueryResult<usize>;

    /// How many records of each namespace `tally` counts at `now`, by
    /// namespace; namespaces without one are left out.
    #[doc(hidden)]
    fn tally_records(
        &mut self,
        tally: Tally,
        now: NaiveDateTime,
    ) -> QueryResult<Vec<(String, i64)>>;

    /// How many records have expired at `now`.
    #[doc(hidden)]
    fn count_expired_records(&mut self, now: NaiveDateTime) -> QueryResult<i64>;
}

/// Which records [`IdempotentConnection::tally_records`] counts.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// Not expired.
    Live,
    /// Not expired, and without a stored result.
    InFlight,
    /// Expired.
    Expired,
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

/// The claim: `INSERT INTO idempotency_records (..) VALUES (..)` that
/// does nothing when the key is taken (`ON CONFLICT DO NOTHING` on
/// PostgreSQL and SQLite, `INSERT IGNORE` on MySQL), after waiting for an
/// uncommitted competing insert of the same key. Each dialect's file writes
/// its `QueryFragment`; both drivers send this one statement.
#[doc(hidden)]
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub struct Claim<'a> {
    pub(crate) record: &'a NewRecord<'a>,
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
/// `SELECT fingerprint, response, expires_at FROM idempotency_records
/// WHERE <the record's id>`: a plain read of one record.
#[doc(hidden)]
pub struct Load<'a> {
    pub(crate) id: RecordId<'a>,
}

#[cfg(any(feature = "sqlite", feature = "mysql"))]
impl QueryId for Claim<'_> {
    type QueryId = Claim<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
impl QueryId for Load<'_> {
    type QueryId = Load<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
impl diesel::query_builder::Query for Load<'_> {
    type SqlType = (Text, Nullable<Text>, Timestamp);
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
impl<DB> QueryFragment<DB> for Load<'_>
where
    DB: Backend + HasSqlType<Text>,
    str: ToSql<Text, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("SELECT fingerprint, response, expires_at FROM idempotency_records");
        push_record_id(&mut out, &self.id)
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
/// The row [`Load`] returns.
pub(crate) type LoadedRow = (String, Option<String>, NaiveDateTime);

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
/// A loaded row as the decision reads it.
pub(crate) fn stored_state((fingerprint, response, expires_at): LoadedRow) -> StoredState {
    StoredState {
        fingerprint,
        response,
        expires_at,
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
/// ` (namespace, scope, "key", fingerprint, response, created_at,
/// expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)` of an insert of `record`.
pub(crate) fn push_insert_values<'b, DB>(
    out: &mut AstPass<'_, 'b, DB>,
    record: &'b NewRecord<'b>,
) -> QueryResult<()>
where
    DB: Backend + HasSqlType<Text> + HasSqlType<Timestamp>,
    str: ToSql<Text, DB>,
    NaiveDateTime: ToSql<Timestamp, DB>,
    for<'x> Option<&'x str>: ToSql<Nullable<Text>, DB>,
{
    out.push_sql(" (namespace, scope, ");
    out.push_identifier("key")?;
    out.push_sql(", fingerprint, response, created_at, expires_at) VALUES (");
    out.push_bind_param::<Text, str>(record.namespace)?;
    out.push_sql(", ");
    out.push_bind_param::<Text, str>(record.scope)?;
    out.push_sql(", ");
    out.push_bind_param::<Text, str>(record.key)?;
    out.push_sql(", ");
    out.push_bind_param::<Text, str>(record.fingerprint)?;
    out.push_sql(", ");
    out.push_bind_param::<Nullable<Text>, Option<&str>>(&record.response)?;
    out.push_sql(", ");
    out.push_bind_param::<Timestamp, NaiveDateTime>(&record.created_at)?;
    out.push_sql(", ");
    out.push_bind_param::<Timestamp, NaiveDateTime>(&record.expires_at)?;
    out.push_sql(")");
    Ok(())
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
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

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
/// `UPDATE idempotency_records SET fingerprint = ?, response = ?,
/// created_at = ?, expires_at = ? WHERE <the record's id> AND expires_at <= ?`:
/// replaces a record that expired. Cached like [`Complete`].
#[doc(hidden)]
pub struct TakeOver<'a> {
    pub(crate) record: &'a NewRecord<'a>,
    pub(crate) now: NaiveDateTime,
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
impl QueryId for Complete<'_> {
    type QueryId = Complete<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
impl QueryId for TakeOver<'_> {
    type QueryId = TakeOver<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
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

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
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

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
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

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
impl<Conn> RunQueryDsl<Conn> for Complete<'_> {}
#[cfg(any(feature = "sqlite", feature = "mysql"))]
impl<Conn> RunQueryDsl<Conn> for Claim<'_> {}
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
impl<Conn> RunQueryDsl<Conn> for Load<'_> {}
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
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

/// The migrations of a dialect, for the blocking trait.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
macro_rules! migrate_statement {
    ($migrations:expr) => {
        fn migrate(&mut self) -> Result<usize, $crate::Error> {
            $crate::migrations::run_embedded(self, $migrations)
        }
    };
}
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub(crate) use migrate_statement;

/// The record statements every dialect sends the same way, written once for
/// both drivers. Expanded in a blocking impl as
/// `record_statements!([] [] [::diesel::RunQueryDsl], load: Load)` and in
/// an async one as `record_statements!([async] [.await]
/// [::diesel_async::RunQueryDsl], load: Load)`; `load` names the query
/// that reads a record for the claim (MySQL's is a locking read).
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
macro_rules! record_statements {
    ([$($async:ident)?] [$($await:tt)*] [$($dsl:tt)*], load: $load:ident) => {
        $($async)? fn load(
            &mut self,
            id: $crate::record::RecordId<'_>,
        ) -> ::diesel::QueryResult<Option<$crate::store::StoredState>> {
            use $($dsl)* as _;
            use ::diesel::OptionalExtension as _;
            $load { id }
                .get_result::<$crate::store::LoadedRow>(self)
                $($await)*
                .optional()
                .map(|row| row.map($crate::store::stored_state))
        }

        $($async)? fn read_committed(
            &mut self,
            id: $crate::record::RecordId<'_>,
        ) -> ::diesel::QueryResult<Option<$crate::store::StoredState>> {
            use $($dsl)* as _;
            use ::diesel::OptionalExtension as _;
            $crate::store::Load { id }
                .get_result::<$crate::store::LoadedRow>(self)
                $($await)*
                .optional()
                .map(|row| row.map($crate::store::stored_state))
        }

        $($async)? fn take_over(
            &mut self,
            record: &$crate::record::NewRecord<'_>,
            now: ::chrono::NaiveDateTime,
        ) -> ::diesel::QueryResult<bool> {
            use $($dsl)* as _;
            $crate::store::TakeOver { record, now }
                .execute(self)
                $($await)*
                .map(|rows| rows == 1)
        }

        $($async)? fn complete(
            &mut self,
            id: $crate::record::RecordId<'_>,
            response: &str,
        ) -> ::diesel::QueryResult<usize> {
            use $($dsl)* as _;
            $crate::store::Complete { id, response }.execute(self) $($await)*
        }
    };
}
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub(crate) use record_statements;

/// The operator statements of [`crate::admin`], the same in every dialect:
/// Diesel's query DSL on [`crate::idempotency_records`] writes each
/// dialect's SQL (it quotes `key`, which MySQL reserves). Expanded in each
/// blocking impl as `admin_statements!()`.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
macro_rules! admin_statements {
    () => {
        fn find_record(
            &mut self,
            id: $crate::record::RecordId<'_>,
        ) -> ::diesel::QueryResult<Option<$crate::record::IdempotencyRecord>> {
            use ::diesel::prelude::*;
            use $crate::record::idempotency_records::dsl as r;
            r::idempotency_records
                .find((id.namespace, id.scope, id.key))
                .select($crate::record::IdempotencyRecord::as_select())
                .get_result(self)
                .optional()
        }

        fn list_records(
            &mut self,
            namespace: &str,
            state: $crate::admin::RecordState,
            now: ::chrono::NaiveDateTime,
            limit: i64,
        ) -> ::diesel::QueryResult<Vec<$crate::record::IdempotencyRecord>> {
            use ::diesel::prelude::*;
            use $crate::admin::RecordState;
            use $crate::record::idempotency_records::dsl as r;
            let live = r::idempotency_records
                .filter(r::namespace.eq(namespace))
                .filter(r::expires_at.gt(now))
                .select($crate::record::IdempotencyRecord::as_select())
                .limit(limit)
                .into_boxed::<<Self as ::diesel::Connection>::Backend>();
            match state {
                RecordState::InFlight => live.filter(r::response.is_null()).order((
                    r::created_at.asc(),
                    r::scope.asc(),
                    r::key.asc(),
                )),
                RecordState::Completed => live.filter(r::response.is_not_null()).order((
                    r::created_at.desc(),
                    r::scope.asc(),
                    r::key.asc(),
                )),
            }
            .load(self)
        }

        fn forget_record(
            &mut self,
            id: $crate::record::RecordId<'_>,
            created_at: ::chrono::NaiveDateTime,
        ) -> ::diesel::QueryResult<usize> {
            use ::diesel::prelude::*;
            use $crate::record::idempotency_records::dsl as r;
            ::diesel::delete(
                r::idempotency_records
                    .find((id.namespace, id.scope, id.key))
                    .filter(r::created_at.eq(created_at)),
            )
            .execute(self)
        }

        fn tally_records(
            &mut self,
            tally: $crate::store::Tally,
            now: ::chrono::NaiveDateTime,
        ) -> ::diesel::QueryResult<Vec<(String, i64)>> {
            use ::diesel::prelude::*;
            use $crate::record::idempotency_records::dsl as r;
            use $crate::store::Tally;
            let per_namespace = r::idempotency_records
                .group_by(r::namespace)
                .select((r::namespace, ::diesel::dsl::count_star()))
                .order(r::namespace.asc())
                .into_boxed::<<Self as ::diesel::Connection>::Backend>();
            match tally {
                Tally::Live => per_namespace.filter(r::expires_at.gt(now)),
                Tally::InFlight => per_namespace
                    .filter(r::expires_at.gt(now))
                    .filter(r::response.is_null()),
                Tally::Expired => per_namespace.filter(r::expires_at.le(now)),
            }
            .load(self)
        }

        fn count_expired_records(
            &mut self,
            now: ::chrono::NaiveDateTime,
        ) -> ::diesel::QueryResult<i64> {
            use ::diesel::prelude::*;
            use $crate::record::idempotency_records::dsl as r;
            r::idempotency_records
                .filter(r::expires_at.le(now))
                .count()
                .get_result(self)
        }
    };
}
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub(crate) use admin_statements;

/// The claim of the dialects without a statement that also loads: the
/// insert and, when it found the key taken, a load. Both drivers, as
/// [`record_statements`]; `$conn` is the trait being implemented.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
macro_rules! claim_then_load {
    ([$($async:ident)?] [$($await:tt)*] [$($dsl:tt)*], $conn:ident) => {
        $($async)? fn claim_or_load(
            &mut self,
            record: &$crate::record::NewRecord<'_>,
        ) -> ::diesel::QueryResult<$crate::store::Claimed> {
            use $($dsl)* as _;
            let inserted = $crate::store::Claim { record }.execute(self) $($await)* ?;
            if inserted == 1 {
                return Ok($crate::store::Claimed::Inserted);
            }
            Ok(<Self as $conn>::load(self, record.id()) $($await)* ?
                .map_or($crate::store::Claimed::Vanished, $crate::store::Claimed::Existing))
        }
    };
}
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) use claim_then_load;
