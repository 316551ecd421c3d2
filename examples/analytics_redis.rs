//! Click analytics on Redis Streams, counted exactly once: an idempotent
//! consumer whose Redis increments go through the transactional outbox,
//! next to a naive consumer that counts every redelivery.
//!
//! ```text
//! cargo run --example analytics_redis -- --redis-url redis://127.0.0.1:6379 \
//!     --events 2000 --crash-rate 0.1
//! cargo run --example analytics_redis -- --redis-url redis://127.0.0.1:6379 \
//!     --database-url postgres://user@host/analytics --events 2000 --crash-rate 0.1
//! ```
//!
//! (The example belongs to the `examples/analytics` package, which turns on
//! diesel-idempotent's `sqlite` and `postgres` features.)
//!
//! Redis plays two parts. It is the broker: a URL shortener (the producer)
//! appends `url_created` and `click` events for a handful of short codes to
//! a stream, `XADD`, and two consumer groups read it, `XREADGROUP` and
//! `XACK`. It is also the store of the click counters the dashboards read.
//! Every event carries an `event_id`, the fingerprint scheme `v2` of the
//! fields that identify it (`diesel_idempotent::Fingerprint` of its kind,
//! short code, user id and time), which any producer can compute; a
//! publisher retry after a lost reply appends some events twice, under new
//! message ids.
//!
//! - The idempotent consumer (group `idempotent`) handles each message with
//!   `#[idempotent(hash(event.kind, event.code, event.user_id,
//!   event.occurred_at_ms), name = "analytics_redis.record_event")]`, whose
//!   key is therefore the event id (the run checks that the records' keys
//!   are the event ids): in one transaction it stores the event, bumps the
//!   code's counter row and pushes a `redis.incr` effect to the outbox
//!   (`outbox::push`). After the commit it acks. A dispatcher delivers the
//!   effects at least once; its handler applies each with one Lua script,
//!   `SET <prefix>:applied:<effect id> 1 NX EX <7 days>` and, only if that
//!   key was new, `INCRBY` of the counter, so a redelivered effect is a
//!   no-op.
//! - The naive consumer (group `naive`) does what a first version would:
//!   bump its own counter row, `INCR` its own Redis counter, ack.
//!
//! Crashes are injected with probability `--crash-rate`, at the same
//! deliveries for both consumers: (a) between the commit and the ack, the
//! consumer dies; its un-acked messages stay pending and a consumer with a
//! new name takes them over with `XAUTOCLAIM` (here at once, since the
//! crash is known; a real deployment claims what has been idle longer than
//! a handling takes) and handles them again: the idempotent call replays,
//! pushing nothing, and the naive consumer counts again. (b) In the
//! dispatcher, between the Redis apply and the done mark: the handler
//! applies, then fails, so the effect is delivered again and its dedup key
//! makes that apply a no-op.
//!
//! At the end, once both groups have acked every message and the outbox
//! holds no pending effect, every code's counter, in Redis and in the
//! database, must equal the number of distinct events for that code; each
//! mismatch is printed as a sentence. The last line is
//!
//! ```text
//! events N, postgres_total X, redis_total Y, naive_total Z
//! ```
//!
//! with X the sum of the database's counters (SQLite's, on SQLite), Y the
//! sum of the Redis counters and Z the naive consumer's Redis total.
//!
//! | flag | meaning |
//! |---|---|
//! | `--redis-url URL` | the Redis server (`redis://HOST:PORT[/DB]`), Redis 6.2 or later (`XAUTOCLAIM`) |
//! | `--database-url URL` | a `postgres://` URL (the database is created when it does not exist, and dropped at the end if this run created it, unless `--keep-database`), or a SQLite file; default: a fresh SQLite file in a new temporary directory, removed at exit |
//! | `--events N` | distinct events the producer publishes (default 2000) |
//! | `--crash-rate F` | probability, 0 to 0.9, of a crash at each of the two points (default 0.1) |
//! | `--republish-rate F` | fraction, 0 to 1, of events published twice (default 0.05) |
//! | `--key-prefix P` | the prefix of every Redis key (default `analytics_redis`) |
//! | `--seed N` | the seed of the events and of the crashes (default 2026) |
//! | `--timeout SECS` | give up when the run has not finished by then (default 300) |
//! | `--keep-database` | keep a PostgreSQL database this run created |
//!
//! Each run starts afresh: it deletes every Redis key under the prefix
//! (`SCAN` and `DEL`), drops and recreates the example's tables
//! (`analytics_redis_events`, `analytics_redis_counts`,
//! `analytics_redis_naive_counts`), and deletes the library's records of
//! the namespace `analytics_redis.record_event` and their outbox effects,
//! so a second run on the same database counts its own events only. Its
//! dispatcher leases only its own kind (`redis.incr`): other applications'
//! effects in the same table stay pending for their own dispatchers, and
//! the failures it reports are its own deliveries'. Two runs must not
//! share a database or a prefix at the same time. The keys
//! and rows stay after the run, to be looked at, until the next one.
//!
//! Exit codes: 0 when both totals equal the number of events and every
//! counter is right; 1 when a total or a counter is wrong; 2 for invalid
//! flags; 3 when Redis or the database cannot be reached; 4 when the run
//! failed before the totals could be compared.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use diesel::connection::SimpleConnection as _;
use diesel::prelude::*;
use diesel::{PgConnection, SqliteConnection};
use diesel_idempotent::outbox::{self, Dispatched, Dispatcher, Effect, HandlerError};
use diesel_idempotent::{Fingerprint, IdempotentConnection, Outcome, idempotent};
use redis::Commands as _;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};
use serde::{Deserialize, Serialize};

/// The namespace of the idempotent consumer's records; its effects' ids
/// begin with it.
const NAMESPACE: &str = "analytics_redis.record_event";

/// The outbox kind of a Redis increment.
const INCR: &str = "redis.incr";

