//! Purging while serving, on PostgreSQL: `diesel_idempotent::purge_expired`
//! deletes a million expired records while clients keep making
//! `#[idempotent]` calls; the tool checks that no call waits more than
//! 50 ms on the purge, and that every call ran its body exactly once.
//!
//! ```text
//! cargo run --release --features postgres --example purge_while_serving -- [OPTIONS]
//! cargo run --release --features postgres --example purge_while_serving -- \
//!     --database-url postgres://user@host/purge_check --records 100000
//! ```
//!
//! Options (`--option value` or `--option=value`):
//!
//! | option | meaning |
//! |---|---|
//! | `--database-url URL` | the database to create for the run, which must not exist yet (it is created through the server's `postgres` database and dropped at the end); default: `purge_while_serving_<pid>` on the server of `$DIESEL_IDEMPOTENT_PG_URL` |
//! | `--records N` | expired records to purge (default 1000000) |
//! | `--clients N` | concurrent clients, each on its own thread and connection (default 8) |
//! | `--batch N` | the purge's `batch_size` (default 1000) |
//! | `--baseline D` | how long the clients run before the purge starts (`10s`, `500ms`, `1m`; default 30s, about as long as the default purge takes on 2 cores) |
//! | `--expired-percent P` | the share of calls that use an expired record's key (default 10) |
//!
//! ## The run
//!
//! 1. **Setup**: creates the database, runs the migrations
//!    (`diesel_idempotent::migrate`), creates the body's table
//!    `purge_payments`, inserts N expired records of the function's
//!    namespace with one `INSERT .. SELECT generate_series` (keys
//!    `expired-0`, `expired-1`, ..., which expired from two days ago on,
//!    one millisecond apart, so the purge's order is the keys' order), and
//!    runs `VACUUM ANALYZE` so that no autovacuum of the load lands in the
//!    baseline.
//! 2. **Clients**: each thread makes `pay` calls back to back on its own
//!    `PgConnection`. `pay` is `#[idempotent(key = key, name = "purge.pay",
//!    ttl = "1h")]` with the default claim-first mode and
//!    `on_conflict = "wait"`; its body is one INSERT into `purge_payments`.
//!    Every call has a key of its own, so every call runs the body. The
//!    mix, per call: with probability P% the key of an expired record (a
//!    client retrying a long-expired request), otherwise a fresh key. Half
//!    of the expired keys are drawn uniformly among the N records; the
//!    other half **at the purge's front**: one `SELECT` before the call
//!    (not timed) finds the expired record that comes first in the purge's
//!    order (`expires_at`), and the call takes a key less than one batch
//!    after it, a record that the running or the next batch of the purge
//!    locks. A call with an expired key takes the record over (an UPDATE)
//!    or, once the purge deleted it, inserts it again: that is where the
//!    purge's row locks can make a call wait (a take-over waits for the
//!    batch that locked the row, an insert for the batch that deleted it).
//! 3. **Phases**, same clients, same server, one after the other: a 2 s
//!    warm-up; the **baseline** (`--baseline`, no purge); then the
//!    **purge**: `purge_expired(conn, batch)` on another connection, run
//!    to completion, each of its batch statements timed (Diesel's
//!    instrumentation on that connection). A baseline call is one that
//!    started and finished before the purge began; a purge call is one
//!    that started while the purge ran. The clients stop when it returns.
//!
//! ## The figures
//!
//! A call's **claim latency** is the time from the call to the first line
//! of its body: the transaction's `BEGIN`, the fingerprint, and the claim
//! (the insert-or-load statement and, for an expired record, the take-over
//! or the insert again): every statement of the call that can wait for the
//! purge. The whole call (the body's INSERT, the result's UPDATE and the
//! `COMMIT` added) is reported too. For each phase the tool prints the
//! calls, the claims over 50 ms, and the p50, p99 and maximum of both, for
//! all calls and for each kind of key; for the purge its rows, duration, rows per second and its
//! batches' p50, p99 and longest.
//!
//! ## The criterion
//!
//! "No call waits more than 50 ms on the purge", measured as the claim
//! latency's p99 with and without the purge running, in the same run:
//! p99(purge) − p99(baseline) ≤ 50 ms, over all calls.
//!
//! With 5% of the calls at the purge's front (the default), the p99 of all
//! calls lies among those calls' slowest fifth: a purge that made many of
//! them wait more than 50 ms fails the rule. Single waits are reported, not
//! judged: the maximum with and without the purge, the claims over 50 ms in
//! each phase, and the per-kind table (the calls at the purge's front
//! against the same calls in the baseline). A maximum compares one stall
//! of the machine with another (a baseline on a loaded machine has stalls
//! of hundreds of milliseconds with no purge at all), and the longest
//! batch bounds a lock wait: a call waits on a row lock of the purge only
//! until that batch's statement commits.
//!
//! And every call ran its body exactly once: no call failed or replayed,
//! `purge_payments` holds one row per call and no key twice, every call's
//! key holds one live record, no expired record is left, and the purge
//! deleted at most N records and at least N less the calls that reused an
//! expired key.
//!
//! The last line of the output is one machine-readable summary:
//! `records=.. clients=.. batch=.. purge_s=.. rows_per_s=.. longest_batch_ms=..
//! calls_base=.. calls_purge=.. p50_base_ms=.. p99_base_ms=.. max_base_ms=..
//! p50_purge_ms=.. p99_purge_ms=.. max_purge_ms=.. call_p99_base_ms=..
//! call_p99_purge_ms=.. front_p99_base_ms=.. front_p99_purge_ms=..
//! front_max_base_ms=.. front_max_purge_ms=.. over_50ms_base=..
//! over_50ms_purge=.. verdict=ok|fail` (claim latencies unless named
//! `call_`; `front_`: the calls with a key at the purge's front;
//! `over_50ms_`: how many claims took longer than 50 ms).
//!
//! Exits with 0 when the criterion and every check hold, 1 when one does
//! not (or the run failed), 2 on bad arguments.

