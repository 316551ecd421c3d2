//! The redelivery scenario of `examples/analytics_consumer.rs` at scale:
//! thousands of click events, random crashes between commit and ack, exact
//! counters from the consumer keyed by the producer's `event_id`, on SQLite
//! and PostgreSQL (the scenario's store is written for those two). And,
//! without a database, the producer's hand-made `event_id` against the
//! library's fingerprint and a value computed by Python.
#![cfg(any(feature = "sqlite", feature = "postgres"))]

mod common;

#[path = "../examples/shared/analytics.rs"]
mod analytics;

use analytics::{AnalyticsError, AnalyticsStore, ClickData, ClickEvent, Scenario};
use common::Backend;

/// The example event: `{"user_id": 42, "url": "https://example.com/x?a=1&b=2",
/// "occurred_at": "2026-11-25T10:00:00Z"}`.
fn example_click() -> ClickData {
    ClickData {
        user_id: 42,
        url: "https://example.com/x?a=1&b=2".to_owned(),
        occurred_at: "2026-11-25T10:00:00Z".to_owned(),
    }
}

/// Computed outside Rust:
///
/// ```text
/// python3 -c 'import hashlib,json; print("v2:"+hashlib.sha256(json.dumps(
///     [{"occurred_at":"2026-11-25T10:00:00Z","url":"https://example.com/x?a=1&b=2",
///       "user_id":42}],
///     separators=(",",":"),sort_keys=True).encode()).hexdigest())'
/// ```
///
/// For this object (ASCII text, no character to escape, an integer, no
/// float), Python's compact `json.dumps` with sorted keys writes exactly the
/// RFC 8785 bytes: `[{"occurred_at":"2026-11-25T10:00:00Z",` ...
/// `"user_id":42}]`. It is not RFC 8785 in general: it escapes non-ASCII
/// text by default, orders keys by code point rather than UTF-16 code unit,
/// and writes floats in Python's own form.
const EXAMPLE_EVENT_ID: &str =
    "v2:fdf5aead5628985589a60e7dedcfe3b431d5b4d9b659e9c480820d9d3fc90838";

#[test]
fn the_producers_event_id_is_the_library_fingerprint() {
    let data = example_click();
    assert_eq!(
        analytics::canonical_click_array(&data),
        br#"[{"occurred_at":"2026-11-25T10:00:00Z","url":"https://example.com/x?a=1&b=2","user_id":42}]"#,
    );
    let by_hand = analytics::event_id(&data);
    let library = diesel_idempotent::fingerprint(&data).expect("plain data fingerprints");
    assert_eq!(by_hand, library.as_str());
    assert_eq!(by_hand, EXAMPLE_EVENT_ID);
    assert_eq!(ClickEvent::new(data).event_id, EXAMPLE_EVENT_ID);
}