/// The short codes the shortener creates and its users click.
const CODES: [&str; 5] = ["a1x9", "b7kq", "c3mz", "d0pe", "e5ru"];

/// How many messages a consumer reads or claims at once.
const BATCH: usize = 100;

/// How long a consumer's `XREADGROUP` waits for new messages.
const BLOCK_MS: usize = 100;

/// How long a dedup key lives: longer than any effect can wait for its
/// delivery.
const DEDUP_TTL_SECS: u64 = 7 * 24 * 60 * 60;

/// The dispatcher's handler: the dedup key and the increment in one atomic
/// step. KEYS[1] is the effect's dedup key, KEYS[2] the counter; ARGV[1] is
/// the increment, ARGV[2] the dedup key's time to live in seconds. Returns
/// the counter's new value, or nil when the effect was applied before.
const APPLY_ONCE: &str = r"
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  return redis.call('INCRBY', KEYS[2], ARGV[1])
end
return false
";

#[derive(Debug, Parser)]
#[command(
    about = "Click analytics on Redis Streams: the idempotent consumer and the outbox \
             count every event once; a naive consumer counts redeliveries"
)]
struct Args {
    /// The Redis server: redis://HOST:PORT[/DB].
    #[arg(long, value_name = "URL")]
    redis_url: String,
    /// A postgres:// URL or a SQLite file (default: a fresh SQLite file in a
    /// temporary directory).
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Distinct events the producer publishes.
    #[arg(long, value_name = "N", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    events: u64,
    /// Probability, 0 to 0.9, of a crash between the commit and the ack, and
    /// of one between the Redis apply and the outbox's done mark.
    #[arg(long, value_name = "F", default_value_t = 0.1, value_parser = crash_rate)]
    crash_rate: f64,
    /// Fraction, 0 to 1, of events the producer publishes twice.
    #[arg(long, value_name = "F", default_value_t = 0.05, value_parser = fraction)]
    republish_rate: f64,
    /// The prefix of every Redis key of the run: letters, digits, `_`, `-`, `.`.
    #[arg(long, value_name = "P", default_value = "analytics_redis", value_parser = key_prefix)]
    key_prefix: String,
    /// The seed of the events and of the crashes.
    #[arg(long, value_name = "N", default_value_t = 2026)]
    seed: u64,
    /// Give up when the run has not finished within this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: u64,
    /// Keep a PostgreSQL database this run created (default: drop it at the end).
    #[arg(long)]
    keep_database: bool,
}

fn fraction(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{text} is not between 0 and 1"))
    }
}

fn crash_rate(text: &str) -> Result<f64, String> {
    let value = fraction(text)?;
    if value <= 0.9 {
        Ok(value)
    } else {
        Err(format!(
            "{text} is over 0.9: with crashes that likely, messages would take too long to get through"
        ))
    }
}

fn key_prefix(text: &str) -> Result<String, String> {
    if !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a key prefix: use 1 to 64 letters, digits, `_`, `-` or `.` \
             (no glob characters, so that the reset deletes this run's keys only)"
        ))
    }
}

// ----------------------------------------------------------------------
// Errors and exit codes

/// Why the run stopped before it could compare the totals.
#[derive(Debug)]
enum RunError {
    /// A flag's value cannot be used (exit 2).
    Usage(String),
    /// A server cannot be reached (exit 3).
    Unreachable(String),
    /// Anything else (exit 4).
    Failed(String),
}

impl RunError {
    fn exit_code(&self) -> ExitCode {
        match self {
            RunError::Usage(_) => ExitCode::from(2),
            RunError::Unreachable(_) => ExitCode::from(3),
            RunError::Failed(_) => ExitCode::from(4),
        }
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Usage(m) | RunError::Unreachable(m) | RunError::Failed(m) => f.write_str(m),
        }
    }
}

impl From<redis::RedisError> for RunError {
    fn from(e: redis::RedisError) -> Self {
        if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            RunError::Unreachable(format!("Redis stopped answering: {e}"))
        } else {
            RunError::Failed(format!("a Redis command failed: {e}"))
        }
    }
}

impl From<diesel::result::Error> for RunError {
    fn from(e: diesel::result::Error) -> Self {
        RunError::Failed(format!("a database statement failed: {e}"))
    }
}

impl From<diesel_idempotent::Error> for RunError {
    fn from(e: diesel_idempotent::Error) -> Self {
        RunError::Failed(format!("an idempotent call failed: {e}"))
    }
}

impl From<serde_json::Error> for RunError {
    fn from(e: serde_json::Error) -> Self {
        RunError::Failed(format!("a message is not an event: {e}"))
    }
}

// ----------------------------------------------------------------------
// The events

/// What the shortener publishes: a short code created, or clicked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Event {
    /// `Fingerprint` of (kind, code, user_id, occurred_at_ms), scheme `v2`.
    event_id: String,
    /// `url_created` or `click`.
    kind: String,
    /// The short code.
    code: String,
    /// Who created or clicked it.
    user_id: i64,
    /// When, in milliseconds since the Unix epoch: unique per event.
    occurred_at_ms: i64,
}

impl Event {
    fn new(kind: &str, code: &str, user_id: i64, occurred_at_ms: i64) -> Result<Event, RunError> {
        // The key that `hash(event.kind, event.code, event.user_id,
        // event.occurred_at_ms)` derives: the same values, in that order.
        let event_id = Fingerprint::builder()
            .arg(kind)
            .arg(code)
            .arg(&user_id)
            .arg(&occurred_at_ms)
            .finish()?
            .to_string();
        Ok(Event {
            event_id,
            kind: kind.to_owned(),
            code: code.to_owned(),
            user_id,
            occurred_at_ms,
        })
    }
}

/// The effect the idempotent consumer pushes: add `by` to the Redis key
/// `counter`.
#[derive(Debug, Serialize, Deserialize)]
struct Incr {
    counter: String,
    by: i64,
}

/// What the idempotent call stores and replays.
#[derive(Debug, Serialize, Deserialize)]
struct Counted {
    code: String,
}

