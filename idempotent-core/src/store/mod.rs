//! The storage surface, one implementation per SQL dialect.
//!
//! [`IdempotentConnection`] is implemented for each enabled backend's Diesel
//! connection. Its methods are the few statements the patterns need (claim,
//! load, take over an expired record, complete, purge); the decisions made
//! from their answers live once, in [`crate::pattern`].

use chrono::NaiveDateTime;
use diesel::QueryResult;

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

    /// Like [`IdempotentConnection::claim`], but returns `None` at once
    /// instead of waiting when an uncommitted competing claim holds the key
    /// (`on_conflict = "reject"`). SQLite serializes writers before any
    /// claim, so there it is the same as `claim`.
    #[doc(hidden)]
    fn claim_nowait(&mut self, record: &NewRecord<'_>) -> QueryResult<Option<bool>> {
        self.claim(record).map(Some)
    }

    /// The record with this id, if one is visible.
    #[doc(hidden)]
    fn load(&mut self, id: RecordId<'_>) -> QueryResult<Option<StoredState>>;

    /// Replaces a record that expired at or before `now` by `record`.
    /// `true` = replaced; `false` = it is gone or was renewed meanwhile.
    #[doc(hidden)]
    fn take_over(&mut self, record: &NewRecord<'_>, now: NaiveDateTime) -> QueryResult<bool>;

    /// Stores the result of the claimed call; returns the rows changed.
    #[doc(hidden)]
    fn complete(&mut self, id: RecordId<'_>, response: &str) -> QueryResult<usize>;

    /// The column lists of `table`'s unique indexes (primary key included).
    #[doc(hidden)]
    fn unique_indexes(&mut self, table: &str) -> QueryResult<Vec<Vec<String>>>;

    /// Deletes at most `limit` records expired at or before `now`.
    #[doc(hidden)]
    fn purge_batch(&mut self, now: NaiveDateTime, limit: i64) -> QueryResult<usize>;
}

/// One column of a unique index, as each dialect's catalog query returns it.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
#[derive(diesel::QueryableByName)]
struct IndexColumn {
    #[diesel(sql_type = diesel::sql_types::Text)]
    index_name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    column_name: String,
}

/// Groups index columns, in order, into one column list per index.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
fn group_index_columns(rows: Vec<IndexColumn>) -> Vec<Vec<String>> {
    let mut indexes: Vec<(String, Vec<String>)> = Vec::new();
    for IndexColumn {
        index_name: index,
        column_name: column,
    } in rows
    {
        match indexes.last_mut() {
            Some((name, columns)) if *name == index => columns.push(column),
            _ => indexes.push((index, vec![column])),
        }
    }
    indexes.into_iter().map(|(_, columns)| columns).collect()
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
            use ::diesel::prelude::*;
            use $crate::record::idempotency_records::dsl as r;
            let id = record.id();
            ::diesel::update(
                r::idempotency_records
                    .find((id.namespace, id.scope, id.key))
                    .filter(r::expires_at.le(now)),
            )
            .set((
                r::fingerprint.eq(record.fingerprint),
                r::response.eq(record.response),
                r::created_at.eq(record.created_at),
                r::expires_at.eq(record.expires_at),
            ))
            .execute(self)
            .map(|rows| rows == 1)
        }

        fn complete(
            &mut self,
            id: $crate::record::RecordId<'_>,
            response: &str,
        ) -> ::diesel::QueryResult<usize> {
            use ::diesel::prelude::*;
            use $crate::record::idempotency_records::dsl as r;
            ::diesel::update(r::idempotency_records.find((id.namespace, id.scope, id.key)))
                .set(r::response.eq(response))
                .execute(self)
        }
    };
}
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub(crate) use shared_statements;
