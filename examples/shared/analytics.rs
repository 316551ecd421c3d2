//! The click-analytics redelivery scenario, shared by
//! `examples/analytics_consumer.rs` and `tests/analytics.rs`.
//!
//! A URL shortener produces click events into an at-least-once queue. The
//! analytics consumer applies each click in one transaction (the URL's
//! counter goes up by one, a row goes into the click log), and then, before
//! it acks, it sometimes crashes: the effects are committed but the queue
//! never heard about it, so it delivers the message again.
//!
//! The shortener is another service, possibly in another language, that
//! does not link this crate. It stamps each event with an `event_id`
//! derived from the event's data by the fingerprint scheme `v2`:
//!
//! ```text
//! event_id = "v2:" + hex(sha256(jcs([data])))
//! ```
//!
//! where `jcs` is RFC 8785, the JSON Canonicalization Scheme (members sorted
//! by the UTF-16 code units of their keys, no whitespace, ECMAScript number
//! form, minimal string escaping),
//! applied to the one-element JSON array holding the event's data. Nothing
//! else goes into the hash, so any language with a SHA-256 and an RFC 8785
//! implementation (or, for data this simple, a few lines of its own, as
//! [`event_id`] is here) computes the same id; it equals
//! `diesel_idempotent::fingerprint(&data)`. [`run_scenario`] checks that
//! for every event before it consumes any.
//!
//! The same events, with the same crashes at the same deliveries, go to two
//! consumers, each on a database of its own: a naive one (plain Diesel)
//! counts every delivery; the `#[idempotent(key = event.event_id)]` one
//! counts every event once, because a redelivered event carries the same id
//! and its stored result is replayed instead of running the body again.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat};
use diesel::prelude::*;
use diesel_idempotent::{IdempotentConnection, Outcome, idempotent};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

diesel::table! {
    /// One counter per short URL.
    url_stats (url) {
        url -> Text,
        clicks -> BigInt,
    }
}

diesel::table! {
    /// One row per click applied.
    click_log (id) {
        id -> BigInt,
        event_id -> Text,
        url -> Text,
        user_id -> BigInt,
        occurred_at -> Text,
    }
}

/// The namespace of the idempotent consumer's records.
pub const NAMESPACE: &str = "analytics.record_click";

/// What happened: a click on a short URL, as the shortener publishes it.
///
/// As JSON: `{"user_id": 42, "url": "https://sho.rt/a1x9", "occurred_at":
/// "2026-11-25T10:00:00.250Z"}`. `occurred_at` is RFC 3339 in UTC with
/// millisecond precision, unique per event, so a user who clicks the same
/// link twice produces two distinct events (and two distinct ids).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClickData {
    pub user_id: i64,
    pub url: String,
    pub occurred_at: String,
}

/// The message on the queue: the data and the id the shortener derived
/// from it (see [`event_id`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClickEvent {
    pub event_id: String,
    pub data: ClickData,
}

impl ClickEvent {
    /// The event the shortener publishes for `data`.
    pub fn new(data: ClickData) -> Self {
        ClickEvent {
            event_id: event_id(&data),
            data,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    #[error(transparent)]
    Idempotency(#[from] diesel_idempotent::Error),
    #[error("database: {0}")]
    Database(#[from] diesel::result::Error),
    #[error("the producer made two events with one identity: {0:?}")]
    DuplicateEvent(ClickEvent),
    #[error(
        "the producer's event id {} is not diesel_idempotent::fingerprint(&data) = {library} \
         for {:?}",
        event.event_id,
        event.data
    )]
    EventIdMismatch { event: ClickEvent, library: String },
}

// The producer's side. This is what the shortener runs; it is written
// without this crate on purpose, the way another service would write it:
// the RFC 8785 bytes of `[data]` by hand, SHA-256 from `sha2`, hex.

/// The shortener's id for `data`: `"v2:" + hex(sha256(jcs([data])))`.
///
/// Computed here by hand, not by `diesel_idempotent`: the scenario checks
/// that both agree (and `tests/analytics.rs` checks both against a value
/// computed by Python's standard library).
pub fn event_id(data: &ClickData) -> String {
    let digest = Sha256::digest(canonical_click_array(data));
    let mut id = String::with_capacity(3 + 64);
    id.push_str("v2:");
    for byte in digest {
        id.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        id.push(char::from(b"0123456789abcdef"[usize::from(byte & 0x0f)]));
    }
    id
}

/// One member's value in the hand-made writer: all this shape needs.
enum Scalar<'a> {
    Integer(i64),
    String(&'a str),
}

/// The RFC 8785 bytes of the one-element array `[data]`, written by hand
/// for this fixed shape: an array holding one object whose members are
/// sorted by the UTF-16 code units of their keys (`occurred_at`, `url`,
/// `user_id`), with no whitespace.
///
/// The integer is written as its decimal digits, which is what RFC 8785
/// writes for every integer inside ±2^53 (user ids are far inside it).
pub fn canonical_click_array(data: &ClickData) -> Vec<u8> {
    let mut members = [
        ("user_id", Scalar::Integer(data.user_id)),
        ("url", Scalar::String(&data.url)),
        ("occurred_at", Scalar::String(&data.occurred_at)),
    ];
    members.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));