/// The Redis keys of a run.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn stream(&self) -> String {
        format!("{}:events", self.prefix)
    }
    fn counter(&self, code: &str) -> String {
        format!("{}:count:{code}", self.prefix)
    }
    fn naive_counter(&self, code: &str) -> String {
        format!("{}:naive:count:{code}", self.prefix)
    }
    fn applied(&self, effect_id: &str) -> String {
        format!("{}:applied:{effect_id}", self.prefix)
    }
}

/// The deterministic randomness of a run: where crashes happen, which
/// events are published twice. A crash decision depends only on the seed,
/// the point, the message (or effect) and its attempt, so both consumers
/// crash at the same deliveries.
#[derive(Debug, Clone, Copy)]
struct Dice {
    seed: u64,
}

impl Dice {
    /// A number in [0, 1) from the seed and `parts`: the same for the same
    /// parts within a build (std's `DefaultHasher` has fixed keys).
    fn roll(&self, parts: &[&[u8]]) -> f64 {
        let mut hasher = DefaultHasher::new();
        self.seed.hash(&mut hasher);
        parts.hash(&mut hasher);
        (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn crash(&self, rate: f64, point: &str, id: &str, attempt: u32) -> bool {
        rate > 0.0 && self.roll(&[point.as_bytes(), id.as_bytes(), &attempt.to_le_bytes()]) < rate
    }
}

/// The producer's events: every code created once (while there are events
/// left), then clicks, more on some codes than others.
fn events(count: u64, dice: Dice) -> Result<Vec<Event>, RunError> {
    let start_ms: i64 = 1_795_600_000_000;
    let mut events = Vec::new();
    for i in 0..count {
        let index = i64::try_from(i).map_err(|_| RunError::Usage("too many events".into()))?;
        let at = start_ms + index * 250;
        let event = match usize::try_from(i).ok().and_then(|i| CODES.get(i)) {
            Some(code) => Event::new("url_created", code, 1, at)?,
            None => {
                let r = dice.roll(&[b"code", &i.to_le_bytes()]);
                // Squared: the first codes get most clicks.
                let code = CODES[((r * r) * CODES.len() as f64) as usize % CODES.len()];
                let user = 100 + (dice.roll(&[b"user", &i.to_le_bytes()]) * 500.0) as i64;
                Event::new("click", code, user, at)?
            }
        };
        events.push(event);
    }
    Ok(events)
}

// ----------------------------------------------------------------------
// The database

diesel::table! {
    /// One row per event the idempotent consumer recorded.
    analytics_redis_events (event_id) {
        event_id -> Text,
        kind -> Text,
        code -> Text,
        user_id -> BigInt,
        occurred_at_ms -> BigInt,
    }
}

diesel::table! {
    /// The idempotent consumer's events per code.
    analytics_redis_counts (code) {
        code -> Text,
        events -> BigInt,
    }
}

diesel::table! {
    /// The naive consumer's events per code.
    analytics_redis_naive_counts (code) {
        code -> Text,
        events -> BigInt,
    }
}

/// The example's tables, dropped and recreated at start (the same SQL on
/// SQLite and PostgreSQL).
const SCHEMA: &str = "
    DROP TABLE IF EXISTS analytics_redis_events;
    DROP TABLE IF EXISTS analytics_redis_counts;
    DROP TABLE IF EXISTS analytics_redis_naive_counts;
    CREATE TABLE analytics_redis_events (
        event_id TEXT PRIMARY KEY NOT NULL,
        kind TEXT NOT NULL,
        code TEXT NOT NULL,
        user_id BIGINT NOT NULL,
        occurred_at_ms BIGINT NOT NULL
    );
    CREATE TABLE analytics_redis_counts (
        code TEXT PRIMARY KEY NOT NULL,
        events BIGINT NOT NULL
    );
    CREATE TABLE analytics_redis_naive_counts (
        code TEXT PRIMARY KEY NOT NULL,
        events BIGINT NOT NULL
    );
";

/// The SQL condition that selects the outbox effects of the namespace:
/// their ids begin with `{NAMESPACE}/`.
const OF_NAMESPACE: &str = "substr(id, 1, 29) = 'analytics_redis.record_event/'";
const _: () = assert!(NAMESPACE.len() + 1 == 29);

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// What both consumers and the checks need from a connection, with the
/// same Diesel statements for SQLite and PostgreSQL.
trait AnalyticsDb: IdempotentConnection + Send {
    /// Creates the library's tables, recreates the example's, and deletes
    /// the namespace's records and effects.
    fn reset(&mut self) -> Result<(), RunError>;
    /// Stores the event and bumps its code's counter.
    fn record(&mut self, event: &Event) -> QueryResult<()>;
    /// The naive consumer's transaction: bump its counter.
    fn record_naively(&mut self, code: &str) -> QueryResult<()>;
    /// The idempotent consumer's counters.
    fn counts(&mut self) -> QueryResult<BTreeMap<String, i64>>;
    /// The naive consumer's counters.
    fn naive_counts(&mut self) -> QueryResult<BTreeMap<String, i64>>;
    /// The keys of the namespace's records.
    fn record_keys(&mut self) -> QueryResult<BTreeSet<String>>;
    /// The namespace's effects not yet done.
    fn unfinished_effects(&mut self) -> QueryResult<i64>;
}

macro_rules! analytics_db {
    ($conn:ty) => {
        impl AnalyticsDb for $conn {
            fn reset(&mut self) -> Result<(), RunError> {
                diesel_idempotent::migrate(self)?;
                self.batch_execute(SCHEMA)?;
                diesel::sql_query(format!(
                    "DELETE FROM idempotency_records WHERE namespace = '{NAMESPACE}'"
                ))
                .execute(self)?;
                diesel::sql_query(format!(
                    "DELETE FROM idempotency_outbox WHERE {OF_NAMESPACE}"
                ))
                .execute(self)?;
                Ok(())
            }

            fn record(&mut self, event: &Event) -> QueryResult<()> {
                use analytics_redis_counts::dsl as c;
                use analytics_redis_events::dsl as e;
                diesel::insert_into(e::analytics_redis_events)
                    .values((
                        e::event_id.eq(&event.event_id),
                        e::kind.eq(&event.kind),
                        e::code.eq(&event.code),
                        e::user_id.eq(event.user_id),
                        e::occurred_at_ms.eq(event.occurred_at_ms),
                    ))
                    .execute(self)?;
                diesel::insert_into(c::analytics_redis_counts)
                    .values((c::code.eq(&event.code), c::events.eq(1i64)))
                    .on_conflict(c::code)
                    .do_update()
                    .set(c::events.eq(c::events + 1i64))
                    .execute(self)?;
                Ok(())
            }

            fn record_naively(&mut self, code: &str) -> QueryResult<()> {
                use analytics_redis_naive_counts::dsl as n;
                self.transaction(|conn| {
                    diesel::insert_into(n::analytics_redis_naive_counts)
                        .values((n::code.eq(code), n::events.eq(1i64)))
                        .on_conflict(n::code)
                        .do_update()
                        .set(n::events.eq(n::events + 1i64))
                        .execute(conn)
                        .map(drop)
                })
            }

            fn counts(&mut self) -> QueryResult<BTreeMap<String, i64>> {
                use analytics_redis_counts::dsl as c;
                Ok(c::analytics_redis_counts
                    .select((c::code, c::events))
                    .load::<(String, i64)>(self)?
                    .into_iter()
                    .collect())
            }

            fn naive_counts(&mut self) -> QueryResult<BTreeMap<String, i64>> {
                use analytics_redis_naive_counts::dsl as n;
                Ok(n::analytics_redis_naive_counts
                    .select((n::code, n::events))
                    .load::<(String, i64)>(self)?
                    .into_iter()
                    .collect())
            }

            fn record_keys(&mut self) -> QueryResult<BTreeSet<String>> {
                use diesel_idempotent::idempotency_records::dsl as r;
                Ok(r::idempotency_records
                    .filter(r::namespace.eq(NAMESPACE))
                    .select(r::key)
                    .load::<String>(self)?
                    .into_iter()
                    .collect())
            }

            fn unfinished_effects(&mut self) -> QueryResult<i64> {
                Ok(diesel::sql_query(format!(
                    "SELECT COUNT(*) AS n FROM idempotency_outbox \
                     WHERE {OF_NAMESPACE} AND state <> 'done'"
                ))
                .get_result::<Count>(self)?
                .n)
            }
        }
    };
}

analytics_db!(SqliteConnection);
analytics_db!(PgConnection);

/// The idempotent consumer's work for one event, once per event id: the
/// event row, the counter row and the Redis increment's effect commit
/// together, or not at all. A redelivery replays `Counted` and pushes
/// nothing.
#[idempotent(
    hash(event.kind, event.code, event.user_id, event.occurred_at_ms),
    ttl = "7d",
    name = "analytics_redis.record_event"
)]
fn record_event<C: AnalyticsDb>(
    conn: &mut C,
    event: &Event,
    counter: &str,
) -> Result<Outcome<Counted>, diesel_idempotent::Error> {
    conn.record(event)?;
    outbox::push(
        conn,
        INCR,
        &Incr {
            counter: counter.to_owned(),
            by: 1,
        },
    )?;
    Ok(Counted {
        code: event.code.clone(),
    }
    .into())
}

