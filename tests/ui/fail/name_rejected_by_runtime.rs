use diesel::prelude::*;
use diesel_idempotent::idempotent;

#[derive(Debug)]
struct AppError;
impl From<diesel_idempotent::Error> for AppError {
    fn from(_: diesel_idempotent::Error) -> Self {
        AppError
    }
}

// Names the runtime would reject on every call are rejected once, here.
#[idempotent(key = key, name = "payments.create ")]
fn trailing_space(conn: &mut SqliteConnection, key: &str) -> Result<u32, AppError> {
    let _ = (conn, key);
    Ok(1)
}

#[idempotent(key = key, name = "payments\tcreate")]
fn control_character(conn: &mut SqliteConnection, key: &str) -> Result<u32, AppError> {
    let _ = (conn, key);
    Ok(1)
}

#[idempotent(
    key = key,
    name = "payments.create.with.a.name.that.goes.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on.and.on"
)]
fn too_long(conn: &mut SqliteConnection, key: &str) -> Result<u32, AppError> {
    let _ = (conn, key);
    Ok(1)
}

fn main() {}
