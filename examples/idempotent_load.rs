//! A load tool: what `#[idempotent]` costs under concurrency, and a check
//! that no key's body ran twice.
//!
//! ```text
//! cargo run --release --example idempotent_load -- [OPTIONS]
//! cargo run --release --example idempotent_load -- --clients 8 --keys hot --duration 10s
//! cargo run --release --features postgres --example idempotent_load -- \
//!     --backend postgres --url postgres://user@host/db --clients 16 --count 8000
//! cargo run --release --features postgres,async --example idempotent_load -- \
//!     --backend postgres --async --clients 16 --count 8000
//! ```
//!
//! Options (`--option value` or `--option=value`):
//!
//! | option | meaning |
//! |---|---|
//! | `--backend sqlite\|postgres` | SQLite on a temporary file in WAL mode (default), or PostgreSQL (build with `--features postgres`) |
//! | `--url URL` | the PostgreSQL server (default: `$DIESEL_IDEMPOTENT_PG_URL`); the run creates the database `load_<pid>` there and drops it at the end |
//! | `--clients N` | concurrent clients, 1 to 16, each on its own thread and connection (default 4) |
//! | `--keys distinct\|hot` | a new key for every call (default), or one key for every call of a run |
//! | `--count N` | N calls per run, shared by the clients (default 2000) |
//! | `--duration D` | instead of `--count`: run each workload for `D` (`500ms`, `10s`, `2m`) |
//! | `--mode claim_first\|optimistic` | the wrapped function's `mode` (default `claim_first`) |
//! | `--replay in_transaction\|read_first` | the wrapped function's `replay` (default `in_transaction`) |
//! | `--async` | PostgreSQL on diesel-async (build with `--features postgres,async`): the clients are tokio tasks, the functions `async fn`s (see below) |
//!
//! The body is one INSERT into `payments`. Two runs with the same clients,
//! keys and count (or duration) are made one after the other:
//!
//! 1. **unwrapped**: the INSERT in `conn.transaction(..)`;
//! 2. **wrapped**: the same INSERT in `pay`, under
//!    `#[idempotent(key = key, name = "load.pay", ttl = "1h")]` with the
//!    `mode` and `replay` options chosen.
//!
//! With distinct keys every wrapped call runs the body; with a hot key the
//! wrapped run commits the body once and every other call replays its
//! result (`mode = "optimistic"`: a replay that the read of
//! `replay = "read_first"` does not answer runs the body and rolls it back).
//! With `--async` both runs go through diesel-async instead: each client is
//! a tokio task on a multi-threaded runtime, every call checks a connection
//! out of one deadpool pool of `--clients` `AsyncPgConnection`s (opened
//! before the runs; recycled without a ping) and returns it, the wrapped
//! functions are the same `async fn`s under the same attribute, and the
//! unwrapped body runs in diesel-async's `conn.transaction(..)`. A call's
//! latency includes its checkout; the checks and the report are the same.
//!
//! For each run the tool prints the calls, the replays, the wall time, the
//! throughput and the p50, p99 and maximum latency of a call, then the
//! ratios wrapped / unwrapped. A progress bar is drawn to stderr when it is
//! a terminal.
//!
//! After the wrapped run it counts the body's committed executions per key
//! in `payments` (the wrapped run's keys start with `wrapped-`, the
//! unwrapped run's with `unwrapped-`). Exits with 1 when a key's body
//! committed twice, when a key answered `Ok` without its payment or its
//! record, when the calls that said they ran the body (not replayed) are not
//! exactly the payments committed, when the callers of a hot key got
//! different answers, or when a call failed with an error that is not
//! retryable (`diesel_idempotent::Error::is_retryable`; retryable ones are
//! counted and reported); with 2 on bad arguments.

#[path = "shared/flags.rs"]
mod flags;

use std::collections::BTreeSet;
use std::fmt;
use std::process::ExitCode;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_idempotent::{
    IdempotentConnection, Mode, Outcome, Replay, Retryable, idempotency_records,
};
use flags::Flags;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

const USAGE: &str = "\
usage: cargo run --release [--features postgres[,async]] --example idempotent_load -- [OPTIONS]

  --backend sqlite|postgres  SQLite on a temporary file in WAL mode (default), or
                             PostgreSQL (build with --features postgres)
  --url URL                  the PostgreSQL server (default: $DIESEL_IDEMPOTENT_PG_URL);
                             the run creates the database load_<pid> there and drops it
  --clients N                concurrent clients, 1 to 16, each on its own thread and
                             connection (default 4)
  --keys distinct|hot        a new key for every call (default), or one key for every
                             call of a run
  --count N                  N calls per run, shared by the clients (default 2000)
  --duration D               instead of --count: run each workload for D (500ms, 10s, 2m)
  --mode claim_first|optimistic
                             the wrapped function's mode (default claim_first)
  --replay in_transaction|read_first
                             the wrapped function's replay (default in_transaction)
  --async                    PostgreSQL on diesel-async: tokio tasks, async fns, one
                             deadpool pool (build with --features postgres,async)
  -h, --help                 print this";

/// Where `--backend postgres` finds its server when `--url` is not given.
const PG_URL_VAR: &str = "DIESEL_IDEMPOTENT_PG_URL";

/// The wrapped function's namespace (the attribute's `name`, which must be a
/// literal): its records are counted after the run.
const NAMESPACE: &str = "load.pay";

/// Every call pays the same amount, so a hot key's repeats carry the same
/// request (a different one would be a payload mismatch).
const AMOUNT: i64 = 4_200;

/// How many duplicated keys (or differing answers) a failure message lists.
const LISTED: usize = 10;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

