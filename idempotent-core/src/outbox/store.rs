//! The outbox's statements, written once and expanded for each backend's
//! blocking connection and its diesel-async connection. Diesel's query DSL
//! writes each dialect's SQL; the one difference is the lease's read, which
//! locks the rows it picks and skips those another dispatcher locked
//! (`FOR UPDATE SKIP LOCKED`) on PostgreSQL and MySQL / MariaDB, and needs
//! no lock on SQLite, whose `BEGIN IMMEDIATE` serializes writers.

// Without a backend there is nothing to implement the statements for.
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(unused_imports, unused_macros, dead_code)
)]

use std::future::Future;

use chrono::NaiveDateTime;
use diesel::QueryResult;

diesel::table! {
    /// One row per effect (see `crate::outbox`). Times are UTC.
    idempotency_outbox (id) {
        /// The effect's id.
        id -> Text,
        /// What the effect is: the key of its handler.
        kind -> Text,
        /// The effect's JSON.
        payload -> Text,
        /// `pending`, `done` or `dead`.
        state -> Text,
        /// How many deliveries were begun.
        attempts -> Integer,
        /// While pending: when it is due, or when its delivery's lease ends.
        available_at -> Timestamp,
        /// The error of the latest failed delivery.
        last_error -> Nullable<Text>,
        /// When the effect was pushed.
        created_at -> Timestamp,
        /// When it was delivered (`done`) or given up (`dead`).
        finished_at -> Nullable<Timestamp>,
    }
}

/// No statement before the lease's `BEGIN`.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
const NO_STATEMENT: Option<&str> = None;

/// MySQL's lease runs at READ COMMITTED (see
/// [`OutboxStatements::outbox_before_lease`]).
#[cfg(feature = "mysql")]
const READ_COMMITTED: Option<&str> = Some("SET TRANSACTION ISOLATION LEVEL READ COMMITTED");

/// The state of a pending effect.
pub(crate) const PENDING: &str = "pending";
/// The state of a delivered effect.
pub(crate) const DONE: &str = "done";
/// The state of an effect given up after its last attempt.
pub(crate) const DEAD: &str = "dead";

/// A new effect's row.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct NewEffect<'a> {
    pub(crate) id: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) payload: &'a str,
    pub(crate) now: NaiveDateTime,
}

/// A due effect as the lease reads it: id, kind, payload, attempts before
/// this one, created_at.
#[doc(hidden)]
pub type DueRow = (String, String, String, i32, NaiveDateTime);

/// Every column of an effect's row, in the table's order.
#[doc(hidden)]
pub type EntryRow = (
    String,
    String,
    String,
    String,
    i32,
    NaiveDateTime,
    Option<String>,
    NaiveDateTime,
    Option<NaiveDateTime>,
);

/// A delivery's lease as its dispatcher holds it: a renewal or a mark is
/// written over the row as this lease left it (`attempts` = `attempt`,
/// `available_at` = `until`) and over nothing else: not after another
/// lease, nor after a requeue that reset `attempts` and was leased again.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Lease<'a> {
    pub(crate) id: &'a str,
    pub(crate) attempt: i32,
    pub(crate) until: NaiveDateTime,
}

/// How a delivery ended, written over the row as its lease left it.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Mark<'a> {
    pub(crate) lease: Lease<'a>,
    pub(crate) state: &'static str,
    pub(crate) available_at: NaiveDateTime,
    pub(crate) finished_at: Option<NaiveDateTime>,
    pub(crate) last_error: Option<&'a str>,
}

