use diesel::prelude::*;
use diesel_idempotent::idempotent;

#[derive(Debug)]
struct AppError;
impl From<diesel_idempotent::Error> for AppError {
    fn from(_: diesel_idempotent::Error) -> Self {
        AppError
    }
}

#[idempotent(key = order_id, ttl = "1h")]
fn f(conn: &mut SqliteConnection, order_id: u64) -> Result<u32, AppError> {
    let _ = (conn, order_id);
    Ok(1)
}

fn main() {}
