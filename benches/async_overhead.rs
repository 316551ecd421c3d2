//! What `#[idempotent]` costs on an `async fn`: the cases of
//! `benches/overhead.rs`, each an `async fn` under the attribute timed next
//! to the same body unwrapped, in the same run, on diesel-async connections:
//! SQLite through `SyncConnectionWrapper` (a file in WAL mode,
//! `synchronous = NORMAL`) and `AsyncPgConnection`.
//!
//! ```text
//! cargo bench --features async --bench async_overhead              # SQLite only
//! DIESEL_IDEMPOTENT_PG_URL=postgres://user@host/db \
//!     cargo bench --features postgres,async --bench async_overhead # and PostgreSQL
//! ./scripts/bench.sh       # PostgreSQL, next to the blocking bench and the SQL floor
//! ```
//!
//! The body is one INSERT and its commit, a statement diesel-async caches
//! (the DSL on PostgreSQL; on SQLite a fixed-text `INSERT .. RETURNING`,
//! cached by its text, as the blocking bench's). The wrapped side is an
//! `async fn` under the same options and namespaces as the blocking bench;
//! the unwrapped side runs the body in diesel-async's
//! `conn.transaction(..)`. Both sides run on the same connection, taken once
//! from a diesel-async deadpool pool, and each iteration is one
//! `block_on` of a current-thread tokio runtime (a PostgreSQL connection's
//! background task runs on the same thread; SQLite's wrapper sends every
//! statement to a blocking thread, as it always does).
//!
//! Cases (groups `async_sqlite/<case>` and `async_postgres/<case>`,
//! functions `wrapped` and `unwrapped`): `first_call`, `replay`,
//! `mismatch`, `optimistic_first_call`, `optimistic_replay`,
//! `read_first_replay`, `read_first_first_call`, `hash_first_call`,
//! `hash_replay`, `hash_read_first_replay`, `get_or_create_hit`,
//! `get_or_create_miss`. No purge: it runs on a blocking connection.
//! Before the timed cases each backend prints the statements of one call of
//! every case, wrapped and unwrapped (Diesel's instrumentation, with a warm
//! statement cache).
//!
//! PostgreSQL runs when `DIESEL_IDEMPOTENT_PG_URL` is set (the bench creates
//! a database of its own there and drops it at the end);
//! `DIESEL_IDEMPOTENT_BENCH_QUICK=1` is the short run, as for
//! `benches/overhead.rs`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use criterion::{Criterion, Throughput};
use diesel::connection::{Connection as _, InstrumentationEvent, SimpleConnection as _};
use diesel::sqlite::SqliteConnection;
use diesel::{ExpressionMethods, OptionalExtension, QueryDsl, QueryResult};
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, PoolError};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_idempotent::{AsyncIdempotentConnection, Error, idempotent};
use serde::Serialize;
use tokio::runtime::Runtime;

/// SQLite behind diesel-async's async interface.
type AsyncSqlite = SyncConnectionWrapper<SqliteConnection>;

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
    payments (id) {
        id -> BigInt,
        amount -> BigInt,
    }
}

diesel::table! {
    users (id) {
        id -> BigInt,
        email -> Text,
    }
}

#[derive(Debug, Clone, Copy)]
enum Pay {
    ClaimFirst,
    Optimistic,
    ReadFirst,
}

#[derive(Debug, Clone, Copy)]
enum Click {
    InTransaction,
    ReadFirst,
}

/// What the driver needs from a backend: the functions under test, wrapped
/// and unwrapped.
trait BenchConn: AsyncIdempotentConnection + 'static {
    /// The group names' prefix.
    const NAME: &'static str;
    /// Empties every table.
    const RESET: &'static str;

    async fn pay(&mut self, how: Pay, key: &str, amount: i64) -> Paid;
    async fn pay_unwrapped(&mut self, key: &str, amount: i64) -> Paid;
    async fn record_click(&mut self, how: Click, event: &ClickEvent) -> Paid;
    async fn record_click_unwrapped(&mut self, event: &ClickEvent) -> Paid;
    async fn user(&mut self, email: &str) -> QueryResult<i64>;
    async fn user_unwrapped(&mut self, email: &str) -> QueryResult<i64>;
}

