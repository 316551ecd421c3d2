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
async fn f(conn: &mut SqliteConnection, key: &str) -> Result<u32, AppError> {
    let _ = (conn, key);
    Ok(1)
}

async fn find(conn: &mut SqliteConnection, id: i64) -> QueryResult<Option<i64>> {
    let _ = conn;
    Ok(Some(id))
}

#[idempotent(get_or_create = find(conn, id))]
async fn g(conn: &mut SqliteConnection, id: i64) -> QueryResult<i64> {
    let _ = conn;
    Ok(id)
}

fn main() {}
