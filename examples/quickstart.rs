//! Quickstart: an idempotent payment endpoint on an embedded SQLite file.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Creates a payment, retries it with the same idempotency key (the stored
//! result is replayed and the body does not run again), then reuses the key
//! with a different amount (rejected as a payload mismatch).
//!
//! No system SQLite is needed: this repository's dev-dependency on
//! `libsqlite3-sys` with its `bundled` feature compiles SQLite from source.

use diesel::prelude::*;
use diesel_idempotent::{Outcome, idempotent};
use serde::{Deserialize, Serialize};

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
#[derive(Debug, Serialize)]
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

/// Charges a customer once per idempotency key.
#[idempotent(key = idempotency_key, ttl = "24h", name = "payments.create")]
fn create_payment(
    conn: &mut SqliteConnection,
    idempotency_key: &str,
    req: &NewPayment,
) -> Result<Outcome<Payment>, AppError> {
    println!("  (body runs: inserting the payment)");
    diesel::insert_into(payments::table)
        .values((
            payments::customer.eq(&req.customer),
            payments::amount_cents.eq(req.amount_cents),
        ))
        .execute(conn)?;
    let id = diesel::select(last_insert_rowid()).get_result(conn)?;
    Ok(Payment {
        id,
        customer: req.customer.clone(),
        amount_cents: req.amount_cents,
    }
    .into())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join("diesel-idempotent-quickstart.sqlite3");
    let _ = std::fs::remove_file(&path);
    let mut conn = SqliteConnection::establish(&path.to_string_lossy())?;
    println!("database: {}", path.display());

    let applied = diesel_idempotent::migrate(&mut conn)?;
    diesel::sql_query(
        "CREATE TABLE payments (id INTEGER PRIMARY KEY AUTOINCREMENT, \
         customer TEXT NOT NULL, amount_cents BIGINT NOT NULL)",
    )
    .execute(&mut conn)?;
    println!("migrations applied: {applied}");

    let key = "9b2f7c1e-4d3a-4f8e-a6b1-0c5d2e7f9a31";
    let req = NewPayment {
        customer: "ada@example.com".to_owned(),
        amount_cents: 4_200,
    };

    println!("\n1. first request with key {key}");
    let first = create_payment(&mut conn, key, &req)?;
    println!(
        "   -> {:?}, replayed: {}",
        first.value(),
        first.is_replayed()
    );

    println!("\n2. the client retries with the same key and body");
    let retry = create_payment(&mut conn, key, &req)?;
    println!(
        "   -> {:?}, replayed: {}",
        retry.value(),
        retry.is_replayed()
    );

    println!("\n3. the same key with a different amount");
    let tampered = NewPayment {
        amount_cents: 9_900,
        ..req
    };
    match create_payment(&mut conn, key, &tampered) {
        Err(AppError::Idempotency(e @ diesel_idempotent::Error::PayloadMismatch { .. })) => {
            println!("   -> rejected: {e}");
        }
        other => return Err(format!("expected a payload mismatch, got {other:?}").into()),
    }

    let count: i64 = payments::table.count().get_result(&mut conn)?;
    println!("\npayments in the database: {count}");
    if count != 1 || first.value() != retry.value() || !retry.is_replayed() {
        return Err("the payment was not created exactly once".into());
    }
    println!("exactly once.");
    Ok(())
}
