//! Type, lifetime and const parameters, where-clauses, a generic connection.
//! A type parameter of a fingerprinted argument is bound by `StableName`; one
//! that appears only in the connection needs no name.
use diesel::prelude::*;
use diesel_idempotent::{IdempotentConnection, StableName, idempotent};

#[derive(serde::Serialize)]
pub struct Item(&'static str);

impl StableName for Item {
    const STABLE_NAME: &'static str = "item";
}

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
    T: serde::Serialize + StableName + 'a,
{
    let _ = conn;
    Ok(items.len() * N)
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    diesel_idempotent::migrate(&mut conn).unwrap();
    let items = [Item("a"), Item("b")];
    assert_eq!(weigh::<_, _, 3>(&mut conn, "k", &items).unwrap(), 6);
    // Replayed: the stored 6, although N differs (N is not an argument).
    assert_eq!(weigh::<_, _, 5>(&mut conn, "k", &items).unwrap(), 6);
}
