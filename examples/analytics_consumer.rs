//! Redelivered click events, counted once: an at-least-once queue, a
//! consumer that crashes between commit and ack, and an idempotent consumer
//! keyed by the producer's event id.
//!
//! ```text
//! cargo run --example analytics_consumer
//! ANALYTICS_DATABASE_URL=postgres://user@host/db \
//!     cargo run --example analytics_consumer --features postgres
//! ```
//!
//! A URL shortener produces click events into an in-process queue that
//! redelivers every message not acked. The analytics consumer bumps the
//! URL's counter and appends to a click log in one transaction, then, on
//! some deliveries, crashes before it acks: the queue delivers the event
//! again. The naive consumer counts it again; the idempotent consumer,
//! `#[idempotent(key = event.event_id, ttl = "7d", name =
//! "analytics.record_click")]`, replays its stored result instead.
//!
//! The shortener stands for another service, in any language: it does not
//! use this crate. It stamps each event `{"user_id": 42, "url": "...",
//! "occurred_at": "2026-11-25T10:00:00.250Z"}` with
//!
//! ```text
//! event_id = "v2:" + hex(sha256(jcs([data])))
//! ```
//!
//! the fingerprint scheme `v2`: SHA-256 of the RFC 8785 (JSON
//! Canonicalization Scheme) bytes of the one-element array holding the
//! data, in lowercase hex. RFC 8785 fixes every byte (sorted keys, no
//! whitespace, ECMAScript numbers, minimal string escaping), so every
//! language with an RFC 8785 library and a SHA-256 gets the same id; here
//! the producer writes those bytes by hand (`shared/analytics.rs`). Before
//! consuming, the run checks every id against
//! `diesel_idempotent::fingerprint(&data)`, the library's own code path,
//! and fails on any difference.
//!
//! SQLite (two files in the temporary directory) is the default. With
//! `ANALYTICS_DATABASE_URL` set, the run uses that PostgreSQL database, in
//! the schemas `analytics_naive` and `analytics_idempotent`, which it drops
//! and recreates. Exits non-zero when an event id is not the library's
//! fingerprint of its data, or when the idempotent consumer's counts are
//! not exact.

#[path = "shared/analytics.rs"]
mod analytics;

use std::process::ExitCode;

use analytics::{AnalyticsStore, Report, Scenario};
use diesel::prelude::*;

const SCENARIO: Scenario = Scenario {
    events: 400,
    seed: 0x5EED_2026,
    crash_percent: 25,
};

const DATABASE_URL_VAR: &str = "ANALYTICS_DATABASE_URL";

type BoxError = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    match run() {
        Ok(report) => {
            analytics::print_report(&report);
            let problems = report.problems();
            if problems.is_empty() {
                println!("\nevery click counted exactly once.");
                ExitCode::SUCCESS
            } else {
                eprintln!("\nthe idempotent consumer's counts are wrong:");
                for problem in problems {
                    eprintln!("  - {problem}");
                }
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<Report, BoxError> {
    println!(
        "{} click events, {}% of deliveries crash after the commit and before the ack\n",
        SCENARIO.events, SCENARIO.crash_percent
    );
    match std::env::var(DATABASE_URL_VAR) {
        Ok(url) => run_postgres(&url),
        Err(_) => run_sqlite(),
    }
}

fn scenario<C: AnalyticsStore>(naive: &mut C, idempotent: &mut C) -> Result<Report, BoxError> {
    Ok(analytics::run_scenario(&SCENARIO, naive, idempotent)?)
}

#[cfg(feature = "sqlite")]
fn run_sqlite() -> Result<Report, BoxError> {
    let open = |name: &str| -> Result<SqliteConnection, BoxError> {
        let path = std::env::temp_dir().join(format!("diesel-idempotent-analytics-{name}.sqlite3"));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let mut conn = SqliteConnection::establish(&path.to_string_lossy())?;
        // WAL without an fsync per commit: a demo, not a ledger.
        diesel::sql_query("PRAGMA journal_mode = WAL").execute(&mut conn)?;
        diesel::sql_query("PRAGMA synchronous = NORMAL").execute(&mut conn)?;
        println!("{name:>10} consumer: SQLite {}", path.display());
        Ok(conn)
    };
    let mut naive = open("naive")?;
    let mut idempotent = open("idempotent")?;
    println!();
    scenario(&mut naive, &mut idempotent)
}

#[cfg(not(feature = "sqlite"))]
fn run_sqlite() -> Result<Report, BoxError> {
    Err(
        format!("built without the `sqlite` feature: set {DATABASE_URL_VAR} to a PostgreSQL URL")
            .into(),
    )
}

#[cfg(feature = "postgres")]
fn run_postgres(url: &str) -> Result<Report, BoxError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!("{DATABASE_URL_VAR} must be a postgres:// URL").into());
    }
    // A schema per consumer, dropped and recreated, so reruns start empty
    // and nothing outside the two schemas is touched.
    let open = |schema: &str| -> Result<PgConnection, BoxError> {
        let mut conn = PgConnection::establish(url)?;
        diesel::sql_query(format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&mut conn)?;
        diesel::sql_query(format!("CREATE SCHEMA {schema}")).execute(&mut conn)?;
        diesel::sql_query(format!("SET search_path TO {schema}")).execute(&mut conn)?;
        println!("{schema:>20}: PostgreSQL schema");
        Ok(conn)
    };
    let mut naive = open("analytics_naive")?;
    let mut idempotent = open("analytics_idempotent")?;
    println!();
    scenario(&mut naive, &mut idempotent)
}

#[cfg(not(feature = "postgres"))]
fn run_postgres(_url: &str) -> Result<Report, BoxError> {
    Err(format!(
        "{DATABASE_URL_VAR} is set, but this build has no PostgreSQL support: \
         run with `--features postgres`"
    )
    .into())
}
