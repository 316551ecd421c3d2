use diesel_async::AsyncPgConnection;
use diesel_idempotent::idempotent;

async fn find(conn: &mut AsyncPgConnection, id: i64) -> diesel::QueryResult<Option<i64>> {
    let _ = conn;
    Ok(Some(id))
}

#[idempotent(get_or_create = find(conn, id), abandon_after = "30s")]
async fn f(conn: &mut AsyncPgConnection, id: i64) -> diesel::QueryResult<i64> {
    let _ = conn;
    Ok(id)
}

fn main() {}
