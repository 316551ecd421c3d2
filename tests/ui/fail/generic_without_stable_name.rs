use diesel::prelude::*;
use diesel_idempotent::idempotent;

#[derive(Debug)]
struct AppError;
impl From<diesel_idempotent::Error> for AppError {
    fn from(_: diesel_idempotent::Error) -> Self {
        AppError
    }
}

// `Created { id: 5 }` and `Deleted { id: 5 }` serialize alike: without the
// type in the fingerprint they would share one key.
#[idempotent(hash, name = "events.apply")]
fn apply<E: serde::Serialize>(conn: &mut SqliteConnection, event: &E) -> Result<(), AppError> {
    let _ = (conn, event);
    Ok(())
}

fn main() {}
