use diesel::prelude::*;
use diesel_idempotent::idempotent;

#[derive(Debug)]
struct AppError;
impl From<diesel_idempotent::Error> for AppError {
    fn from(_: diesel_idempotent::Error) -> Self {
        AppError
    }
}

#[idempotent(key = key)]
fn f(conn: &mut SqliteConnection, key: &str) -> impl std::fmt::Debug {
    let _ = (conn, key);
    1
}

fn main() {}