// ----------------------------------------------------------------------
// The run

/// What the parts of a run tell each other.
#[derive(Debug, Default)]
struct Progress {
    /// Messages appended to the stream so far.
    published: AtomicU64,
    /// The producer has published everything.
    produced: AtomicBool,
    /// The idempotent consumer has acked every message.
    consumed: AtomicBool,
    /// A part failed: the others stop.
    abort: AtomicBool,
}

/// A run's settings, shared by its parts.
struct Run {
    keys: Keys,
    dice: Dice,
    crash_rate: f64,
    republish_rate: f64,
    deadline: Instant,
    timeout: Duration,
    redis: redis::Client,
    /// The Redis URL as it may be shown (no password).
    redis_url: String,
    progress: Progress,
}

impl Run {
    fn redis(&self) -> Result<redis::Connection, RunError> {
        self.redis
            .get_connection_with_timeout(Duration::from_secs(5))
            .map_err(|e| {
                RunError::Unreachable(format!(
                    "cannot connect to Redis at {}: {e}",
                    self.redis_url
                ))
            })
    }

    /// Stops a loop when another part failed or the time is up.
    fn check(&self) -> Result<(), RunError> {
        if self.progress.abort.load(Ordering::Relaxed) {
            return Err(RunError::Failed(
                "stopped: another part of the run failed".into(),
            ));
        }
        if Instant::now() > self.deadline {
            return Err(RunError::Failed(format!(
                "the run did not finish within {} s",
                self.timeout.as_secs()
            )));
        }
        Ok(())
    }
}

/// What the producer did.
#[derive(Debug, Default)]
struct Produced {
    /// Events per code.
    expected: BTreeMap<String, i64>,
    distinct: u64,
    messages: u64,
    republished: u64,
}

