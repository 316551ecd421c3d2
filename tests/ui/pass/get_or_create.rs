//! The getOrCreate pattern with a `QueryResult` body.
use diesel::prelude::*;
use diesel_idempotent::idempotent;

fn find(conn: &mut SqliteConnection, email: &str) -> QueryResult<Option<i64>> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
    }
    diesel::sql_query("SELECT id FROM users WHERE email = ?")
        .bind::<diesel::sql_types::Text, _>(email)
        .get_result::<Id>(conn)
        .optional()
        .map(|row| row.map(|r| r.id))
}

/// Returns the user with this e-mail, creating it once.
#[idempotent(get_or_create = find(conn, email))]
pub fn user_by_email(conn: &mut SqliteConnection, email: &str) -> QueryResult<i64> {
    diesel::sql_query("INSERT INTO users (email) VALUES (?)")
        .bind::<diesel::sql_types::Text, _>(email)
        .execute(conn)?;
    find(conn, email)?.ok_or(diesel::result::Error::NotFound)
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    diesel::sql_query("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE)")
        .execute(&mut conn)
        .unwrap();
    let a = user_by_email(&mut conn, "ada@example.com").unwrap();
    let b = user_by_email(&mut conn, "ada@example.com").unwrap();
    assert_eq!(a, b);
    assert!(diesel_idempotent::unique_index_covers(&mut conn, "users", &["email"]).unwrap());
}
