//! The call-history pattern: `hash` and `hash(..)`.
use diesel::prelude::*;
use diesel_idempotent::idempotent;

#[derive(Debug)]
pub struct AppError;

impl From<diesel_idempotent::Error> for AppError {
    fn from(_: diesel_idempotent::Error) -> Self {
        AppError
    }
}

#[derive(serde::Serialize)]
pub struct Event {
    pub user_id: u64,
    pub url: String,
    pub attempt: u32,
}

#[idempotent(hash, ttl = "7d", name = "consumer.all")]
pub fn all(conn: &mut SqliteConnection, event: &Event) -> Result<u32, AppError> {
    let _ = conn;
    Ok(event.attempt)
}

#[idempotent(hash(event.user_id, event.url), ttl = "7d", name = "consumer.fields")]
pub fn fields(conn: &mut SqliteConnection, event: &Event) -> Result<u32, AppError> {
    let _ = conn;
    Ok(event.attempt)
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    diesel_idempotent::migrate(&mut conn).unwrap();
    let e = |attempt| Event { user_id: 1, url: "u".into(), attempt };
    assert_eq!(all(&mut conn, &e(1)).unwrap(), 1);
    assert_eq!(all(&mut conn, &e(2)).unwrap(), 2, "every argument identifies the call");
    assert_eq!(fields(&mut conn, &e(1)).unwrap(), 1);
    assert_eq!(fields(&mut conn, &e(2)).unwrap(), 1, "replayed: same user and url");
}