/// What the functions under test return.
type Paid = Result<i64, BenchError>;

/// The benchmarked functions for one connection type, around its body
/// statements (`insert_payment`, `insert_user`), and their [`BenchConn`] impl.
macro_rules! backend {
    (
        mod $module:ident for $conn:ident {
            name: $name:literal,
            reset: $reset:expr,
            $($statement:item)*
        }
    ) => {
        mod $module {
            use super::*;

            $($statement)*

            async fn find_user(conn: &mut $conn, email: &str) -> QueryResult<Option<i64>> {
                users::table
                    .filter(users::email.eq(email))
                    .select(users::id)
                    .first(conn)
                    .await
                    .optional()
            }

            #[idempotent(key = key, name = "bench.pay", ttl = "24h")]
            async fn pay(conn: &mut $conn, key: &str, amount: i64) -> Paid {
                Ok(insert_payment(conn, amount).await?)
            }

            #[idempotent(
                key = key, name = "bench.pay_optimistic", ttl = "24h", mode = "optimistic"
            )]
            async fn pay_optimistic(conn: &mut $conn, key: &str, amount: i64) -> Paid {
                Ok(insert_payment(conn, amount).await?)
            }

            #[idempotent(
                key = key, name = "bench.pay_read_first", ttl = "24h", replay = "read_first"
            )]
            async fn pay_read_first(conn: &mut $conn, key: &str, amount: i64) -> Paid {
                Ok(insert_payment(conn, amount).await?)
            }

            #[idempotent(hash, name = "bench.record_click", ttl = "24h")]
            async fn record_click(conn: &mut $conn, event: &ClickEvent) -> Paid {
                Ok(insert_payment(conn, event.occurred_at).await?)
            }

            #[idempotent(
                hash, name = "bench.record_click_read_first", ttl = "24h", replay = "read_first"
            )]
            async fn record_click_read_first(conn: &mut $conn, event: &ClickEvent) -> Paid {
                Ok(insert_payment(conn, event.occurred_at).await?)
            }

            #[idempotent(get_or_create = find_user(conn, email))]
            async fn user(conn: &mut $conn, email: &str) -> QueryResult<i64> {
                insert_user(conn, email).await
            }

            impl BenchConn for $conn {
                const NAME: &'static str = $name;
                const RESET: &'static str = $reset;

                async fn pay(&mut self, how: Pay, key: &str, amount: i64) -> Paid {
                    match how {
                        Pay::ClaimFirst => pay(self, key, amount).await,
                        Pay::Optimistic => pay_optimistic(self, key, amount).await,
                        Pay::ReadFirst => pay_read_first(self, key, amount).await,
                    }
                }
                async fn pay_unwrapped(&mut self, key: &str, amount: i64) -> Paid {
                    let _ = key;
                    self.transaction(async |conn: &mut $conn| {
                        Ok(insert_payment(conn, amount).await?)
                    })
                    .await
                }
                async fn record_click(&mut self, how: Click, event: &ClickEvent) -> Paid {
                    match how {
                        Click::InTransaction => record_click(self, event).await,
                        Click::ReadFirst => record_click_read_first(self, event).await,
                    }
                }
                async fn record_click_unwrapped(&mut self, event: &ClickEvent) -> Paid {
                    self.transaction(async |conn: &mut $conn| {
                        Ok(insert_payment(conn, event.occurred_at).await?)
                    })
                    .await
                }
                async fn user(&mut self, email: &str) -> QueryResult<i64> {
                    user(self, email).await
                }
                async fn user_unwrapped(&mut self, email: &str) -> QueryResult<i64> {
                    self.transaction(async |conn: &mut $conn| insert_user(conn, email).await)
                        .await
                }
            }
        }
    };
}

