use diesel_async::AsyncPgConnection;
use diesel_idempotent::idempotent;

#[derive(Debug)]
struct AppError;
impl From<diesel_idempotent::Error> for AppError {
    fn from(_: diesel_idempotent::Error) -> Self {
        AppError
    }
}

#[idempotent(key = key, abandon_after = "0s")]
async fn zero(conn: &mut AsyncPgConnection, key: &str) -> Result<u32, AppError> {
    let _ = (conn, key);
    Ok(1)
}

#[idempotent(key = key, abandon_after = "a while")]
async fn unparsable(conn: &mut AsyncPgConnection, key: &str) -> Result<u32, AppError> {
    let _ = (conn, key);
    Ok(1)
}

#[idempotent(key = key, abandon_after = "25h")]
async fn over_a_day(conn: &mut AsyncPgConnection, key: &str) -> Result<u32, AppError> {
    let _ = (conn, key);
    Ok(1)
}

#[idempotent(key = key, abandon_after = 30)]
async fn not_a_literal(conn: &mut AsyncPgConnection, key: &str) -> Result<u32, AppError> {
    let _ = (conn, key);
    Ok(1)
}

fn main() {}
