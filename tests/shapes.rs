//! Every supported function shape, compiled under the strictest lints and
//! called against `SQLite`: the generated code adds no warning, no clippy lint
//! (pedantic included) and no `unsafe`, and each shape behaves as documented.
//! `scripts/test.sh` runs clippy on this file with `-D warnings`.
#![cfg(feature = "sqlite")]
#![deny(warnings, clippy::all, clippy::pedantic)]
#![forbid(unsafe_code)]

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel_idempotent::{IdempotentConnection, ManualClock, Outcome, StableName, idempotent};
use serde::{Deserialize, Serialize};

#[derive(Debug)]
pub enum AppError {
    Idempotency(diesel_idempotent::Error),
    Db(diesel::result::Error),
    Empty,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub id: i64,
    pub amount: i64,
}

#[derive(Debug, Serialize)]
pub struct Charge {
    pub idempotency_key: String,
    pub amount: i64,
}

/// Side effect every body performs: one row per execution.
fn record_execution<C: IdempotentConnection>(conn: &mut C, amount: i64) -> QueryResult<i64>
where
    diesel::query_builder::SqlQuery: diesel::query_dsl::methods::ExecuteDsl<C>,
{
    diesel::sql_query("INSERT INTO executions (amount) VALUES (1)").execute(conn)?;
    Ok(amount)
}

fn executions(conn: &mut SqliteConnection) -> i64 {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    diesel::sql_query("SELECT COUNT(*) AS n FROM executions")
        .get_result::<Count>(conn)
        .expect("count")
        .n
}

fn database() -> SqliteConnection {
    let mut conn = SqliteConnection::establish(":memory:").expect("in-memory SQLite");
    diesel_idempotent::migrate(&mut conn).expect("migrations");
    diesel::sql_query("CREATE TABLE executions (amount BIGINT NOT NULL)")
        .execute(&mut conn)
        .expect("side table");
    conn
}

/// A documented free function; the docs stay on the item.
///
/// # Errors
/// The body's and the library's errors.
#[idempotent(key = key, ttl = "1h", name = "shapes.free")]
#[must_use = "the receipt tells what was charged"]
pub fn free(conn: &mut SqliteConnection, key: &str, amount: i64) -> Result<Receipt, AppError> {
    if amount == 0 {
        return Err(AppError::Empty);
    }
    let id = record_execution(conn, amount)?;
    Ok(Receipt { id, amount })
}

/// An underscore-prefixed parameter is fingerprinted without the expansion
/// "using" it in the user's name (`clippy::used_underscore_binding`).
#[idempotent(key = key, name = "shapes.underscore")]
fn underscore(conn: &mut SqliteConnection, key: &str, _trace_id: u32) -> Result<i64, AppError> {
    Ok(record_execution(conn, 1)?)
}

/// An item type with a name of its own in fingerprints.
#[derive(Debug, Serialize)]
pub struct Item(i64);

impl StableName for Item {
    const STABLE_NAME: &'static str = "shapes.item";
}

/// Lifetime, type and const parameters with a where-clause; the fingerprinted
/// type parameter has a stable name.
#[idempotent(key = key, name = "shapes.generic")]
fn generic<'k, C, T, const N: usize>(
    conn: &mut C,
    key: &'k str,
    items: &[T],
) -> Result<usize, AppError>
where
    C: IdempotentConnection,
    T: Serialize + StableName,
    diesel::query_builder::SqlQuery: diesel::query_dsl::methods::ExecuteDsl<C>,
{
    record_execution(conn, 0)?;
    Ok(items.len() * N)
}

/// `impl Trait` arguments (left out of the fingerprint: an `impl Trait` type
/// has no stable name) and an owned key.
#[idempotent(key = key, name = "shapes.impl_trait", skip(payload))]
fn impl_trait(
    conn: &mut SqliteConnection,
    key: &String,
    payload: &impl Serialize,
) -> Result<i64, AppError> {
    let _ = payload;
    record_execution(conn, 1).map_err(AppError::from)
}

pub struct Service {
    clock: ManualClock,
    calls: u32,
}

impl Service {
    /// `&self`, the key from a field of an argument, every option.
    #[idempotent(
        key = req.idempotency_key.as_str(),
        scope = tenant,
        conn = db,
        clock = self.clock,
        skip(verbose),
        ttl = "15m",
        name = "shapes.charge"
    )]
    fn charge(
        &self,
        db: &mut SqliteConnection,
        tenant: u64,
        req: &Charge,
        verbose: bool,
    ) -> Result<Outcome<Receipt>, AppError> {
        let _ = verbose;
        let id = record_execution(db, req.amount)?;
        Ok(Receipt {
            id,
            amount: req.amount,
        }
        .into())
    }

    /// `&mut self`.
    #[idempotent(key = key, name = "shapes.count")]
    fn count(&mut self, conn: &mut SqliteConnection, key: &str) -> Result<u32, AppError> {
        record_execution(conn, 0)?;
        self.calls += 1;
        Ok(self.calls)
    }

    /// `self: &Self` (clippy prefers `&self`; the shape is still supported).
    #[allow(clippy::needless_arbitrary_self_type)]
    #[idempotent(key = key, name = "shapes.typed_self")]
    fn typed_self(self: &Self, conn: &mut SqliteConnection, key: &str) -> Result<u32, AppError> {
        record_execution(conn, 0)?;
        Ok(self.calls)
    }
}

