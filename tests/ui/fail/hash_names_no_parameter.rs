use diesel::prelude::*;
use diesel_idempotent::idempotent;

#[derive(Debug)]
struct AppError;
impl From<diesel_idempotent::Error> for AppError {
    fn from(_: diesel_idempotent::Error) -> Self {
        AppError
    }
}

#[derive(serde::Serialize)]
struct Event {
    id: u64,
}

#[idempotent(hash(event.id, other.id, event.id + 1))]
fn f(conn: &mut SqliteConnection, event: &Event) -> Result<u32, AppError> {
    let _ = (conn, event);
    Ok(1)
}

fn main() {}
