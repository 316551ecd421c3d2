use diesel::prelude::*;
use diesel_idempotent::idempotent;

#[derive(Debug)]
struct AppError;
impl From<diesel_idempotent::Error> for AppError {
    fn from(_: diesel_idempotent::Error) -> Self {
        AppError
    }
}

struct Handle;

#[idempotent(key = key)]
fn f(conn: &mut SqliteConnection, key: &str, handle: &Handle) -> Result<u32, AppError> {
    let _ = (conn, key, handle);
    Ok(1)
}

// A type inside the argument's type: the same message, at the argument.
#[idempotent(key = key)]
fn nested(
    conn: &mut SqliteConnection,
    key: &str,
    handles: Vec<Handle>,
    maybe: Option<&Handle>,
) -> Result<u32, AppError> {
    let _ = (conn, key, handles, maybe);
    Ok(1)
}

fn main() {}
