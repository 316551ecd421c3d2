use diesel::prelude::*;
use diesel_idempotent::idempotent;

#[derive(Debug)]
struct AppError;
impl From<diesel_idempotent::Error> for AppError {
    fn from(_: diesel_idempotent::Error) -> Self {
        AppError
    }
}

#[idempotent(key = key, wait_for = "0s")]
fn zero(conn: &mut SqliteConnection, key: &str) -> Result<u32, AppError> {
    let _ = (conn, key);
    Ok(1)
}

#[idempotent(key = key, wait_for = "a while")]
fn unparsable(conn: &mut SqliteConnection, key: &str) -> Result<u32, AppError> {
    let _ = (conn, key);
    Ok(1)
}

#[idempotent(key = key, wait_for = "2h")]
fn over_an_hour(conn: &mut SqliteConnection, key: &str) -> Result<u32, AppError> {
    let _ = (conn, key);
    Ok(1)
}

#[idempotent(key = key, wait_for = "1s 500us")]
fn finer_than_a_millisecond(conn: &mut SqliteConnection, key: &str) -> Result<u32, AppError> {
    let _ = (conn, key);
    Ok(1)
}

#[idempotent(key = key, wait_for = 2)]
fn not_a_literal(conn: &mut SqliteConnection, key: &str) -> Result<u32, AppError> {
    let _ = (conn, key);
    Ok(1)
}

#[idempotent(key = key, on_conflict = "reject", wait_for = "2s")]
fn with_reject(conn: &mut SqliteConnection, key: &str) -> Result<u32, AppError> {
    let _ = (conn, key);
    Ok(1)
}

fn find(conn: &mut SqliteConnection, id: i64) -> QueryResult<Option<i64>> {
    let _ = conn;
    Ok(Some(id))
}

#[idempotent(get_or_create = find(conn, id), wait_for = "2s")]
fn with_get_or_create(conn: &mut SqliteConnection, id: i64) -> QueryResult<i64> {
    let _ = conn;
    Ok(id)
}

fn main() {}
