//! What `#[idempotent]` costs: every case times the wrapped function next to
//! the same body unwrapped, in the same run, on SQLite (a file in WAL mode)
//! and on PostgreSQL.
//!
//! ```text
//! cargo bench --bench overhead                     # SQLite only
//! DIESEL_IDEMPOTENT_PG_URL=postgres://user@host/db \
//!     cargo bench --all-features --bench overhead  # SQLite and PostgreSQL
//! # one backend or one case, shorter: Criterion's filter and flags
//! cargo bench --all-features --bench overhead -- postgres/ --warm-up-time 1 --measurement-time 2
//! ./scripts/bench.sh                               # against the SQL floor (pgbench)
//! ```
//!
//! The body is one INSERT and its commit. Its unwrapped twin runs it in
//! `conn.transaction(..)`, a transaction of its own like the wrapped call's.
//! The body's statements are prepared statements that Diesel caches (the
//! DSL on PostgreSQL, a fixed-text query on SQLite, whose Diesel build here
//! has no `RETURNING`): `diesel::sql_query` is never cached, so the server
//! would parse and plan the body on every call, which `pgbench -M prepared`
//! (the SQL floor of `scripts/bench.sh`) does once.
//!
//! Cases, each on its own namespace's function:
//!
//! - `first_call` (a fresh key each iteration), `replay`, `mismatch`: the
//!   default, `mode = "claim_first"`, `replay = "in_transaction"`;
//! - `optimistic_first_call`, `optimistic_replay`: `mode = "optimistic"`
//!   (a replay runs the body and rolls it back);
//! - `read_first_replay` (one read answers it), `read_first_first_call`
//!   (the read misses, then the claim-first call): `replay = "read_first"`;
//! - `hash_first_call`, `hash_replay`, `hash_read_first_replay`: the `hash`
//!   pattern;
//! - `get_or_create_hit` and `get_or_create_miss`;
//! - the purge of 100 000 expired records in batches of 1000.
//!
//! Before the timed cases each backend prints the statements of one call of
//! every case, wrapped and unwrapped, outside and inside a transaction of
//! the caller's (counted with Diesel's instrumentation), and on PostgreSQL
//! the round trips they took (counted on the wire, by a loopback proxy in
//! front of the server, on a connection whose statement cache is warm).
//! With `DIESEL_IDEMPOTENT_BENCH_COUNTS=<file>` the same table is also
//! written to `<file>`, tab-separated, for `scripts/bench.sh`. Then it prints
//! how long each 1000-row purge batch ran: each batch is a statement and a
//! transaction of its own, so no batch holds its locks longer than that.
//!
//! `DIESEL_IDEMPOTENT_BENCH_QUICK=1` is the short run (CI): fewer samples,
//! a shorter warm-up and measurement (Criterion's own flags still win), and
//! no purge.
//!
//! SQLite runs with `synchronous = NORMAL` (commits are not fsynced, the
//! usual WAL setting) and the PostgreSQL of `scripts/test.sh` with
//! `fsync = off`: commits are cheap, so the ratios show the library's extra
//! statements at their most expensive relative to the body; with durable
//! commits the flush weighs on both sides.
//!
//! Targets, reported in BENCHMARKS.md and by `scripts/bench.sh`, not
//! asserted: on PostgreSQL a read-first replay at most 0.5x the unwrapped
//! body, an in-transaction replay at most 1.0x, an optimistic first call at
//! most 1.5x, every path within 10% of the ratio of its statements run
//! bare (`pgbench -M prepared`); a purge that never holds a lock for longer
//! than one batch.

use std::hint::black_box;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use diesel::connection::{InstrumentationEvent, SimpleConnection};
use diesel::prelude::*;
use diesel_idempotent::{Error, IdempotentConnection, ManualClock, idempotent};
use serde::Serialize;

/// The error type of the benchmarked functions.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error(transparent)]
    Idempotency(#[from] Error),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
}

/// The event the `hash` pattern deduplicates.
#[derive(Debug, Clone, Serialize)]
struct ClickEvent {
    user_id: u64,
    url: String,
    occurred_at: i64,
}

impl ClickEvent {
    fn new(occurred_at: i64) -> Self {
        ClickEvent {
            user_id: 42,
            url: "https://example.com/pricing".to_owned(),
            occurred_at,
        }
    }
}

diesel::table! {
    /// The body's table.
    payments (id) {
        id -> BigInt,
        amount -> BigInt,
    }
}

diesel::table! {
    /// getOrCreate's table, unique on `email`.
    users (id) {
        id -> BigInt,
        email -> Text,
    }
}

/// A statement of fixed text around one bind parameter, cached by Diesel
/// like the DSL's (a static query id): SQLite's `INSERT .. RETURNING`, which
/// this build's Diesel cannot write.
macro_rules! sqlite_statement {
    ($name:ident { $field:ident: $ty:ty as $sql_type:ty } -> $out:ty = $before:literal, $after:literal) => {
        struct $name<'a> {
            $field: &'a $ty,
        }

        impl diesel::query_builder::QueryId for $name<'_> {
            type QueryId = $name<'static>;
            const HAS_STATIC_QUERY_ID: bool = true;
        }

        impl diesel::query_builder::Query for $name<'_> {
            type SqlType = $out;
        }

        impl diesel::query_builder::QueryFragment<diesel::sqlite::Sqlite> for $name<'_> {
            fn walk_ast<'b>(
                &'b self,
                mut out: diesel::query_builder::AstPass<'_, 'b, diesel::sqlite::Sqlite>,
            ) -> QueryResult<()> {
                out.push_sql($before);
                out.push_bind_param::<$sql_type, _>(self.$field)?;
                out.push_sql($after);
                Ok(())
            }
        }

        impl RunQueryDsl<SqliteConnection> for $name<'_> {}
    };
}

