//! What `#[idempotent]` costs: every case times the wrapped function next to
//! the same body unwrapped, in the same run, on SQLite (a file in WAL mode)
//! and on PostgreSQL.
//!
//! ```text
//! cargo bench --bench overhead                     # SQLite only
//! DIESEL_IDEMPOTENT_PG_URL=postgres://user@host/db \
//!     cargo bench --all-features --bench overhead  # SQLite and PostgreSQL
//! ```
//!
//! The body is one INSERT and its commit. Its unwrapped twin runs it in
//! `conn.transaction(..)`, a transaction of its own like the wrapped call's.
//! Cases: first call (a fresh key each iteration), replay, payload mismatch,
//! the `hash` pattern's first call and replay, getOrCreate hit and miss, and
//! the purge of 100 000 expired records in batches of 1000.
//!
//! Before the timed cases each backend prints the statements the library adds
//! per call (counted with Diesel's instrumentation, wrapped minus unwrapped)
//! and how long each 1000-row purge batch ran: each batch is a statement and
//! a transaction of its own, so no batch holds its locks longer than that.
//!
//! SQLite runs with `synchronous = NORMAL` (commits are not fsynced, the
//! usual WAL setting) and the PostgreSQL of `scripts/test.sh` with
//! `fsync = off`: commits are cheap, so the ratios show the library's extra
//! statements at their most expensive relative to the body; with durable
//! commits the flush weighs on both sides.
//!
//! Targets, reported in BENCHMARKS.md, not asserted: a wrapped first call at
//! most 1.3x the unwrapped body on PostgreSQL, a replay at most 0.5x, and a
//! purge that never holds a lock for longer than one batch.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use diesel::connection::{InstrumentationEvent, SimpleConnection};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
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

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
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

    fn pay(&mut self, key: &str, amount: i64) -> Result<i64, BenchError>;
    fn pay_unwrapped(&mut self, key: &str, amount: i64) -> Result<i64, BenchError>;
    fn record_click(&mut self, event: &ClickEvent) -> Result<i64, BenchError>;
    fn record_click_unwrapped(&mut self, event: &ClickEvent) -> Result<i64, BenchError>;
    fn user(&mut self, email: &str) -> QueryResult<i64>;
    fn user_unwrapped(&mut self, email: &str) -> QueryResult<i64>;
    /// The purge's reference: every expired record in one DELETE.
    fn delete_expired_at_once(&mut self) -> QueryResult<usize>;
}

