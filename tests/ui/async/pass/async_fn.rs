//! `async fn` over diesel-async connections: free functions, methods,
//! generic connections, `hash`, `get_or_create` with an async lookup, `?` and
//! early return; the returned futures are `Send`.
#![deny(warnings)]

use diesel::sql_types::{BigInt, Text};
use diesel::{OptionalExtension, QueryResult, QueryableByName, SqliteConnection};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_idempotent::{AsyncIdempotentConnection, ManualClock, Outcome, idempotent};

#[derive(Debug)]
#[allow(dead_code)]
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

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Payment {
    pub id: i64,
}

#[derive(serde::Serialize)]
pub struct NewPayment {
    pub amount: i64,
}

#[derive(serde::Serialize)]
pub struct ClickEvent {
    pub user_id: i64,
    pub url: String,
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// Creates a payment once per key.
#[idempotent(key = key, ttl = "24h", name = "payments.create", abandon_after = "30s")]
#[must_use = "check the result"]
pub async fn create_payment(
    conn: &mut AsyncPgConnection,
    key: &str,
    req: &NewPayment,
) -> Result<Payment, AppError> {
    if req.amount == 0 {
        return Err(AppError::Empty);
    }
    let row: Id = diesel::sql_query("SELECT $1 AS id")
        .bind::<BigInt, _>(req.amount)
        .get_result(conn)
        .await?;
    Ok(Payment { id: row.id })
}

pub struct Service {
    pub clock: ManualClock,
}

impl Service {
    #[idempotent(
        conn = db,
        key = key.as_str(),
        scope = tenant,
        clock = self.clock,
        name = "svc.charge",
        ttl = "15m",
        abandon_after = "1m",
        on_conflict = "reject",
        max_response_bytes = 4096
    )]
    pub async fn charge(
        &self,
        db: &mut AsyncPgConnection,
        tenant: u64,
        key: String,
        amount: u32,
    ) -> Result<Outcome<u32>, AppError> {
        if amount == 0 {
            return Ok(0.into());
        }
        diesel::sql_query("SELECT 1").execute(db).await?;
        Ok(amount.into())
    }
}

/// Applies an event once per distinct event.
#[idempotent(hash, name = "events.apply")]
pub async fn apply<C: AsyncIdempotentConnection>(
    conn: &mut C,
    event_id: i64,
) -> Result<i64, AppError> {
    let _ = conn;
    Ok(event_id)
}

#[idempotent(hash(event.user_id, event.url), name = "analytics.click", mode = "optimistic")]
pub async fn record_click(
    conn: &mut AsyncPgConnection,
    event: &ClickEvent,
) -> Result<(), AppError> {
    diesel::sql_query("INSERT INTO clicks (user_id, url) VALUES ($1, $2)")
        .bind::<BigInt, _>(event.user_id)
        .bind::<Text, _>(&event.url)
        .execute(conn)
        .await?;
    Ok(())
}

async fn find_user(conn: &mut AsyncPgConnection, email: &str) -> QueryResult<Option<i64>> {
    diesel::sql_query("SELECT id FROM users WHERE email = $1")
        .bind::<Text, _>(email)
        .get_result::<Id>(conn)
        .await
        .optional()
        .map(|row| row.map(|r| r.id))
}

/// Returns the user with this e-mail, creating it once.
#[idempotent(get_or_create = find_user(conn, email))]
pub async fn user_by_email(conn: &mut AsyncPgConnection, email: &str) -> QueryResult<i64> {
    diesel::sql_query("INSERT INTO users (email) VALUES ($1)")
        .bind::<Text, _>(email)
        .execute(conn)
        .await?;
    find_user(conn, email)
        .await?
        .ok_or(diesel::result::Error::NotFound)
}

fn assert_send<T: Send>(_: T) {}

#[allow(dead_code)]
fn futures_are_send(conn: &mut AsyncPgConnection, service: &Service) {
    assert_send(create_payment(conn, "k", &NewPayment { amount: 1 }));
    assert_send(service.charge(conn, 7, "k".to_owned(), 1));
    assert_send(apply(conn, 1));
    assert_send(record_click(
        conn,
        &ClickEvent {
            user_id: 1,
            url: "/".to_owned(),
        },
    ));
    assert_send(user_by_email(conn, "ada@example.com"));
}

#[allow(dead_code)]
fn generic_futures_are_send<C: AsyncIdempotentConnection>(conn: &mut C) {
    assert_send(apply(conn, 1));
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    use diesel::Connection;

    let mut sync = SqliteConnection::establish(":memory:").unwrap();
    diesel_idempotent::migrate(&mut sync).unwrap();
    let mut conn = SyncConnectionWrapper::new(sync);
    assert_eq!(apply(&mut conn, 5).await.unwrap(), 5);
    assert_eq!(apply(&mut conn, 5).await.unwrap(), 5);
}