/// Publishes the events, some twice, in pipelined batches.
fn produce(run: &Run, events: &[Event]) -> Result<Produced, RunError> {
    let mut redis = run.redis()?;
    let stream = run.keys.stream();
    let mut produced = Produced::default();
    for chunk in events.chunks(BATCH) {
        run.check()?;
        let mut pipe = redis::pipe();
        let mut messages = 0u64;
        for event in chunk {
            let json = serde_json::to_string(event)?;
            let copies =
                if run.dice.roll(&[b"republish", event.event_id.as_bytes()]) < run.republish_rate {
                    // The reply to the first XADD was lost; the publisher sent
                    // the event again.
                    produced.republished += 1;
                    2
                } else {
                    1
                };
            for sent in 1..=copies {
                pipe.cmd("XADD")
                    .arg(&stream)
                    .arg("*")
                    .arg("event_id")
                    .arg(&event.event_id)
                    .arg("sent")
                    .arg(sent)
                    .arg("event")
                    .arg(&json)
                    .ignore();
                messages += 1;
            }
            *produced.expected.entry(event.code.clone()).or_default() += 1;
            produced.distinct += 1;
        }
        pipe.query::<()>(&mut redis)?;
        produced.messages += messages;
        run.progress.published.fetch_add(messages, Ordering::SeqCst);
    }
    run.progress.produced.store(true, Ordering::SeqCst);
    Ok(produced)
}

/// What one consumer group did.
#[derive(Debug, Default)]
struct Consumed {
    /// Handlings, first or not.
    handled: u64,
    /// Handlings of a message handled before (after a crash at (a)).
    handled_again: u64,
    /// Handlings the idempotent call replayed.
    replays: u64,
    /// Messages taken over from a crashed consumer with XAUTOCLAIM.
    claimed: u64,
    /// Crashes between the commit and the ack.
    crashes: u64,
}

/// Reads the group's messages until every one published is acked; calls
/// `handle` for each (which returns whether it was a replay), acks after
/// it, and dies at the injected crashes, leaving the rest to a successor
/// that takes them over with XAUTOCLAIM.
fn consume(
    run: &Run,
    group: &str,
    mut handle: impl FnMut(&Event) -> Result<bool, RunError>,
) -> Result<Consumed, RunError> {
    let mut redis = run.redis()?;
    let stream = run.keys.stream();
    let mut done = Consumed::default();
    let mut name = format!("{group}-1");
    // Handlings per message id, to number the attempts.
    let mut attempts: HashMap<String, u32> = HashMap::new();
    let mut acked = 0u64;
    // After a crash: claim what the dead consumers left, from this cursor.
    let mut takeover: Option<String> = None;
    loop {
        run.check()?;
        let (messages, claimed) = match takeover.take() {
            Some(cursor) => {
                let reply: StreamAutoClaimReply = redis.xautoclaim_options(
                    &stream,
                    group,
                    &name,
                    0,
                    &cursor,
                    StreamAutoClaimOptions::default().count(BATCH),
                )?;
                if reply.next_stream_id != "0-0" {
                    takeover = Some(reply.next_stream_id);
                }
                (reply.claimed, true)
            }
            None => {
                let options = StreamReadOptions::default()
                    .group(group, &name)
                    .count(BATCH)
                    .block(BLOCK_MS);
                let reply: Option<StreamReadReply> =
                    redis.xread_options(&[&stream], &[">"], &options)?;
                let messages = reply
                    .into_iter()
                    .flat_map(|r| r.keys)
                    .flat_map(|k| k.ids)
                    .collect::<Vec<_>>();
                (messages, false)
            }
        };
        if messages.is_empty() && takeover.is_none() {
            if run.progress.produced.load(Ordering::SeqCst)
                && acked == run.progress.published.load(Ordering::SeqCst)
            {
                return Ok(done);
            }
            continue;
        }
        for message in messages {
            if claimed {
                done.claimed += 1;
            }
            let (event, sent) = event_of(&message)?;
            let attempt = attempts.entry(message.id.clone()).or_default();
            *attempt += 1;
            let attempt = *attempt;
            if attempt > 1 {
                done.handled_again += 1;
            }
            done.handled += 1;
            if handle(&event)? {
                done.replays += 1;
            }
            // Decided by the event, its copy and the attempt, not by the
            // message id (a time), so that a seed gives the same crashes.
            let delivery = format!("{}/{sent}", event.event_id);
            if run.dice.crash(run.crash_rate, "ack", &delivery, attempt) {
                // Committed, not acked: this consumer is gone, and so is
                // the rest of its batch. A new one takes over everything
                // pending.
                done.crashes += 1;
                name = format!("{group}-{}", done.crashes + 1);
                takeover = Some("0-0".to_owned());
                break;
            }
            let n: u64 = redis.xack(&stream, group, &[&message.id])?;
            acked += n;
        }
    }
}

/// The event a message carries, and which copy of it the message is.
fn event_of(message: &StreamId) -> Result<(Event, u32), RunError> {
    let missing = |field: &str| {
        RunError::Failed(format!("the message {} has no `{field}` field", message.id))
    };
    let json: String = message.get("event").ok_or_else(|| missing("event"))?;
    let sent: u32 = message.get("sent").ok_or_else(|| missing("sent"))?;
    Ok((serde_json::from_str(&json)?, sent))
}

/// What the dispatcher did.
#[derive(Debug, Default)]
struct Delivered {
    dispatched: Dispatched,
    /// Applies that incremented a counter.
    applied: u64,
    /// Applies the dedup key turned into no-ops (redeliveries).
    deduplicated: u64,
    /// Crashes between the apply and the done mark.
    crashes: u64,
}

