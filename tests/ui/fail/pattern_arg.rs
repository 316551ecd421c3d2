use diesel::prelude::*;
use diesel_idempotent::idempotent;

#[derive(Debug)]
struct AppError;
impl From<diesel_idempotent::Error> for AppError {
    fn from(_: diesel_idempotent::Error) -> Self {
        AppError
    }
}

#[derive(serde::Serialize)]
struct Pair(u32, u32);

#[idempotent(key = key)]
fn f(conn: &mut SqliteConnection, key: &str, Pair(a, b): Pair) -> Result<u32, AppError> {
    let _ = (conn, key);
    Ok(a + b)
}

fn main() {}
