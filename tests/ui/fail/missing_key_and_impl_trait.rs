use diesel::prelude::*;
use diesel_idempotent::idempotent;

#[derive(Debug)]
struct AppError;
impl From<diesel_idempotent::Error> for AppError {
    fn from(_: diesel_idempotent::Error) -> Self {
        AppError
    }
}

// A missing key, a missing connection or a bad return type does not hide
// the other mistakes: the `impl Trait` arguments are reported too.
#[idempotent(ttl = "1h")]
fn no_key(conn: &mut SqliteConnection, payload: &impl serde::Serialize) -> Result<u32, AppError> {
    let _ = (conn, payload);
    Ok(1)
}

#[idempotent(key = key)]
fn no_conn(db: &mut SqliteConnection, key: &str, payload: &impl serde::Serialize) -> Result<u32, AppError> {
    let _ = (db, key, payload);
    Ok(1)
}

fn main() {}