/// Delivers the outbox's `redis.incr` effects until the idempotent consumer
/// is done and none is left.
fn dispatch<C: AnalyticsDb>(run: &Run, conn: &mut C) -> Result<Delivered, RunError> {
    #[derive(Default)]
    struct Counters {
        applied: AtomicU64,
        deduplicated: AtomicU64,
        crashes: AtomicU64,
    }
    let counters = Arc::new(Counters::default());
    let redis = Arc::new(Mutex::new(run.redis()?));
    let script = redis::Script::new(APPLY_ONCE);
    let keys = run.keys.clone();
    let dice = run.dice;
    let rate = run.crash_rate;
    let seen = Arc::clone(&counters);
    let dispatcher = Dispatcher::new()
        .handler(INCR, move |effect: &Effect| -> Result<(), HandlerError> {
            let incr: Incr = effect.payload_as()?;
            let mut redis = redis
                .lock()
                .map_err(|_| "the Redis connection was poisoned by a panic")?;
            let value: Option<i64> = script
                .key(keys.applied(&effect.id))
                .key(&incr.counter)
                .arg(incr.by)
                .arg(DEDUP_TTL_SECS)
                .invoke(&mut *redis)?;
            match value {
                Some(_) => seen.applied.fetch_add(1, Ordering::Relaxed),
                None => seen.deduplicated.fetch_add(1, Ordering::Relaxed),
            };
            if dice.crash(rate, "done", &effect.id, effect.attempt) {
                seen.crashes.fetch_add(1, Ordering::Relaxed);
                return Err("crash injected between the Redis apply and the done mark".into());
            }
            Ok(())
        })
        .lease(Duration::from_secs(60))
        .max_attempts(1000)
        .backoff(Duration::from_millis(1), Duration::from_millis(10))
        .batch_size(BATCH);
    let mut total = Dispatched::default();
    loop {
        run.check()?;
        let round = dispatcher.run_once(conn)?;
        total += round;
        if round.total() == 0 {
            if run.progress.consumed.load(Ordering::SeqCst) && conn.unfinished_effects()? == 0 {
                break;
            }
            // Nothing was due: poll again shortly (a back-off may be running).
            thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(Delivered {
        dispatched: total,
        applied: counters.applied.load(Ordering::Relaxed),
        deduplicated: counters.deduplicated.load(Ordering::Relaxed),
        crashes: counters.crashes.load(Ordering::Relaxed),
    })
}

/// Marks the run as failed when a part returns an error, so the others stop.
fn part<T>(run: &Run, result: Result<T, RunError>) -> Result<T, RunError> {
    if result.is_err() {
        run.progress.abort.store(true, Ordering::SeqCst);
    }
    result
}

/// Everything a run measured.
struct Totals {
    produced: Produced,
    idempotent: Consumed,
    naive: Consumed,
    delivered: Delivered,
    database: BTreeMap<String, i64>,
    database_naive: BTreeMap<String, i64>,
    redis: BTreeMap<String, i64>,
    redis_naive: BTreeMap<String, i64>,
    record_keys: BTreeSet<String>,
    event_ids: BTreeSet<String>,
    pending: Vec<(String, u64)>,
    unfinished_effects: i64,
    elapsed: Duration,
}

/// Sets `abort` when the thread it lives on unwinds, so the other parts
/// stop instead of waiting for it.
struct AbortOnPanic<'a>(&'a Progress);

impl Drop for AbortOnPanic<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.abort.store(true, Ordering::SeqCst);
        }
    }
}

fn joined<T>(
    handle: thread::ScopedJoinHandle<'_, Result<T, RunError>>,
    what: &str,
) -> Result<T, RunError> {
    handle
        .join()
        .unwrap_or_else(|_| Err(RunError::Failed(format!("the {what} panicked"))))
}

/// One run: resets Redis and the database, then runs the producer, both
/// consumers and the dispatcher at once, each on connections of its own
/// (`open` makes a database connection), and reads the counters back.
fn run_on<C: AnalyticsDb>(
    run: &Run,
    events: &[Event],
    open: &(dyn Fn() -> Result<C, RunError> + Sync),
) -> Result<Totals, RunError> {
    let started = Instant::now();
    let mut main = open()?;
    main.reset()?;
    let mut redis = run.redis()?;
    reset_redis(&mut redis, &run.keys)?;
    let stream = run.keys.stream();
    for group in ["idempotent", "naive"] {
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query::<()>(&mut redis)?;
    }
    let mut idempotent_conn = open()?;
    let mut naive_conn = open()?;
    let mut dispatcher_conn = open()?;
    let mut naive_redis = run.redis()?;

    let (produced, idempotent, naive, delivered) = thread::scope(|s| {
        let producer = s.spawn(|| {
            let _guard = AbortOnPanic(&run.progress);
            part(run, produce(run, events))
        });
        let idempotent = s.spawn(|| {
            let _guard = AbortOnPanic(&run.progress);
            let consumed = consume(run, "idempotent", |event| {
                let counter = run.keys.counter(&event.code);
                let outcome = record_event(&mut idempotent_conn, event, &counter)?;
                Ok(outcome.is_replayed())
            });
            run.progress.consumed.store(true, Ordering::SeqCst);
            part(run, consumed)
        });
        let naive = s.spawn(|| {
            let _guard = AbortOnPanic(&run.progress);
            part(
                run,
                consume(run, "naive", |event| {
                    naive_conn.record_naively(&event.code)?;
                    let _: i64 = naive_redis.incr(run.keys.naive_counter(&event.code), 1)?;
                    Ok(false)
                }),
            )
        });
        let dispatcher = s.spawn(|| {
            let _guard = AbortOnPanic(&run.progress);
            part(run, dispatch(run, &mut dispatcher_conn))
        });
        (
            joined(producer, "producer"),
            joined(idempotent, "idempotent consumer"),
            joined(naive, "naive consumer"),
            joined(dispatcher, "dispatcher"),
        )
    });
    let (produced, idempotent, naive, delivered) = (produced?, idempotent?, naive?, delivered?);
    let elapsed = started.elapsed();

    let mut pending = Vec::new();
    for group in ["idempotent", "naive"] {
        let reply: redis::streams::StreamPendingReply = redis.xpending(&stream, group)?;
        pending.push((group.to_owned(), reply.count() as u64));
    }
    Ok(Totals {
        produced,
        idempotent,
        naive,
        delivered,
        database: main.counts()?,
        database_naive: main.naive_counts()?,
        redis: counters(&mut redis, &run.keys.counter(""))?,
        redis_naive: counters(&mut redis, &run.keys.naive_counter(""))?,
        record_keys: main.record_keys()?,
        event_ids: events.iter().map(|e| e.event_id.clone()).collect(),
        pending,
        unfinished_effects: main.unfinished_effects()?,
        elapsed,
    })
}

