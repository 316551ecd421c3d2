use diesel::prelude::*;
use diesel_idempotent::idempotent;

#[derive(Debug)]
struct AppError;
impl From<diesel_idempotent::Error> for AppError {
    fn from(_: diesel_idempotent::Error) -> Self {
        AppError
    }
}

// A typo, an unknown option, a missing value and a bad name in one
// attribute: all reported at once, and the valid options are still read
// (no "missing key" follows).
#[idempotent(key = key, on_confict = "reject", retries = 3, ttl = , name = " x")]
fn f(conn: &mut SqliteConnection, key: &str) -> Result<u32, AppError> {
    let _ = (conn, key);
    Ok(1)
}

// A value that does not parse hides neither the options after it nor the
// signature's problems.
#[idempotent(key = , max_response_bytes = 0, TTL = "1h")]
fn g(db: &mut SqliteConnection, key: &str) -> Result<u32, AppError> {
    let _ = (db, key);
    Ok(1)
}

fn main() {}
