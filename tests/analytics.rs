//! The redelivery scenario of `examples/analytics_consumer.rs` at scale:
//! thousands of click events, random crashes between commit and ack, exact
//! counters from the `#[idempotent(hash)]` consumer on SQLite and PostgreSQL
//! (the scenario's store is written for those two).
#![cfg(any(feature = "sqlite", feature = "postgres"))]

mod common;

#[path = "../examples/shared/analytics.rs"]
mod analytics;

use analytics::{AnalyticsStore, Scenario};
use common::Backend;

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