/// How the `pay` function under test is annotated.
#[derive(Debug, Clone, Copy)]
enum Pay {
    /// `#[idempotent(key = key, name = "bench.pay", ttl = "24h")]`
    ClaimFirst,
    /// The same with `mode = "optimistic"`, namespace `bench.pay_optimistic`.
    Optimistic,
    /// The same with `replay = "read_first"`, namespace `bench.pay_read_first`.
    ReadFirst,
}

/// How the `hash` function under test is annotated.
#[derive(Debug, Clone, Copy)]
enum Click {
    /// `#[idempotent(hash, name = "bench.record_click", ttl = "24h")]`
    InTransaction,
    /// The same with `replay = "read_first"`, namespace
    /// `bench.record_click_read_first`.
    ReadFirst,
}

/// What the driver needs from a backend: the functions under test, wrapped
/// and unwrapped, and the backend's DDL.
trait BenchConn: IdempotentConnection + 'static {
    /// The backend's name in group names and output.
    const NAME: &'static str;
    /// `payments` (the body's table) and `users` (unique on `email`).
    const TABLES: &'static str;
    /// Empties every table, so each timed function starts from the same
    /// state (the tables grow by thousands of rows per second otherwise).
    const RESET: &'static str;
    /// Run after seeding the expired records, outside the timing
    /// (PostgreSQL: VACUUM ANALYZE, as autovacuum would have before a purge).
    const AFTER_SEED: Option<&'static str>;

    fn pay(&mut self, how: Pay, key: &str, amount: i64) -> Result<i64, BenchError>;
    fn pay_unwrapped(&mut self, key: &str, amount: i64) -> Result<i64, BenchError>;
    fn record_click(&mut self, how: Click, event: &ClickEvent) -> Result<i64, BenchError>;
    fn record_click_unwrapped(&mut self, event: &ClickEvent) -> Result<i64, BenchError>;
    fn user(&mut self, email: &str) -> QueryResult<i64>;
    fn user_unwrapped(&mut self, email: &str) -> QueryResult<i64>;
    /// The purge's reference: every expired record in one DELETE.
    fn delete_expired_at_once(&mut self) -> QueryResult<usize>;
}

/// Defines the benchmarked functions for one concrete connection type around
/// the backend's body statements (`insert_payment`, `insert_user`) and
/// implements [`BenchConn`] with them.
macro_rules! backend {
    (
        mod $module:ident for $conn:ident {
            name: $name:literal,
            tables: $tables:expr,
            reset: $reset:expr,
            after_seed: $after_seed:expr,
            statements: { $($statement:item)* } $(,)?
        }
    ) => {
        mod $module {
            use super::*;

            $($statement)*

            fn find_user(conn: &mut $conn, email: &str) -> QueryResult<Option<i64>> {
                users::table
                    .filter(users::email.eq(email))
                    .select(users::id)
                    .first(conn)
                    .optional()
            }

            #[idempotent(key = key, name = "bench.pay", ttl = "24h")]
            fn pay(conn: &mut $conn, key: &str, amount: i64) -> Result<i64, BenchError> {
                Ok(insert_payment(conn, amount)?)
            }

            #[idempotent(key = key, name = "bench.pay_optimistic", ttl = "24h", mode = "optimistic")]
            fn pay_optimistic(
                conn: &mut $conn,
                key: &str,
                amount: i64,
            ) -> Result<i64, BenchError> {
                Ok(insert_payment(conn, amount)?)
            }

            #[idempotent(key = key, name = "bench.pay_read_first", ttl = "24h", replay = "read_first")]
            fn pay_read_first(
                conn: &mut $conn,
                key: &str,
                amount: i64,
            ) -> Result<i64, BenchError> {
                Ok(insert_payment(conn, amount)?)
            }

            fn pay_unwrapped(conn: &mut $conn, key: &str, amount: i64) -> Result<i64, BenchError> {
                let _ = key;
                conn.transaction(|conn| Ok(insert_payment(conn, amount)?))
            }

            #[idempotent(hash, name = "bench.record_click", ttl = "24h")]
            fn record_click(conn: &mut $conn, event: &ClickEvent) -> Result<i64, BenchError> {
                Ok(insert_payment(conn, event.occurred_at)?)
            }

            #[idempotent(hash, name = "bench.record_click_read_first", ttl = "24h", replay = "read_first")]
            fn record_click_read_first(
                conn: &mut $conn,
                event: &ClickEvent,
            ) -> Result<i64, BenchError> {
                Ok(insert_payment(conn, event.occurred_at)?)
            }

            fn record_click_unwrapped(
                conn: &mut $conn,
                event: &ClickEvent,
            ) -> Result<i64, BenchError> {
                conn.transaction(|conn| Ok(insert_payment(conn, event.occurred_at)?))
            }

            #[idempotent(get_or_create = find_user(conn, email))]
            fn user(conn: &mut $conn, email: &str) -> QueryResult<i64> {
                insert_user(conn, email)
            }

            fn user_unwrapped(conn: &mut $conn, email: &str) -> QueryResult<i64> {
                conn.transaction(|conn| insert_user(conn, email))
            }

            impl BenchConn for $conn {
                const NAME: &'static str = $name;
                const TABLES: &'static str = $tables;
                const RESET: &'static str = $reset;
                const AFTER_SEED: Option<&'static str> = $after_seed;

                fn pay(&mut self, how: Pay, key: &str, amount: i64) -> Result<i64, BenchError> {
                    match how {
                        Pay::ClaimFirst => pay(self, key, amount),
                        Pay::Optimistic => pay_optimistic(self, key, amount),
                        Pay::ReadFirst => pay_read_first(self, key, amount),
                    }
                }
                fn pay_unwrapped(&mut self, key: &str, amount: i64) -> Result<i64, BenchError> {
                    pay_unwrapped(self, key, amount)
                }
                fn record_click(
                    &mut self,
                    how: Click,
                    event: &ClickEvent,
                ) -> Result<i64, BenchError> {
                    match how {
                        Click::InTransaction => record_click(self, event),
                        Click::ReadFirst => record_click_read_first(self, event),
                    }
                }
                fn record_click_unwrapped(
                    &mut self,
                    event: &ClickEvent,
                ) -> Result<i64, BenchError> {
                    record_click_unwrapped(self, event)
                }
                fn user(&mut self, email: &str) -> QueryResult<i64> {
                    user(self, email)
                }
                fn user_unwrapped(&mut self, email: &str) -> QueryResult<i64> {
                    user_unwrapped(self, email)
                }
                fn delete_expired_at_once(&mut self) -> QueryResult<usize> {
                    diesel::sql_query(PURGE_AT_ONCE).execute(self)
                }
            }
        }
    };
}

