//! Concurrency at scale: 64 callers race for one key per round, 200 rounds,
//! on every backend (threads, each on its own connection), and on PostgreSQL
//! also from 8 separate OS processes of 8 connections each.
//!
//! The body must run exactly once per key, and every caller must get the
//! stored result, or a documented error (`Error::InFlight`, or one whose
//! `is_retryable()` is true) that a bounded retry turns into the same stored
//! result. Any other error fails the test. Each test prints its figures; run
//! `./scripts/test.sh --test scale -- --nocapture` to see them.

mod common;

use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Barrier, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use common::{AppError, Backend, NewPayment, Payment, TestConn, Then, create_payment};
use diesel_idempotent::{Error, ManualClock};

/// Concurrent callers per key.
const CALLERS: usize = 64;
/// Keys, one per round.
const ROUNDS: usize = 200;
/// Calls one caller makes at most before a documented error fails the test.
const MAX_ATTEMPTS: usize = 10;
/// The namespace `common::create_payment` stores its records under.
const NAMESPACE: &str = "tests.create_payment";

/// Every caller's clock: records live an hour, nothing here expires.
static CLOCK: ManualClock = ManualClock::at_unix_seconds(1_790_000_000);

/// One test of this binary at a time: each backend's figures are its own,
/// not shared with another backend's 64 threads on the same few cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The documented error's kind, or `None` for an error that fails the test.
fn documented(err: &AppError) -> Option<String> {
    use diesel::result::Error as Diesel;
    match err.idempotency()? {
        Error::InFlight { .. } => Some("InFlight".to_owned()),
        e if e.is_retryable() => Some(match e {
            Error::Database(Diesel::DatabaseError(kind, _)) => format!("Database({kind:?})"),
            Error::Database(other) => format!("Database({})", variant(other)),
            other => variant(other),
        }),
        _ => None,
    }
}

/// The variant name in a value's `Debug` output.
fn variant(value: &impl std::fmt::Debug) -> String {
    format!("{value:?}")
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect()
}

/// What one caller got: the stored result, after retrying these errors.
struct Settled {
    payment: Payment,
    retried: Vec<String>,
    latency: Duration,
}

/// Calls until the stored result comes back. A documented error is retried
/// right away (at most `MAX_ATTEMPTS` calls in all); any other error, or a
/// documented one that persists, is returned as the failure's description.
fn call_until_settled<C: TestConn>(
    conn: &mut C,
    key: &str,
    amount: i64,
) -> Result<Settled, String> {
    let started = Instant::now();
    let req = NewPayment::eur(amount);
    let mut retried = Vec::new();
    loop {
        match create_payment(conn, &CLOCK, key, &req, Then::Succeed) {
            Ok(payment) => {
                return Ok(Settled {
                    payment,
                    retried,
                    latency: started.elapsed(),
                });
            }
            Err(e) => match documented(&e) {
                Some(kind) if retried.len() + 1 < MAX_ATTEMPTS => retried.push(kind),
                Some(kind) => {
                    return Err(format!(
                        "{key}: still {kind} after {MAX_ATTEMPTS} attempts: {e}"
                    ));
                }
                None => {
                    return Err(format!(
                        "{key}: undocumented error after {} retries: {e} ({e:?})",
                        retried.len()
                    ));
                }
            },
        }
    }
}

/// Counts over many calls.
#[derive(Default)]
struct Tally {
    calls: usize,
    /// Calls whose first attempt returned `Ok`.
    first_try: usize,
    /// Calls that needed at least one retry.
    retried_calls: usize,
    /// Documented errors retried, per kind.
    kinds: BTreeMap<String, usize>,
    /// The most retries one call needed.
    max_retries: usize,
    latencies: Vec<Duration>,
}

impl Tally {
    fn add(&mut self, settled: &Settled) {
        self.calls += 1;
        if settled.retried.is_empty() {
            self.first_try += 1;
        } else {
            self.retried_calls += 1;
        }
        for kind in &settled.retried {
            *self.kinds.entry(kind.clone()).or_default() += 1;
        }
        self.max_retries = self.max_retries.max(settled.retried.len());
        self.latencies.push(settled.latency);
    }

