//! Other attribute macros above and below, and a renamed path to the crate.
use diesel::prelude::*;
use diesel_idempotent::idempotent;

#[derive(Debug)]
pub struct AppError;

impl From<diesel_idempotent::Error> for AppError {
    fn from(_: diesel_idempotent::Error) -> Self {
        AppError
    }
}

mod idempotency {
    pub use diesel_idempotent::*;
}

/// Instrumented first, then made idempotent.
#[tracing::instrument(skip(conn))]
#[idempotent(key = key, name = "stacked.outer")]
pub fn outer(conn: &mut SqliteConnection, key: &str, n: u8) -> Result<u8, AppError> {
    let _ = conn;
    Ok(n)
}

/// Made idempotent, then instrumented; through a re-export of the crate.
#[idempotent(key = key, name = "stacked.inner", crate = "crate::idempotency")]
#[tracing::instrument(skip(conn))]
#[inline]
pub fn inner(conn: &mut SqliteConnection, key: &str, n: u8) -> Result<u8, AppError> {
    let _ = conn;
    Ok(n)
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    diesel_idempotent::migrate(&mut conn).unwrap();
    assert_eq!(outer(&mut conn, "k", 1).unwrap(), 1);
    assert_eq!(inner(&mut conn, "k", 2).unwrap(), 2);
}
