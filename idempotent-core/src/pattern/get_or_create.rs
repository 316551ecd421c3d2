//! The getOrCreate pattern: return the entity found by its natural key, or
//! create it; race-safe through the entity table's unique constraint.
//!
//! No record is kept: the unique constraint on the lookup columns is the
//! guard. **Without it the pattern is the classic check-then-insert race**;
//! [`unique_index_covers`] checks it.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};

use diesel::result::{DatabaseErrorKind, Error as DieselError};

use crate::store::IdempotentConnection;

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

enum Failure<E> {
    Body(E),
    Panic(Box<dyn Any + Send + 'static>),
}

impl<E: From<DieselError>> From<DieselError> for Failure<E> {
    fn from(e: DieselError) -> Self {
        Failure::Body(E::from(e))
    }
}

/// Looks the entity up; if absent, runs `create` in a savepoint (a
/// transaction when none is open). If `create` fails with a unique violation
/// (another transaction created the entity meanwhile), its savepoint is
/// rolled back and the lookup runs again and returns the winner's entity.
/// Other errors, and panics, roll `create` back and propagate unchanged.
///
/// When the winner's entity is not visible to the second lookup (an outer
/// REPEATABLE READ or SERIALIZABLE transaction whose snapshot predates it),
/// the unique violation itself is returned: retry the whole transaction.
/// This is what `#[idempotent(get_or_create = ..)]` calls.
pub fn get_or_create<C, T, E, L, B>(conn: &mut C, mut lookup: L, create: B) -> Result<T, E>
where
    C: IdempotentConnection,
    E: From<DieselError> + UniqueViolation,
    L: FnMut(&mut C) -> Result<Option<T>, E>,
    B: FnOnce(&mut C) -> Result<T, E>,
{
    if let Some(found) = lookup(conn)? {
        return Ok(found);
    }
    let created = conn.idempotent_transaction(|conn| -> Result<T, Failure<E>> {
        match panic::catch_unwind(AssertUnwindSafe(|| create(conn))) {
            Ok(result) => result.map_err(Failure::Body),
            Err(payload) => Err(Failure::Panic(payload)),
        }
    });
    match created {
        Ok(created) => Ok(created),
        Err(Failure::Panic(payload)) => panic::resume_unwind(payload),
        Err(Failure::Body(e)) if e.is_unique_violation() => match lookup(conn)? {
            Some(winner) => Ok(winner),
            None => Err(e),
        },
        Err(Failure::Body(e)) => Err(e),
    }
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
