use diesel::prelude::*;
use diesel_idempotent::idempotent;

fn find(conn: &mut SqliteConnection, id: i64) -> QueryResult<Option<i64>> {
    let _ = conn;
    Ok(Some(id))
}

#[idempotent(get_or_create = find(conn, id), key = key, hash, ttl = "1h")]
fn f(conn: &mut SqliteConnection, key: &str, id: i64) -> QueryResult<i64> {
    let _ = (conn, key);
    Ok(id)
}

fn main() {}