    let mut out = Vec::with_capacity(64 + data.url.len() + data.occurred_at.len());
    out.extend_from_slice(b"[{");
    for (i, (key, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_string(&mut out, key);
        out.push(b':');
        match value {
            Scalar::Integer(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Scalar::String(s) => write_json_string(&mut out, s),
        }
    }
    out.extend_from_slice(b"}]");
    out
}

/// A JSON string as RFC 8785 writes it: `"` and `\` escaped, the control
/// characters U+0000 to U+001F as `\b \t \n \f \r` or else `\u00xx` (lower
/// case hex), every other character as its UTF-8 bytes, unescaped.
fn write_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\0'..='\u{1f}' => {
                out.extend_from_slice(format!("\\u{:04x}", u32::from(c)).as_bytes());
            }
            _ => {
                let mut utf8 = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// What the consumers need from a connection, beyond the record table.
pub trait AnalyticsStore: IdempotentConnection {
    /// Creates `url_stats` and `click_log` (the database has neither).
    fn create_analytics_tables(&mut self) -> QueryResult<()>;
    /// The click's effects: `url_stats.clicks + 1` and a `click_log` row.
    fn apply_click(&mut self, event: &ClickEvent) -> QueryResult<()>;
    /// Every URL's counter.
    fn url_counts(&mut self) -> QueryResult<BTreeMap<String, i64>>;
    /// Rows in `click_log`.
    fn click_log_rows(&mut self) -> QueryResult<i64>;
    /// The idempotent consumer's records.
    fn record_count(&mut self) -> QueryResult<i64>;
}

/// Expands the same Diesel DSL for each concrete connection type; only the
/// `click_log` DDL differs between the dialects.
macro_rules! analytics_store {
    ($conn:ty, $click_log_ddl:literal) => {
        impl AnalyticsStore for $conn {
            fn create_analytics_tables(&mut self) -> QueryResult<()> {
                diesel::sql_query(
                    "CREATE TABLE url_stats (url TEXT PRIMARY KEY, clicks BIGINT NOT NULL)",
                )
                .execute(self)?;
                diesel::sql_query($click_log_ddl).execute(self).map(drop)
            }

            fn apply_click(&mut self, event: &ClickEvent) -> QueryResult<()> {
                let data = &event.data;
                diesel::insert_into(url_stats::table)
                    .values((url_stats::url.eq(&data.url), url_stats::clicks.eq(1_i64)))
                    .on_conflict(url_stats::url)
                    .do_update()
                    .set(url_stats::clicks.eq(url_stats::clicks + 1_i64))
                    .execute(self)?;
                diesel::insert_into(click_log::table)
                    .values((
                        click_log::event_id.eq(&event.event_id),
                        click_log::url.eq(&data.url),
                        click_log::user_id.eq(data.user_id),
                        click_log::occurred_at.eq(&data.occurred_at),
                    ))
                    .execute(self)
                    .map(drop)
            }

            fn url_counts(&mut self) -> QueryResult<BTreeMap<String, i64>> {
                url_stats::table
                    .select((url_stats::url, url_stats::clicks))
                    .load::<(String, i64)>(self)
                    .map(|rows| rows.into_iter().collect())
            }

            fn click_log_rows(&mut self) -> QueryResult<i64> {
                click_log::table.count().get_result(self)
            }

            fn record_count(&mut self) -> QueryResult<i64> {
                diesel_idempotent::idempotency_records::table
                    .filter(diesel_idempotent::idempotency_records::namespace.eq(NAMESPACE))
                    .count()
                    .get_result(self)
            }
        }
    };
}

#[cfg(feature = "sqlite")]
analytics_store!(
    SqliteConnection,
    "CREATE TABLE click_log (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, \
     url TEXT NOT NULL, user_id BIGINT NOT NULL, occurred_at TEXT NOT NULL)"
);

#[cfg(feature = "postgres")]
analytics_store!(
    PgConnection,
    "CREATE TABLE click_log (id BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL, \
     url TEXT NOT NULL, user_id BIGINT NOT NULL, occurred_at TEXT NOT NULL)"
);

/// Creates the record table and the analytics tables in an empty database.
pub fn setup<C: AnalyticsStore>(conn: &mut C) -> Result<(), AnalyticsError> {
    diesel_idempotent::migrate(conn)?;
    conn.create_analytics_tables()?;
    Ok(())
}

/// The naive consumer: correct on the first delivery, counts again on
/// every redelivery.
pub fn record_click_naive<C: AnalyticsStore>(
    conn: &mut C,
    event: &ClickEvent,
) -> Result<(), AnalyticsError> {
    conn.transaction(|conn| conn.apply_click(event))?;
    Ok(())
}

/// The idempotent consumer: the same body; the producer's `event_id` is the
/// key, so a redelivered event replays the stored result. The event itself
/// is the call's fingerprint: an id that came back with other data would be
/// refused (`PayloadMismatch`), not replayed.
#[idempotent(key = event.event_id, ttl = "7d", name = "analytics.record_click")]
pub fn record_click<C: AnalyticsStore>(
    conn: &mut C,
    event: &ClickEvent,
) -> Result<Outcome<()>, AnalyticsError> {
    conn.apply_click(event)?;
    Ok(().into())
}

/// SplitMix64: a tiny deterministic PRNG, so a seed replays a run exactly.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `true` with probability `percent` / 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A message handed to a consumer; it stays in flight until acked.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: u64,
    /// 1 on the first delivery, 2 on the first redelivery, ...
    pub attempt: u32,
    pub event: ClickEvent,
}

/// An in-process queue with at-least-once delivery: a message leaves the
/// queue only when acked; every message in flight when its consumer
/// crashes goes back to the end of the queue and is delivered again.
#[derive(Debug, Default)]
pub struct AtLeastOnceQueue {
    ready: VecDeque<(u32, ClickEvent)>,
    in_flight: HashMap<u64, (u32, ClickEvent)>,
    next_id: u64,
    deliveries: u64,
    redeliveries: u64,
}

impl AtLeastOnceQueue {
    pub fn publish(&mut self, event: ClickEvent) {
        self.ready.push_back((0, event));
    }

