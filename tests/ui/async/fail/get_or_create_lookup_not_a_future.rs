use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use diesel_idempotent::idempotent;

fn find_blocking(conn: &mut AsyncPgConnection, id: i64) -> QueryResult<Option<i64>> {
    let _ = conn;
    Ok(Some(id))
}

async fn find(conn: &mut AsyncPgConnection, id: i64) -> QueryResult<Option<i64>> {
    let _ = conn;
    Ok(Some(id))
}

#[idempotent(get_or_create = find_blocking(conn, id))]
async fn blocking_lookup(conn: &mut AsyncPgConnection, id: i64) -> QueryResult<i64> {
    let _ = conn;
    Ok(id)
}

#[idempotent(get_or_create = find(conn, id).await)]
async fn awaited_lookup(conn: &mut AsyncPgConnection, id: i64) -> QueryResult<i64> {
    let _ = conn;
    Ok(id)
}

fn main() {}
