//! An application's own `QueryResult` alias whose error carries the
//! library's errors is a valid return type: only Diesel's is refused.
use diesel::prelude::*;
use diesel_idempotent::idempotent;

#[derive(Debug)]
pub enum AppError {
    Idempotency(diesel_idempotent::Error),
    Db(diesel::result::Error),
}

impl From<diesel_idempotent::Error> for AppError {
    fn from(e: diesel_idempotent::Error) -> Self {
        AppError::Idempotency(e)
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(e: diesel::result::Error) -> Self {
        AppError::Db(e)
    }
}

pub type QueryResult<T> = Result<T, AppError>;

#[idempotent(key = key, name = "alias.count")]
fn count(conn: &mut SqliteConnection, key: &str) -> QueryResult<u32> {
    let _ = conn;
    Ok(u32::try_from(key.len()).unwrap_or(0))
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    diesel_idempotent::migrate(&mut conn).unwrap();
    assert_eq!(count(&mut conn, "abc").unwrap(), 3);
    assert_eq!(count(&mut conn, "abc").unwrap(), 3);
}