backend! {
    mod sqlite for SqliteConnection {
        name: "sqlite",
        tables: "CREATE TABLE payments (id INTEGER PRIMARY KEY AUTOINCREMENT, \
                 amount BIGINT NOT NULL); \
                 CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, \
                 email TEXT NOT NULL UNIQUE);",
        reset: "DELETE FROM payments; DELETE FROM users; DELETE FROM idempotency_records; \
                PRAGMA wal_checkpoint(TRUNCATE);",
        after_seed: None,
        statements: {
            sqlite_statement!(InsertPayment { amount: i64 as diesel::sql_types::BigInt }
                -> diesel::sql_types::BigInt
                = "INSERT INTO payments (amount) VALUES (", ") RETURNING id");
            sqlite_statement!(InsertUser { email: str as diesel::sql_types::Text }
                -> diesel::sql_types::BigInt
                = "INSERT INTO users (email) VALUES (", ") RETURNING id");

            fn insert_payment(conn: &mut SqliteConnection, amount: i64) -> QueryResult<i64> {
                InsertPayment { amount: &amount }.get_result(conn)
            }

            fn insert_user(conn: &mut SqliteConnection, email: &str) -> QueryResult<i64> {
                InsertUser { email }.get_result(conn)
            }
        },
    }
}

#[cfg(feature = "postgres")]
backend! {
    mod postgres for PgConnection {
        name: "postgres",
        tables: "CREATE TABLE payments (id BIGSERIAL PRIMARY KEY, amount BIGINT NOT NULL); \
                 CREATE TABLE users (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL UNIQUE);",
        reset: "TRUNCATE payments, users, idempotency_records",
        after_seed: Some("VACUUM ANALYZE idempotency_records"),
        statements: {
            fn insert_payment(conn: &mut PgConnection, amount: i64) -> QueryResult<i64> {
                diesel::insert_into(payments::table)
                    .values(payments::amount.eq(amount))
                    .returning(payments::id)
                    .get_result(conn)
            }

            fn insert_user(conn: &mut PgConnection, email: &str) -> QueryResult<i64> {
                diesel::insert_into(users::table)
                    .values(users::email.eq(email))
                    .returning(users::id)
                    .get_result(conn)
            }
        },
    }
}

/// The key stored once in setup, replayed (and mismatched) by the cases.
const REPLAY_KEY: &str = "bench-replay";
const REPLAY_AMOUNT: i64 = 1200;
/// The event stored once in setup and redelivered by `hash_replay`.
const REPLAY_EVENT_AT: i64 = -1;
/// The user that exists for `get_or_create_hit`.
const HIT_EMAIL: &str = "existing@example.com";

/// A number never used before in this process: fresh keys, events, e-mails.
fn fresh() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn fresh_event() -> ClickEvent {
    ClickEvent::new(i64::try_from(fresh()).unwrap_or(i64::MAX))
}

/// A first call: a key never used before.
fn first_call<C: BenchConn>(c: &mut C, how: Pay) {
    black_box(
        c.pay(how, &format!("first-{}", fresh()), 1)
            .expect("first call"),
    );
}

/// A repeat of the call stored in setup.
fn replay<C: BenchConn>(c: &mut C, how: Pay) {
    black_box(c.pay(how, REPLAY_KEY, REPLAY_AMOUNT).expect("replay"));
}