#[path = "shared/flags.rs"]
mod flags;

use std::cell::Cell;
use std::fmt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{NaiveDateTime, Utc};
use diesel::connection::InstrumentationEvent;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Timestamp};
use diesel_idempotent::{Outcome, idempotency_records, idempotent};
use flags::Flags;

const USAGE: &str = "\
usage: cargo run --release --features postgres --example purge_while_serving -- [OPTIONS]

  --database-url URL     the database to create for the run (it must not exist; it is
                         dropped at the end); default: purge_while_serving_<pid> on the
                         server of $DIESEL_IDEMPOTENT_PG_URL
  --records N            expired records to purge (default 1000000)
  --clients N            concurrent clients, each on its own thread and connection
                         (default 8)
  --batch N              the purge's batch_size (default 1000)
  --baseline D           how long the clients run before the purge starts (10s, 500ms,
                         1m; default 30s)
  --expired-percent P    the share of calls that use an expired record's key (default 10)
  -h, --help             print this";

/// Where the default database's server comes from.
const PG_URL_VAR: &str = "DIESEL_IDEMPOTENT_PG_URL";

/// The wrapped function's namespace, which the expired records share.
const NAMESPACE: &str = "purge.pay";

/// The most a call may wait on the purge: the criterion's bound.
const MAX_WAIT: Duration = Duration::from_millis(50);

/// How long the clients run before the baseline is measured.
const WARM_UP: Duration = Duration::from_secs(2);

/// Every call pays the same amount.
const AMOUNT: i64 = 4_200;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

diesel::table! {
    purge_payments (id) {
        id -> BigInt,
        key -> Text,
        amount -> BigInt,
    }
}