    /// The next message, which is in flight until [`ack`](Self::ack).
    pub fn receive(&mut self) -> Option<Delivery> {
        let (previous_attempts, event) = self.ready.pop_front()?;
        let attempt = previous_attempts + 1;
        self.next_id += 1;
        self.deliveries += 1;
        if attempt > 1 {
            self.redeliveries += 1;
        }
        self.in_flight
            .insert(self.next_id, (attempt, event.clone()));
        Some(Delivery {
            id: self.next_id,
            attempt,
            event,
        })
    }

    /// The consumer is done with the message: it is never delivered again.
    pub fn ack(&mut self, delivery_id: u64) -> bool {
        self.in_flight.remove(&delivery_id).is_some()
    }

    /// The consumer died: every un-acked message is queued again.
    pub fn consumer_crashed(&mut self) {
        let mut unacked: Vec<_> = self.in_flight.drain().collect();
        unacked.sort_by_key(|(id, _)| *id);
        self.ready
            .extend(unacked.into_iter().map(|(_, message)| message));
    }

    pub fn is_drained(&self) -> bool {
        self.ready.is_empty() && self.in_flight.is_empty()
    }

    pub fn deliveries(&self) -> u64 {
        self.deliveries
    }

    pub fn redeliveries(&self) -> u64 {
        self.redeliveries
    }
}

/// The knobs of one run.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Click events the shortener produces.
    pub events: u64,
    /// Seeds the producer and the failure injection.
    pub seed: u64,
    /// Chance, per delivery, that the consumer crashes after its effects
    /// committed and before it acked.
    pub crash_percent: u64,
}