    fn merge(&mut self, other: Tally) {
        self.calls += other.calls;
        self.first_try += other.first_try;
        self.retried_calls += other.retried_calls;
        for (kind, n) in other.kinds {
            *self.kinds.entry(kind).or_default() += n;
        }
        self.max_retries = self.max_retries.max(other.max_retries);
        self.latencies.extend(other.latencies);
    }

    /// `InFlight:2,Database(SerializationFailure):1`, or `none`.
    fn kinds_field(&self) -> String {
        if self.kinds.is_empty() {
            return "none".to_owned();
        }
        let kinds: Vec<String> = self.kinds.iter().map(|(k, n)| format!("{k}:{n}")).collect();
        kinds.join(",")
    }

    /// (p50, p99, max) of the call latencies, in microseconds.
    fn latency_us(&self) -> (u128, u128, u128) {
        let mut sorted: Vec<u128> = self.latencies.iter().map(Duration::as_micros).collect();
        sorted.sort_unstable();
        let at =
            |q: usize| sorted.get((sorted.len() * q / 100).min(sorted.len().saturating_sub(1)));
        (
            at(50).copied().unwrap_or(0),
            at(99).copied().unwrap_or(0),
            sorted.last().copied().unwrap_or(0),
        )
    }

    /// The figures every test prints.
    fn summary(&self, wall: Duration) -> String {
        format!(
            "{} calls in {:.2} s ({:.0} calls/s); Ok at first try: {}; needed a retry: {} \
             (retried errors by kind: {}); max retries for one call: {}",
            self.calls,
            wall.as_secs_f64(),
            self.calls as f64 / wall.as_secs_f64(),
            self.first_try,
            self.retried_calls,
            self.kinds_field(),
            self.max_retries,
        )
    }
}

/// What one thread saw over all rounds.
struct Caller {
    /// Per round: the stored result, or why the call failed.
    results: Vec<Result<Payment, String>>,
    tally: Tally,
    started: Instant,
    finished: Instant,
}

/// `threads` threads, each on its own connection, call with key
/// `{prefix}{round}` for every round, all together (a barrier per round).
/// A failing call is recorded and the thread goes on meeting the barrier, so
/// one failure reports instead of leaving the others waiting.
fn race<C, F>(threads: usize, rounds: usize, prefix: &str, connect: F) -> Vec<Caller>
where
    C: TestConn,
    F: Fn() -> C + Sync,
{
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut conn = panic::catch_unwind(AssertUnwindSafe(&connect))
                        .map_err(|_| "could not connect (see the panic above)".to_owned());
                    let mut caller = Caller {
                        results: Vec::with_capacity(rounds),
                        tally: Tally::default(),
                        started: Instant::now(),
                        finished: Instant::now(),
                    };
                    for round in 0..rounds {
                        barrier.wait();
                        if round == 0 {
                            caller.started = Instant::now();
                        }
                        let key = format!("{prefix}{round}");
                        let result = conn
                            .as_mut()
                            .map_err(|e| e.clone())
                            .and_then(|conn| call_until_settled(conn, &key, round as i64));
                        caller.results.push(result.map(|settled| {
                            caller.tally.add(&settled);
                            settled.payment
                        }));
                    }
                    caller.finished = Instant::now();
                    caller
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a caller thread panicked"))
            .collect()
    })
}