/// The unwrapped twin of every `pay` case: the body in a transaction.
fn pay_body<C: BenchConn>(c: &mut C) {
    black_box(
        c.pay_unwrapped(&format!("first-{}", fresh()), 1)
            .expect("body"),
    );
}

/// A redelivery of the event stored in setup.
fn redelivery<C: BenchConn>(c: &mut C, how: Click) {
    let event = ClickEvent::new(REPLAY_EVENT_AT);
    black_box(c.record_click(how, &event).expect("redelivery"));
}

/// The unwrapped twin of every `hash` case.
fn click_body<C: BenchConn>(c: &mut C) {
    black_box(c.record_click_unwrapped(&fresh_event()).expect("body"));
}

/// The unwrapped twin of getOrCreate: it cannot find an existing row, it
/// inserts one (a fresh e-mail, or the unique constraint would reject it).
fn user_body<C: BenchConn>(c: &mut C) {
    black_box(
        c.user_unwrapped(&format!("u-{}@example.com", fresh()))
            .expect("body"),
    );
}

/// One benchmarked situation: the wrapped call and its unwrapped twin.
struct Case<C> {
    name: &'static str,
    wrapped: fn(&mut C),
    unwrapped: fn(&mut C),
}

fn cases<C: BenchConn>() -> Vec<Case<C>> {
    vec![
        Case {
            name: "first_call",
            wrapped: |c| first_call(c, Pay::ClaimFirst),
            unwrapped: pay_body,
        },
        Case {
            name: "replay",
            wrapped: |c| replay(c, Pay::ClaimFirst),
            unwrapped: pay_body,
        },
        Case {
            name: "mismatch",
            wrapped: |c| {
                let result = c.pay(Pay::ClaimFirst, REPLAY_KEY, REPLAY_AMOUNT + 1);
                assert!(
                    matches!(
                        result,
                        Err(BenchError::Idempotency(Error::PayloadMismatch { .. }))
                    ),
                    "expected a payload mismatch, got {result:?}"
                );
            },
            unwrapped: pay_body,
        },
        Case {
            name: "optimistic_first_call",
            wrapped: |c| first_call(c, Pay::Optimistic),
            unwrapped: pay_body,
        },
        Case {
            name: "optimistic_replay",
            wrapped: |c| replay(c, Pay::Optimistic),
            unwrapped: pay_body,
        },
        Case {
            name: "read_first_replay",
            wrapped: |c| replay(c, Pay::ReadFirst),
            unwrapped: pay_body,
        },
        Case {
            name: "read_first_first_call",
            wrapped: |c| first_call(c, Pay::ReadFirst),
            unwrapped: pay_body,
        },
        Case {
            name: "hash_first_call",
            wrapped: |c| {
                black_box(
                    c.record_click(Click::InTransaction, &fresh_event())
                        .expect("first delivery"),
                );
            },
            unwrapped: click_body,
        },
        Case {
            name: "hash_replay",
            wrapped: |c| redelivery(c, Click::InTransaction),
            unwrapped: click_body,
        },
        Case {
            name: "hash_read_first_replay",
            wrapped: |c| redelivery(c, Click::ReadFirst),
            unwrapped: click_body,
        },
        Case {
            name: "get_or_create_hit",
            wrapped: |c| {
                black_box(c.user(HIT_EMAIL).expect("existing user"));
            },
            unwrapped: user_body,
        },
        Case {
            name: "get_or_create_miss",
            wrapped: |c| {
                black_box(
                    c.user(&format!("u-{}@example.com", fresh()))
                        .expect("new user"),
                );
            },
            unwrapped: user_body,
        },
    ]
}

/// Creates the tables.
fn create_tables<C: BenchConn>(conn: &mut C) {
    diesel_idempotent::migrate(conn).expect("embedded migrations");
    conn.batch_execute(C::TABLES).expect("bench tables");
}

/// Empties the tables and stores the rows the replay and hit cases find.
fn reset<C: BenchConn>(conn: &mut C) {
    conn.batch_execute(C::RESET).expect("empty the tables");
    for how in [Pay::ClaimFirst, Pay::Optimistic, Pay::ReadFirst] {
        let first = conn
            .pay(how, REPLAY_KEY, REPLAY_AMOUNT)
            .expect("store the replay key");
        let again = conn.pay(how, REPLAY_KEY, REPLAY_AMOUNT).expect("replay");
        assert_eq!(first, again, "{how:?}: the second call replays the first");
    }
    let event = ClickEvent::new(REPLAY_EVENT_AT);
    for how in [Click::InTransaction, Click::ReadFirst] {
        let first = conn.record_click(how, &event).expect("store the event");
        let again = conn.record_click(how, &event).expect("redelivery");
        assert_eq!(
            first, again,
            "{how:?}: the redelivery replays the first delivery"
        );
    }
    let first = conn.user(HIT_EMAIL).expect("create the user");
    let again = conn.user(HIT_EMAIL).expect("find the user");
    assert_eq!(first, again, "getOrCreate finds the user it created");
}
/// A statement as Diesel's instrumentation saw it: its text and how long it
/// ran (from `StartQuery` to `FinishQuery`).
struct Statement {
    sql: String,
    took: Option<Duration>,
}