const SHORT_CODES: [&str; 24] = [
    "a1x9", "b7Kq", "c3Pz", "dd0r", "e5Wm", "f8Lt", "g2Hn", "h6Jv", "i4Ds", "j9Fb", "k1Rc", "l7Yp",
    "m3Ug", "n0Ek", "o5Tw", "p8Qa", "q2Zl", "r6Bx", "s4Nf", "t9Mi", "u1Go", "v7Sh", "w3Cy", "x0Vj",
];

/// 2026-11-25T10:00:00Z, in milliseconds since the Unix epoch.
const FIRST_CLICK_MS: i64 = 1_795_600_800_000;

/// The shortener's clicks: popular links get more of them, a few hundred
/// users click, and every event has its own `occurred_at` (the clock moves
/// on by at least a millisecond per click), and its own [`event_id`].
pub fn produce(scenario: &Scenario) -> Vec<ClickEvent> {
    let mut rng = SplitMix64::new(scenario.seed);
    let codes = SHORT_CODES.len() as u64;
    let mut at_ms = FIRST_CLICK_MS;
    (0..scenario.events)
        .map(|_| {
            // The smaller of two draws: low indexes are the popular links.
            let code = rng.below(codes).min(rng.below(codes)) as usize;
            at_ms += 1 + rng.below(250) as i64;
            let occurred_at = DateTime::from_timestamp_millis(at_ms)
                .expect("a timestamp in range")
                .to_rfc3339_opts(SecondsFormat::Millis, true);
            ClickEvent::new(ClickData {
                user_id: 1 + rng.below(300) as i64,
                url: format!("https://sho.rt/{}", SHORT_CODES[code]),
                occurred_at,
            })
        })
        .collect()
}

/// One consumer's run over the queue.
#[derive(Debug, Clone)]
pub struct ConsumerRun {
    pub deliveries: u64,
    pub redeliveries: u64,
    /// Crashes injected after the effects, before the ack.
    pub crashes: u64,
    /// Deliveries answered from a stored record (the body did not run).
    pub replays: u64,
    /// The most deliveries one event took.
    pub max_attempts: u32,
    /// `SUM(url_stats.clicks)`.
    pub total_clicks: i64,
    pub click_log_rows: i64,
    pub records: i64,
    pub per_url: BTreeMap<String, i64>,
    pub elapsed: Duration,
}

/// A URL whose counter is not the number of its clicks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlMismatch {
    pub url: String,
    pub expected: i64,
    pub counted: i64,
}

/// Both consumers' runs over the same events and the same crashes.
#[derive(Debug, Clone)]
pub struct Report {
    pub events_produced: u64,
    /// Events whose producer-made `event_id` was checked to equal
    /// `diesel_idempotent::fingerprint(&data)` (and to be unique).
    pub ids_verified: u64,
    pub distinct_urls: usize,
    /// Events whose (user, url) pair an earlier event already had: distinct
    /// clicks that a key of `(user_id, url)` alone would wrongly merge.
    pub repeat_clicks: u64,
    /// Clicks per URL, counted at the producer.
    pub expected: BTreeMap<String, i64>,
    pub naive: ConsumerRun,
    pub idempotent: ConsumerRun,
}

