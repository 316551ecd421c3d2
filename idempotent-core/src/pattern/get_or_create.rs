//! The getOrCreate pattern: return the entity found by its natural key, or
//! create it; race-safe through the entity table's unique constraint.
//!
//! No record is kept: the unique constraint on the lookup columns is the
//! guard. **Without it the pattern is the classic check-then-insert race**;
//! [`unique_index_covers`] checks it.

use std::panic;

use diesel::result::{DatabaseErrorKind, Error as DieselError};

use crate::store::{IdempotentConnection, Unwound, guarded_transaction, restoring_depth};

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
pub fn get_or_create<C, T, E, L, B>(conn: &mut C, mut lookup: L, create: B) -> Result<T, E>
where
    C: IdempotentConnection,
    E: From<DieselError> + UniqueViolation,
    L: FnMut(&mut C) -> Result<Option<T>, E>,
    B: FnOnce(&mut C) -> Result<T, E>,
{
    if let Some(found) = restoring_depth(conn, &mut lookup)? {
        return Ok(found);
    }
    match guarded_transaction(conn, create) {
        Ok(created) => Ok(created),
        Err(Unwound::Panicked(payload)) => panic::resume_unwind(payload),
        Err(Unwound::Failed(e)) if e.is_unique_violation() => {
            match restoring_depth(conn, lookup)? {
                Some(winner) => Ok(winner),
                // Outside a caller's transaction the second lookup saw every
                // committed row: the violation is another constraint's.
                None if snapshot_may_hide_rows(conn) => Err(E::from(invisible_winner())),
                None => Err(e),
            }
        }
        Err(Unwound::Failed(e)) => Err(e),
    }
}

/// Whether the caller's open transaction reads from a snapshot that may hide
/// a row committed after it began.
fn snapshot_may_hide_rows<C: IdempotentConnection>(conn: &mut C) -> bool {
    matches!(conn.in_transaction(), Ok(true)) && matches!(conn.reads_from_snapshot(), Ok(true))
}

/// The error of a creator whose transaction cannot see the row that beat it.
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