#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error(transparent)]
    Idempotency(#[from] diesel_idempotent::Error),
    #[error("database: {0}")]
    Database(#[from] diesel::result::Error),
}

/// The served call: one INSERT, exactly once per key. `body_started` says
/// when the body began, which ends the call's claim.
#[idempotent(key = key, name = "purge.pay", ttl = "1h", skip(body_started))]
fn pay(
    conn: &mut PgConnection,
    key: &str,
    amount: i64,
    body_started: &Cell<Option<Instant>>,
) -> Result<Outcome<i64>, CallError> {
    body_started.set(Some(Instant::now()));
    let id: i64 = diesel::insert_into(purge_payments::table)
        .values((
            purge_payments::key.eq(key),
            purge_payments::amount.eq(amount),
        ))
        .returning(purge_payments::id)
        .get_result(conn)?;
    Ok(Outcome::from(id))
}

#[derive(Debug, Clone)]
struct Options {
    /// The server's `postgres` database, for CREATE and DROP DATABASE.
    admin_url: String,
    /// The run's own database.
    url: String,
    name: String,
    records: u64,
    clients: usize,
    batch: usize,
    baseline: Duration,
    expired_percent: u32,
}

enum Command {
    Run(Options),
    Help,
}

/// Parses the arguments after `--`; an `Err` is a message for the user.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut url = None;
    let mut records = 1_000_000;
    let mut clients = 8;
    let mut batch = 1_000;
    let mut baseline = Duration::from_secs(30);
    let mut expired_percent = 10;

    let mut flags = Flags::new(args);
    while let Some(flag) = flags.next_flag() {
        if flag == "-h" || flag == "--help" {
            return Ok(Command::Help);
        }
        match flag.as_str() {
            "--database-url" => url = Some(flags.value(&flag)?),
            "--records" => {
                let text = flags.value(&flag)?;
                records = text
                    .parse()
                    .ok()
                    .filter(|n| (1..=100_000_000).contains(n))
                    .ok_or_else(|| format!("--records is a number from 1 to 10^8, not {text:?}"))?;
            }
            "--clients" => {
                let text = flags.value(&flag)?;
                clients = text
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| format!("--clients is a number from 1 to 64, not {text:?}"))?;
            }
            "--batch" => {
                let text = flags.value(&flag)?;
                batch = text
                    .parse()
                    .ok()
                    .filter(|&n: &usize| n >= 1)
                    .ok_or_else(|| {
                        format!("--batch is a number of rows, at least 1, not {text:?}")
                    })?;
            }
            "--baseline" => {
                let text = flags.value(&flag)?;
                baseline =
                    flags::parse_duration(&text, flags::Longest::Minutes).ok_or_else(|| {
                        format!("--baseline is a positive time like 500ms, 10s or 1m, not {text:?}")
                    })?;
            }
            "--expired-percent" => {
                let text = flags.value(&flag)?;
                expired_percent = text
                    .parse()
                    .ok()
                    .filter(|p| (0..=100).contains(p))
                    .ok_or_else(|| {
                        format!("--expired-percent is a number from 0 to 100, not {text:?}")
                    })?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }

    let url = match url {
        Some(url) => url,
        None => {
            let server = std::env::var(PG_URL_VAR).map_err(|_| {
                format!("give --database-url postgres://user@host/name, or set {PG_URL_VAR}")
            })?;
            let (base, _, query) = split_database(&server)
                .ok_or_else(|| format!("{PG_URL_VAR} is not a postgres:// URL: {server:?}"))?;
            format!("{base}/purge_while_serving_{}{query}", std::process::id())
        }
    };
    let (base, name, query) = split_database(&url).ok_or_else(|| {
        format!("--database-url is a URL like postgres://user@host/name, not {url:?}")
    })?;
    let valid_name = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !valid_name {
        return Err(format!(
            "the database name {name:?} should be 1 to 63 letters, digits and _, \
             not starting with a digit"
        ));
    }
    if name == "postgres" {
        return Err(
            "--database-url names the database this run creates and drops: not postgres".into(),
        );
    }
    Ok(Command::Run(Options {
        admin_url: format!("{base}/postgres{query}"),
        name: name.to_owned(),
        url,
        records,
        clients,
        batch,
        baseline,
        expired_percent,
    }))
}

/// `postgres://user@host:port/name?query` as (`postgres://user@host:port`,
/// `name`, `?query`).
fn split_database(url: &str) -> Option<(&str, &str, &str)> {
    let (base, query) = match url.find('?') {
        Some(at) => url.split_at(at),
        None => (url, ""),
    };
    let scheme_end = base.find("://")? + 3;
    let (server, name) = match base[scheme_end..].find('/') {
        Some(at) => (&base[..scheme_end + at], &base[scheme_end + at + 1..]),
        None => (base, ""),
    };
    Some((server, name, query))
}

/// The run's database, dropped with this value.
struct Database {
    admin_url: String,
    name: String,
}

impl Database {
    fn create(opts: &Options) -> Result<Database, BoxError> {
        let mut admin = PgConnection::establish(&opts.admin_url)
            .map_err(|e| format!("cannot reach PostgreSQL at {}: {e}", opts.admin_url))?;
        diesel::sql_query(format!("CREATE DATABASE \"{}\"", opts.name))
            .execute(&mut admin)
            .map_err(|e| {
                format!(
                    "cannot create the database {}: {e} (the run needs a database of its own: \
                     name one that does not exist)",
                    opts.name
                )
            })?;
        Ok(Database {
            admin_url: opts.admin_url.clone(),
            name: opts.name.clone(),
        })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let dropped = PgConnection::establish(&self.admin_url)
            .map_err(BoxError::from)
            .and_then(|mut admin| {
                diesel::sql_query(format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
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

/// The phase a call starts in; the clients read it before each call.
const WARMING_UP: u8 = 0;
const BASELINE: u8 = 1;
const PURGING: u8 = 2;
const STOPPED: u8 = 3;

/// Where a call's key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fresh,
    /// An expired record's, drawn uniformly.
    ExpiredAny,
    /// An expired record's, less than one batch after the purge's front.
    ExpiredFront,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Fresh, Kind::ExpiredAny, Kind::ExpiredFront];
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Fresh => "fresh keys",
            Kind::ExpiredAny => "expired keys, any",
            Kind::ExpiredFront => "expired keys, purge front",
        })
    }
}

/// One finished call.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// The phase when it started, or `None` when it started in one phase
    /// and finished in another.
    phase: Option<u8>,
    kind: Kind,
    claim: Duration,
    call: Duration,
}