/// Runs `f` and returns the statements it sent.
fn statements<C: BenchConn>(conn: &mut C, f: impl FnOnce(&mut C)) -> Vec<Statement> {
    let log: Arc<Mutex<Vec<(Statement, Instant)>>> = Arc::default();
    let sink = Arc::clone(&log);
    conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
        let Ok(mut log) = sink.lock() else { return };
        match event {
            InstrumentationEvent::StartQuery { query, .. } => log.push((
                Statement {
                    sql: query.to_string(),
                    took: None,
                },
                Instant::now(),
            )),
            InstrumentationEvent::FinishQuery { .. } => {
                if let Some((statement, started)) = log.last_mut() {
                    statement.took = Some(started.elapsed());
                }
            }
            _ => {}
        }
    });
    f(conn);
    conn.set_instrumentation(diesel::connection::get_default_instrumentation());
    let mut log = log.lock().expect("statement log");
    log.drain(..).map(|(statement, _)| statement).collect()
}

/// A statement in a few words: its verb and table, or its first two words;
/// a `WITH` statement as its inner statement's.
fn shape(sql: &str) -> String {
    let clean = sql.replace(['`', '"'], "");
    if clean
        .split_whitespace()
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case("WITH"))
        && let Some((_, inner)) = clean.split_once('(')
    {
        return format!("WITH ({}) SELECT", shape(inner));
    }
    let words: Vec<&str> = clean.split_whitespace().collect();
    let after = |word: &str| {
        words
            .iter()
            .position(|w| w.eq_ignore_ascii_case(word))
            .and_then(|i| words.get(i + 1))
    };
    let table = match words.first().map(|w| w.to_ascii_uppercase()).as_deref() {
        Some("INSERT") => after("INTO"),
        Some("UPDATE") => words.get(1),
        Some("SELECT" | "DELETE") => after("FROM"),
        _ => None,
    };
    match (words.first(), table) {
        (Some(verb), Some(table)) => format!("{verb} {table}"),
        _ => words.iter().take(2).copied().collect::<Vec<_>>().join(" "),
    }
}

/// Prints the statements of one call of every case, wrapped and unwrapped,
/// outside and inside a transaction of the caller's, with the round trips
/// they took when `round_trips` counts them; writes the same rows to the
/// file named by `DIESEL_IDEMPOTENT_BENCH_COUNTS` when it is set.
///
/// Each function is called once before the counted call, so the counted one
/// finds its prepared statements cached, as every call after a
/// connection's first does.
/// `round_trips` reads a counter of the connection's round trips
/// (PostgreSQL: see [`wire`]).
fn print_statement_counts<C: BenchConn>(conn: &mut C, round_trips: Option<&dyn Fn() -> u64>) {
    println!(
        "[{}] statements per call (Diesel instrumentation; added = wrapped - unwrapped{})",
        C::NAME,
        if round_trips.is_some() {
            "; round trips counted on the wire"
        } else {
            ""
        }
    );
    println!(
        "  {:<40} {:>7} {:>9} {:>5} {:>11}  wrapped call's statements",
        "case", "wrapped", "unwrapped", "added", "round trips"
    );
    let mut tsv = String::new();
    for case in cases::<C>() {
        for in_tx in [false, true] {
            let run = |conn: &mut C, f: fn(&mut C)| {
                let call = |conn: &mut C| {
                    if in_tx {
                        conn.transaction(|conn| {
                            f(conn);
                            QueryResult::Ok(())
                        })
                        .expect("caller transaction");
                    } else {
                        f(conn);
                    }
                };
                call(conn);
                let before = round_trips.map(|count| count());
                let sent = statements(conn, call);
                let trips = round_trips
                    .zip(before)
                    .map(|(count, before)| count() - before);
                (sent, trips)
            };
            let (wrapped, wrapped_trips) = run(conn, case.wrapped);
            let (unwrapped, unwrapped_trips) = run(conn, case.unwrapped);
            let label = if in_tx {
                format!("{} (in caller tx)", case.name)
            } else {
                case.name.to_owned()
            };
            let shapes: Vec<String> = wrapped.iter().map(|s| shape(&s.sql)).collect();
            let trips = match (wrapped_trips, unwrapped_trips) {
                (Some(w), Some(u)) => format!("{w} / {u}"),
                _ => "-".to_owned(),
            };
            println!(
                "  {label:<40} {:>7} {:>9} {:>+5} {trips:>11}  {}",
                wrapped.len(),
                unwrapped.len(),
                wrapped.len() as i64 - unwrapped.len() as i64,
                shapes.join(" | ")
            );
            let number = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
            tsv.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                C::NAME,
                case.name,
                if in_tx { "caller_tx" } else { "own_tx" },
                wrapped.len(),
                unwrapped.len(),
                number(wrapped_trips),
                number(unwrapped_trips),
                shapes.join(" | ")
            ));
        }
    }
    if let Ok(path) = std::env::var(COUNTS_VAR) {
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(tsv.as_bytes()));
        if let Err(e) = written {
            panic!("cannot write the statement counts to {COUNTS_VAR}={path}: {e}");
        }
    }
}

