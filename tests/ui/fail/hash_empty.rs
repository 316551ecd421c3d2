use diesel::prelude::*;
use diesel_idempotent::idempotent;

#[derive(Debug)]
struct AppError;
impl From<diesel_idempotent::Error> for AppError {
    fn from(_: diesel_idempotent::Error) -> Self {
        AppError
    }
}

#[idempotent(hash())]
fn f(conn: &mut SqliteConnection, event: u64) -> Result<u32, AppError> {
    let _ = (conn, event);
    Ok(1)
}

fn main() {}