/// Defines the benchmarked functions for one concrete connection type
/// (Diesel's raw SQL differs in its placeholders) and implements
/// [`BenchConn`] with them.
macro_rules! backend {
    (
        mod $module:ident for $conn:ident {
            name: $name:literal,
            tables: $tables:expr,
            reset: $reset:expr,
            after_seed: $after_seed:expr,
            insert_payment: $insert_payment:literal,
            insert_user: $insert_user:literal,
            find_user: $find_user:literal $(,)?
        }
    ) => {
        mod $module {
            use super::*;

            fn insert_payment(conn: &mut $conn, amount: i64) -> QueryResult<i64> {
                diesel::sql_query($insert_payment)
                    .bind::<BigInt, _>(amount)
                    .get_result::<Id>(conn)
                    .map(|row| row.id)
            }

            fn insert_user(conn: &mut $conn, email: &str) -> QueryResult<i64> {
                diesel::sql_query($insert_user)
                    .bind::<Text, _>(email)
                    .get_result::<Id>(conn)
                    .map(|row| row.id)
            }

            fn find_user(conn: &mut $conn, email: &str) -> QueryResult<Option<i64>> {
                diesel::sql_query($find_user)
                    .bind::<Text, _>(email)
                    .get_result::<Id>(conn)
                    .optional()
                    .map(|row| row.map(|r| r.id))
            }

            #[idempotent(key = key, name = "bench.pay", ttl = "24h")]
            fn pay(conn: &mut $conn, key: &str, amount: i64) -> Result<i64, BenchError> {
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

                fn pay(&mut self, key: &str, amount: i64) -> Result<i64, BenchError> {
                    pay(self, key, amount)
                }
                fn pay_unwrapped(&mut self, key: &str, amount: i64) -> Result<i64, BenchError> {
                    pay_unwrapped(self, key, amount)
                }
                fn record_click(&mut self, event: &ClickEvent) -> Result<i64, BenchError> {
                    record_click(self, event)
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
        insert_payment: "INSERT INTO payments (amount) VALUES (?) RETURNING id",
        insert_user: "INSERT INTO users (email) VALUES (?) RETURNING id",
        find_user: "SELECT id FROM users WHERE email = ?",
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
        insert_payment: "INSERT INTO payments (amount) VALUES ($1) RETURNING id",
        insert_user: "INSERT INTO users (email) VALUES ($1) RETURNING id",
        find_user: "SELECT id FROM users WHERE email = $1",
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
            wrapped: |c| {
                black_box(c.pay(&format!("first-{}", fresh()), 1).expect("first call"));
            },
            unwrapped: |c| {
                black_box(
                    c.pay_unwrapped(&format!("first-{}", fresh()), 1)
                        .expect("body"),
                );
            },
        },
        Case {
            name: "replay",
            wrapped: |c| {
                black_box(c.pay(REPLAY_KEY, REPLAY_AMOUNT).expect("replay"));
            },
            unwrapped: |c| {
                black_box(c.pay_unwrapped(REPLAY_KEY, REPLAY_AMOUNT).expect("body"));
            },
        },
        Case {
            name: "mismatch",
            wrapped: |c| {
                let result = c.pay(REPLAY_KEY, REPLAY_AMOUNT + 1);
                assert!(
                    matches!(
                        result,
                        Err(BenchError::Idempotency(Error::PayloadMismatch { .. }))
                    ),
                    "expected a payload mismatch, got {result:?}"
                );
            },
            unwrapped: |c| {
                black_box(
                    c.pay_unwrapped(REPLAY_KEY, REPLAY_AMOUNT + 1)
                        .expect("body"),
                );
            },
        },
        Case {
            name: "hash_first_call",
            wrapped: |c| {
                black_box(c.record_click(&fresh_event()).expect("first delivery"));
            },
            unwrapped: |c| {
                black_box(c.record_click_unwrapped(&fresh_event()).expect("body"));
            },
        },
        Case {
            name: "hash_replay",
            wrapped: |c| {
                let event = ClickEvent::new(REPLAY_EVENT_AT);
                black_box(c.record_click(&event).expect("redelivery"));
            },
            unwrapped: |c| {
                let event = ClickEvent::new(REPLAY_EVENT_AT);
                black_box(c.record_click_unwrapped(&event).expect("body"));
            },
        },
        // The unwrapped body cannot find an existing row: it inserts one
        // (a fresh e-mail, or the unique constraint would reject it).
        Case {
            name: "get_or_create_hit",
            wrapped: |c| {
                black_box(c.user(HIT_EMAIL).expect("existing user"));
            },
            unwrapped: |c| {
                black_box(
                    c.user_unwrapped(&format!("u-{}@example.com", fresh()))
                        .expect("body"),
                );
            },
        },
        Case {
            name: "get_or_create_miss",
            wrapped: |c| {
                black_box(
                    c.user(&format!("u-{}@example.com", fresh()))
                        .expect("new user"),
                );
            },
            unwrapped: |c| {
                black_box(
                    c.user_unwrapped(&format!("u-{}@example.com", fresh()))
                        .expect("body"),
                );
            },
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
    let first = conn
        .pay(REPLAY_KEY, REPLAY_AMOUNT)
        .expect("store the replay key");
    let again = conn.pay(REPLAY_KEY, REPLAY_AMOUNT).expect("replay");
    assert_eq!(first, again, "the second call replays the first");
    let event = ClickEvent::new(REPLAY_EVENT_AT);
    let first = conn.record_click(&event).expect("store the event");
    let again = conn.record_click(&event).expect("redelivery");
    assert_eq!(first, again, "the redelivery replays the first delivery");
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

/// A statement in a few words: its verb and table, or its first two words.
fn shape(sql: &str) -> String {
    let clean = sql.replace(['`', '"'], "");
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
/// outside and inside a transaction of the caller's.
fn print_statement_counts<C: BenchConn>(conn: &mut C) {
    println!(
        "[{}] statements per call (Diesel instrumentation; added = wrapped - unwrapped)",
        C::NAME
    );
    println!(
        "  {:<40} {:>7} {:>9} {:>5}  wrapped call's statements",
        "case", "wrapped", "unwrapped", "added"
    );
    for case in cases::<C>() {
        for in_tx in [false, true] {
            let run = |conn: &mut C, f: fn(&mut C)| {
                statements(conn, |conn| {
                    if in_tx {
                        conn.transaction(|conn| {
                            f(conn);
                            QueryResult::Ok(())
                        })
                        .expect("caller transaction");
                    } else {
                        f(conn);
                    }
                })
            };
            let wrapped = run(conn, case.wrapped);
            let unwrapped = run(conn, case.unwrapped);
            let label = if in_tx {
                format!("{} (in caller tx)", case.name)
            } else {
                case.name.to_owned()
            };
            let shapes: Vec<String> = wrapped.iter().map(|s| shape(&s.sql)).collect();
            println!(
                "  {label:<40} {:>7} {:>9} {:>+5}  {}",
                wrapped.len(),
                unwrapped.len(),
                wrapped.len() as i64 - unwrapped.len() as i64,
                shapes.join(" | ")
            );
        }
    }
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

/// Every case's wrapped and unwrapped function, then the purge.
fn bench_backend<C: BenchConn>(c: &mut Criterion, conn: &mut C) {
    create_tables(conn);
    reset(conn);
    print_statement_counts(conn);
    let seeds = seed_statements();
    reset(conn);
    print_purge_batches(conn, &seeds);

    for case in cases::<C>() {
        let mut group = c.benchmark_group(format!("{}/{}", C::NAME, case.name));
        group.throughput(Throughput::Elements(1));
        reset(conn);
        group.bench_function("wrapped", |b| b.iter(|| (case.wrapped)(conn)));
        reset(conn);
        group.bench_function("unwrapped", |b| b.iter(|| (case.unwrapped)(conn)));
        group.finish();
    }

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
    bench_backend(c, &mut conn);
}

#[cfg(feature = "postgres")]
const PG_URL_VAR: &str = "DIESEL_IDEMPOTENT_PG_URL";

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
        let (base, query) = match self.admin_url.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (self.admin_url.as_str(), None),
        };
        let host = base.find("://").map_or(0, |i| i + 3);
        let path = base[host..].find('/').map_or(base.len(), |i| host + i);
        let mut url = format!("{}/{}", &base[..path], self.name);
        if let Some(query) = query {
            url.push('?');
            url.push_str(query);
        }
        PgConnection::establish(&url).expect("connect to the bench database")
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

#[cfg(feature = "postgres")]
fn bench_postgres(c: &mut Criterion) {
    let Ok(admin_url) = std::env::var(PG_URL_VAR) else {
        println!(
            "SKIPPED: postgres benches (set {PG_URL_VAR}=postgres://user@host/db, \
             or start the throwaway server the way ./scripts/test.sh does)"
        );
        return;
    };
    let db = PgDatabase::create(admin_url);
    let mut conn = db.connect();
    bench_backend(c, &mut conn);
}

#[cfg(not(feature = "postgres"))]
fn bench_postgres(_: &mut Criterion) {
    println!(
        "SKIPPED: postgres benches (built without the `postgres` feature: \
         cargo bench --all-features --bench overhead, with DIESEL_IDEMPOTENT_PG_URL set)"
    );
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench_sqlite(&mut c);
    bench_postgres(&mut c);
    c.final_summary();
}