/// Where the statement counts are also written, tab-separated: backend,
/// case, `own_tx` or `caller_tx`, the wrapped and the unwrapped call's
/// statements, then their round trips (`-` where not counted), then the
/// wrapped call's statements in a few words.
const COUNTS_VAR: &str = "DIESEL_IDEMPOTENT_BENCH_COUNTS";

/// Set (to anything but `0` or empty) for the short run.
const QUICK_VAR: &str = "DIESEL_IDEMPOTENT_BENCH_QUICK";

fn quick() -> bool {
    std::env::var(QUICK_VAR).is_ok_and(|v| !v.is_empty() && v != "0")
}

const PURGE_ROWS: usize = 100_000;
const PURGE_BATCH: usize = 1_000;
/// The purge's "now": after every seeded record's expiry (2000-01-02) and
/// long before the expiry of the records the other cases write with the
/// system clock.
const PURGE_NOW_UNIX: i64 = 978_307_200; // 2001-01-01 00:00:00 UTC
/// The purge's reference: one unbounded DELETE at the same "now".
const PURGE_AT_ONCE: &str =
    "DELETE FROM idempotency_records WHERE expires_at <= '2001-01-01 00:00:00'";

/// `PURGE_ROWS` expired records as multi-row INSERTs of `PURGE_BATCH` rows,
/// expiring over one day so the purge's `ORDER BY expires_at` has work.
fn seed_statements() -> Vec<String> {
    use std::fmt::Write as _;
    let fingerprint = format!("v1:{}", "0".repeat(64));
    (0..PURGE_ROWS / PURGE_BATCH)
        .map(|chunk| {
            let mut sql = String::from(
                "INSERT INTO idempotency_records \
                 (namespace, scope, key, fingerprint, response, created_at, expires_at) VALUES ",
            );
            for i in chunk * PURGE_BATCH..(chunk + 1) * PURGE_BATCH {
                let s = i % 86_400;
                let _ = write!(
                    sql,
                    "{}('bench.purge', '', 'expired-{i}', '{fingerprint}', '{{\"id\":{i}}}', \
                     '2000-01-01 00:00:00', '2000-01-02 {:02}:{:02}:{:02}')",
                    if i % PURGE_BATCH == 0 { "" } else { ", " },
                    s / 3600,
                    s / 60 % 60,
                    s % 60,
                );
            }
            sql
        })
        .collect()
}

/// Inserts the expired records, in one transaction.
fn seed<C: BenchConn>(conn: &mut C, statements: &[String]) {
    conn.transaction(|conn| {
        statements
            .iter()
            .try_for_each(|sql| conn.batch_execute(sql))
    })
    .expect("seed expired records");
    if let Some(sql) = C::AFTER_SEED {
        conn.batch_execute(sql).expect("after seeding");
    }
}

fn purge<C: BenchConn>(conn: &mut C) -> usize {
    let clock = ManualClock::at_unix_seconds(PURGE_NOW_UNIX);
    diesel_idempotent::purge_expired_with_clock(conn, PURGE_BATCH, &clock).expect("purge")
}

/// Purges once with every statement timed: each batch is one DELETE outside
/// any transaction, so the longest batch is the longest a lock is held.
fn print_purge_batches<C: BenchConn>(conn: &mut C, seeds: &[String]) {
    seed(conn, seeds);
    let mut deleted = 0;
    let started = Instant::now();
    let log = statements(conn, |conn| deleted = purge(conn));
    let total = started.elapsed();
    assert_eq!(deleted, PURGE_ROWS, "every seeded record was expired");
    let mut batches: Vec<Duration> = log.iter().filter_map(|s| s.took).collect();
    batches.sort();
    let others: Vec<String> = log
        .iter()
        .filter(|s| !s.sql.trim_start().starts_with("DELETE"))
        .map(|s| shape(&s.sql))
        .collect();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "[{}] purge of {PURGE_ROWS} expired records in batches of {PURGE_BATCH}: \
         {} DELETE statements, other statements: {}; total {:.1} ms ({:.0} rows/s); \
         per batch: median {:.2} ms, longest {:.2} ms",
        C::NAME,
        log.len() - others.len(),
        if others.is_empty() {
            "none (each batch commits on its own)".to_owned()
        } else {
            others.join(" | ")
        },
        ms(total),
        PURGE_ROWS as f64 / total.as_secs_f64(),
        ms(batches[batches.len() / 2]),
        ms(batches[batches.len() - 1]),
    );
}

