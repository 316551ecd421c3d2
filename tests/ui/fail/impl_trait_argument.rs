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
fn f(conn: &mut SqliteConnection, key: &str, payload: &impl serde::Serialize) -> Result<(), AppError> {
    let _ = (conn, key, payload);
    Ok(())
}

#[idempotent(hash(payload), name = "h")]
fn h(conn: &mut SqliteConnection, payload: &impl serde::Serialize) -> Result<(), AppError> {
    let _ = (conn, payload);
    Ok(())
}

pub trait Event {}

// A trait object has no name either.
#[idempotent(key = key)]
fn d(conn: &mut SqliteConnection, key: &str, event: &dyn Event) -> Result<(), AppError> {
    let _ = (conn, key, event);
    Ok(())
}

// Skipped, it is fine.
#[idempotent(key = key, skip(payload))]
fn g(conn: &mut SqliteConnection, key: &str, payload: &impl serde::Serialize) -> Result<(), AppError> {
    let _ = (conn, key, payload);
    Ok(())
}

fn main() {}
