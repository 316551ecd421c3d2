//! getOrCreate: open a customer's bank account, once, on an embedded SQLite
//! file (no server).
//!
//! ```text
//! cargo run --example bank_accounts
//! ```
//!
//! A customer has at most one account per bank. `open_account` returns the
//! account if it exists and creates it otherwise, with
//! `#[idempotent(get_or_create = LOOKUP)]`:
//!
//! 1. the lookup (`find_account`, by the natural key `(customer_id,
//!    bank_id)`) runs first; when it finds the account, it is returned and
//!    the body does not run;
//! 2. otherwise the body validates the request and inserts the account in a
//!    transaction (a savepoint inside the caller's transaction);
//! 3. when that insert fails with a unique violation, another transaction
//!    created the account in the meantime: the insert is rolled back, the
//!    lookup runs again and the winner's account is returned.
//!
//! No idempotency record is stored: **the unique constraint on the lookup
//! columns is the only guard. WITHOUT `UNIQUE (customer_id, bank_id)` THIS IS
//! THE CLASSIC CHECK-THEN-INSERT RACE**: two concurrent calls both find
//! nothing, both insert, and the customer ends up with two accounts at the
//! same bank. Check the index with `diesel_idempotent::unique_index_covers`
//! (in a test, a debug assertion or at startup, as done below).
//!
//! The run opens an account, opens it again (a double-click: the same
//! account comes back), then lets two threads, each with its own connection,
//! open an account at a second bank at the same moment: both get the same
//! account. Exits non-zero when the customer does not end up with exactly
//! two accounts or when two answers for the same bank differ.

use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};

use diesel::prelude::*;
use diesel_idempotent::idempotent;

diesel::table! {
    customers (id) {
        id -> Integer,
        name -> Text,
    }
}

diesel::table! {
    accounts (id) {
        id -> Integer,
        customer_id -> Integer,
        bank_id -> Integer,
        iban -> Text,
    }
}

diesel::joinable!(accounts -> customers (customer_id));
diesel::allow_tables_to_appear_in_same_query!(customers, accounts);

diesel::define_sql_function! {
    /// SQLite's id of the row just inserted on this connection.
    fn last_insert_rowid() -> Integer;
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = customers)]
struct Customer {
    id: i32,
    name: String,
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = accounts)]
struct Account {
    id: i32,
    customer_id: i32,
    bank_id: i32,
    iban: String,
}