/// Every case's wrapped and unwrapped function, then the purge. The
/// statement counts run on `counting` when given (a connection to the same
/// database whose round trips are counted), else on `conn`.
fn bench_backend<C: BenchConn>(
    c: &mut Criterion,
    conn: &mut C,
    counting: Option<(&mut C, &dyn Fn() -> u64)>,
) {
    create_tables(conn);
    reset(conn);
    match counting {
        Some((counted, round_trips)) => print_statement_counts(counted, Some(round_trips)),
        None => print_statement_counts(conn, None),
    }
    let seeds = if quick() {
        None
    } else {
        let seeds = seed_statements();
        reset(conn);
        print_purge_batches(conn, &seeds);
        Some(seeds)
    };

    for case in cases::<C>() {
        let mut group = c.benchmark_group(format!("{}/{}", C::NAME, case.name));
        group.throughput(Throughput::Elements(1));
        reset(conn);
        group.bench_function("wrapped", |b| b.iter(|| (case.wrapped)(conn)));
        reset(conn);
        group.bench_function("unwrapped", |b| b.iter(|| (case.unwrapped)(conn)));
        group.finish();
    }

    let Some(seeds) = seeds else {
        println!("[{}] purge skipped ({QUICK_VAR} is set)", C::NAME);
        return;
    };
    // Seeding takes longer than the purge and is left out of the timing:
    // few samples, one purge each.
    reset(conn);
    let mut group = c.benchmark_group(format!("{}/purge_100k_expired", C::NAME));
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(PURGE_ROWS as u64));
    group.bench_function("batches_of_1000", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                seed(conn, &seeds);
                let started = Instant::now();
                let deleted = purge(conn);
                timed += started.elapsed();
                assert_eq!(deleted, PURGE_ROWS);
            }
            timed
        });
    });
    // For reference: one unbounded DELETE, which holds its locks for all of it.
    group.bench_function("one_statement", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                seed(conn, &seeds);
                let started = Instant::now();
                let deleted = conn.delete_expired_at_once().expect("delete");
                timed += started.elapsed();
                assert_eq!(deleted, PURGE_ROWS);
            }
            timed
        });
    });
    group.finish();
}

fn bench_sqlite(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("bench.sqlite3");
    let mut conn = SqliteConnection::establish(&path.to_string_lossy()).expect("open SQLite");
    conn.batch_execute(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
    )
    .expect("WAL mode");
    bench_backend(c, &mut conn, None);
}

#[cfg(feature = "postgres")]
const PG_URL_VAR: &str = "DIESEL_IDEMPOTENT_PG_URL";

/// A PostgreSQL URL taken apart: `{scheme_and_user}{host}:{port}/{database}?{query}`.
#[cfg(feature = "postgres")]
struct PgUrl<'a> {
    /// `postgres://user:password@`, or `postgres://`.
    prefix: &'a str,
    /// Empty for a Unix socket named in the query.
    host: &'a str,
    port: Option<&'a str>,
    query: Option<&'a str>,
}

#[cfg(feature = "postgres")]
impl<'a> PgUrl<'a> {
    fn parse(url: &'a str) -> Self {
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (url, None),
        };
        let scheme = base.find("://").map_or(0, |i| i + 3);
        let path = base[scheme..].find('/').map_or(base.len(), |i| scheme + i);
        let authority = &base[scheme..path];
        let at = authority.rfind('@').map_or(scheme, |i| scheme + i + 1);
        let hostport = &base[at..path];
        // `host`, `host:5432`, `[::1]` or `[::1]:5432`.
        let (host, port) = match hostport.rfind(']') {
            Some(end) => (&hostport[..=end], hostport[end + 1..].strip_prefix(':')),
            None => match hostport.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            },
        };
        PgUrl {
            prefix: &base[..at],
            host,
            port,
            query,
        }
    }

    /// This server's URL for `database`, at `host_port` instead of its own
    /// when given, with `extra` query parameters.
    fn to_database(&self, database: &str, host_port: Option<&str>, extra: &[&str]) -> String {
        let mut url = self.prefix.to_owned();
        match host_port {
            Some(host_port) => url.push_str(host_port),
            None => {
                url.push_str(self.host);
                if let Some(port) = self.port {
                    url.push(':');
                    url.push_str(port);
                }
            }
        }
        url.push('/');
        url.push_str(database);
        let params: Vec<&str> = self
            .query
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        if !params.is_empty() {
            url.push('?');
            url.push_str(&params.join("&"));
        }
        url
    }
}

/// A database of this process's own on the server at `PG_URL_VAR`, dropped
/// at the end (also when a benchmark panics).
#[cfg(feature = "postgres")]
struct PgDatabase {
    admin_url: String,
    name: String,
}

#[cfg(feature = "postgres")]
impl PgDatabase {
    fn create(admin_url: String) -> Self {
        let name = format!("bench_{}", std::process::id());
        let mut admin = PgConnection::establish(&admin_url)
            .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {PG_URL_VAR}: {e}"));
        // Two statements: one simple query would make them one transaction.
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .and_then(|()| admin.batch_execute(&format!("CREATE DATABASE {name}")))
            .expect("create the bench database");
        PgDatabase { admin_url, name }
    }

    /// Connects to this database: the server's URL with its database name
    /// in place of the admin one.
    fn connect(&self) -> PgConnection {
        let url = PgUrl::parse(&self.admin_url).to_database(&self.name, None, &[]);
        PgConnection::establish(&url).expect("connect to the bench database")
    }

    /// Connects to this database through a proxy that counts the round
    /// trips; `None` (with the reason printed) when the server is not
    /// reached over TCP or the proxy cannot start.
    fn connect_counted(&self) -> Option<(PgConnection, wire::RoundTripCounter)> {
        let url = PgUrl::parse(&self.admin_url);
        if url.host.is_empty() || url.host.starts_with('%') || url.host.starts_with('/') {
            println!("[postgres] round trips not counted: the server is not reached over TCP");
            return None;
        }
        let upstream = format!("{}:{}", url.host, url.port.unwrap_or("5432"));
        let counter = match wire::RoundTripCounter::start(upstream) {
            Ok(counter) => counter,
            Err(e) => {
                println!("[postgres] round trips not counted: no loopback proxy ({e})");
                return None;
            }
        };
        // The proxy reads the protocol: no TLS between it and the client.
        let proxied = url.to_database(
            &self.name,
            Some(&format!("127.0.0.1:{}", counter.port())),
            &["sslmode=disable", "gssencmode=disable"],
        );
        match PgConnection::establish(&proxied) {
            Ok(conn) => Some((conn, counter)),
            Err(e) => {
                println!(
                    "[postgres] round trips not counted: no connection through the proxy ({e})"
                );
                None
            }
        }
    }
}

