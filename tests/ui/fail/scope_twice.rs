use diesel::prelude::*;
use diesel_idempotent::idempotent;

#[derive(Debug)]
struct AppError;
impl From<diesel_idempotent::Error> for AppError {
    fn from(_: diesel_idempotent::Error) -> Self {
        AppError
    }
}

#[idempotent(key = key, scope = tenant, scope = user)]
fn f(conn: &mut SqliteConnection, key: &str, tenant: u64, user: u64) -> Result<u32, AppError> {
    let _ = (conn, key, tenant, user);
    Ok(1)
}

fn main() {}