diesel::table! {
    payments (id) {
        id -> BigInt,
        key -> Text,
        amount -> BigInt,
    }
}

#[cfg(feature = "sqlite")]
diesel::define_sql_function! {
    /// SQLite's id of the row just inserted on this connection.
    fn last_insert_rowid() -> BigInt;
}

#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error(transparent)]
    Idempotency(#[from] diesel_idempotent::Error),
    #[error("database: {0}")]
    Database(#[from] diesel::result::Error),
}

impl Retryable for LoadError {
    fn is_retryable(&self) -> bool {
        match self {
            LoadError::Idempotency(e) => e.is_retryable(),
            LoadError::Database(e) => Retryable::is_retryable(e),
        }
    }
}

/// What the load needs from a connection, implemented for each backend's
/// connection type.
trait LoadConn: IdempotentConnection + Send {
    /// Creates the `payments` table.
    fn create_payments(&mut self) -> QueryResult<()>;

    /// The body of both runs: one INSERT; returns the payment's id.
    fn insert_payment(&mut self, key: &str, amount: i64) -> QueryResult<i64>;

    /// How often the wrapped run's body ran, per key, and its records.
    fn wrapped_executions(&mut self) -> QueryResult<Executions>;
}

/// The wrapped run's effects, counted in the database after it.
struct Executions {
    /// Payments written by the wrapped run: one per body execution.
    rows: i64,
    /// Distinct keys among them.
    keys: i64,
    /// Idempotency records of `load.pay`.
    records: i64,
    /// The keys whose body ran more than once, with the count.
    twice: Vec<(String, i64)>,
}

/// The queries every backend writes the same way in Diesel's DSL; expanded
/// in each connection type's impl.
macro_rules! shared_queries {
    () => {
        fn wrapped_executions(&mut self) -> QueryResult<Executions> {
            use diesel::dsl::{count, count_star};
            let wrapped = payments::key.like(Run::Wrapped.key_pattern());
            let (rows, keys) = payments::table
                .filter(wrapped.clone())
                .select((count_star(), count(payments::key).aggregate_distinct()))
                .get_result(self)?;
            let twice = payments::table
                .filter(wrapped)
                .group_by(payments::key)
                .having(count_star().gt(1))
                .select((payments::key, count_star()))
                .order(payments::key)
                .load(self)?;
            let records = idempotency_records::table
                .filter(idempotency_records::namespace.eq(NAMESPACE))
                .count()
                .get_result(self)?;
            Ok(Executions {
                rows,
                keys,
                records,
                twice,
            })
        }
    };
}

#[cfg(feature = "sqlite")]
impl LoadConn for SqliteConnection {
    fn create_payments(&mut self) -> QueryResult<()> {
        diesel::sql_query(
            "CREATE TABLE payments (id INTEGER PRIMARY KEY, key TEXT NOT NULL, \
             amount BIGINT NOT NULL)",
        )
        .execute(self)
        .map(drop)
    }

    fn insert_payment(&mut self, key: &str, amount: i64) -> QueryResult<i64> {
        diesel::insert_into(payments::table)
            .values((payments::key.eq(key), payments::amount.eq(amount)))
            .execute(self)?;
        diesel::select(last_insert_rowid()).get_result(self)
    }

    shared_queries!();
}

#[cfg(feature = "postgres")]
impl LoadConn for PgConnection {
    fn create_payments(&mut self) -> QueryResult<()> {
        diesel::sql_query(
            "CREATE TABLE payments (id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL, \
             amount BIGINT NOT NULL)",
        )
        .execute(self)
        .map(drop)
    }

    fn insert_payment(&mut self, key: &str, amount: i64) -> QueryResult<i64> {
        diesel::insert_into(payments::table)
            .values((payments::key.eq(key), payments::amount.eq(amount)))
            .returning(payments::id)
            .get_result(self)
    }

    shared_queries!();
}

/// The wrapped run's call: the body commits once per key, repeats replay.
#[diesel_idempotent::idempotent(key = key, name = "load.pay", ttl = "1h")]
fn pay<C: LoadConn>(conn: &mut C, key: &str, amount: i64) -> Result<Outcome<i64>, LoadError> {
    Ok(conn.insert_payment(key, amount)?.into())
}

/// [`pay`] with `mode = "optimistic"`.
#[diesel_idempotent::idempotent(key = key, name = "load.pay", ttl = "1h", mode = "optimistic")]
fn pay_optimistic<C: LoadConn>(
    conn: &mut C,
    key: &str,
    amount: i64,
) -> Result<Outcome<i64>, LoadError> {
    Ok(conn.insert_payment(key, amount)?.into())
}

/// [`pay`] with `replay = "read_first"`.
#[diesel_idempotent::idempotent(key = key, name = "load.pay", ttl = "1h", replay = "read_first")]
fn pay_read_first<C: LoadConn>(
    conn: &mut C,
    key: &str,
    amount: i64,
) -> Result<Outcome<i64>, LoadError> {
    Ok(conn.insert_payment(key, amount)?.into())
}

/// [`pay`] with `mode = "optimistic"` and `replay = "read_first"`.
#[diesel_idempotent::idempotent(
    key = key,
    name = "load.pay",
    ttl = "1h",
    mode = "optimistic",
    replay = "read_first"
)]
fn pay_optimistic_read_first<C: LoadConn>(
    conn: &mut C,
    key: &str,
    amount: i64,
) -> Result<Outcome<i64>, LoadError> {
    Ok(conn.insert_payment(key, amount)?.into())
}