/// The outbox statements of a blocking connection; a supertrait of
/// `IdempotentConnection`, implemented for each backend's connection. Not
/// a public API.
#[doc(hidden)]
pub trait OutboxStatements {
    /// Sets what the next transaction, the lease's, runs at: READ
    /// COMMITTED on MySQL / MariaDB, whose default REPEATABLE READ locks
    /// the gaps next to the rows the lease reads and deadlocks dispatchers
    /// with each other and with the marks; nothing elsewhere.
    fn outbox_before_lease(&mut self) -> QueryResult<()>;
    /// Inserts a pending effect.
    fn outbox_insert(&mut self, effect: &NewEffect<'_>) -> QueryResult<usize>;
    /// At most `limit` pending effects of `kinds` due at `now`, oldest due
    /// first, locked for this transaction where the dialect locks rows
    /// (skipping those locked already).
    fn outbox_due(
        &mut self,
        kinds: &[String],
        now: NaiveDateTime,
        limit: i64,
    ) -> QueryResult<Vec<DueRow>>;
    /// Leases `ids` until `until`: one attempt more each.
    fn outbox_lease(&mut self, ids: &[String], until: NaiveDateTime) -> QueryResult<usize>;
    /// Moves the end of `held`'s lease to `until`, just before its
    /// handler runs; 0 rows when its lease was taken over.
    fn outbox_renew(&mut self, held: &Lease<'_>, until: NaiveDateTime) -> QueryResult<usize>;
    /// Writes how a delivery ended; 0 rows when its lease was taken over.
    fn outbox_mark(&mut self, mark: &Mark<'_>) -> QueryResult<usize>;
    /// The ids of at most `limit` done effects finished before `before`.
    fn outbox_finished(&mut self, before: NaiveDateTime, limit: i64) -> QueryResult<Vec<String>>;
    /// Deletes the done effects among `ids` finished before `before`.
    fn outbox_delete_finished(
        &mut self,
        ids: &[String],
        before: NaiveDateTime,
    ) -> QueryResult<usize>;
    /// At most `limit` effects in `state`, oldest finished first.
    fn outbox_in_state(&mut self, state: &str, limit: i64) -> QueryResult<Vec<EntryRow>>;
    /// The effect with this id.
    fn outbox_find(&mut self, id: &str) -> QueryResult<Option<EntryRow>>;
    /// Makes a dead effect pending again, due at `now`, with no attempts.
    fn outbox_requeue(&mut self, id: &str, now: NaiveDateTime) -> QueryResult<usize>;
    /// How many effects are in each state.
    fn outbox_count_states(&mut self) -> QueryResult<Vec<(String, i64)>>;
    /// How many pending effects are due at `now`.
    fn outbox_count_due(&mut self, now: NaiveDateTime) -> QueryResult<i64>;
}

/// The outbox statements of a diesel-async connection (feature `async`); a
/// supertrait of `AsyncIdempotentConnection`. Not a public API.
#[doc(hidden)]
pub trait AsyncOutboxStatements {
    /// As [`OutboxStatements::outbox_before_lease`].
    fn outbox_before_lease(&mut self) -> impl Future<Output = QueryResult<()>> + Send;
    /// As [`OutboxStatements::outbox_insert`].
    fn outbox_insert(
        &mut self,
        effect: &NewEffect<'_>,
    ) -> impl Future<Output = QueryResult<usize>> + Send;
    /// As [`OutboxStatements::outbox_due`].
    fn outbox_due(
        &mut self,
        kinds: &[String],
        now: NaiveDateTime,
        limit: i64,
    ) -> impl Future<Output = QueryResult<Vec<DueRow>>> + Send;
    /// As [`OutboxStatements::outbox_lease`].
    fn outbox_lease(
        &mut self,
        ids: &[String],
        until: NaiveDateTime,
    ) -> impl Future<Output = QueryResult<usize>> + Send;
    /// As [`OutboxStatements::outbox_renew`].
    fn outbox_renew(
        &mut self,
        held: &Lease<'_>,
        until: NaiveDateTime,
    ) -> impl Future<Output = QueryResult<usize>> + Send;
    /// As [`OutboxStatements::outbox_mark`].
    fn outbox_mark(&mut self, mark: &Mark<'_>) -> impl Future<Output = QueryResult<usize>> + Send;
}

/// The statements both drivers send, expanded in a blocking impl as
/// `delivery_statements!([] [] [::diesel::RunQueryDsl], [$lock],
/// before_lease: $before)` and in an async one as
/// `delivery_statements!([async] [.await] [::diesel_async::RunQueryDsl],
/// [$lock], before_lease: $before)`; `$lock` is what the lease's read adds
/// (`.for_update().skip_locked()`, or nothing), `$before` the statement sent
/// before the lease's `BEGIN` (`Some(sql)`, or `None`).
macro_rules! delivery_statements {
    ([$($async:ident)?] [$($await:tt)*] [$($dsl:tt)*], [$($lock:tt)*], before_lease: $before:expr) => {
        $($async)? fn outbox_before_lease(&mut self) -> ::diesel::QueryResult<()> {
            use $($dsl)* as _;
            match $before {
                Some(sql) => ::diesel::sql_query(sql).execute(self) $($await)* .map(drop),
                None => Ok(()),
            }
        }

        $($async)? fn outbox_insert(
            &mut self,
            effect: &$crate::outbox::store::NewEffect<'_>,
        ) -> ::diesel::QueryResult<usize> {
            use ::diesel::ExpressionMethods as _;
            use $($dsl)* as _;
            use $crate::outbox::store::idempotency_outbox::dsl as o;
            ::diesel::insert_into(o::idempotency_outbox)
                .values((
                    o::id.eq(effect.id),
                    o::kind.eq(effect.kind),
                    o::payload.eq(effect.payload),
                    o::state.eq($crate::outbox::store::PENDING),
                    o::attempts.eq(0),
                    o::available_at.eq(effect.now),
                    o::created_at.eq(effect.now),
                ))
                .execute(self)
                $($await)*
        }

        $($async)? fn outbox_due(
            &mut self,
            kinds: &[String],
            now: ::chrono::NaiveDateTime,
            limit: i64,
        ) -> ::diesel::QueryResult<Vec<$crate::outbox::store::DueRow>> {
            use ::diesel::{ExpressionMethods as _, QueryDsl as _};
            use $($dsl)* as _;
            use $crate::outbox::store::idempotency_outbox::dsl as o;
            o::idempotency_outbox
                .filter(o::state.eq($crate::outbox::store::PENDING))
                .filter(o::available_at.le(now))
                .filter(o::kind.eq_any(kinds))
                .order((o::available_at.asc(), o::id.asc()))
                .limit(limit)
                .select((o::id, o::kind, o::payload, o::attempts, o::created_at))
                $($lock)*
                .load(self)
                $($await)*
        }

        $($async)? fn outbox_lease(
            &mut self,
            ids: &[String],
            until: ::chrono::NaiveDateTime,
        ) -> ::diesel::QueryResult<usize> {
            use ::diesel::{ExpressionMethods as _, QueryDsl as _};
            use $($dsl)* as _;
            use $crate::outbox::store::idempotency_outbox::dsl as o;
            ::diesel::update(o::idempotency_outbox.filter(o::id.eq_any(ids)))
                .set((o::attempts.eq(o::attempts + 1), o::available_at.eq(until)))
                .execute(self)
                $($await)*
        }

        $($async)? fn outbox_renew(
            &mut self,
            held: &$crate::outbox::store::Lease<'_>,
            until: ::chrono::NaiveDateTime,
        ) -> ::diesel::QueryResult<usize> {
            use ::diesel::{ExpressionMethods as _, QueryDsl as _};
            use $($dsl)* as _;
            use $crate::outbox::store::idempotency_outbox::dsl as o;
            ::diesel::update(
                o::idempotency_outbox
                    .filter(o::id.eq(held.id))
                    .filter(o::attempts.eq(held.attempt))
                    .filter(o::available_at.eq(held.until))
                    .filter(o::state.eq($crate::outbox::store::PENDING)),
            )
            .set(o::available_at.eq(until))
            .execute(self)
            $($await)*
        }

        $($async)? fn outbox_mark(
            &mut self,
            mark: &$crate::outbox::store::Mark<'_>,
        ) -> ::diesel::QueryResult<usize> {
            use ::diesel::{ExpressionMethods as _, QueryDsl as _};
            use $($dsl)* as _;
            use $crate::outbox::store::idempotency_outbox::dsl as o;
            let held = &mark.lease;
            ::diesel::update(
                o::idempotency_outbox
                    .filter(o::id.eq(held.id))
                    .filter(o::attempts.eq(held.attempt))
                    .filter(o::available_at.eq(held.until))
                    .filter(o::state.eq($crate::outbox::store::PENDING)),
            )
            .set((
                o::state.eq(mark.state),
                o::available_at.eq(mark.available_at),
                o::finished_at.eq(mark.finished_at),
                o::last_error.eq(mark.last_error),
            ))
            .execute(self)
            $($await)*
        }
    };
}

/// The operator statements, blocking only, the same in every dialect.
macro_rules! operator_statements {
    () => {
        fn outbox_finished(
            &mut self,
            before: ::chrono::NaiveDateTime,
            limit: i64,
        ) -> ::diesel::QueryResult<Vec<String>> {
            use ::diesel::prelude::*;
            use $crate::outbox::store::idempotency_outbox::dsl as o;
            o::idempotency_outbox
                .filter(o::state.eq($crate::outbox::store::DONE))
                .filter(o::finished_at.lt(before))
                .order((o::finished_at.asc(), o::id.asc()))
                .limit(limit)
                .select(o::id)
                .load(self)
        }

        fn outbox_delete_finished(
            &mut self,
            ids: &[String],
            before: ::chrono::NaiveDateTime,
        ) -> ::diesel::QueryResult<usize> {
            use ::diesel::prelude::*;
            use $crate::outbox::store::idempotency_outbox::dsl as o;
            ::diesel::delete(
                o::idempotency_outbox
                    .filter(o::id.eq_any(ids))
                    .filter(o::state.eq($crate::outbox::store::DONE))
                    .filter(o::finished_at.lt(before)),
            )
            .execute(self)
        }

        fn outbox_in_state(
            &mut self,
            state: &str,
            limit: i64,
        ) -> ::diesel::QueryResult<Vec<$crate::outbox::store::EntryRow>> {
            use ::diesel::prelude::*;
            use $crate::outbox::store::idempotency_outbox::dsl as o;
            o::idempotency_outbox
                .filter(o::state.eq(state))
                .order((o::finished_at.asc(), o::created_at.asc(), o::id.asc()))
                .limit(limit)
                .load(self)
        }

        fn outbox_find(
            &mut self,
            id: &str,
        ) -> ::diesel::QueryResult<Option<$crate::outbox::store::EntryRow>> {
            use ::diesel::prelude::*;
            use $crate::outbox::store::idempotency_outbox::dsl as o;
            o::idempotency_outbox.find(id).first(self).optional()
        }

        fn outbox_requeue(
            &mut self,
            id: &str,
            now: ::chrono::NaiveDateTime,
        ) -> ::diesel::QueryResult<usize> {
            use ::diesel::prelude::*;
            use $crate::outbox::store::idempotency_outbox::dsl as o;
            ::diesel::update(
                o::idempotency_outbox
                    .filter(o::id.eq(id))
                    .filter(o::state.eq($crate::outbox::store::DEAD)),
            )
            .set((
                o::state.eq($crate::outbox::store::PENDING),
                o::attempts.eq(0),
                o::available_at.eq(now),
                o::finished_at.eq(None::<::chrono::NaiveDateTime>),
            ))
            .execute(self)
        }

        fn outbox_count_states(&mut self) -> ::diesel::QueryResult<Vec<(String, i64)>> {
            use ::diesel::prelude::*;
            use $crate::outbox::store::idempotency_outbox::dsl as o;
            o::idempotency_outbox
                .group_by(o::state)
                .select((o::state, ::diesel::dsl::count_star()))
                .load(self)
        }

        fn outbox_count_due(&mut self, now: ::chrono::NaiveDateTime) -> ::diesel::QueryResult<i64> {
            use ::diesel::prelude::*;
            use $crate::outbox::store::idempotency_outbox::dsl as o;
            o::idempotency_outbox
                .filter(o::state.eq($crate::outbox::store::PENDING))
                .filter(o::available_at.le(now))
                .count()
                .get_result(self)
        }
    };
}

#[cfg(feature = "sqlite")]
impl OutboxStatements for diesel::sqlite::SqliteConnection {
    delivery_statements!([] [] [::diesel::RunQueryDsl], [], before_lease: NO_STATEMENT);
    operator_statements!();
}

#[cfg(feature = "postgres")]
impl OutboxStatements for diesel::pg::PgConnection {
    delivery_statements!([] [] [::diesel::RunQueryDsl], [.for_update().skip_locked()], before_lease: NO_STATEMENT);
    operator_statements!();
}

#[cfg(feature = "mysql")]
impl OutboxStatements for diesel::mysql::MysqlConnection {
    delivery_statements!([] [] [::diesel::RunQueryDsl], [.for_update().skip_locked()], before_lease: READ_COMMITTED);
    operator_statements!();
}

#[cfg(all(feature = "async", feature = "sqlite"))]
impl AsyncOutboxStatements
    for diesel_async::sync_connection_wrapper::SyncConnectionWrapper<
        diesel::sqlite::SqliteConnection,
    >
{
    delivery_statements!([async] [.await] [::diesel_async::RunQueryDsl], [], before_lease: NO_STATEMENT);
}

#[cfg(all(feature = "async", feature = "postgres"))]
impl AsyncOutboxStatements for diesel_async::AsyncPgConnection {
    delivery_statements!([async] [.await] [::diesel_async::RunQueryDsl], [.for_update().skip_locked()], before_lease: NO_STATEMENT);
}

#[cfg(all(feature = "async", feature = "mysql"))]
impl AsyncOutboxStatements for diesel_async::AsyncMysqlConnection {
    delivery_statements!([async] [.await] [::diesel_async::RunQueryDsl], [.for_update().skip_locked()], before_lease: READ_COMMITTED);
}