/// `INSERT .. RETURNING id` of fixed text around one bind: SQLite's body
/// statements (this build's Diesel DSL has no `RETURNING` on SQLite). The
/// wrapper caches prepared statements by their text.
struct InsertReturning<'a, T: ?Sized, ST> {
    sql: (&'static str, &'static str),
    value: &'a T,
    sql_type: std::marker::PhantomData<ST>,
}

impl<T: ?Sized, ST> diesel::query_builder::QueryId for InsertReturning<'_, T, ST> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<T: ?Sized, ST> diesel::query_builder::Query for InsertReturning<'_, T, ST> {
    type SqlType = diesel::sql_types::BigInt;
}

impl<T, ST> diesel::query_builder::QueryFragment<diesel::sqlite::Sqlite>
    for InsertReturning<'_, T, ST>
where
    T: diesel::serialize::ToSql<ST, diesel::sqlite::Sqlite> + ?Sized,
    diesel::sqlite::Sqlite: diesel::sql_types::HasSqlType<ST>,
{
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::sqlite::Sqlite>,
    ) -> QueryResult<()> {
        out.push_sql(self.sql.0);
        out.push_bind_param::<ST, T>(self.value)?;
        out.push_sql(self.sql.1);
        Ok(())
    }
}

backend! {
    mod sqlite for AsyncSqlite {
        name: "async_sqlite",
        reset: "DELETE FROM payments; DELETE FROM users; DELETE FROM idempotency_records; \
                PRAGMA wal_checkpoint(TRUNCATE);",

        async fn insert_payment(conn: &mut AsyncSqlite, amount: i64) -> QueryResult<i64> {
            InsertReturning::<i64, diesel::sql_types::BigInt> {
                sql: ("INSERT INTO payments (amount) VALUES (", ") RETURNING id"),
                value: &amount,
                sql_type: std::marker::PhantomData,
            }
            .get_result(conn)
            .await
        }

        async fn insert_user(conn: &mut AsyncSqlite, email: &str) -> QueryResult<i64> {
            InsertReturning::<str, diesel::sql_types::Text> {
                sql: ("INSERT INTO users (email) VALUES (", ") RETURNING id"),
                value: email,
                sql_type: std::marker::PhantomData,
            }
            .get_result(conn)
            .await
        }
    }
}

#[cfg(feature = "postgres")]
use diesel_async::AsyncPgConnection;

#[cfg(feature = "postgres")]
backend! {
    mod postgres for AsyncPgConnection {
        name: "async_postgres",
        reset: "TRUNCATE payments, users, idempotency_records",

        async fn insert_payment(conn: &mut AsyncPgConnection, amount: i64) -> QueryResult<i64> {
            diesel::insert_into(payments::table)
                .values(payments::amount.eq(amount))
                .returning(payments::id)
                .get_result(conn)
                .await
        }

        async fn insert_user(conn: &mut AsyncPgConnection, email: &str) -> QueryResult<i64> {
            diesel::insert_into(users::table)
                .values(users::email.eq(email))
                .returning(users::id)
                .get_result(conn)
                .await
        }
    }
}

const REPLAY_KEY: &str = "bench-replay";
const REPLAY_AMOUNT: i64 = 1200;
const REPLAY_EVENT_AT: i64 = -1;
const HIT_EMAIL: &str = "existing@example.com";

/// A number never used before in this process: fresh keys, events, e-mails.
fn fresh() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn fresh_key() -> String {
    format!("first-{}", fresh())
}

fn fresh_event() -> ClickEvent {
    ClickEvent::new(i64::try_from(fresh()).unwrap_or(i64::MAX))
}

fn fresh_email() -> String {
    format!("u-{}@example.com", fresh())
}

