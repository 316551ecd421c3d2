use diesel::prelude::*;
use diesel_idempotent::idempotent;

#[derive(Debug)]
struct AppError;
impl From<diesel_idempotent::Error> for AppError {
    fn from(_: diesel_idempotent::Error) -> Self {
        AppError
    }
}

// Every problem is reported, and the function is still emitted: the call in
// `main` type-checks, so nothing else is reported.
#[idempotent(key = key, ttl = "0s", name = "")]
fn f(db: &mut SqliteConnection, key: &str, (a, b): (u32, u32)) -> Result<u32, AppError> {
    let _ = (db, key);
    Ok(a + b)
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    let _: Result<u32, AppError> = f(&mut conn, "k", (1, 2));
}