/// Deletes every key under the prefix.
fn reset_redis(redis: &mut redis::Connection, keys: &Keys) -> Result<(), RunError> {
    let found = scan(redis, &format!("{}:*", keys.prefix))?;
    for chunk in found.chunks(500) {
        redis::cmd("DEL").arg(chunk).query::<()>(redis)?;
    }
    Ok(())
}

/// The keys matching `pattern` (a prefix and `*`, without other glob
/// characters).
fn scan(redis: &mut redis::Connection, pattern: &str) -> Result<Vec<String>, RunError> {
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(redis)?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// The counters whose keys begin with `prefix`, by what follows it.
fn counters(
    redis: &mut redis::Connection,
    prefix: &str,
) -> Result<BTreeMap<String, i64>, RunError> {
    let mut counts = BTreeMap::new();
    for key in scan(redis, &format!("{prefix}*"))? {
        let value: i64 = redis.get(&key)?;
        counts.insert(key[prefix.len()..].to_owned(), value);
    }
    Ok(counts)
}

// ----------------------------------------------------------------------
// The databases

/// Where the analytics tables live.
enum Database {
    /// A SQLite file; the temporary directory holding it, if any, is
    /// removed when this is dropped.
    Sqlite {
        path: PathBuf,
        _dir: Option<tempfile::TempDir>,
    },
    /// A PostgreSQL database; `created` when this run created it.
    Postgres {
        url: String,
        created: Option<CreatedDatabase>,
    },
}

/// A PostgreSQL database this run created, to drop at the end.
struct CreatedDatabase {
    admin_url: String,
    name: String,
}

impl Database {
    fn from_flag(url: Option<&str>) -> Result<Database, RunError> {
        match url {
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("analytics-redis-")
                    .tempdir()
                    .map_err(|e| {
                        RunError::Failed(format!("cannot create a temporary directory: {e}"))
                    })?;
                Ok(Database::Sqlite {
                    path: dir.path().join("analytics.sqlite3"),
                    _dir: Some(dir),
                })
            }
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let created = ensure_postgres_database(url)?;
                Ok(Database::Postgres {
                    url: url.to_owned(),
                    created,
                })
            }
            Some(url) if url.contains("://") && !url.starts_with("sqlite://") => {
                Err(RunError::Usage(format!(
                    "--database-url {url:?} is neither a postgres:// URL nor a SQLite file"
                )))
            }
            Some(path) => Ok(Database::Sqlite {
                path: PathBuf::from(path.strip_prefix("sqlite://").unwrap_or(path)),
                _dir: None,
            }),
        }
    }

    fn describe(&self) -> String {
        match self {
            Database::Sqlite { path, .. } => format!("SQLite {}", path.display()),
            Database::Postgres { url, created } => format!(
                "PostgreSQL {}{}",
                shown(url),
                if created.is_some() {
                    " (created for this run)"
                } else {
                    ""
                }
            ),
        }
    }

    fn run(&self, run: &Run, events: &[Event]) -> Result<Totals, RunError> {
        match self {
            Database::Sqlite { path, .. } => {
                let path = path.to_string_lossy().into_owned();
                run_on(run, events, &|| open_sqlite(&path))
            }
            Database::Postgres { url, .. } => run_on(run, events, &|| {
                PgConnection::establish(url).map_err(|e| {
                    RunError::Unreachable(format!(
                        "cannot connect to PostgreSQL at {}: {e}",
                        shown(url)
                    ))
                })
            }),
        }
    }

    /// Drops a database this run created, unless told to keep it.
    fn finish(&self, keep: bool) -> Result<(), RunError> {
        let Database::Postgres {
            created: Some(created),
            url,
        } = self
        else {
            return Ok(());
        };
        if keep {
            println!("kept the database {}", shown(url));
            return Ok(());
        }
        let mut admin = PgConnection::establish(&created.admin_url).map_err(|e| {
            RunError::Unreachable(format!(
                "cannot connect to {} to drop the database {}: {e}",
                shown(&created.admin_url),
                created.name
            ))
        })?;
        diesel::sql_query(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_identifier(&created.name)
        ))
        .execute(&mut admin)?;
        Ok(())
    }
}

fn open_sqlite(path: &str) -> Result<SqliteConnection, RunError> {
    let mut conn = SqliteConnection::establish(path)
        .map_err(|e| RunError::Unreachable(format!("cannot open the SQLite file {path}: {e}")))?;
    // WAL, so readers do not block the writer, and no fsync per commit (a
    // demo, not a ledger); four connections share the file, so each waits
    // for the lock instead of failing.
    conn.batch_execute(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000;",
    )?;
    Ok(conn)
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates the database of `url` when it does not exist, through the
/// server's `postgres` database; returns what it created.
fn ensure_postgres_database(url: &str) -> Result<Option<CreatedDatabase>, RunError> {
    let first = match PgConnection::establish(url) {
        Ok(_) => return Ok(None),
        Err(e) => e,
    };
    let unreachable = || {
        RunError::Unreachable(format!(
            "cannot connect to PostgreSQL at {}: {first}",
            shown(url)
        ))
    };
    // postgres://user@host:port/NAME?options
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let Some((server, name)) = base
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, name)| (&base[..base.len() - name.len() - 1], name))
    else {
        return Err(unreachable());
    };
    if name.is_empty() || name.contains('%') || name == "postgres" {
        return Err(unreachable());
    }
    let admin_url = match query {
        Some(query) => format!("{server}/postgres?{query}"),
        None => format!("{server}/postgres"),
    };
    let mut admin = PgConnection::establish(&admin_url).map_err(|_| unreachable())?;
    let exists = diesel::sql_query("SELECT COUNT(*) AS n FROM pg_database WHERE datname = $1")
        .bind::<diesel::sql_types::Text, _>(name)
        .get_result::<Count>(&mut admin)?
        .n;
    if exists > 0 {
        return Err(unreachable());
    }
    diesel::sql_query(format!("CREATE DATABASE {}", quote_identifier(name))).execute(&mut admin)?;
    Ok(Some(CreatedDatabase {
        admin_url,
        name: name.to_owned(),
    }))
}