/// The cases of `benches/overhead.rs`, in its order.
#[derive(Debug, Clone, Copy)]
enum Case {
    FirstCall,
    Replay,
    Mismatch,
    OptimisticFirstCall,
    OptimisticReplay,
    ReadFirstReplay,
    ReadFirstFirstCall,
    HashFirstCall,
    HashReplay,
    HashReadFirstReplay,
    GetOrCreateHit,
    GetOrCreateMiss,
}

impl Case {
    const ALL: [Case; 12] = [
        Case::FirstCall,
        Case::Replay,
        Case::Mismatch,
        Case::OptimisticFirstCall,
        Case::OptimisticReplay,
        Case::ReadFirstReplay,
        Case::ReadFirstFirstCall,
        Case::HashFirstCall,
        Case::HashReplay,
        Case::HashReadFirstReplay,
        Case::GetOrCreateHit,
        Case::GetOrCreateMiss,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::FirstCall => "first_call",
            Case::Replay => "replay",
            Case::Mismatch => "mismatch",
            Case::OptimisticFirstCall => "optimistic_first_call",
            Case::OptimisticReplay => "optimistic_replay",
            Case::ReadFirstReplay => "read_first_replay",
            Case::ReadFirstFirstCall => "read_first_first_call",
            Case::HashFirstCall => "hash_first_call",
            Case::HashReplay => "hash_replay",
            Case::HashReadFirstReplay => "hash_read_first_replay",
            Case::GetOrCreateHit => "get_or_create_hit",
            Case::GetOrCreateMiss => "get_or_create_miss",
        }
    }

    /// One call of the annotated function.
    async fn wrapped<C: BenchConn>(self, c: &mut C) {
        let replayed = ClickEvent::new(REPLAY_EVENT_AT);
        let result = match self {
            Case::FirstCall => c.pay(Pay::ClaimFirst, &fresh_key(), 1).await,
            Case::Replay => c.pay(Pay::ClaimFirst, REPLAY_KEY, REPLAY_AMOUNT).await,
            Case::Mismatch => {
                let result = c.pay(Pay::ClaimFirst, REPLAY_KEY, REPLAY_AMOUNT + 1).await;
                assert!(
                    matches!(
                        result,
                        Err(BenchError::Idempotency(Error::PayloadMismatch { .. }))
                    ),
                    "expected a payload mismatch, got {result:?}"
                );
                return;
            }
            Case::OptimisticFirstCall => c.pay(Pay::Optimistic, &fresh_key(), 1).await,
            Case::OptimisticReplay => c.pay(Pay::Optimistic, REPLAY_KEY, REPLAY_AMOUNT).await,
            Case::ReadFirstReplay => c.pay(Pay::ReadFirst, REPLAY_KEY, REPLAY_AMOUNT).await,
            Case::ReadFirstFirstCall => c.pay(Pay::ReadFirst, &fresh_key(), 1).await,
            Case::HashFirstCall => c.record_click(Click::InTransaction, &fresh_event()).await,
            Case::HashReplay => c.record_click(Click::InTransaction, &replayed).await,
            Case::HashReadFirstReplay => c.record_click(Click::ReadFirst, &replayed).await,
            Case::GetOrCreateHit => c.user(HIT_EMAIL).await.map_err(BenchError::from),
            Case::GetOrCreateMiss => c.user(&fresh_email()).await.map_err(BenchError::from),
        };
        black_box(result.unwrap_or_else(|e| panic!("{}: {e}", self.name())));
    }

    /// The unwrapped twin: the body in a transaction (getOrCreate's inserts
    /// a fresh e-mail, as it could not find an existing row).
    async fn unwrapped<C: BenchConn>(self, c: &mut C) {
        let result = match self {
            Case::HashFirstCall | Case::HashReplay | Case::HashReadFirstReplay => {
                c.record_click_unwrapped(&fresh_event()).await
            }
            Case::GetOrCreateHit | Case::GetOrCreateMiss => c
                .user_unwrapped(&fresh_email())
                .await
                .map_err(BenchError::from),
            _ => c.pay_unwrapped(&fresh_key(), 1).await,
        };
        black_box(result.unwrap_or_else(|e| panic!("{} (unwrapped): {e}", self.name())));
    }
}