#[test]
fn the_producer_escapes_strings_as_the_library_does() {
    // `"`, `\`, the five short escapes, other control characters (`\u00xx`,
    // lower case), DEL and non-ASCII text (both written as they are).
    let url = "https://sho.rt/q?say=\"hi\"&path=C:\\tmp\u{1}\u{1f}\u{8}\t\n\u{c}\r\u{7f}é☃😀";
    let data = ClickData {
        user_id: -7,
        url: url.to_owned(),
        occurred_at: "2026-11-25T10:00:00.001Z".to_owned(),
    };
    let by_hand = analytics::canonical_click_array(&data);
    let mut library = b"[".to_vec();
    library.extend(diesel_idempotent::canonical_json(&data).expect("plain data"));
    library.push(b']');
    assert_eq!(
        String::from_utf8(by_hand.clone()).unwrap(),
        String::from_utf8(library).unwrap()
    );
    let text = String::from_utf8(by_hand).unwrap();
    assert!(
        text.contains(r#""url":"https://sho.rt/q?say=\"hi\"&path=C:\\tmp\u0001\u001f\b\t\n\f\r"#),
        "{text}"
    );
    assert!(text.ends_with("\\r\u{7f}é☃😀\",\"user_id\":-7}]"), "{text}");
    assert_eq!(
        analytics::event_id(&data),
        diesel_idempotent::fingerprint(&data).unwrap().as_str()
    );
}

#[test]
fn a_wrong_or_shared_event_id_stops_the_scenario() {
    let good = ClickEvent::new(example_click());
    let mut other = example_click();
    other.occurred_at = "2026-11-25T10:00:01Z".to_owned();
    let other = ClickEvent::new(other);
    assert_eq!(
        analytics::check_event_ids(&[good.clone(), other.clone()]).unwrap(),
        2
    );

    // An id computed from other data (here: another click's).
    let wrong = ClickEvent {
        event_id: other.event_id.clone(),
        data: good.data.clone(),
    };
    match analytics::check_event_ids(&[other.clone(), wrong.clone()]) {
        Err(AnalyticsError::EventIdMismatch { event, library }) => {
            assert_eq!(event, wrong);
            assert_eq!(library, EXAMPLE_EVENT_ID);
        }
        unexpected => panic!("{unexpected:?}"),
    }

    // The same event published twice is two events with one key.
    match analytics::check_event_ids(&[good.clone(), other, good.clone()]) {
        Err(AnalyticsError::DuplicateEvent(event)) => assert_eq!(event, good),
        unexpected => panic!("{unexpected:?}"),
    }
}

/// Each delivery is one call and one transaction; nothing is batched.
const SCENARIO: Scenario = Scenario {
    events: 3_000,
    seed: 0xA11C_E5ED,
    crash_percent: 25,
};

fn redelivered_clicks_are_counted_once<B: Backend>()
where
    B::Conn: AnalyticsStore,
{
    let (naive_db, idempotent_db) = (B::empty(), B::empty());
    let (mut naive, mut idempotent) = (naive_db.connect(), idempotent_db.connect());
    let report = analytics::run_scenario(&SCENARIO, &mut naive, &mut idempotent)
        .expect("the scenario runs to the end");
    println!("[{}]", B::NAME);
    analytics::print_report(&report);

    let events = SCENARIO.events as i64;
    let (naive, idem) = (&report.naive, &report.idempotent);
    // The scenario is what it claims to be.
    assert_eq!(report.events_produced, SCENARIO.events);
    assert!(report.distinct_urls > 10, "{} URLs", report.distinct_urls);
    assert!(
        report.repeat_clicks > 100,
        "users click the same link again: {} repeats",
        report.repeat_clicks
    );
    assert!(
        idem.redeliveries > SCENARIO.events / 5,
        "{} redeliveries",
        idem.redeliveries
    );
    assert!(
        idem.max_attempts >= 3,
        "up to {} attempts",
        idem.max_attempts
    );
    assert_eq!(idem.deliveries, SCENARIO.events + idem.redeliveries);
    assert_eq!(idem.redeliveries, idem.crashes);
    assert_eq!(naive.deliveries, idem.deliveries, "the same deliveries");

    // The naive consumer counted every delivery.
    assert_eq!(naive.total_clicks, naive.deliveries as i64);
    assert_eq!(naive.click_log_rows, naive.deliveries as i64);
    assert!(naive.total_clicks > events);
    assert!(!naive.mismatches(&report.expected).is_empty());
    assert_eq!(naive.records, 0);

    // The idempotent consumer counted every event once, per URL exactly.
    assert_eq!(idem.mismatches(&report.expected), []);
    assert_eq!(idem.per_url, report.expected);
    assert_eq!(idem.total_clicks, events);
    assert_eq!(idem.click_log_rows, events);
    assert_eq!(idem.records, events, "one record per event");
    assert_eq!(idem.replays, idem.redeliveries, "every redelivery replayed");
    assert_eq!(report.problems(), Vec::<String>::new());
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite_redelivered_clicks_are_counted_once() {
    redelivered_clicks_are_counted_once::<common::Sqlite>();
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_redelivered_clicks_are_counted_once() {
    redelivered_clicks_are_counted_once::<common::Postgres>();
}