// ----------------------------------------------------------------------
// The report

/// What went wrong, one sentence each; empty when every count is right.
fn problems(totals: &Totals) -> Vec<String> {
    let mut problems = Vec::new();
    let expected = &totals.produced.expected;
    let codes: BTreeSet<&String> = expected
        .keys()
        .chain(totals.database.keys())
        .chain(totals.redis.keys())
        .collect();
    for code in codes {
        let want = expected.get(code).copied().unwrap_or(0);
        for (store, counts) in [("the database", &totals.database), ("Redis", &totals.redis)] {
            let got = counts.get(code).copied().unwrap_or(0);
            if got != want {
                problems.push(format!(
                    "{store} counts {got} events for the code {code}, but the producer \
                     published {want} distinct ones."
                ));
            }
        }
    }
    let n = totals.produced.distinct;
    let (x, y) = (sum(&totals.database), sum(&totals.redis));
    if x != n as i64 || y != n as i64 {
        problems.push(format!(
            "The totals differ from the {n} events: the database holds {x}, Redis {y}."
        ));
    }
    let bodies = totals.idempotent.handled - totals.idempotent.replays;
    if bodies != n {
        problems.push(format!(
            "The idempotent consumer ran its body {bodies} times for {n} events."
        ));
    }
    let without_record = totals.event_ids.difference(&totals.record_keys).count();
    if without_record > 0 {
        problems.push(format!(
            "{without_record} event ids have no record of the idempotent consumer."
        ));
    }
    let strange = totals.record_keys.difference(&totals.event_ids).count();
    if strange > 0 {
        problems.push(format!(
            "{strange} records of the idempotent consumer have a key that is no event id."
        ));
    }
    for (group, count) in &totals.pending {
        if *count > 0 {
            problems.push(format!(
                "The group {group} still has {count} messages pending."
            ));
        }
    }
    if totals.unfinished_effects > 0 {
        problems.push(format!(
            "{} effects of the outbox are not done.",
            totals.unfinished_effects
        ));
    }
    if totals.delivered.dispatched.dead > 0 {
        problems.push(format!(
            "{} effects were given up after too many failed attempts.",
            totals.delivered.dispatched.dead
        ));
    }
    problems
}

fn sum(counts: &BTreeMap<String, i64>) -> i64 {
    counts.values().sum()
}

fn print_report(totals: &Totals) {
    let p = &totals.produced;
    println!(
        "producer: {} events for {} short codes in {} messages ({} events published again \
         after a lost reply)",
        p.distinct,
        p.expected.len(),
        p.messages,
        p.republished
    );
    for (group, c) in [("idempotent", &totals.idempotent), ("naive", &totals.naive)] {
        let replays = if group == "idempotent" {
            format!("; {} calls replayed", c.replays)
        } else {
            String::new()
        };
        println!(
            "{group} consumer: {} handlings; {} crashes between commit and ack, after each a new \
             consumer took the pending messages over with XAUTOCLAIM ({} in all): {} \
             redeliveries of a handled message{replays}",
            c.handled, c.crashes, c.claimed, c.handled_again,
        );
    }
    let d = &totals.delivered;
    println!(
        "dispatcher: {} effects delivered; {} deliveries failed and were retried ({} crashes \
         between the Redis apply and the done mark); {} applies, {} of them no-ops by the dedup \
         key; {} lost, {} dead",
        d.dispatched.delivered,
        d.dispatched.retried,
        d.crashes,
        d.applied + d.deduplicated,
        d.deduplicated,
        d.dispatched.lost,
        d.dispatched.dead,
    );
    let errors: Vec<String> = p
        .expected
        .iter()
        .map(|(code, want)| {
            let got = totals.redis_naive.get(code).copied().unwrap_or(0);
            format!("{code} {:+}", got - want)
        })
        .collect();
    println!(
        "naive error per code, in Redis: {} (its database counters total {})",
        errors.join(", "),
        sum(&totals.database_naive)
    );
    println!("finished in {:.1} s", totals.elapsed.as_secs_f64());
}

// ----------------------------------------------------------------------
// main

/// `url` without its password, to print.
fn shown(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((user_info, host)) if user_info.contains(':') => {
            let user = user_info.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

fn execute(args: &Args) -> Result<Totals, RunError> {
    let redis = redis::Client::open(args.redis_url.as_str()).map_err(|e| {
        RunError::Usage(format!(
            "--redis-url {:?} is not a Redis URL: {e}",
            args.redis_url
        ))
    })?;
    let timeout = Duration::from_secs(args.timeout);
    let run = Run {
        keys: Keys {
            prefix: args.key_prefix.clone(),
        },
        dice: Dice { seed: args.seed },
        crash_rate: args.crash_rate,
        republish_rate: args.republish_rate,
        deadline: Instant::now() + timeout,
        timeout,
        redis,
        redis_url: shown(&args.redis_url),
        progress: Progress::default(),
    };
    let _: String = redis::cmd("PING").query(&mut run.redis()?)?;
    let database = Database::from_flag(args.database_url.as_deref())?;
    println!("database: {}", database.describe());
    println!(
        "redis: {}, keys under `{}:`, crash rate {}",
        run.redis_url, args.key_prefix, args.crash_rate
    );
    let events = events(args.events, run.dice)?;
    let totals = database.run(&run, &events);
    let finished = database.finish(args.keep_database);
    let totals = totals?;
    finished?;
    Ok(totals)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match execute(&args) {
        Ok(totals) => {
            print_report(&totals);
            let problems = problems(&totals);
            for problem in &problems {
                println!("{problem}");
            }
            println!(
                "events {}, postgres_total {}, redis_total {}, naive_total {}",
                totals.produced.distinct,
                sum(&totals.database),
                sum(&totals.redis),
                sum(&totals.redis_naive)
            );
            if problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}