/// What every client shares.
struct Shared {
    phase: AtomicU8,
    /// Which expired records' keys a call has used (each is used once).
    used: Vec<AtomicBool>,
    /// Every expired record expires at or before this.
    cutoff: NaiveDateTime,
    opts: Options,
}

/// What one client saw.
#[derive(Default)]
struct ClientReport {
    samples: Vec<Sample>,
    /// Calls that ran the body (returned `Ok`, not replayed).
    ran: u64,
    replays: u64,
    errors: u64,
    first_error: Option<String>,
}

/// A small, seedable random number generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (> 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

impl Shared {
    /// The first expired record at or after `from` whose key no call has
    /// used, looking at most `span` records on (wrapping around the end when
    /// `wrap`); marks it used.
    fn take_unused(&self, from: u64, span: u64, wrap: bool) -> Option<u64> {
        let n = self.used.len() as u64;
        (0..span.min(n))
            .map(|step| from + step)
            .map(|i| if wrap { i % n } else { i })
            .take_while(|&i| i < n)
            .find(|&i| !self.used[i as usize].swap(true, Ordering::Relaxed))
    }

    /// The key of the next call, and where it came from.
    fn next_key(
        &self,
        conn: &mut PgConnection,
        rng: &mut Rng,
        client: usize,
        seq: u64,
    ) -> Result<(String, Kind), BoxError> {
        let n = self.used.len() as u64;
        let roll = rng.below(200);
        let expired = u64::from(self.opts.expired_percent) * 2;
        let mut kind = if roll < expired / 2 {
            Kind::ExpiredFront
        } else if roll < expired {
            Kind::ExpiredAny
        } else {
            Kind::Fresh
        };
        let mut index = None;
        if kind == Kind::ExpiredFront {
            // The first record the purge has not deleted, in its order.
            let front = idempotency_records::table
                .filter(idempotency_records::expires_at.le(self.cutoff))
                .order(idempotency_records::expires_at)
                .select(idempotency_records::key)
                .first::<String>(conn)
                .optional()?;
            let batch = self.opts.batch as u64;
            index = front
                .as_deref()
                .and_then(|key| key.strip_prefix("expired-")?.parse::<u64>().ok())
                .and_then(|front| self.take_unused(front + rng.below(batch), 4 * batch, false));
            if index.is_none() {
                kind = Kind::ExpiredAny;
            }
        }
        if kind == Kind::ExpiredAny && index.is_none() {
            index = self.take_unused(rng.below(n), n, true);
            if index.is_none() {
                kind = Kind::Fresh;
            }
        }
        Ok(match index {
            Some(i) => (format!("expired-{i}"), kind),
            None => (format!("fresh-{client}-{seq}"), Kind::Fresh),
        })
    }
}

