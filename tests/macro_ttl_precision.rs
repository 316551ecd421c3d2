//! `ttl` keeps fractions of a second: `ttl = "1500ms"` expires after 1.5 s of
//! the injected clock, not after 1 s.
#![cfg(feature = "sqlite")]

use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel_idempotent::{ManualClock, idempotent};

#[derive(Debug)]
pub enum AppError {
    Idempotency(diesel_idempotent::Error),
    Db(diesel::result::Error),
}

impl From<diesel_idempotent::Error> for AppError {
    fn from(e: diesel_idempotent::Error) -> Self {
        AppError::Idempotency(e)
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(e: diesel::result::Error) -> Self {
        AppError::Db(e)
    }
}

/// Returns how many times a body ran so far, this one included.
#[idempotent(key = key, ttl = "1500ms", name = "ttl.precise", clock = clock)]
fn run(conn: &mut SqliteConnection, clock: &ManualClock, key: &str) -> Result<i64, AppError> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    diesel::sql_query("INSERT INTO runs DEFAULT VALUES").execute(conn)?;
    Ok(diesel::sql_query("SELECT COUNT(*) AS n FROM runs")
        .get_result::<Count>(conn)?
        .n)
}

#[test]
fn a_ttl_of_1500ms_expires_after_one_and_a_half_seconds() {
    let mut conn = SqliteConnection::establish(":memory:").expect("in-memory SQLite");
    diesel_idempotent::migrate(&mut conn).expect("migrations");
    diesel::sql_query("CREATE TABLE runs (id INTEGER PRIMARY KEY)")
        .execute(&mut conn)
        .expect("side table");
    let clock = ManualClock::at_unix_seconds(1_700_000_000);

    assert_eq!(run(&mut conn, &clock, "k").unwrap(), 1);
    clock.advance(Duration::from_millis(1000));
    assert_eq!(run(&mut conn, &clock, "k").unwrap(), 1, "kept at +1.0 s");
    clock.advance(Duration::from_millis(400));
    assert_eq!(run(&mut conn, &clock, "k").unwrap(), 1, "kept at +1.4 s");
    clock.advance(Duration::from_millis(100));
    assert_eq!(run(&mut conn, &clock, "k").unwrap(), 2, "expired at +1.5 s");
}
