//! Type, lifetime and const parameters, where-clauses, a generic connection.
use diesel::prelude::*;
use diesel_idempotent::{IdempotentConnection, idempotent};

#[derive(Debug)]
pub struct AppError;

impl From<diesel_idempotent::Error> for AppError {
    fn from(_: diesel_idempotent::Error) -> Self {
        AppError
    }
}

#[idempotent(key = key, name = "generics.weigh")]
pub fn weigh<'a, C, T, const N: usize>(conn: &mut C, key: &'a str, items: &'a [T]) -> Result<usize, AppError>
where
    C: IdempotentConnection,
    T: serde::Serialize + 'a,
{
    let _ = conn;
    Ok(items.len() * N)
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    diesel_idempotent::migrate(&mut conn).unwrap();
    assert_eq!(weigh::<_, _, 3>(&mut conn, "k", &["a", "b"]).unwrap(), 6);
    // Replayed: the stored 6, although N differs (N is not an argument).
    assert_eq!(weigh::<_, _, 5>(&mut conn, "k", &["a", "b"]).unwrap(), 6);
}