/// Checks that every caller got a result, that all got the same one per
/// round (the body's, for that round's amount), and returns it per round.
fn agreed_results(label: &str, callers: &[Caller], rounds: usize) -> Vec<Payment> {
    let failures: Vec<String> = callers
        .iter()
        .flat_map(|c| c.results.iter().filter_map(|r| r.as_ref().err().cloned()))
        .collect();
    assert!(
        failures.is_empty(),
        "[{label}] {} call(s) failed; the first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    (0..rounds)
        .map(|round| {
            let first = callers[0].results[round].as_ref().unwrap();
            for (i, caller) in callers.iter().enumerate() {
                assert_eq!(
                    caller.results[round].as_ref().unwrap(),
                    first,
                    "[{label}] round {round}: caller {i} got another result than caller 0"
                );
            }
            assert_eq!(first.amount, round as i64, "[{label}] round {round}");
            first.clone()
        })
        .collect()
}

/// Asserts one execution and one record per key, each record holding the
/// result the callers got.
fn assert_stored<C: TestConn>(label: &str, conn: &mut C, prefix: &str, seen: &[Payment]) {
    let executions = conn.count_payments().expect("count payments");
    let records = conn.count_records().expect("count records");
    assert_eq!(
        executions,
        seen.len() as i64,
        "[{label}] exactly one execution per key"
    );
    assert_eq!(records, seen.len() as i64, "[{label}] one record per key");
    for (round, payment) in seen.iter().enumerate() {
        let record = conn
            .load_record(NAMESPACE, &format!("{prefix}{round}"))
            .expect("the round's record");
        let stored: Payment =
            serde_json::from_str(record.response.as_deref().expect("a completed record"))
                .expect("a stored Payment");
        assert_eq!(
            &stored, payment,
            "[{label}] round {round}: the callers got the stored result"
        );
    }
}

fn duplicates_at_scale<B: Backend>() {
    let _one = one_at_a_time();
    let db = B::fresh();
    let prefix = "round-";
    let callers = race(CALLERS, ROUNDS, prefix, || db.connect());
    let seen = agreed_results(B::NAME, &callers, ROUNDS);
    assert_stored(B::NAME, &mut db.connect(), prefix, &seen);

    let started = callers.iter().map(|c| c.started).min().unwrap();
    let finished = callers.iter().map(|c| c.finished).max().unwrap();
    let mut tally = Tally::default();
    for caller in callers {
        tally.merge(caller.tally);
    }
    let (p50, p99, max) = tally.latency_us();
    println!(
        "[{}] {CALLERS} threads (one connection each) x {ROUNDS} rounds, one key per round: {}; \
         call latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {ROUNDS} body executions, \
         {ROUNDS} records",
        B::NAME,
        tally.summary(finished - started),
        p50 as f64 / 1e3,
        p99 as f64 / 1e3,
        max as f64 / 1e3,
    );
}

/// The races above rarely produce a documented error, so the classification
/// their retries rely on is checked here.
#[test]
fn documented_errors_are_the_retryable_ones() {
    use diesel::result::{DatabaseErrorKind, Error as Diesel};
    let in_flight = Error::InFlight {
        namespace: NAMESPACE.to_owned(),
        key: "k".to_owned(),
    };
    assert_eq!(documented(&in_flight.into()).as_deref(), Some("InFlight"));
    let deadlock = Diesel::DatabaseError(
        DatabaseErrorKind::SerializationFailure,
        Box::new("Deadlock found when trying to get lock".to_owned()),
    );
    assert_eq!(
        documented(&Error::Database(deadlock).into()).as_deref(),
        Some("Database(SerializationFailure)")
    );
    // Not on the same connection: Diesel no longer knows its state.
    assert_eq!(
        documented(&Error::Database(Diesel::BrokenTransactionManager).into()),
        None
    );
    let locked = Diesel::DatabaseError(
        DatabaseErrorKind::Unknown,
        Box::new("database is locked".to_owned()),
    );
    assert_eq!(
        documented(&Error::Database(locked).into()).as_deref(),
        Some("Database(Unknown)"),
        "a busy SQLite file is transient"
    );
    let duplicate = Diesel::DatabaseError(
        DatabaseErrorKind::UniqueViolation,
        Box::new("duplicate key".to_owned()),
    );
    assert_eq!(documented(&Error::Database(duplicate).into()), None);
    assert_eq!(documented(&AppError::Declined), None);
    assert_eq!(documented(&Error::InvalidBatchSize.into()), None);
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite_64_duplicates_x_200_rounds() {
    duplicates_at_scale::<common::Sqlite>();
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_64_duplicates_x_200_rounds() {
    duplicates_at_scale::<common::Postgres>();
}

#[cfg(feature = "mysql")]
#[test]
fn mysql_64_duplicates_x_200_rounds() {
    duplicates_at_scale::<common::Mysql>();
}

/// PostgreSQL from separate OS processes: this test binary, re-executed as
/// `PROCESSES` children that run [`process_worker`].
#[cfg(feature = "postgres")]
mod processes {
    use std::io::Read;
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;

    use diesel::prelude::*;
    use diesel::sql_types::{BigInt, Text};

    use super::*;

    pub const PROCESSES: usize = 8;
    pub const THREADS_PER_PROCESS: usize = CALLERS / PROCESSES;
    /// The advisory lock that holds the workers back until all are ready.
    pub const START_LOCK: i64 = 4242;
    pub const URL_VAR: &str = "DIESEL_IDEMPOTENT_SCALE_WORKER_URL";
    pub const ROUNDS_VAR: &str = "DIESEL_IDEMPOTENT_SCALE_WORKER_ROUNDS";
    pub const INDEX_VAR: &str = "DIESEL_IDEMPOTENT_SCALE_WORKER_INDEX";
    pub const PREFIX: &str = "proc-round-";
    /// The line a worker prints its figures and results on.
    pub const MARKER: &str = "SCALE-WORKER";
    /// How long the workers may take, from their start to their exit.
    const DEADLINE: Duration = Duration::from_secs(300);

    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = Text)]
        name: String,
    }

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }

    /// `url` with its database replaced by `name`.
    fn with_database(url: &str, name: &str) -> String {
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (url, String::new()),
        };
        let server = base
            .rsplit_once('/')
            .filter(|(server, _)| server.contains("//"))
            .map_or(base, |(server, _)| server);
        format!("{server}/{name}{query}")
    }

    /// The worker processes; any still running when this drops is killed.
    struct Workers(Vec<Child>);

    impl Drop for Workers {
        fn drop(&mut self) {
            for child in &mut self.0 {
                if matches!(child.try_wait(), Ok(None)) {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }

    /// Returns once `n` sessions wait for the start lock; fails if a worker
    /// exits first or none arrive within 60 s.
    fn wait_for_start_lock_waiters(conn: &mut PgConnection, workers: &mut Workers, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let waiting = diesel::sql_query(
                "SELECT COUNT(*) AS n FROM pg_locks \
                 WHERE locktype = 'advisory' AND NOT granted \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 AND classid = 0 AND objid = $1 AND objsubid = 1",
            )
            .bind::<BigInt, _>(START_LOCK)
            .get_result::<Count>(conn)
            .expect("pg_locks")
            .n;
            if waiting >= n as i64 {
                return;
            }
            for (i, child) in workers.0.iter_mut().enumerate() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("worker {i} exited before the start ({status})");
                }
            }
            assert!(
                Instant::now() < deadline,
                "only {waiting} of {n} workers reached the start lock within 60 s"
            );
            std::thread::yield_now();
        }
    }

    /// The `kinds` field of a summary line, as `Tally::kinds_field` wrote it.
    fn parse_kinds(field: &str) -> BTreeMap<String, usize> {
        if field == "none" {
            return BTreeMap::new();
        }
        field
            .split(',')
            .map(|pair| {
                let (kind, n) = pair.rsplit_once(':').expect("kind:count");
                (kind.to_owned(), n.parse().expect("a count"))
            })
            .collect()
    }

    /// A worker's summary line, parsed.
    struct Report {
        tally: Tally,
        elapsed_ms: u64,
        ids: Vec<i64>,
        /// The line without the ids, for the figures.
        line: String,
    }

    fn parse_report(index: usize, stdout: &str) -> Report {
        let line = stdout
            .lines()
            // libtest prints `test process_worker ... ` before it.
            .find_map(|line| line.find(MARKER).map(|at| &line[at..]))
            .unwrap_or_else(|| panic!("worker {index} printed no {MARKER} line:\n{stdout}"));
        let fields: BTreeMap<&str, &str> = line
            .split_whitespace()
            .skip(1)
            .map(|field| field.split_once('=').expect("key=value"))
            .collect();
        let number = |key: &str| -> usize {
            fields[key]
                .parse()
                .unwrap_or_else(|_| panic!("worker {index}: {key} in {line}"))
        };
        assert_eq!(number("index"), index, "worker {index} reports as another");
        let tally = Tally {
            calls: number("calls"),
            first_try: number("first_try"),
            retried_calls: number("retried"),
            kinds: parse_kinds(fields["kinds"]),
            max_retries: number("max_retries"),
            latencies: Vec::new(),
        };
        let ids = fields["ids"]
            .split(',')
            .map(|id| id.parse().expect("an id"))
            .collect();
        Report {
            tally,
            elapsed_ms: number("elapsed_ms") as u64,
            ids,
            line: line
                .split_whitespace()
                .filter(|f| !f.starts_with("ids="))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    pub fn run() {
        let _one = one_at_a_time();
        let db = common::Postgres::fresh();
        let mut conn = db.connect();
        let name = diesel::sql_query("SELECT current_database() AS name")
            .get_result::<Name>(&mut conn)
            .expect("current_database()")
            .name;
        let server = std::env::var(common::PG_URL_VAR).expect("the server URL");
        let url = with_database(&server, &name);

        let mut gate = db.connect();
        diesel::sql_query("SELECT pg_advisory_lock($1)")
            .bind::<BigInt, _>(START_LOCK)
            .execute(&mut gate)
            .expect("take the start lock");

        let exe = std::env::current_exe().expect("the test binary");
        let mut workers = Workers(Vec::with_capacity(PROCESSES));
        for index in 0..PROCESSES {
            let child = Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "process_worker",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(URL_VAR, &url)
                .env(ROUNDS_VAR, ROUNDS.to_string())
                .env(INDEX_VAR, index.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start a worker process");
            workers.0.push(child);
        }
        let (done_tx, done_rx) = mpsc::channel();
        for (index, child) in workers.0.iter_mut().enumerate() {
            let mut stdout = child.stdout.take().expect("piped stdout");
            let done_tx = done_tx.clone();
            std::thread::spawn(move || {
                let mut out = String::new();
                let _ = stdout.read_to_string(&mut out);
                let _ = done_tx.send((index, out));
            });
        }
        drop(done_tx);

        wait_for_start_lock_waiters(&mut conn, &mut workers, PROCESSES);
        let started = Instant::now();
        diesel::sql_query("SELECT pg_advisory_unlock($1)")
            .bind::<BigInt, _>(START_LOCK)
            .execute(&mut gate)
            .expect("release the start lock");

        let mut outputs = vec![String::new(); PROCESSES];
        for _ in 0..PROCESSES {
            let left = DEADLINE.saturating_sub(started.elapsed());
            let (index, out) = done_rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!("the workers did not finish within {DEADLINE:?}; killing them")
            });
            outputs[index] = out;
        }
        for (index, child) in workers.0.iter_mut().enumerate() {
            let status = child.wait().expect("wait for a worker");
            assert!(
                status.success(),
                "worker {index} failed ({status}); its output:\n{}",
                outputs[index]
            );
        }
        let wall = started.elapsed();

        let reports: Vec<Report> = outputs
            .iter()
            .enumerate()
            .map(|(index, out)| parse_report(index, out))
            .collect();
        let seen: Vec<Payment> = (0..ROUNDS)
            .map(|round| {
                let record = conn
                    .load_record(NAMESPACE, &format!("{PREFIX}{round}"))
                    .expect("the round's record");
                let stored: Payment =
                    serde_json::from_str(record.response.as_deref().expect("a completed record"))
                        .expect("a stored Payment");
                assert_eq!(stored.amount, round as i64, "round {round}");
                for (index, report) in reports.iter().enumerate() {
                    assert_eq!(
                        report.ids.get(round),
                        Some(&stored.id),
                        "round {round}: worker {index} got another result than the stored one"
                    );
                }
                stored
            })
            .collect();
        assert_stored("postgres, processes", &mut conn, PREFIX, &seen);

        let mut tally = Tally::default();
        for report in &reports {
            println!("[postgres, processes]   {}", report.line);
        }
        let slowest = reports.iter().map(|r| r.elapsed_ms).max().unwrap_or(0);
        for report in reports {
            tally.merge(report.tally);
        }
        assert_eq!(tally.calls, CALLERS * ROUNDS, "every caller reported");
        println!(
            "[postgres, processes] {PROCESSES} processes x {THREADS_PER_PROCESS} threads \
             (one connection each) x {ROUNDS} rounds, the same keys in the same order: {} \
             (wall time from the start lock's release to the last exit; the slowest worker \
             took {:.2} s); {ROUNDS} body executions, {ROUNDS} records",
            tally.summary(wall),
            slowest as f64 / 1e3,
        );
    }

    /// One worker process: `THREADS_PER_PROCESS` threads on their own
    /// connections wait behind the start lock, then call for every key in
    /// order, meeting at a barrier per round (within this process only).
    pub fn work(url: &str, rounds: usize, index: usize) {
        let start = Barrier::new(THREADS_PER_PROCESS + 1);
        let began = std::cell::Cell::new(None);
        let callers = std::thread::scope(|s| {
            let racing = s.spawn(|| {
                race(THREADS_PER_PROCESS, rounds, PREFIX, || {
                    let conn = PgConnection::establish(url);
                    start.wait(); // connected (or failed: the round reports it)
                    start.wait(); // the start lock was granted
                    conn.expect("connect to the test database")
                })
            });
            let mut gate = PgConnection::establish(url).expect("connect to the test database");
            start.wait();
            diesel::sql_query("SELECT pg_advisory_lock_shared($1)")
                .bind::<BigInt, _>(START_LOCK)
                .execute(&mut gate)
                .expect("wait for the start lock");
            began.set(Some(Instant::now()));
            start.wait();
            diesel::sql_query("SELECT pg_advisory_unlock_shared($1)")
                .bind::<BigInt, _>(START_LOCK)
                .execute(&mut gate)
                .expect("release the start lock");
            racing.join().expect("the caller threads")
        });
        let elapsed = began.get().expect("started").elapsed();
        let label = format!("worker {index}");
        let seen = agreed_results(&label, &callers, rounds);
        let mut tally = Tally::default();
        for caller in callers {
            tally.merge(caller.tally);
        }
        let (p50, p99, max) = tally.latency_us();
        let ids: Vec<String> = seen.iter().map(|p| p.id.to_string()).collect();
        println!(
            "{MARKER} index={index} calls={} first_try={} retried={} kinds={} max_retries={} \
             elapsed_ms={} p50_us={p50} p99_us={p99} max_us={max} ids={}",
            tally.calls,
            tally.first_try,
            tally.retried_calls,
            tally.kinds_field(),
            tally.max_retries,
            elapsed.as_millis(),
            ids.join(","),
        );
    }
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_8_processes_x_8_connections_x_200_rounds() {
    processes::run();
}

/// The body of one child process of the test above; it does nothing
/// without the variables that test sets.
#[cfg(feature = "postgres")]
#[test]
#[ignore = "a worker process of postgres_8_processes_x_8_connections_x_200_rounds"]
fn process_worker() {
    let (Ok(url), Ok(rounds), Ok(index)) = (
        std::env::var(processes::URL_VAR),
        std::env::var(processes::ROUNDS_VAR),
        std::env::var(processes::INDEX_VAR),
    ) else {
        println!("process_worker: started without its parent test; nothing to do");
        return;
    };
    processes::work(
        &url,
        rounds.parse().expect("a round count"),
        index.parse().expect("a worker index"),
    );
}