/// One client: calls back to back until the phase says stop.
fn client(
    shared: &Shared,
    id: usize,
    mut conn: PgConnection,
    start: &Barrier,
) -> Result<ClientReport, BoxError> {
    let mut rng = Rng(0x5EED_u64.wrapping_mul(id as u64 + 1) ^ u64::from(std::process::id()));
    let mut report = ClientReport::default();
    start.wait();
    for seq in 0.. {
        if shared.phase.load(Ordering::Acquire) == STOPPED {
            break;
        }
        let (key, kind) = shared.next_key(&mut conn, &mut rng, id, seq)?;
        let phase = shared.phase.load(Ordering::Acquire);
        let body_started = Cell::new(None);
        let started = Instant::now();
        let result = pay(&mut conn, &key, AMOUNT, &body_started);
        let finished = Instant::now();
        let same_phase = shared.phase.load(Ordering::Acquire) == phase;
        let claim = body_started.get().unwrap_or(finished) - started;
        match result {
            Ok(outcome) if outcome.is_replayed() => report.replays += 1,
            Ok(_) => report.ran += 1,
            Err(e) => {
                report.errors += 1;
                report
                    .first_error
                    .get_or_insert_with(|| format!("client {id}, key {key}: {e}"));
                continue;
            }
        }
        report.samples.push(Sample {
            // A call that ran into the purge belongs to it.
            phase: if same_phase || phase == PURGING {
                Some(phase)
            } else {
                None
            },
            kind,
            claim,
            call: finished - started,
        });
    }
    Ok(report)
}

