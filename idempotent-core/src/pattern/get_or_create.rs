//! The getOrCreate pattern: return the entity found by its natural key, or
//! create it; race-safe through the entity table's unique constraint.
//!
//! No record is kept: the unique constraint on the lookup columns is the
//! guard. **Without it the pattern is the classic check-then-insert race**;
//! [`unique_index_covers`] checks it.

use std::panic;

use diesel::result::{DatabaseErrorKind, Error as DieselError};

use std::cell::RefCell;
use std::future::ready;

use crate::store::driver::{Blocking, Driver, block_on, guarded_transaction, restoring_depth};
#[cfg(feature = "async")]
use crate::store::nonblocking::{AsyncIdempotentConnection, NonBlocking};
use crate::store::{IdempotentConnection, Unwound};
use crate::telemetry::{Ending, Mark, Pattern, Telemetry};

/// The namespace a call of [`get_or_create`] reports in its span and
/// metrics (`#[idempotent(get_or_create = ..)]` reports the function's).
const NAMESPACE: &str = "get_or_create";

/// An error that can tell whether it is a unique-constraint violation, so
/// [`get_or_create`] knows that another transaction created the entity.
///
/// Implemented for `diesel::result::Error` (bodies returning
/// `QueryResult<T>`) and [`crate::Error`]. For your own error type, forward
/// to the Diesel error it wraps:
///
/// ```
/// # extern crate idempotent_core as diesel_idempotent;
/// use diesel_idempotent::UniqueViolation;
///
/// enum AppError { Db(diesel::result::Error), Invalid(String) }
///
/// impl UniqueViolation for AppError {
///     fn is_unique_violation(&self) -> bool {
///         matches!(self, AppError::Db(e) if e.is_unique_violation())
///     }
/// }
/// ```
pub trait UniqueViolation {
    /// `true` when the error is a unique-constraint violation.
    fn is_unique_violation(&self) -> bool;
}

impl UniqueViolation for DieselError {
    fn is_unique_violation(&self) -> bool {
        matches!(
            self,
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
        )
    }
}

impl UniqueViolation for crate::Error {
    fn is_unique_violation(&self) -> bool {
        matches!(self, crate::Error::Database(e) if e.is_unique_violation())
    }
}

/// Looks the entity up; if absent, runs `create` in a savepoint (a
/// transaction when none is open). If `create` fails with a unique violation
/// (another transaction created the entity meanwhile), its savepoint is
/// rolled back and the lookup runs again and returns the winner's entity.
/// Other errors, and panics, roll `create` back (with any transaction it
/// left open) and propagate unchanged; a panic in `lookup` rolls back any
/// transaction the lookup opened before it propagates.
///
/// When the winner's entity is not visible to the second lookup because
/// the caller's transaction reads from a snapshot that predates it
/// (REPEATABLE READ or SERIALIZABLE: MySQL's default, PostgreSQL on
/// request), the call fails with a serialization failure
/// (`diesel::result::Error::DatabaseError(SerializationFailure, _)`, which
/// [`crate::Retryable`] and [`crate::retry`] treat as retryable): retry the
/// whole transaction and its fresh snapshot finds the row. At READ
/// COMMITTED (and on SQLite) a unique violation that the second lookup
/// cannot explain comes from another constraint and is returned unchanged.
/// This is what `#[idempotent(get_or_create = ..)]` calls.
pub fn get_or_create<C, T, E, L, B>(conn: &mut C, lookup: L, create: B) -> Result<T, E>
where
    C: IdempotentConnection,
    E: From<DieselError> + UniqueViolation,
    L: FnMut(&mut C) -> Result<Option<T>, E>,
    B: FnOnce(&mut C) -> Result<T, E>,
{
    get_or_create_named(NAMESPACE, conn, lookup, create)
}

/// [`get_or_create`], reported under `namespace` (what
/// `#[idempotent(get_or_create = ..)]` calls).
#[doc(hidden)]
pub fn get_or_create_named<C, T, E, L, B>(
    namespace: &str,
    conn: &mut C,
    lookup: L,
    create: B,
) -> Result<T, E>
where
    C: IdempotentConnection,
    E: From<DieselError> + UniqueViolation,
    L: FnMut(&mut C) -> Result<Option<T>, E>,
    B: FnOnce(&mut C) -> Result<T, E>,
{
    // The procedure calls a fresh copy of the lookup each time (an
    // `async` lookup is called by value: see `get_or_create_async`); the
    // copies share this one, called one at a time.
    let lookup = RefCell::new(lookup);
    let lookup = &lookup;
    block_on(get_or_create_with(
        namespace,
        &mut Blocking(conn),
        move |conn: &mut C| ready((lookup.borrow_mut())(conn)),
        move |conn: &mut C| ready(create(conn)),
    ))
}

/// [`get_or_create`] for an `async` lookup and body on a diesel-async
/// connection (feature `async`): what `#[idempotent(get_or_create = ..)]`
/// calls on an `async fn`. If the future is dropped while `create` runs,
/// its level is rolled back as for [`crate::Call::run_async`].
///
/// The lookup runs up to twice, each time a copy of it (`Clone`: an
/// `async` closure that borrows what it reads is); calling one closure
/// twice through `AsyncFnMut` would make the future not `Send`.
#[cfg(feature = "async")]
pub async fn get_or_create_async<C, T, E, L, B>(conn: &mut C, lookup: L, create: B) -> Result<T, E>
where
    C: AsyncIdempotentConnection,
    E: From<DieselError> + UniqueViolation,
    L: AsyncFnOnce(&mut C) -> Result<Option<T>, E> + Clone,
    B: AsyncFnOnce(&mut C) -> Result<T, E>,
{
    get_or_create_named_async(NAMESPACE, conn, lookup, create).await
}