/// Empties the tables and stores the rows the replay and hit cases find.
async fn reset<C: BenchConn>(conn: &mut C) {
    conn.batch_execute(C::RESET)
        .await
        .expect("empty the tables");
    for how in [Pay::ClaimFirst, Pay::Optimistic, Pay::ReadFirst] {
        let first = conn.pay(how, REPLAY_KEY, REPLAY_AMOUNT).await;
        let again = conn.pay(how, REPLAY_KEY, REPLAY_AMOUNT).await;
        assert_eq!(
            first.expect("store the replay key"),
            again.expect("replay"),
            "{how:?}: the second call replays the first"
        );
    }
    let event = ClickEvent::new(REPLAY_EVENT_AT);
    for how in [Click::InTransaction, Click::ReadFirst] {
        let first = conn.record_click(how, &event).await;
        let again = conn.record_click(how, &event).await;
        assert_eq!(
            first.expect("store the event"),
            again.expect("redelivery"),
            "{how:?}: the redelivery replays the first delivery"
        );
    }
    let first = conn.user(HIT_EMAIL).await.expect("create the user");
    let again = conn.user(HIT_EMAIL).await.expect("find the user");
    assert_eq!(first, again, "getOrCreate finds the user it created");
}

/// The statements one call sends, counted with Diesel's instrumentation
/// after a first call has filled the statement cache.
async fn statements<C: BenchConn>(conn: &mut C, case: Case, wrapped: bool) -> usize {
    for counted in [false, true] {
        let count = Arc::new(AtomicUsize::new(0));
        if counted {
            let sink = Arc::clone(&count);
            conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
                if matches!(event, InstrumentationEvent::StartQuery { .. }) {
                    sink.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        if wrapped {
            case.wrapped(conn).await;
        } else {
            case.unwrapped(conn).await;
        }
        if counted {
            conn.set_instrumentation(diesel::connection::get_default_instrumentation());
            return AtomicUsize::load(&count, Ordering::Relaxed);
        }
    }
    unreachable!("the counted call returns")
}

fn bench_backend<C: BenchConn>(c: &mut Criterion, rt: &Runtime, conn: &mut C) {
    rt.block_on(reset(conn));
    let counts: Vec<String> = Case::ALL
        .iter()
        .map(|&case| {
            let wrapped = rt.block_on(statements(conn, case, true));
            let unwrapped = rt.block_on(statements(conn, case, false));
            format!("{} {wrapped}/{unwrapped}", case.name())
        })
        .collect();
    println!(
        "[{}] statements per call, wrapped/unwrapped (Diesel instrumentation): {}",
        C::NAME,
        counts.join(", ")
    );
    for case in Case::ALL {
        let mut group = c.benchmark_group(format!("{}/{}", C::NAME, case.name()));
        group.throughput(Throughput::Elements(1));
        rt.block_on(reset(conn));
        group.bench_function("wrapped", |b| b.iter(|| rt.block_on(case.wrapped(conn))));
        rt.block_on(reset(conn));
        group.bench_function("unwrapped", |b| {
            b.iter(|| rt.block_on(case.unwrapped(conn)));
        });
        group.finish();
    }
}

/// One connection from a deadpool pool of one, to the database at `url`.
fn pooled<C>(rt: &Runtime, url: String) -> Object<C>
where
    C: AsyncConnection + 'static,
    AsyncDieselConnectionManager<C>: deadpool::managed::Manager<Type = C, Error = PoolError>,
{
    let pool = Pool::builder(AsyncDieselConnectionManager::<C>::new(url))
        .max_size(1)
        .build()
        .expect("a deadpool pool");
    rt.block_on(pool.get()).expect("a pooled connection")
}

fn bench_sqlite(c: &mut Criterion, rt: &Runtime) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = dir
        .path()
        .join("bench.sqlite3")
        .to_string_lossy()
        .into_owned();
    let mut setup = SqliteConnection::establish(&url).expect("open SQLite");
    setup
        .batch_execute("PRAGMA journal_mode = WAL")
        .expect("WAL mode");
    diesel_idempotent::migrate(&mut setup).expect("embedded migrations");
    setup
        .batch_execute(
            "CREATE TABLE payments (id INTEGER PRIMARY KEY AUTOINCREMENT, \
             amount BIGINT NOT NULL); \
             CREATE TABLE users (id INTEGER PRIMARY KEY AUTOINCREMENT, \
             email TEXT NOT NULL UNIQUE);",
        )
        .expect("bench tables");
    drop(setup);
    let mut conn = pooled::<AsyncSqlite>(rt, url);
    rt.block_on(conn.batch_execute("PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;"))
        .expect("synchronous = NORMAL");
    bench_backend(c, rt, &mut *conn);
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
        use diesel::PgConnection;
        let name = format!("bench_async_{}", std::process::id());
        let mut admin = PgConnection::establish(&admin_url)
            .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {PG_URL_VAR}: {e}"));
        // Two statements: one simple query would make them one transaction.
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .and_then(|()| admin.batch_execute(&format!("CREATE DATABASE {name}")))
            .expect("create the bench database");
        let db = PgDatabase { admin_url, name };
        let mut setup = PgConnection::establish(&db.url()).expect("connect to the bench database");
        diesel_idempotent::migrate(&mut setup).expect("embedded migrations");
        setup
            .batch_execute(
                "CREATE TABLE payments (id BIGSERIAL PRIMARY KEY, amount BIGINT NOT NULL); \
                 CREATE TABLE users (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL UNIQUE);",
            )
            .expect("bench tables");
        db
    }

    /// The admin URL with this database's name in place of its own.
    fn url(&self) -> String {
        let (base, query) = match self.admin_url.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (self.admin_url.as_str(), String::new()),
        };
        let server = base
            .rsplit_once('/')
            .filter(|(server, _)| server.contains("//"))
            .map_or(base, |(server, _)| server);
        format!("{server}/{}{query}", self.name)
    }
}