impl ConsumerRun {
    pub fn mismatches(&self, expected: &BTreeMap<String, i64>) -> Vec<UrlMismatch> {
        let urls: HashSet<&String> = expected.keys().chain(self.per_url.keys()).collect();
        let mut mismatches: Vec<UrlMismatch> = urls
            .into_iter()
            .filter_map(|url| {
                let expected = expected.get(url).copied().unwrap_or(0);
                let counted = self.per_url.get(url).copied().unwrap_or(0);
                (expected != counted).then(|| UrlMismatch {
                    url: url.clone(),
                    expected,
                    counted,
                })
            })
            .collect();
        mismatches.sort_by(|a, b| a.url.cmp(&b.url));
        mismatches
    }
}

impl Report {
    /// What is wrong with the idempotent consumer's counts, if anything
    /// (and whether the naive one double-counted exactly as predicted).
    pub fn problems(&self) -> Vec<String> {
        let events = self.events_produced as i64;
        let run = &self.idempotent;
        let mut problems = Vec::new();
        if self.ids_verified != self.events_produced {
            problems.push(format!(
                "{} of {} event ids checked against the library",
                self.ids_verified, self.events_produced
            ));
        }
        if run.total_clicks != events {
            problems.push(format!(
                "idempotent total {} != {events} events",
                run.total_clicks
            ));
        }
        if run.click_log_rows != events {
            problems.push(format!(
                "idempotent click log has {} rows, not {events}",
                run.click_log_rows
            ));
        }
        if run.records != events {
            problems.push(format!(
                "{} idempotency records, not one per event ({events})",
                run.records
            ));
        }
        if run.replays != run.redeliveries {
            problems.push(format!(
                "{} replays for {} redeliveries",
                run.replays, run.redeliveries
            ));
        }
        for m in run.mismatches(&self.expected) {
            problems.push(format!(
                "{}: counted {}, clicked {}",
                m.url, m.counted, m.expected
            ));
        }
        // The naive consumer counts every delivery: that is the bug shown.
        let naive = &self.naive;
        if naive.total_clicks != naive.deliveries as i64
            || naive.click_log_rows != naive.deliveries as i64
        {
            problems.push(format!(
                "naive consumer counted {} (log {}) for {} deliveries",
                naive.total_clicks, naive.click_log_rows, naive.deliveries
            ));
        }
        if naive.deliveries != self.idempotent.deliveries {
            problems.push("the two consumers saw different deliveries".to_owned());
        }
        problems
    }
}

/// Drives one consumer until the queue is drained. `handle` applies an
/// event and says whether the call was a replay.
fn consume<C, H>(
    conn: &mut C,
    events: &[ClickEvent],
    scenario: &Scenario,
    mut handle: H,
) -> Result<ConsumerRun, AnalyticsError>
where
    C: AnalyticsStore,
    H: FnMut(&mut C, &ClickEvent) -> Result<bool, AnalyticsError>,
{
    let started = Instant::now();
    let mut queue = AtLeastOnceQueue::default();
    for event in events {
        queue.publish(event.clone());
    }
    // Its own stream, the same for both consumers: the same deliveries
    // crash in both runs.
    let mut failures = SplitMix64::new(scenario.seed ^ 0xC2A5_4F00_D1E5_EED5);
    let (mut crashes, mut replays, mut max_attempts) = (0, 0, 0);
    while let Some(delivery) = queue.receive() {
        max_attempts = max_attempts.max(delivery.attempt);
        // One call, one transaction per delivery: the effects commit here.
        if handle(conn, &delivery.event)? {
            replays += 1;
        }
        // The injected failure: after the commit, before the ack.
        if failures.percent(scenario.crash_percent) {
            crashes += 1;
            queue.consumer_crashed();
            continue;
        }
        queue.ack(delivery.id);
    }
    debug_assert!(queue.is_drained());
    let per_url = conn.url_counts()?;
    Ok(ConsumerRun {
        deliveries: queue.deliveries(),
        redeliveries: queue.redeliveries(),
        crashes,
        replays,
        max_attempts,
        total_clicks: per_url.values().sum(),
        click_log_rows: conn.click_log_rows()?,
        records: conn.record_count()?,
        per_url,
        elapsed: started.elapsed(),
    })
}