/// The nearest-rank percentile `p` (0 to 100) of `sorted`.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let n = sorted.len();
    if n == 0 {
        return Duration::ZERO;
    }
    let rank = (p / 100.0 * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// p50, p99 and the maximum of some latencies.
#[derive(Debug, Clone, Copy, Default)]
struct Spread {
    count: usize,
    /// How many took longer than [`MAX_WAIT`].
    over: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Spread {
    fn of(mut latencies: Vec<Duration>) -> Spread {
        latencies.sort_unstable();
        Spread {
            count: latencies.len(),
            over: latencies.iter().filter(|&&l| l > MAX_WAIT).count(),
            p50: percentile(&latencies, 50.0),
            p99: percentile(&latencies, 99.0),
            max: latencies.last().copied().unwrap_or_default(),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// The claim and call spreads of the samples of `phase` that `keep` keeps.
fn spreads(samples: &[Sample], phase: u8, keep: impl Fn(&Sample) -> bool) -> (Spread, Spread) {
    let chosen: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.phase == Some(phase) && keep(s))
        .collect();
    (
        Spread::of(chosen.iter().map(|s| s.claim).collect()),
        Spread::of(chosen.iter().map(|s| s.call).collect()),
    )
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn count(conn: &mut PgConnection, sql: &str) -> QueryResult<i64> {
    Ok(diesel::sql_query(sql).get_result::<Count>(conn)?.n)
}

/// Creates the tables and the expired records; returns the cutoff at or
/// before which every one of them expired.
fn setup(conn: &mut PgConnection, opts: &Options) -> Result<NaiveDateTime, BoxError> {
    let started = Instant::now();
    diesel_idempotent::migrate(conn)?;
    diesel::sql_query(
        "CREATE TABLE purge_payments (id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL, \
         amount BIGINT NOT NULL)",
    )
    .execute(conn)?;
    let now = Utc::now().naive_utc();
    // Record i expired two days ago plus i milliseconds (at most ~28 h
    // for 10^8 records): the purge's order is the keys' order.
    let expired_from = now - chrono::Duration::days(2);
    diesel::sql_query(
        "INSERT INTO idempotency_records \
         (namespace, scope, key, fingerprint, response, created_at, expires_at) \
         SELECT $1, '', 'expired-' || i, 'v2:' || md5(i::text) || md5((i + 1)::text), \
                i::text, $2 - interval '1 day', $2 + i * interval '1 millisecond' \
         FROM generate_series(0, $3 - 1) AS i",
    )
    .bind::<Text, _>(NAMESPACE)
    .bind::<Timestamp, _>(expired_from)
    .bind::<BigInt, _>(i64::try_from(opts.records)?)
    .execute(conn)?;
    diesel::sql_query("VACUUM ANALYZE idempotency_records").execute(conn)?;
    println!(
        "setup: {} expired records inserted and vacuumed in {:.1} s",
        opts.records,
        started.elapsed().as_secs_f64()
    );
    Ok(now)
}

/// The purge's figures.
struct Purge {
    deleted: usize,
    took: Duration,
    /// Every batch statement's duration, in order.
    batches: Vec<Duration>,
}

/// Runs `purge_expired` to completion on `conn`, timing each statement.
fn purge(conn: &mut PgConnection, batch: usize) -> Result<Purge, BoxError> {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&batches);
    let mut statement_started = None;
    conn.set_instrumentation(move |event: InstrumentationEvent<'_>| match event {
        InstrumentationEvent::StartQuery { .. } => statement_started = Some(Instant::now()),
        InstrumentationEvent::FinishQuery { .. } => {
            if let Some(started) = statement_started.take() {
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(started.elapsed());
            }
        }
        _ => {}
    });
    let started = Instant::now();
    let deleted = diesel_idempotent::purge_expired(conn, batch)?;
    let took = started.elapsed();
    conn.set_instrumentation(diesel::connection::get_default_instrumentation());
    let batches = std::mem::take(&mut *batches.lock().unwrap_or_else(PoisonError::into_inner));
    Ok(Purge {
        deleted,
        took,
        batches,
    })
}

/// The run's outcome: the summary line, and what failed.
struct Verdict {
    summary: String,
    failures: Vec<String>,
}

fn run(opts: &Options) -> Result<Verdict, BoxError> {
    let db = Database::create(opts)?;
    println!(
        "PostgreSQL database {} (created for this run, dropped at the end)",
        db.name
    );
    println!(
        "{} expired records, {} clients, batch {}, baseline {:?}, {}% of calls with an \
         expired record's key (half of them at the purge's front)",
        opts.records, opts.clients, opts.batch, opts.baseline, opts.expired_percent
    );
    let connect = || -> Result<PgConnection, BoxError> { Ok(PgConnection::establish(&opts.url)?) };
    let mut admin = connect()?;
    let cutoff = setup(&mut admin, opts)?;
    let mut purge_conn = connect()?;

    let shared = Shared {
        phase: AtomicU8::new(WARMING_UP),
        used: (0..opts.records).map(|_| AtomicBool::new(false)).collect(),
        cutoff,
        opts: opts.clone(),
    };
    let start = Barrier::new(opts.clients + 1);
    let (reports, purged, phase_times) = std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(opts.clients);
        for id in 0..opts.clients {
            let conn = connect()?;
            let (shared, start) = (&shared, &start);
            handles.push(scope.spawn(move || client(shared, id, conn, start)));
        }
        start.wait();
        std::thread::sleep(WARM_UP);
        shared.phase.store(BASELINE, Ordering::Release);
        let baseline_started = Instant::now();
        std::thread::sleep(opts.baseline);
        shared.phase.store(PURGING, Ordering::Release);
        let baseline_took = baseline_started.elapsed();
        let purged = purge(&mut purge_conn, opts.batch);
        shared.phase.store(STOPPED, Ordering::Release);
        let mut reports = Vec::with_capacity(handles.len());
        for (id, handle) in handles.into_iter().enumerate() {
            let report = handle
                .join()
                .map_err(|_| format!("client {id} panicked"))?
                .map_err(|e| format!("client {id}: {e}"))?;
            reports.push(report);
        }
        Ok::<_, BoxError>((reports, purged?, baseline_took))
    })?;
    report(opts, &mut admin, &reports, &purged, phase_times)
}

fn report(
    opts: &Options,
    conn: &mut PgConnection,
    reports: &[ClientReport],
    purged: &Purge,
    baseline_took: Duration,
) -> Result<Verdict, BoxError> {
    let samples: Vec<Sample> = reports
        .iter()
        .flat_map(|r| r.samples.iter().copied())
        .collect();
    let ran: u64 = reports.iter().map(|r| r.ran).sum();
    let replays: u64 = reports.iter().map(|r| r.replays).sum();
    let errors: u64 = reports.iter().map(|r| r.errors).sum();
    let reused = samples.iter().filter(|s| s.kind != Kind::Fresh).count() as u64;

    println!(
        "\nwarm-up {:.1} s, baseline {:.1} s, purge {:.1} s; claim = the call until its body \
         starts (BEGIN, fingerprint, claim), call = the whole call",
        WARM_UP.as_secs_f64(),
        baseline_took.as_secs_f64(),
        purged.took.as_secs_f64()
    );
    println!(
        "\n{:<9} {:<26} {:>7} {:>11} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "phase",
        "keys",
        "calls",
        "claim >50ms",
        "claim p50",
        "claim p99",
        "claim max",
        "call p50",
        "call p99",
        "call max"
    );
    let mut totals = [(Spread::default(), Spread::default()); 2];
    for (slot, (phase, name)) in [(BASELINE, "baseline"), (PURGING, "purge")]
        .into_iter()
        .enumerate()
    {
        let all = spreads(&samples, phase, |_| true);
        totals[slot] = all;
        let mut rows = vec![("all".to_owned(), all)];
        for kind in Kind::ALL {
            rows.push((
                kind.to_string(),
                spreads(&samples, phase, |s| s.kind == kind),
            ));
        }
        for (keys, (claim, call)) in rows {
            println!(
                "{name:<9} {keys:<26} {:>7} {:>11} {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>8.2}ms \
                 {:>8.2}ms {:>8.2}ms",
                claim.count,
                claim.over,
                ms(claim.p50),
                ms(claim.p99),
                ms(claim.max),
                ms(call.p50),
                ms(call.p99),
                ms(call.max)
            );
        }
    }
    let [(base, call_base), (during, call_during)] = totals;
    let front = |phase| spreads(&samples, phase, |s| s.kind == Kind::ExpiredFront).0;
    let (front_base, front_during) = (front(BASELINE), front(PURGING));

    let batches = Spread::of(purged.batches.clone());
    let secs = purged.took.as_secs_f64();
    let rows_per_s = if secs > 0.0 {
        purged.deleted as f64 / secs
    } else {
        0.0
    };
    println!(
        "\npurge: {} rows deleted in {secs:.2} s ({rows_per_s:.0} rows/s), {} batch statements \
         of up to {} rows: p50 {:.1} ms, p99 {:.1} ms, longest {:.1} ms",
        purged.deleted,
        batches.count,
        opts.batch,
        ms(batches.p50),
        ms(batches.p99),
        ms(batches.max)
    );

    let mut failures = Vec::new();
    let p99_added = during.p99.saturating_sub(base.p99);
    let max_added = during.max.saturating_sub(base.max);
    if base.count == 0 || during.count == 0 {
        failures.push(format!(
            "no latency to compare: {} baseline call(s), {} call(s) during the purge \
             (give more --records or a longer --baseline)",
            base.count, during.count
        ));
    } else {
        if p99_added > MAX_WAIT {
            failures.push(format!(
                "the claim's p99 during the purge is {:.1} ms above the baseline's \
                 ({:.1} ms against {:.1} ms), more than {} ms",
                ms(p99_added),
                ms(during.p99),
                ms(base.p99),
                MAX_WAIT.as_millis()
            ));
        }
        if max_added > MAX_WAIT {
            println!(
                "note: a claim during the purge took {:.1} ms, {:.1} ms more than the slowest \
                 baseline claim ({:.1} ms); see the front calls above and the longest batch",
                ms(during.max),
                ms(max_added),
                ms(base.max),
            );
        }
    }
    println!(
        "criterion (claim latency, same run): p99 {:+.2} ms during the purge, at most +{} ms \
         (max {:+.2} ms, reported)",
        ms(during.p99) - ms(base.p99),
        MAX_WAIT.as_millis(),
        ms(during.max) - ms(base.max),
    );

    // Exactly once.
    let payments = count(conn, "SELECT count(*) AS n FROM purge_payments")?;
    let paid_keys = count(conn, "SELECT count(DISTINCT key) AS n FROM purge_payments")?;
    let records = count(conn, "SELECT count(*) AS n FROM idempotency_records")?;
    let expired_left =
        diesel::sql_query("SELECT count(*) AS n FROM idempotency_records WHERE expires_at <= $1")
            .bind::<Timestamp, _>(Utc::now().naive_utc())
            .get_result::<Count>(conn)?
            .n;
    let ran_i = i64::try_from(ran)?;
    println!(
        "exactly once: {ran} calls ran their body ({reused} with an expired record's key), \
         {replays} replayed, {errors} failed; {payments} payments of {paid_keys} keys, \
         {records} records, {expired_left} expired records left"
    );
    if errors > 0 {
        failures.push(format!(
            "{errors} call(s) failed, the first: {}",
            reports
                .iter()
                .find_map(|r| r.first_error.as_deref())
                .unwrap_or("?")
        ));
    }
    if replays > 0 {
        failures.push(format!(
            "{replays} call(s) replayed, but every call had a key of its own \
             (an expired record answered?)"
        ));
    }
    if payments != ran_i || paid_keys != ran_i {
        failures.push(format!(
            "{payments} payments of {paid_keys} keys for {ran} calls that ran the body: \
             a body ran twice or its payment is missing"
        ));
    }
    if records != ran_i {
        failures.push(format!(
            "{records} records for {ran} calls with keys of their own"
        ));
    }
    if expired_left != 0 {
        failures.push(format!(
            "{expired_left} expired record(s) left after the purge"
        ));
    }
    let deleted = purged.deleted as u64;
    if deleted > opts.records || deleted + reused < opts.records {
        failures.push(format!(
            "the purge deleted {deleted} records: expected between {} and {} \
             ({} expired, {reused} reused by calls)",
            opts.records.saturating_sub(reused),
            opts.records,
            opts.records
        ));
    }

    let summary = format!(
        "records={} clients={} batch={} purge_s={secs:.2} rows_per_s={rows_per_s:.0} \
         longest_batch_ms={:.1} calls_base={} calls_purge={} p50_base_ms={:.2} \
         p99_base_ms={:.2} max_base_ms={:.2} p50_purge_ms={:.2} p99_purge_ms={:.2} \
         max_purge_ms={:.2} call_p99_base_ms={:.2} call_p99_purge_ms={:.2} \
         front_p99_base_ms={:.2} front_p99_purge_ms={:.2} front_max_base_ms={:.2} \
         front_max_purge_ms={:.2} over_50ms_base={} over_50ms_purge={} verdict={}",
        opts.records,
        opts.clients,
        opts.batch,
        ms(batches.max),
        base.count,
        during.count,
        ms(base.p50),
        ms(base.p99),
        ms(base.max),
        ms(during.p50),
        ms(during.p99),
        ms(during.max),
        ms(call_base.p99),
        ms(call_during.p99),
        ms(front_base.p99),
        ms(front_during.p99),
        ms(front_base.max),
        ms(front_during.max),
        base.over,
        during.over,
        if failures.is_empty() { "ok" } else { "fail" }
    );
    Ok(Verdict { summary, failures })
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
    match run(&opts) {
        Ok(verdict) if verdict.failures.is_empty() => {
            println!("\n{}", verdict.summary);
            ExitCode::SUCCESS
        }
        Ok(verdict) => {
            eprintln!("\nFAILED:");
            for failure in &verdict.failures {
                eprintln!("  - {failure}");
            }
            println!("\n{}", verdict.summary);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            println!(
                "\nrecords={} clients={} batch={} verdict=error",
                opts.records, opts.clients, opts.batch
            );
            ExitCode::FAILURE
        }
    }
}