#[cfg(feature = "postgres")]
impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = diesel::PgConnection::establish(&self.admin_url) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

#[cfg(feature = "postgres")]
fn bench_postgres(c: &mut Criterion, rt: &Runtime) {
    let Ok(admin_url) = std::env::var(PG_URL_VAR) else {
        println!(
            "SKIPPED: async_postgres benches (set {PG_URL_VAR}=postgres://user@host/db, \
             or run ./scripts/bench.sh, which starts a throwaway server)"
        );
        return;
    };
    let db = PgDatabase::create(admin_url);
    let mut conn = pooled::<AsyncPgConnection>(rt, db.url());
    bench_backend(c, rt, &mut *conn);
}

#[cfg(not(feature = "postgres"))]
fn bench_postgres(_: &mut Criterion, _: &Runtime) {
    println!(
        "SKIPPED: async_postgres benches (built without the `postgres` feature: \
         cargo bench --features postgres,async --bench async_overhead, with \
         DIESEL_IDEMPOTENT_PG_URL set)"
    );
}

fn main() {
    let quick =
        std::env::var("DIESEL_IDEMPOTENT_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let mut c = Criterion::default()
        .sample_size(if quick { 10 } else { 20 })
        .warm_up_time(Duration::from_millis(if quick { 500 } else { 1_000 }))
        .measurement_time(Duration::from_secs(if quick { 1 } else { 3 }))
        .configure_from_args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    bench_sqlite(&mut c, &rt);
    bench_postgres(&mut c, &rt);
    c.final_summary();
}