/// The wrapped run's function, as `--mode` and `--replay` chose it.
fn pay_with<C: LoadConn>(
    options: Annotation,
    conn: &mut C,
    key: &str,
    amount: i64,
) -> Result<Outcome<i64>, LoadError> {
    match (options.mode, options.replay) {
        (Mode::ClaimFirst, Replay::InTransaction) => pay(conn, key, amount),
        (Mode::Optimistic, Replay::InTransaction) => pay_optimistic(conn, key, amount),
        (Mode::ClaimFirst, Replay::ReadFirst) => pay_read_first(conn, key, amount),
        (Mode::Optimistic, Replay::ReadFirst) => pay_optimistic_read_first(conn, key, amount),
    }
}

/// The unwrapped run's call: the same body in a plain transaction.
fn pay_unwrapped<C: LoadConn>(conn: &mut C, key: &str, amount: i64) -> Result<i64, LoadError> {
    conn.transaction(|conn| Ok(conn.insert_payment(key, amount)?))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackendKind {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
enum Backend {
    /// A temporary file.
    Sqlite,
    /// The server's URL.
    Postgres(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keys {
    Distinct,
    Hot,
}

impl fmt::Display for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Keys::Distinct => "distinct keys",
            Keys::Hot => "one hot key",
        })
    }
}

/// The wrapped function's `mode` and `replay` options.
#[derive(Debug, Clone, Copy, Default)]
struct Annotation {
    mode: Mode,
    replay: Replay,
}

impl fmt::Display for Annotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            Mode::ClaimFirst => "claim_first",
            Mode::Optimistic => "optimistic",
        };
        let replay = match self.replay {
            Replay::InTransaction => "in_transaction",
            Replay::ReadFirst => "read_first",
        };
        write!(f, "mode = \"{mode}\", replay = \"{replay}\"")
    }
}

#[derive(Debug, Clone, Copy)]
enum Limit {
    Count(u64),
    Duration(Duration),
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Count(n) => write!(f, "{n} calls per run"),
            Limit::Duration(d) => write!(f, "{d:?} per run"),
        }
    }
}

#[derive(Debug, Clone)]
struct Options {
    backend: Backend,
    clients: usize,
    keys: Keys,
    limit: Limit,
    annotation: Annotation,
    /// `--async`: diesel-async connections and tokio tasks.
    asynchronous: bool,
}

enum Command {
    Run(Options),
    Help,
}