/// Checks the producer's ids before anything is consumed: each must be
/// `diesel_idempotent::fingerprint(&data)`, the library's code path for the
/// same scheme ([`AnalyticsError::EventIdMismatch`] otherwise), and distinct
/// events must never share one, since it is the consumer's key
/// ([`AnalyticsError::DuplicateEvent`]). Returns how many ids it checked.
pub fn check_event_ids(events: &[ClickEvent]) -> Result<u64, AnalyticsError> {
    let mut ids = HashSet::with_capacity(events.len());
    for event in events {
        let library = diesel_idempotent::fingerprint(&event.data)?;
        if library.as_str() != event.event_id {
            return Err(AnalyticsError::EventIdMismatch {
                event: event.clone(),
                library: library.to_string(),
            });
        }
        if !ids.insert(event.event_id.as_str()) {
            return Err(AnalyticsError::DuplicateEvent(event.clone()));
        }
    }
    Ok(ids.len() as u64)
}

/// Produces the events and runs both consumers over them: the naive one on
/// `naive_db`, the idempotent one on `idempotent_db`. Both databases must
/// be empty; [`setup`] is run on each.
pub fn run_scenario<C: AnalyticsStore>(
    scenario: &Scenario,
    naive_db: &mut C,
    idempotent_db: &mut C,
) -> Result<Report, AnalyticsError> {
    let events = produce(scenario);

    let ids_verified = check_event_ids(&events)?;
    let mut pairs = HashSet::with_capacity(events.len());
    let mut repeat_clicks = 0;
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for ClickEvent { data, .. } in &events {
        if !pairs.insert((data.user_id, data.url.as_str())) {
            repeat_clicks += 1;
        }
        *expected.entry(data.url.clone()).or_default() += 1;
    }

    setup(naive_db)?;
    let naive = consume(naive_db, &events, scenario, |conn, event| {
        record_click_naive(conn, event).map(|()| false)
    })?;
    setup(idempotent_db)?;
    let idempotent = consume(idempotent_db, &events, scenario, |conn, event| {
        record_click(conn, event).map(|outcome| outcome.is_replayed())
    })?;

    Ok(Report {
        events_produced: scenario.events,
        ids_verified,
        distinct_urls: expected.len(),
        repeat_clicks,
        expected,
        naive,
        idempotent,
    })
}

/// The figures, for humans.
pub fn print_report(report: &Report) {
    let (naive, idem) = (&report.naive, &report.idempotent);
    println!(
        "events produced:    {} clicks on {} short URLs ({} repeat an earlier user+URL pair)",
        report.events_produced, report.distinct_urls, report.repeat_clicks
    );
    println!(
        "event ids:          {} made by the producer by hand, each equal to \
         diesel_idempotent::fingerprint(&data), none shared",
        report.ids_verified
    );
    println!(
        "deliveries:         {} ({} redeliveries after {} crashes between commit and ack; \
         one event delivered up to {} times)",
        idem.deliveries, idem.redeliveries, idem.crashes, idem.max_attempts
    );
    println!(
        "naive total:        {} clicks, {} click-log rows  <- double counted ({} ms)",
        naive.total_clicks,
        naive.click_log_rows,
        naive.elapsed.as_millis()
    );
    println!(
        "idempotent total:   {} clicks, {} click-log rows, {} records, {} replays ({} ms)",
        idem.total_clicks,
        idem.click_log_rows,
        idem.records,
        idem.replays,
        idem.elapsed.as_millis()
    );
    let over = naive.mismatches(&report.expected);
    if let Some(worst) = over.iter().max_by_key(|m| m.counted - m.expected) {
        println!(
            "naive per URL:      {} of {} counters wrong, worst {}: {} counted for {} clicks",
            over.len(),
            report.distinct_urls,
            worst.url,
            worst.counted,
            worst.expected
        );
    }
    let exact = report
        .expected
        .iter()
        .filter(|(url, clicks)| idem.per_url.get(*url) == Some(*clicks))
        .count();
    println!(
        "idempotent per URL: {exact} of {} counters exact",
        report.distinct_urls
    );
}
