use diesel::prelude::*;
use diesel_idempotent::idempotent;

#[derive(Debug)]
struct AppError;
impl From<diesel_idempotent::Error> for AppError {
    fn from(_: diesel_idempotent::Error) -> Self {
        AppError
    }
}

#[idempotent(key = key, abandon_after = "30s")]
fn f(conn: &mut SqliteConnection, key: &str) -> Result<u32, AppError> {
    let _ = (conn, key);
    Ok(1)
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    let _: Result<u32, AppError> = f(&mut conn, "k");
}