/// Stacked under another attribute macro, in either order.
#[tracing::instrument(skip(conn))]
#[idempotent(key = key, name = "shapes.traced_outer")]
fn traced_outer(conn: &mut SqliteConnection, key: &str, amount: i64) -> Result<i64, AppError> {
    record_execution(conn, amount).map_err(AppError::from)
}

#[idempotent(key = key, name = "shapes.traced_inner")]
#[tracing::instrument(skip(conn))]
fn traced_inner(conn: &mut SqliteConnection, key: &str, amount: i64) -> Result<i64, AppError> {
    record_execution(conn, amount).map_err(AppError::from)
}

/// A re-export of the library under another path (`crate = "..."`).
mod reexport {
    pub use diesel_idempotent::*;
}

#[idempotent(key = key, name = "shapes.renamed", crate = "crate::reexport")]
fn renamed(conn: &mut SqliteConnection, key: &str) -> Result<i64, AppError> {
    record_execution(conn, 2).map_err(AppError::from)
}

/// Local items named like the crates and types the expansion uses.
mod shadowing {
    #![allow(dead_code)]
    mod diesel_idempotent {}
    mod serde {}
    mod diesel {}
    mod core {}
    mod std {}
    struct Error;
    struct Call;
    struct Fingerprint;
    type Result<T> = ::core::result::Result<T, super::AppError>;

    #[::diesel_idempotent::idempotent(key = key, name = "shapes.shadowed")]
    pub(super) fn shadowed(conn: &mut ::diesel::SqliteConnection, key: &str) -> Result<i64> {
        super::record_execution(conn, 3).map_err(super::AppError::from)
    }
}

#[test]
fn free_function_replays_and_keeps_early_return() {
    let mut conn = database();
    assert!(matches!(free(&mut conn, "f-0", 0), Err(AppError::Empty)));
    let first = free(&mut conn, "f-1", 5).expect("first");
    assert_eq!(free(&mut conn, "f-1", 5).expect("replay"), first);
    assert!(matches!(
        free(&mut conn, "f-1", 6),
        Err(AppError::Idempotency(
            diesel_idempotent::Error::PayloadMismatch { .. }
        ))
    ));
    assert_eq!(executions(&mut conn), 1);
    let first = underscore(&mut conn, "u-1", 7).expect("first");
    assert_eq!(underscore(&mut conn, "u-1", 7).expect("replay"), first);
    assert!(
        underscore(&mut conn, "u-1", 8).is_err(),
        "the argument is fingerprinted"
    );
}

#[test]
fn generic_and_impl_trait_shapes() {
    let mut conn = database();
    let items = [Item(1), Item(2), Item(3)];
    assert_eq!(
        generic::<_, _, 2>(&mut conn, "g", &items).expect("first"),
        6
    );
    assert_eq!(
        generic::<_, _, 2>(&mut conn, "g", &items).expect("replay"),
        6
    );
    assert!(
        generic::<_, _, 2>(&mut conn, "g", &[Item(1), Item(2), Item(4)]).is_err(),
        "another payload"
    );
    let key = "i".to_owned();
    impl_trait(&mut conn, &key, &vec!["a", "b"]).expect("first");
    impl_trait(&mut conn, &key, &vec!["a", "b"]).expect("replay");
    assert_eq!(executions(&mut conn), 2);
}

#[test]
fn methods() {
    let mut conn = database();
    let mut service = Service {
        clock: ManualClock::at_unix_seconds(1_800_000_000),
        calls: 0,
    };
    let req = Charge {
        idempotency_key: "m-1".to_owned(),
        amount: 9,
    };
    let first = service.charge(&mut conn, 1, &req, true).expect("first");
    let again = service.charge(&mut conn, 1, &req, false).expect("replay");
    let other_tenant = service.charge(&mut conn, 2, &req, false).expect("tenant 2");
    assert!(!first.is_replayed() && again.is_replayed() && !other_tenant.is_replayed());
    assert_eq!(service.count(&mut conn, "c").expect("first"), 1);
    assert_eq!(service.count(&mut conn, "c").expect("replay"), 1);
    assert_eq!(service.calls, 1, "the replay did not run the body");
    assert_eq!(service.typed_self(&mut conn, "t").expect("typed self"), 1);
    assert_eq!(executions(&mut conn), 4);
}

#[test]
fn stacked_renamed_and_shadowed() {
    let mut conn = database();
    for _ in 0..2 {
        assert_eq!(traced_outer(&mut conn, "s", 4).expect("outer"), 4);
        assert_eq!(traced_inner(&mut conn, "s", 4).expect("inner"), 4);
        assert_eq!(renamed(&mut conn, "s").expect("renamed"), 2);
        assert_eq!(shadowing::shadowed(&mut conn, "s").expect("shadowed"), 3);
    }
    assert_eq!(executions(&mut conn), 4, "each ran once");
}
