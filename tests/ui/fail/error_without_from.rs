use diesel::prelude::*;
use diesel_idempotent::idempotent;

#[derive(Debug)]
struct AppError;

#[idempotent(key = key)]
fn f(conn: &mut SqliteConnection, key: &str) -> Result<u32, AppError> {
    let _ = (conn, key);
    Ok(1)
}

fn main() {}