/// [`get_or_create_async`], reported under `namespace` (what
/// `#[idempotent(get_or_create = ..)]` calls on an `async fn`).
#[cfg(feature = "async")]
#[doc(hidden)]
pub async fn get_or_create_named_async<C, T, E, L, B>(
    namespace: &str,
    conn: &mut C,
    lookup: L,
    create: B,
) -> Result<T, E>
where
    C: AsyncIdempotentConnection,
    E: From<DieselError> + UniqueViolation,
    L: AsyncFnOnce(&mut C) -> Result<Option<T>, E> + Clone,
    B: AsyncFnOnce(&mut C) -> Result<T, E>,
{
    get_or_create_with(namespace, &mut NonBlocking::new(conn, None), lookup, create).await
}

/// The procedure, once for both drivers, inside the call's span: not an
/// `async fn`, so that the span's wrapper is the only level it adds to the
/// future.
fn get_or_create_with<'c, D, T, E, L, B>(
    namespace: &'c str,
    conn: &'c mut D,
    lookup: L,
    create: B,
) -> impl Future<Output = Result<T, E>> + use<'c, D, T, E, L, B>
where
    D: Driver,
    E: From<DieselError> + UniqueViolation,
    L: AsyncFnOnce(&mut D::Conn) -> Result<Option<T>, E> + Clone,
    B: AsyncFnOnce(&mut D::Conn) -> Result<T, E>,
{
    let telemetry = Telemetry::start(Pattern::GetOrCreate, namespace, "", "", D::DB_SYSTEM);
    let traced = telemetry.traced();
    traced.wrap(find_or_create(conn, lookup, create, telemetry))
}

/// The entity; how the call ended is recorded where it is decided.
async fn find_or_create<D, T, E, L, B>(
    conn: &mut D,
    lookup: L,
    create: B,
    telemetry: Telemetry<'_>,
) -> Result<T, E>
where
    D: Driver,
    E: From<DieselError> + UniqueViolation,
    L: AsyncFnOnce(&mut D::Conn) -> Result<Option<T>, E> + Clone,
    B: AsyncFnOnce(&mut D::Conn) -> Result<T, E>,
{
    let body_failed = |e: E| (Err(e), Ending::body_failed::<E>());
    let (answer, ending) = 'decided: {
        match restoring_depth(conn, lookup.clone()).await {
            Ok(Some(found)) => break 'decided (Ok(found), Ending::REPLAYED),
            Ok(None) => {}
            Err(e) => break 'decided body_failed(e),
        }
        telemetry.mark(Mark::BodyStart);
        // The body ends before the commit, which is the `complete` phase.
        let created = guarded_transaction(conn, async |conn: &mut D| {
            let created = create(conn.conn()).await;
            telemetry.mark(Mark::BodyEnd);
            created
        })
        .await;
        match created {
            Ok(created) => (Ok(created), Ending::EXECUTED),
            // Recorded as a panic when `telemetry` is dropped.
            Err(Unwound::Panicked(payload)) => panic::resume_unwind(payload),
            Err(Unwound::Failed(e)) if e.is_unique_violation() => {
                match restoring_depth(conn, lookup).await {
                    Ok(Some(winner)) => (Ok(winner), Ending::REPLAYED),
                    // Outside a caller's transaction the second lookup saw
                    // every committed row: the violation is another
                    // constraint's.
                    Ok(None) if snapshot_may_hide_rows(conn).await => {
                        let error = crate::Error::Database(invisible_winner());
                        let ending = Ending::failed(&error);
                        (Err(E::from(invisible_winner())), ending)
                    }
                    Ok(None) => body_failed(e),
                    Err(e) => body_failed(e),
                }
            }
            Err(Unwound::Failed(e)) => body_failed(e),
        }
    };
    telemetry.finish(ending);
    answer
}

async fn snapshot_may_hide_rows<D: Driver>(conn: &mut D) -> bool {
    matches!(conn.depth(), Ok(depth) if depth > 0)
        && matches!(conn.reads_from_snapshot().await, Ok(true))
}

fn invisible_winner() -> DieselError {
    DieselError::DatabaseError(
        DatabaseErrorKind::SerializationFailure,
        Box::new(
            "get_or_create: a concurrent transaction created this row (unique violation), but \
             this transaction's snapshot (REPEATABLE READ or SERIALIZABLE) predates it and \
             cannot see it; retry the whole transaction"
                .to_owned(),
        ),
    )
}

/// Whether some unique index (or primary key) of `table` lies within
/// `columns`, i.e. the lookup by `columns` can find at most one row and a
/// concurrent duplicate insert fails. Use it in a test or a debug assertion.
pub fn unique_index_covers<C: IdempotentConnection>(
    conn: &mut C,
    table: &str,
    columns: &[&str],
) -> Result<bool, crate::Error> {
    let indexes = conn.unique_indexes(table)?;
    Ok(indexes
        .iter()
        .any(|index| !index.is_empty() && index.iter().all(|c| columns.contains(&c.as_str()))))
}