/// Parses the arguments after `--`; an `Err` is a message for the user.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut backend = BackendKind::Sqlite;
    let mut url = None;
    let mut clients = 4;
    let mut keys = Keys::Distinct;
    let mut count = None;
    let mut duration = None;
    let mut annotation = Annotation::default();
    let mut asynchronous = false;

    let mut flags = Flags::new(args);
    while let Some(flag) = flags.next_flag() {
        if flag == "-h" || flag == "--help" {
            return Ok(Command::Help);
        }
        match flag.as_str() {
            "--backend" => {
                backend = match flags.value(&flag)?.as_str() {
                    "sqlite" => BackendKind::Sqlite,
                    "postgres" | "pg" => BackendKind::Postgres,
                    other => {
                        return Err(format!("--backend is sqlite or postgres, not {other:?}"));
                    }
                }
            }
            "--url" => url = Some(flags.value(&flag)?),
            "--async" if !flags.has_inline_value() => asynchronous = true,
            "--clients" => {
                let text = flags.value(&flag)?;
                clients = text
                    .parse()
                    .ok()
                    .filter(|n| (1..=16).contains(n))
                    .ok_or_else(|| format!("--clients is a number from 1 to 16, not {text:?}"))?;
            }
            "--keys" => {
                keys = match flags.value(&flag)?.as_str() {
                    "distinct" => Keys::Distinct,
                    "hot" => Keys::Hot,
                    other => return Err(format!("--keys is distinct or hot, not {other:?}")),
                }
            }
            "--count" => {
                let text = flags.value(&flag)?;
                count = Some(text.parse().ok().filter(|&n: &u64| n >= 1).ok_or_else(|| {
                    format!("--count is a number of calls, at least 1, not {text:?}")
                })?);
            }
            "--duration" => {
                let text = flags.value(&flag)?;
                duration = Some(
                    flags::parse_duration(&text, flags::Longest::Hours).ok_or_else(|| {
                        format!("--duration is a positive time like 500ms, 10s or 2m, not {text:?}")
                    })?,
                );
            }
            "--mode" => {
                annotation.mode = match flags.value(&flag)?.as_str() {
                    "claim_first" => Mode::ClaimFirst,
                    "optimistic" => Mode::Optimistic,
                    other => {
                        return Err(format!(
                            "--mode is claim_first or optimistic, not {other:?}"
                        ));
                    }
                }
            }
            "--replay" => {
                annotation.replay = match flags.value(&flag)?.as_str() {
                    "in_transaction" => Replay::InTransaction,
                    "read_first" => Replay::ReadFirst,
                    other => {
                        return Err(format!(
                            "--replay is in_transaction or read_first, not {other:?}"
                        ));
                    }
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }

    let limit = match (count, duration) {
        (Some(_), Some(_)) => return Err("give --count or --duration, not both".to_owned()),
        (None, Some(d)) => Limit::Duration(d),
        (Some(n), None) => Limit::Count(n),
        (None, None) => Limit::Count(2_000),
    };
    let backend = match backend {
        BackendKind::Sqlite => {
            if !cfg!(feature = "sqlite") {
                return Err(
                    "this build has no SQLite support: build with --features sqlite".into(),
                );
            }
            if url.is_some() {
                return Err(
                    "--url is for --backend postgres; SQLite runs on a temporary file".into(),
                );
            }
            Backend::Sqlite
        }
        BackendKind::Postgres => {
            if !cfg!(feature = "postgres") {
                return Err(
                    "this build has no PostgreSQL support: run with --features postgres".into(),
                );
            }
            match url.or_else(|| std::env::var(PG_URL_VAR).ok()) {
                Some(url) => Backend::Postgres(url),
                None => {
                    return Err(format!(
                        "--backend postgres needs a server: pass --url postgres://user@host/db \
                         or set {PG_URL_VAR}"
                    ));
                }
            }
        }
    };
    if asynchronous {
        if !matches!(backend, Backend::Postgres(_)) {
            return Err("--async runs against PostgreSQL: add --backend postgres".to_owned());
        }
        if !cfg!(all(feature = "async", feature = "postgres")) {
            return Err(
                "this build has no async support: run with --features postgres,async".to_owned(),
            );
        }
    }
    Ok(Command::Run(Options {
        backend,
        clients,
        keys,
        limit,
        annotation,
        asynchronous,
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Unwrapped,
    Wrapped,
}

impl Run {
    fn name(self) -> &'static str {
        match self {
            Run::Unwrapped => "unwrapped",
            Run::Wrapped => "wrapped",
        }
    }

    /// The SQL `LIKE` pattern that matches this run's keys (and no other's).
    fn key_pattern(self) -> String {
        format!("{}-%", self.name())
    }

    /// One call: the payment's id, and whether it was replayed.
    fn call<C: LoadConn>(
        self,
        conn: &mut C,
        key: &str,
        annotation: Annotation,
    ) -> Result<(i64, bool), LoadError> {
        match self {
            Run::Unwrapped => pay_unwrapped(conn, key, AMOUNT).map(|id| (id, false)),
            Run::Wrapped => pay_with(annotation, conn, key, AMOUNT)
                .map(|outcome| (*outcome, outcome.is_replayed())),
        }
    }
}

/// What one client saw during one run.
struct ClientStats {
    started: Instant,
    finished: Instant,
    /// The latency of every call that returned `Ok`.
    latencies: Vec<Duration>,
    /// Calls answered from a stored result.
    replays: u64,
    retryable: u64,
    failed: u64,
    first_retryable: Option<String>,
    first_failure: Option<String>,
    /// The distinct answers of the wrapped run's hot key.
    answers: BTreeSet<i64>,
}

/// One run, all clients together.
struct RunStats {
    run: Run,
    wall: Duration,
    /// Sorted.
    latencies: Vec<Duration>,
    replays: u64,
    retryable: u64,
    failed: u64,
    first_retryable: Option<String>,
    first_failure: Option<String>,
    answers: BTreeSet<i64>,
}

impl RunStats {
    fn merge(run: Run, clients: Vec<ClientStats>) -> RunStats {
        let started = clients.iter().map(|c| c.started).min();
        let finished = clients.iter().map(|c| c.finished).max();
        let wall = match (started, finished) {
            (Some(started), Some(finished)) => finished.duration_since(started),
            _ => Duration::ZERO,
        };
        let mut stats = RunStats {
            run,
            wall,
            latencies: Vec::new(),
            replays: 0,
            retryable: 0,
            failed: 0,
            first_retryable: None,
            first_failure: None,
            answers: BTreeSet::new(),
        };
        for client in clients {
            stats.latencies.extend(client.latencies);
            stats.replays += client.replays;
            stats.retryable += client.retryable;
            stats.failed += client.failed;
            stats.first_retryable = stats.first_retryable.or(client.first_retryable);
            stats.first_failure = stats.first_failure.or(client.first_failure);
            stats.answers.extend(client.answers);
        }
        stats.latencies.sort_unstable();
        stats
    }

    /// Calls that returned `Ok`.
    fn calls(&self) -> u64 {
        self.latencies.len() as u64
    }

    fn throughput(&self) -> f64 {
        let wall = self.wall.as_secs_f64();
        if wall > 0.0 {
            self.calls() as f64 / wall
        } else {
            0.0
        }
    }

    /// The nearest-rank percentile `p` (0 to 100) of the latencies.
    fn percentile(&self, p: f64) -> Duration {
        let n = self.latencies.len();
        if n == 0 {
            return Duration::ZERO;
        }
        let rank = (p / 100.0 * n as f64).ceil() as usize;
        self.latencies[rank.clamp(1, n) - 1]
    }

    fn max(&self) -> Duration {
        self.latencies.last().copied().unwrap_or_default()
    }
}

fn print_header() {
    println!(
        "\n{:<10} {:>8} {:>8} {:>7} {:>9} {:>10} {:>10} {:>10} {:>10}",
        "run", "calls", "replays", "errors", "wall", "calls/s", "p50", "p99", "max"
    );
}

fn print_run(stats: &RunStats) {
    println!(
        "{:<10} {:>8} {:>8} {:>7} {:>8.3}s {:>10.1} {:>10} {:>10} {:>10}",
        stats.run.name(),
        stats.calls(),
        stats.replays,
        stats.retryable + stats.failed,
        stats.wall.as_secs_f64(),
        stats.throughput(),
        millis(stats.percentile(50.0)),
        millis(stats.percentile(99.0)),
        millis(stats.max()),
    );
    if let Some(e) = &stats.first_retryable {
        println!(
            "{:<10} {} retryable error(s), the first: {e}",
            "", stats.retryable
        );
    }
    if let Some(e) = &stats.first_failure {
        println!(
            "{:<10} {} NON-RETRYABLE error(s), the first: {e}",
            "", stats.failed
        );
    }
}

fn millis(d: Duration) -> String {
    format!("{:.3}ms", d.as_secs_f64() * 1_000.0)
}

fn ratio(wrapped: f64, unwrapped: f64) -> String {
    if unwrapped > 0.0 {
        format!("{:.2}x", wrapped / unwrapped)
    } else {
        "n/a".to_owned()
    }
}

/// One client's calls during one run: which comes next, and what the
/// finished ones returned. Shared by the threads of the blocking runs and
/// the tasks of `--async`.
struct Client<'a> {
    id: usize,
    run: Run,
    opts: &'a Options,
    tickets: &'a AtomicU64,
    done: &'a AtomicU64,
    deadline: Option<Instant>,
    next: u64,
    hot_key: String,
    stats: ClientStats,
}

impl<'a> Client<'a> {
    /// Starts the client's clock: call it once every client is ready.
    fn start(
        id: usize,
        run: Run,
        opts: &'a Options,
        tickets: &'a AtomicU64,
        done: &'a AtomicU64,
    ) -> Self {
        let latencies = match opts.limit {
            Limit::Count(n) => {
                Vec::with_capacity(usize::try_from(n).unwrap_or(0) / opts.clients + 1)
            }
            Limit::Duration(_) => Vec::new(),
        };
        let started = Instant::now();
        Client {
            id,
            run,
            opts,
            tickets,
            done,
            deadline: match opts.limit {
                Limit::Duration(d) => Some(started + d),
                Limit::Count(_) => None,
            },
            next: 0,
            hot_key: format!("{}-hot", run.name()),
            stats: ClientStats {
                started,
                finished: started,
                latencies,
                replays: 0,
                retryable: 0,
                failed: 0,
                first_retryable: None,
                first_failure: None,
                answers: BTreeSet::new(),
            },
        }
    }

    /// The next call's key, or `None` once the run's calls or time are used
    /// up.
    fn next_key(&mut self) -> Option<String> {
        let more = match (self.opts.limit, self.deadline) {
            (_, Some(deadline)) => Instant::now() < deadline,
            (Limit::Count(n), None) => self.tickets.fetch_add(1, Ordering::Relaxed) < n,
            (Limit::Duration(_), None) => false,
        };
        if !more {
            return None;
        }
        let key = match self.opts.keys {
            Keys::Distinct => format!("{}-{}-{}", self.run.name(), self.id, self.next),
            Keys::Hot => self.hot_key.clone(),
        };
        self.next += 1;
        Some(key)
    }

    /// Counts a finished call.
    fn record(&mut self, result: Result<(i64, bool), LoadError>, latency: Duration) {
        let stats = &mut self.stats;
        match result {
            Ok((answer, replayed)) => {
                stats.latencies.push(latency);
                stats.replays += u64::from(replayed);
                if self.run == Run::Wrapped && self.opts.keys == Keys::Hot {
                    stats.answers.insert(answer);
                }
            }
            Err(e) if e.is_retryable() => {
                stats.retryable += 1;
                stats.first_retryable.get_or_insert_with(|| e.to_string());
            }
            Err(e) => {
                stats.failed += 1;
                stats.first_failure.get_or_insert_with(|| e.to_string());
            }
        }
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    fn finish(mut self) -> ClientStats {
        self.stats.finished = Instant::now();
        self.stats
    }
}

/// One client: its own thread and connection, calls until the tickets or
/// the time run out.
fn client<C: LoadConn>(
    conn: &mut C,
    id: usize,
    run: Run,
    opts: &Options,
    start: &Barrier,
    tickets: &AtomicU64,
    done: &AtomicU64,
) -> ClientStats {
    start.wait();
    let mut client = Client::start(id, run, opts, tickets, done);
    while let Some(key) = client.next_key() {
        let call_started = Instant::now();
        let result = run.call(conn, &key, opts.annotation);
        client.record(result, call_started.elapsed());
    }
    client.finish()
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
fn progress_bar(run: Run, limit: Limit) -> Result<ProgressBar, BoxError> {
    let (len, template) = match limit {
        Limit::Count(n) => (n, "{prefix:>9} {wide_bar} {pos}/{len} calls [{elapsed}]"),
        Limit::Duration(d) => (
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            "{prefix:>9} {wide_bar} {msg}",
        ),
    };
    Ok(
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
            .with_style(ProgressStyle::with_template(template)?)
            .with_prefix(run.name()),
    )
}

/// Shows `calls` finished calls of a run that started at `started`.
fn show_progress(bar: &ProgressBar, limit: Limit, started: Instant, calls: u64) {
    match limit {
        Limit::Count(_) => bar.set_position(calls),
        Limit::Duration(d) => {
            let elapsed = started.elapsed().min(d);
            bar.set_position(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
            bar.set_message(format!(
                "{calls} calls, {:.1}s/{:.1}s",
                elapsed.as_secs_f64(),
                d.as_secs_f64()
            ));
        }
    }
}

/// Runs one workload on every connection at once.
fn run_workload<C: LoadConn>(
    conns: &mut [C],
    run: Run,
    opts: &Options,
) -> Result<RunStats, BoxError> {
    let start = Barrier::new(conns.len() + 1);
    let tickets = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let bar = progress_bar(run, opts.limit)?;

    let clients = std::thread::scope(|scope| {
        let handles: Vec<_> = conns
            .iter_mut()
            .enumerate()
            .map(|(id, conn)| {
                let (start, tickets, done) = (&start, &tickets, &done);
                scope.spawn(move || client(conn, id, run, opts, start, tickets, done))
            })
            .collect();
        start.wait();
        let started = Instant::now();
        while !handles
            .iter()
            .all(std::thread::ScopedJoinHandle::is_finished)
        {
            std::thread::sleep(Duration::from_millis(20));
            show_progress(&bar, opts.limit, started, done.load(Ordering::Relaxed));
        }
        handles
            .into_iter()
            .enumerate()
            .map(|(id, h)| h.join().map_err(|_| format!("client {id} panicked")))
            .collect::<Result<Vec<_>, _>>()
    });
    bar.finish_and_clear();
    Ok(RunStats::merge(run, clients?))
}

/// The outcome of the whole load: what to complain about.
struct Report {
    problems: Vec<String>,
}

/// Sets up the database, runs both workloads, prints them and checks that
/// the wrapped run's bodies ran once per key.
fn load<C: LoadConn>(
    opts: &Options,
    mut admin: C,
    connect: impl Fn() -> Result<C, BoxError>,
) -> Result<Report, BoxError> {
    prepare(&mut admin)?;
    let mut conns = (0..opts.clients)
        .map(|_| connect())
        .collect::<Result<Vec<_>, _>>()?;
    print_intro(opts);

    print_header();
    let unwrapped = run_workload(&mut conns, Run::Unwrapped, opts)?;
    print_run(&unwrapped);
    let wrapped = run_workload(&mut conns, Run::Wrapped, opts)?;
    print_run(&wrapped);
    drop(conns);
    check(opts, &mut admin, &unwrapped, &wrapped)
}

/// The record table and `payments`.
fn prepare<C: LoadConn>(admin: &mut C) -> Result<(), BoxError> {
    diesel_idempotent::migrate(admin)?;
    admin.create_payments()?;
    Ok(())
}

fn print_intro(opts: &Options) {
    let plural = if opts.clients == 1 { "" } else { "s" };
    println!(
        "{} client{plural}, {}, {}; wrapped: {}",
        opts.clients, opts.keys, opts.limit, opts.annotation
    );
}

/// Prints the ratios, then counts the wrapped run's effects on `admin` and
/// checks them against what its calls answered.
fn check<C: LoadConn>(
    opts: &Options,
    admin: &mut C,
    unwrapped: &RunStats,
    wrapped: &RunStats,
) -> Result<Report, BoxError> {
    println!(
        "\nwrapped / unwrapped: throughput {}, p50 {}, p99 {}",
        ratio(wrapped.throughput(), unwrapped.throughput()),
        ratio(
            wrapped.percentile(50.0).as_secs_f64(),
            unwrapped.percentile(50.0).as_secs_f64()
        ),
        ratio(
            wrapped.percentile(99.0).as_secs_f64(),
            unwrapped.percentile(99.0).as_secs_f64()
        ),
    );

    let mut problems = Vec::new();
    for stats in [unwrapped, wrapped] {
        if let Some(e) = &stats.first_failure {
            problems.push(format!(
                "{} call(s) of the {} run failed with an error that is not retryable; the first: {e}",
                stats.failed,
                stats.run.name()
            ));
        }
    }

    let executions = admin.wrapped_executions()?;
    let ok_keys = match opts.keys {
        Keys::Distinct => wrapped.calls(),
        Keys::Hot => wrapped.calls().min(1),
    };
    println!(
        "wrapped run: {} call(s) answered Ok, the body committed {} time(s) for {} key(s), \
         {} record(s), {} replay(s)",
        wrapped.calls(),
        executions.rows,
        executions.keys,
        executions.records,
        wrapped.replays,
    );
    // Every call that answered Ok either committed its body (a payment) or
    // was answered from a stored result.
    let fresh = wrapped.calls() - wrapped.replays;
    if i64::try_from(fresh).unwrap_or(i64::MAX) != executions.rows {
        problems.push(format!(
            "{fresh} call(s) answered Ok as having run the body, but {} payment(s) committed",
            executions.rows
        ));
    }
    if !executions.twice.is_empty() {
        let listed: Vec<String> = executions
            .twice
            .iter()
            .take(LISTED)
            .map(|(key, n)| format!("{key} ({n} times)"))
            .collect();
        let more = executions.twice.len().saturating_sub(LISTED);
        problems.push(format!(
            "the body committed more than once for {} key(s): {}{}",
            executions.twice.len(),
            listed.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    if executions.keys < i64::try_from(ok_keys).unwrap_or(i64::MAX) {
        problems.push(format!(
            "{ok_keys} key(s) answered Ok but only {} have a payment",
            executions.keys
        ));
    }
    if executions.records != executions.keys {
        problems.push(format!(
            "{} key(s) have a payment but {} have a record: the record and the body's \
             effects did not commit together",
            executions.keys, executions.records
        ));
    }
    if wrapped.answers.len() > 1 {
        problems.push(format!(
            "the callers of the hot key got {} different payment ids, among them {:?}",
            wrapped.answers.len(),
            wrapped.answers.iter().take(LISTED).collect::<Vec<_>>()
        ));
    }
    Ok(Report { problems })
}

#[cfg(feature = "sqlite")]
fn run_sqlite(opts: &Options) -> Result<Report, BoxError> {
    let dir = tempfile::Builder::new()
        .prefix("diesel-idempotent-load")
        .tempdir()?;
    let path = dir.path().join("load.sqlite3");
    let url = path.to_string_lossy().into_owned();
    let connect = || -> Result<SqliteConnection, BoxError> {
        let mut conn = SqliteConnection::establish(&url)?;
        // Writers wait for the database lock instead of failing at once.
        diesel::sql_query("PRAGMA busy_timeout = 60000").execute(&mut conn)?;
        // WAL without an fsync per commit, for both runs alike.
        diesel::sql_query("PRAGMA synchronous = NORMAL").execute(&mut conn)?;
        Ok(conn)
    };
    let mut admin = connect()?;
    diesel::sql_query("PRAGMA journal_mode = WAL").execute(&mut admin)?;
    println!(
        "SQLite {} (WAL, synchronous = NORMAL, busy_timeout = 60s)",
        path.display()
    );
    load(opts, admin, connect)
}

#[cfg(not(feature = "sqlite"))]
fn run_sqlite(_opts: &Options) -> Result<Report, BoxError> {
    Err("this build has no SQLite support: build with --features sqlite".into())
}

/// A database of this run's own on the server, dropped with this value.
#[cfg(feature = "postgres")]
struct PgDatabase {
    admin_url: String,
    url: String,
    name: String,
}

#[cfg(feature = "postgres")]
impl PgDatabase {
    fn create(admin_url: &str) -> Result<PgDatabase, BoxError> {
        let name = format!("load_{}", std::process::id());
        let mut admin = PgConnection::establish(admin_url)
            .map_err(|e| format!("cannot reach PostgreSQL: {e}"))?;
        diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut admin)?;
        Ok(PgDatabase {
            admin_url: admin_url.to_owned(),
            url: database_url(admin_url, &name),
            name,
        })
    }
}

#[cfg(feature = "postgres")]
impl Drop for PgDatabase {
    fn drop(&mut self) {
        let dropped = PgConnection::establish(&self.admin_url)
            .map_err(BoxError::from)
            .and_then(|mut admin| {
                diesel::sql_query(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .execute(&mut admin)
                .map_err(BoxError::from)
            });
        if let Err(e) = dropped {
            eprintln!("warning: could not drop the database {}: {e}", self.name);
        }
    }
}

/// `admin_url` with its database replaced by `name`.
#[cfg(feature = "postgres")]
fn database_url(admin_url: &str, name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (admin_url, String::new()),
    };
    let server = base
        .rsplit_once('/')
        .filter(|(server, _)| server.contains("//"))
        .map_or(base, |(server, _)| server);
    format!("{server}/{name}{query}")
}

#[cfg(feature = "postgres")]
fn run_postgres(admin_url: &str, opts: &Options) -> Result<Report, BoxError> {
    let db = PgDatabase::create(admin_url)?;
    println!(
        "PostgreSQL database {} (created for this run, dropped at the end)",
        db.name
    );
    let connect = || -> Result<PgConnection, BoxError> { Ok(PgConnection::establish(&db.url)?) };
    load(opts, connect()?, connect)
}

#[cfg(not(feature = "postgres"))]
fn run_postgres(_admin_url: &str, _opts: &Options) -> Result<Report, BoxError> {
    Err("this build has no PostgreSQL support: run with --features postgres".into())
}

/// `--async`: the same load on diesel-async, one tokio task per client and a
/// deadpool pool of `AsyncPgConnection`s.
#[cfg(all(feature = "async", feature = "postgres"))]
mod nonblocking {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use diesel::{Connection as _, ExpressionMethods as _, PgConnection, QueryResult};
    use diesel_async::pooled_connection::deadpool::Pool;
    use diesel_async::pooled_connection::{
        AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
    };
    use diesel_async::{AsyncConnection as _, AsyncPgConnection};
    use diesel_idempotent::{Mode, Outcome, Replay, idempotent};

    use super::{
        AMOUNT, Annotation, BoxError, Client, LoadError, Options, PgDatabase, Report, Run,
        RunStats, check, payments, prepare, print_header, print_intro, print_run, progress_bar,
        show_progress,
    };

    async fn insert_payment(
        conn: &mut AsyncPgConnection,
        key: &str,
        amount: i64,
    ) -> QueryResult<i64> {
        // In this function only: its methods would shadow others' (`load`).
        use diesel_async::RunQueryDsl as _;
        diesel::insert_into(payments::table)
            .values((payments::key.eq(key), payments::amount.eq(amount)))
            .returning(payments::id)
            .get_result(conn)
            .await
    }

    #[idempotent(key = key, name = "load.pay", ttl = "1h")]
    async fn pay(
        conn: &mut AsyncPgConnection,
        key: &str,
        amount: i64,
    ) -> Result<Outcome<i64>, LoadError> {
        Ok(insert_payment(conn, key, amount).await?.into())
    }

    #[idempotent(key = key, name = "load.pay", ttl = "1h", mode = "optimistic")]
    async fn pay_optimistic(
        conn: &mut AsyncPgConnection,
        key: &str,
        amount: i64,
    ) -> Result<Outcome<i64>, LoadError> {
        Ok(insert_payment(conn, key, amount).await?.into())
    }

    #[idempotent(key = key, name = "load.pay", ttl = "1h", replay = "read_first")]
    async fn pay_read_first(
        conn: &mut AsyncPgConnection,
        key: &str,
        amount: i64,
    ) -> Result<Outcome<i64>, LoadError> {
        Ok(insert_payment(conn, key, amount).await?.into())
    }

    #[idempotent(
        key = key,
        name = "load.pay",
        ttl = "1h",
        mode = "optimistic",
        replay = "read_first"
    )]
    async fn pay_optimistic_read_first(
        conn: &mut AsyncPgConnection,
        key: &str,
        amount: i64,
    ) -> Result<Outcome<i64>, LoadError> {
        Ok(insert_payment(conn, key, amount).await?.into())
    }

    /// One call of `run`: the payment's id, and whether it was replayed.
    async fn call(
        run: Run,
        conn: &mut AsyncPgConnection,
        key: &str,
        options: Annotation,
    ) -> Result<(i64, bool), LoadError> {
        let outcome = match (run, options.mode, options.replay) {
            (Run::Unwrapped, _, _) => {
                return conn
                    .transaction(
                        async |conn: &mut AsyncPgConnection| -> Result<i64, LoadError> {
                            Ok(insert_payment(conn, key, AMOUNT).await?)
                        },
                    )
                    .await
                    .map(|id| (id, false));
            }
            (Run::Wrapped, Mode::ClaimFirst, Replay::InTransaction) => pay(conn, key, AMOUNT).await,
            (Run::Wrapped, Mode::Optimistic, Replay::InTransaction) => {
                pay_optimistic(conn, key, AMOUNT).await
            }
            (Run::Wrapped, Mode::ClaimFirst, Replay::ReadFirst) => {
                pay_read_first(conn, key, AMOUNT).await
            }
            (Run::Wrapped, Mode::Optimistic, Replay::ReadFirst) => {
                pay_optimistic_read_first(conn, key, AMOUNT).await
            }
        }?;
        Ok((*outcome, outcome.is_replayed()))
    }

    /// Runs one workload: a task per client, each call on a connection
    /// checked out of `pool` for it.
    async fn run_workload(
        pool: &Pool<AsyncPgConnection>,
        run: Run,
        opts: &Arc<Options>,
    ) -> Result<RunStats, BoxError> {
        // Calls handed out, calls finished.
        let counters = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let start = Arc::new(tokio::sync::Barrier::new(opts.clients + 1));
        let bar = progress_bar(run, opts.limit)?;
        let tasks: Vec<_> = (0..opts.clients)
            .map(|id| {
                let (pool, opts) = (pool.clone(), Arc::clone(opts));
                let (counters, start) = (Arc::clone(&counters), Arc::clone(&start));
                tokio::spawn(async move {
                    start.wait().await;
                    let mut client = Client::start(id, run, &opts, &counters.0, &counters.1);
                    while let Some(key) = client.next_key() {
                        let call_started = Instant::now();
                        let mut conn = pool.get().await.map_err(|e| {
                            format!("client {id}: no connection from the pool: {e}")
                        })?;
                        let result = call(run, &mut conn, &key, opts.annotation).await;
                        drop(conn);
                        client.record(result, call_started.elapsed());
                    }
                    Ok::<_, String>(client.finish())
                })
            })
            .collect();
        start.wait().await;
        let started = Instant::now();
        while !tasks.iter().all(tokio::task::JoinHandle::is_finished) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            show_progress(
                &bar,
                opts.limit,
                started,
                counters.1.load(Ordering::Relaxed),
            );
        }
        bar.finish_and_clear();
        let mut clients = Vec::with_capacity(tasks.len());
        for (id, task) in tasks.into_iter().enumerate() {
            clients.push(task.await.map_err(|_| format!("client {id} panicked"))??);
        }
        Ok(RunStats::merge(run, clients))
    }

    pub(super) fn run_postgres(admin_url: &str, opts: &Options) -> Result<Report, BoxError> {
        let db = PgDatabase::create(admin_url)?;
        println!(
            "PostgreSQL database {} (created for this run, dropped at the end)",
            db.name
        );
        let mut admin = PgConnection::establish(&db.url)?;
        prepare(&mut admin)?;
        let opts = Arc::new(opts.clone());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let workers = rt.metrics().num_workers();
        let (unwrapped, wrapped) = rt.block_on(async {
            let mut config = ManagerConfig::default();
            config.recycling_method = RecyclingMethod::Fast;
            let manager = AsyncDieselConnectionManager::new_with_config(db.url.clone(), config);
            let pool = Pool::builder(manager).max_size(opts.clients).build()?;
            // Every connection opened before the runs, as the blocking
            // clients' are.
            let mut opened = Vec::with_capacity(opts.clients);
            for _ in 0..opts.clients {
                opened.push(pool.get().await?);
            }
            drop(opened);
            println!(
                "async: {} tokio task(s) on {workers} worker thread(s), a deadpool pool of {} \
                 AsyncPgConnection(s), one checkout per call",
                opts.clients, opts.clients
            );
            print_intro(&opts);
            print_header();
            let unwrapped = run_workload(&pool, Run::Unwrapped, &opts).await?;
            print_run(&unwrapped);
            let wrapped = run_workload(&pool, Run::Wrapped, &opts).await?;
            print_run(&wrapped);
            Ok::<_, BoxError>((unwrapped, wrapped))
        })?;
        drop(rt);
        check(&opts, &mut admin, &unwrapped, &wrapped)
    }
}

#[cfg(all(feature = "async", feature = "postgres"))]
use nonblocking::run_postgres as run_postgres_async;

#[cfg(not(all(feature = "async", feature = "postgres")))]
fn run_postgres_async(_admin_url: &str, _opts: &Options) -> Result<Report, BoxError> {
    Err("this build has no async support: run with --features postgres,async".into())
}

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(opts)) => opts,
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let report = match &opts.backend {
        Backend::Sqlite => run_sqlite(&opts),
        Backend::Postgres(url) if opts.asynchronous => run_postgres_async(url, &opts),
        Backend::Postgres(url) => run_postgres(url, &opts),
    };
    match report {
        Ok(report) if report.problems.is_empty() => {
            println!("no key's body committed twice.");
            ExitCode::SUCCESS
        }
        Ok(report) => {
            eprintln!("\nFAILED:");
            for problem in report.problems {
                eprintln!("  - {problem}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
