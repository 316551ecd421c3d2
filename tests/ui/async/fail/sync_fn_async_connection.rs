use diesel_async::AsyncPgConnection;
use diesel_idempotent::idempotent;

#[derive(Debug)]
struct AppError;
impl From<diesel_idempotent::Error> for AppError {
    fn from(_: diesel_idempotent::Error) -> Self {
        AppError
    }
}

#[idempotent(key = key)]
fn f(conn: &mut AsyncPgConnection, key: &str) -> Result<u32, AppError> {
    let _ = (conn, key);
    Ok(1)
}

fn main() {}
