use diesel::prelude::*;
use diesel::result;
use diesel_idempotent::idempotent;

// The first thing a Diesel user writes; the library's own errors need a
// place in the error type.
#[idempotent(key = key)]
fn query_result(conn: &mut SqliteConnection, key: &str) -> QueryResult<u32> {
    let _ = (conn, key);
    Ok(1)
}

#[idempotent(key = key)]
fn diesel_error(conn: &mut SqliteConnection, key: &str) -> Result<u32, diesel::result::Error> {
    let _ = (conn, key);
    Ok(1)
}

#[idempotent(key = key)]
fn result_error(conn: &mut SqliteConnection, key: &str) -> Result<u32, result::Error> {
    let _ = (conn, key);
    Ok(1)
}

// Diesel's error under another name is recognised by its type.
use diesel::result::Error as DieselError;

#[idempotent(key = key)]
fn imported_error(conn: &mut SqliteConnection, key: &str) -> Result<u32, DieselError> {
    let _ = (conn, key);
    Ok(1)
}

fn main() {}
