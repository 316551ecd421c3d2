use diesel_async::AsyncPgConnection;
use diesel_idempotent::idempotent;

#[derive(Debug)]
struct AppError;
impl From<diesel_idempotent::Error> for AppError {
    fn from(_: diesel_idempotent::Error) -> Self {
        AppError
    }
}

struct Receipt;

#[idempotent(key = key)]
async fn not_serializable(conn: &mut AsyncPgConnection, key: &str) -> Result<Receipt, AppError> {
    let _ = (conn, key);
    Ok(Receipt)
}

#[idempotent(key = key)]
async fn query_result(conn: &mut AsyncPgConnection, key: &str) -> diesel::QueryResult<u32> {
    let _ = (conn, key);
    Ok(1)
}

fn main() {}