#[cfg(feature = "postgres")]
impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(&self.admin_url) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// Round trips to a PostgreSQL server, counted by a loopback TCP proxy that
/// reads the messages the client sends: every `Sync` (the end of an
/// extended-protocol exchange: a prepare, or a bind and execute) and every
/// simple `Query` waits for the server's answer, one round trip each.
#[cfg(feature = "postgres")]
mod wire {
    use std::io::{self, Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// `SSLRequest` and `GSSENCRequest`: untyped, and another untyped
    /// message (the startup packet) follows them.
    const ENCRYPTION_REQUESTS: [u32; 2] = [80_877_103, 80_877_104];

    pub struct RoundTripCounter {
        port: u16,
        count: Arc<AtomicU64>,
    }

    impl RoundTripCounter {
        /// Listens on a free loopback port and forwards the first
        /// connection it accepts to `upstream` (`host:port`).
        pub fn start(upstream: String) -> io::Result<Self> {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let port = listener.local_addr()?.port();
            let count = Arc::new(AtomicU64::new(0));
            let counted = Arc::clone(&count);
            std::thread::spawn(move || {
                let proxied = listener.accept().and_then(|(client, _)| {
                    let server = TcpStream::connect(&upstream)?;
                    client.set_nodelay(true)?;
                    server.set_nodelay(true)?;
                    Ok((client, server))
                });
                let Ok((client, server)) = proxied else {
                    return;
                };
                let (Ok(mut from_server), Ok(mut to_client)) =
                    (server.try_clone(), client.try_clone())
                else {
                    return;
                };
                std::thread::spawn(move || {
                    let _ = io::copy(&mut from_server, &mut to_client);
                    let _ = to_client.shutdown(Shutdown::Write);
                });
                forward_counting(client, server, &counted);
            });
            Ok(RoundTripCounter { port, count })
        }

        pub fn port(&self) -> u16 {
            self.port
        }

        /// The round trips so far. Read between calls: a message is counted
        /// before it is forwarded, so the count is complete once its answer
        /// has arrived.
        pub fn get(&self) -> u64 {
            self.count.load(Ordering::SeqCst)
        }
    }

    /// Forwards the client's bytes to the server, counting `Sync` (`S`) and
    /// `Query` (`Q`) messages.
    fn forward_counting(mut from: TcpStream, mut to: TcpStream, count: &AtomicU64) {
        let mut pending: Vec<u8> = Vec::new();
        let mut startup = true;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            let mut at = 0;
            loop {
                let rest = &pending[at..];
                // Untyped during startup: length, then a request code.
                let header = if startup { 8 } else { 5 };
                if rest.len() < header {
                    break;
                }
                let length_at = usize::from(!startup);
                let length = u32::from_be_bytes(
                    rest[length_at..length_at + 4]
                        .try_into()
                        .expect("four bytes"),
                ) as usize
                    + length_at;
                if rest.len() < length {
                    break;
                }
                if startup {
                    let code = u32::from_be_bytes(rest[4..8].try_into().expect("four bytes"));
                    startup = ENCRYPTION_REQUESTS.contains(&code);
                } else if matches!(rest[0], b'S' | b'Q') {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                at += length.max(1);
            }
            pending.drain(..at);
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    }
}

#[cfg(feature = "postgres")]
fn bench_postgres(c: &mut Criterion) {
    let Ok(admin_url) = std::env::var(PG_URL_VAR) else {
        println!(
            "SKIPPED: postgres benches (set {PG_URL_VAR}=postgres://user@host/db, \
             or run ./scripts/bench.sh, which starts a throwaway server)"
        );
        return;
    };
    let db = PgDatabase::create(admin_url);
    let mut conn = db.connect();
    match db.connect_counted() {
        Some((mut counted, counter)) => {
            let round_trips = || counter.get();
            bench_backend(c, &mut conn, Some((&mut counted, &round_trips)));
        }
        None => bench_backend(c, &mut conn, None),
    }
}

#[cfg(not(feature = "postgres"))]
fn bench_postgres(_: &mut Criterion) {
    println!(
        "SKIPPED: postgres benches (built without the `postgres` feature: \
         cargo bench --all-features --bench overhead, with DIESEL_IDEMPOTENT_PG_URL set)"
    );
}

fn main() {
    let quick = quick();
    let mut c = Criterion::default()
        .sample_size(if quick { 10 } else { 20 })
        .warm_up_time(Duration::from_millis(if quick { 500 } else { 1_000 }))
        .measurement_time(Duration::from_secs(if quick { 1 } else { 3 }))
        .configure_from_args();
    bench_sqlite(&mut c);
    bench_postgres(&mut c);
    c.final_summary();
}
