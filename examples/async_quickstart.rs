//! Async quickstart: an idempotent payment endpoint on tokio and
//! diesel-async, over an embedded SQLite file (no server).
//!
//! ```text
//! cargo run --example async_quickstart --features async
//! ```
//!
//! Creates a payment, retries it with the same key (replayed), sends eight
//! concurrent duplicates (the body runs once), and drops a call mid-body
//! with `tokio::time::timeout` (nothing is stored; the retry that follows
//! runs the body). Connections come from a deadpool pool, as in a service.
//! SQLite goes through diesel-async's `SyncConnectionWrapper`; with
//! PostgreSQL the function would take `&mut AsyncPgConnection` and nothing
//! else would change.

use std::time::Duration;

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use diesel_async::RunQueryDsl;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_idempotent::{Outcome, idempotent};
use serde::{Deserialize, Serialize};

/// SQLite behind diesel-async's async interface.
type AsyncSqlite = SyncConnectionWrapper<SqliteConnection>;

diesel::table! {
    payments (id) {
        id -> Integer,
        customer -> Text,
        amount_cents -> BigInt,
    }
}

diesel::define_sql_function! {
    /// SQLite's id of the row just inserted on this connection.
    fn last_insert_rowid() -> Integer;
}

/// What the client sends.
#[derive(Debug, Clone, Serialize)]
struct NewPayment {
    customer: String,
    amount_cents: i64,
}

/// What the endpoint answers; stored as JSON and replayed on retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Payment {
    id: i32,
    customer: String,
    amount_cents: i64,
}

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Idempotency(#[from] diesel_idempotent::Error),
    #[error("database: {0}")]
    Database(#[from] diesel::result::Error),
}

/// Charges a customer once per idempotency key. `slow` stands for a body
/// that waits on something (a payment gateway) after its insert.
#[idempotent(key = idempotency_key, ttl = "24h", name = "payments.create", skip(slow))]
async fn create_payment(
    conn: &mut AsyncSqlite,
    idempotency_key: &str,
    req: &NewPayment,
    slow: Duration,
) -> Result<Outcome<Payment>, AppError> {
    diesel::insert_into(payments::table)
        .values((
            payments::customer.eq(&req.customer),
            payments::amount_cents.eq(req.amount_cents),
        ))
        .execute(conn)
        .await?;
    let payment = Payment {
        id: diesel::select(last_insert_rowid()).get_result(conn).await?,
        customer: req.customer.clone(),
        amount_cents: req.amount_cents,
    };
    println!("  (body ran: payment {} inserted)", payment.id);
    tokio::time::sleep(slow).await;
    Ok(payment.into())
}

/// Opens the SQLite file with a busy timeout, so that concurrent writers
/// wait for each other instead of failing.
async fn connect(url: String) -> ConnectionResult<AsyncSqlite> {
    use diesel_async::AsyncConnection;
    let mut conn = AsyncSqlite::establish(&url).await?;
    diesel::sql_query("PRAGMA busy_timeout = 10000")
        .execute(&mut conn)
        .await
        .map_err(ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join("diesel-idempotent-async-quickstart.sqlite3");
    let _ = std::fs::remove_file(&path);
    println!("database: {}", path.display());

    // The record table: the embedded migrations run on the blocking
    // connection inside the wrapper.
    let mut setup = connect(path.to_string_lossy().into_owned()).await?;
    let applied = setup
        .spawn_blocking(|conn| {
            diesel::connection::SimpleConnection::batch_execute(
                conn,
                "PRAGMA journal_mode = WAL; \
                 CREATE TABLE payments (id INTEGER PRIMARY KEY AUTOINCREMENT, \
                 customer TEXT NOT NULL, amount_cents BIGINT NOT NULL)",
            )?;
            Ok(diesel_idempotent::migrate(conn))
        })
        .await??;
    println!("migrations applied: {applied}");

    let mut config = ManagerConfig::default();
    config.custom_setup = Box::new(|url| Box::pin(connect(url.to_owned())));
    let manager = AsyncDieselConnectionManager::new_with_config(path.to_string_lossy(), config);
    let pool = Pool::builder(manager).max_size(8).build()?;

    let req = NewPayment {
        customer: "ada@example.com".to_owned(),
        amount_cents: 4_200,
    };
    let key = "6f1d0c2a-93b4-4e51-8d7a-2c9e0b4f1a77";

    println!("\n1. first request with key {key}");
    let mut conn = pool.get().await?;
    let first = create_payment(&mut conn, key, &req, Duration::ZERO).await?;
    println!(
        "   -> {:?}, replayed: {}",
        first.value(),
        first.is_replayed()
    );

    println!("\n2. the client retries with the same key");
    let retry = create_payment(&mut conn, key, &req, Duration::ZERO).await?;
    println!(
        "   -> {:?}, replayed: {}",
        retry.value(),
        retry.is_replayed()
    );
    drop(conn);

    println!("\n3. eight concurrent duplicates of a new request");
    let key2 = "0a8e5b3c-1f27-4d69-b0c4-7e2d9f6a5b13";
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (pool, req) = (pool.clone(), req.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            create_payment(&mut conn, key2, &req, Duration::from_millis(50))
                .await
                .map_err(|e| e.to_string())
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await??);
    }
    let fresh = answers.iter().filter(|a| !a.is_replayed()).count();
    println!(
        "   -> {} answers, {fresh} computed, the rest replayed",
        answers.len()
    );
    if fresh != 1 || answers.iter().any(|a| a.value() != answers[0].value()) {
        return Err("the duplicates did not get one payment".into());
    }

    println!("\n4. a call dropped mid-body (client gone), then retried");
    let key3 = "c4b2a1f0-5e6d-4c3b-9a8f-1e2d3c4b5a69";
    let mut conn = pool.get().await?;
    let dropped = tokio::time::timeout(
        Duration::from_millis(100),
        create_payment(&mut conn, key3, &req, Duration::from_secs(3600)),
    )
    .await;
    println!("   -> dropped: {}", dropped.is_err());
    drop(conn);
    let mut conn = pool.get().await?;
    let again = create_payment(&mut conn, key3, &req, Duration::ZERO).await?;
    println!(
        "   -> retry: {:?}, replayed: {}",
        again.value(),
        again.is_replayed()
    );

    let count: i64 =
        diesel_async::RunQueryDsl::get_result(payments::table.count(), &mut conn).await?;
    println!("\npayments in the database: {count}");
    if dropped.is_ok() || again.is_replayed() || count != 3 {
        return Err("the dropped call left something behind".into());
    }
    println!("exactly once, and nothing left by the dropped call.");
    Ok(())
}