/// What the client sends.
#[derive(Debug)]
struct NewAccount {
    bank_id: i32,
    iban: String,
}

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error("database: {0}")]
    Database(#[from] diesel::result::Error),
    #[error("invalid request: {0}")]
    Invalid(&'static str),
}

/// Tells `get_or_create` which failures mean "another transaction created
/// the account first".
impl diesel_idempotent::UniqueViolation for AppError {
    fn is_unique_violation(&self) -> bool {
        match self {
            AppError::Database(e) => diesel_idempotent::UniqueViolation::is_unique_violation(e),
            AppError::Invalid(_) => false,
        }
    }
}

/// How many times the body of `open_account` ran (inserts attempted).
static BODY_RUNS: AtomicUsize = AtomicUsize::new(0);

/// The account of a customer at a bank, by its natural key.
fn find_account(
    conn: &mut SqliteConnection,
    customer_id: i32,
    bank_id: i32,
) -> QueryResult<Option<Account>> {
    accounts::table
        .filter(accounts::customer_id.eq(customer_id))
        .filter(accounts::bank_id.eq(bank_id))
        .select(Account::as_select())
        .first(conn)
        .optional()
}

/// Opens the customer's account at `params.bank_id`, or returns the one
/// that exists.
#[idempotent(get_or_create = find_account(conn, customer.id, params.bank_id))]
fn open_account(
    conn: &mut SqliteConnection,
    customer: &Customer,
    params: &NewAccount,
) -> Result<Account, AppError> {
    BODY_RUNS.fetch_add(1, Ordering::SeqCst);
    if params.iban.trim().is_empty() {
        return Err(AppError::Invalid("the IBAN is empty"));
    }
    println!(
        "  (body runs: inserting the account of {} at bank {})",
        customer.name, params.bank_id
    );
    diesel::insert_into(accounts::table)
        .values((
            accounts::customer_id.eq(customer.id),
            accounts::bank_id.eq(params.bank_id),
            accounts::iban.eq(&params.iban),
        ))
        .execute(conn)?;
    let id = diesel::select(last_insert_rowid()).get_result(conn)?;
    Ok(Account {
        id,
        customer_id: customer.id,
        bank_id: params.bank_id,
        iban: params.iban.clone(),
    })
}

/// A connection to the shared file that waits for the write lock instead of
/// failing with "database is locked".
fn connect(path: &str) -> Result<SqliteConnection, Box<dyn std::error::Error + Send + Sync>> {
    let mut conn = SqliteConnection::establish(path)?;
    diesel::sql_query("PRAGMA busy_timeout = 5000").execute(&mut conn)?;
    Ok(conn)
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let path = std::env::temp_dir().join("diesel-idempotent-bank-accounts.sqlite3");
    let _ = std::fs::remove_file(&path);
    let path = path.to_string_lossy().into_owned();
    let mut conn = connect(&path)?;
    println!("database: {path}");

    diesel::sql_query(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL)",
    )
    .execute(&mut conn)?;
    diesel::sql_query(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY AUTOINCREMENT, \
         customer_id INTEGER NOT NULL REFERENCES customers (id), \
         bank_id INTEGER NOT NULL, iban TEXT NOT NULL, \
         UNIQUE (customer_id, bank_id))",
    )
    .execute(&mut conn)?;

    diesel::insert_into(customers::table)
        .values(customers::name.eq("Ada Lovelace"))
        .execute(&mut conn)?;
    let customer: Customer = customers::table
        .filter(customers::name.eq("Ada Lovelace"))
        .select(Customer::as_select())
        .first(&mut conn)?;
    println!("customer: {customer:?}");

    let first_bank = NewAccount {
        bank_id: 1,
        iban: "DE89 3704 0044 0532 0130 00".to_owned(),
    };
    println!("\n1. open an account at bank {}", first_bank.bank_id);
    let opened = open_account(&mut conn, &customer, &first_bank)?;
    println!("   -> {opened:?}");

    println!("\n2. the double-click: open it again");
    let runs_before = BODY_RUNS.load(Ordering::SeqCst);
    let again = open_account(&mut conn, &customer, &first_bank)?;
    let body_ran = BODY_RUNS.load(Ordering::SeqCst) != runs_before;
    println!("   -> {again:?}, body ran: {body_ran}");

    let second_bank = NewAccount {
        bank_id: 2,
        iban: "FR76 3000 6000 0112 3456 7890 189".to_owned(),
    };
    println!(
        "\n3. two threads, two connections, open an account at bank {} at the same moment",
        second_bank.bank_id
    );
    let runs_before = BODY_RUNS.load(Ordering::SeqCst);
    let barrier = Barrier::new(2);
    let raced: Vec<Account> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(
                    || -> Result<Account, Box<dyn std::error::Error + Send + Sync>> {
                        let mut conn = connect(&path)?;
                        barrier.wait();
                        Ok(open_account(&mut conn, &customer, &second_bank)?)
                    },
                )
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(result) => result,
                Err(_) => Err("a racing thread panicked".into()),
            })
            .collect::<Result<Vec<_>, _>>()
    })?;
    for (i, account) in raced.iter().enumerate() {
        println!("   thread {i} -> {account:?}");
    }
    let race_runs = BODY_RUNS.load(Ordering::SeqCst) - runs_before;
    let how = if race_runs > 1 {
        "both lookups missed; the loser's insert hit the unique index, \
         so it rolled back and re-read the winner's account"
    } else {
        "the second lookup already found the first thread's account"
    };
    println!("   bodies run: {race_runs} ({how})");

    println!("\n4. the guard: a unique index on the lookup columns");
    let covered =
        diesel_idempotent::unique_index_covers(&mut conn, "accounts", &["customer_id", "bank_id"])?;
    println!("   unique index covers accounts (customer_id, bank_id): {covered}");
    if !covered {
        return Err("no unique index covers accounts (customer_id, bank_id): \
             open_account would be a check-then-insert race"
            .into());
    }

    let count: i64 = accounts::table
        .filter(accounts::customer_id.eq(customer.id))
        .count()
        .get_result(&mut conn)?;
    println!(
        "\n5. accounts of {} in the database: {count}",
        customer.name
    );
    if count != 2 || opened != again || raced.windows(2).any(|pair| pair[0] != pair[1]) {
        return Err("the accounts were not created exactly once per bank".into());
    }
    println!("one account per bank.");
    Ok(())
}
