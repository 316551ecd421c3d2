//! # diesel-idempotent
//!
//! Exactly-once service functions for [Diesel](https://diesel.rs). One
//! attribute, [`idempotent`], rewrites a function so that a retried request,
//! a redelivered message or a double-clicked button changes the database
//! once and gets the same answer every time.
//!
//! ```no_run
//! use diesel::prelude::*;
//! use diesel_idempotent::idempotent;
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Payment { id: i64 }
//! # #[derive(serde::Serialize)] struct NewPayment { amount: i64 }
//! # #[derive(Debug)] enum AppError { Idempotency(diesel_idempotent::Error), Db(diesel::result::Error) }
//! # impl From<diesel_idempotent::Error> for AppError { fn from(e: diesel_idempotent::Error) -> Self { AppError::Idempotency(e) } }
//! # impl From<diesel::result::Error> for AppError { fn from(e: diesel::result::Error) -> Self { AppError::Db(e) } }
//!
//! #[idempotent(key = key, ttl = "24h", name = "payments.create")]
//! fn create_payment(
//!     conn: &mut SqliteConnection,
//!     key: &str,
//!     req: &NewPayment,
//! ) -> Result<Payment, AppError> {
//!     // Ordinary Diesel code: runs once per key, in one transaction with
//!     // the record that remembers its result.
//!     # let _ = req;
//!     Ok(Payment { id: 1 })
//! }
//! ```
//!
//! # What the attribute does
//!
//! In one database transaction with the body (a savepoint when the caller
//! already opened a transaction):
//!
//! 1. the key is validated: 1 to 255 bytes of visible ASCII, else
//!    [`Error::InvalidKey`] and the body does not run;
//! 2. the request [`Fingerprint`] is computed: `"v2:"` and the hex SHA-256
//!    of the RFC 8785 (JCS) form of the JSON array of every argument except
//!    the connection, the key, `self` and those named in `skip(..)`
//!    (integers outside ±2^53 written exactly; see [`Fingerprint`]);
//! 3. the key is claimed by inserting its record (insert-first, on the
//!    primary key `(namespace, scope, key)`);
//! 4. on the first call the body runs and its `Ok` value is stored as JSON;
//! 5. a later call with the same key and fingerprint returns the stored
//!    value without running the body; a different fingerprint returns
//!    [`Error::PayloadMismatch`] and changes nothing;
//! 6. a concurrent duplicate waits for the first call's transaction, then
//!    replays its result (or, if it rolled back, runs the body itself);
//!    with `wait_for` it waits a bounded time, with `on_conflict = "reject"`
//!    not at all, and then gets [`Error::InFlight`];
//! 7. an `Err` or a panic in the body leaves no record, and a rollback of the
//!    caller's transaction removes the record with the body's effects;
//! 8. an expired record is treated as absent.
//!
//! # Options
//!
//! | option | meaning |
//! |---|---|
//! | `key = EXPR` | the idempotency key, any expression of a type that is `AsRef<str>`, or an HTTP `axum::IdempotencyKey` (whose method and route join the fingerprint) |
//! | `hash`, `hash(a, b.c)` | instead of `key`: the key is the [`fingerprint`] of every argument, or of the named values (call history) |
//! | `get_or_create = LOOKUP` | instead of both: return what the lookup finds, else run the body; see [`get_or_create`] |
//! | `ttl = "24h"` | how long the record answers, a humantime literal checked at compile time (1s to 366d; default 24h) |
//! | `name = "payments.create"` | the stable namespace of this function's records |
//! | `scope = EXPR` | a tenant or user scope (`Display`), so equal keys of two tenants never collide |
//! | `conn = IDENT` | the connection parameter (default: the one named `conn`) |
//! | `skip(a, b)` | arguments left out of the fingerprint |
//! | `clock = EXPR` | a [`Clock`] (default [`SystemClock`]); tests pass a [`ManualClock`] |
//! | `on_conflict = "wait"` / `"reject"` | a duplicate of an unfinished call waits (default) or gets [`Error::InFlight`] at once ([`OnConflict`]) |
//! | `wait_for = "2s"` | a duplicate of an unfinished call waits at most this long, then gets [`Error::InFlight`] (1 ms to 1 h; MySQL rounds up to whole seconds; [`OnConflict::WaitFor`]) |
//! | `mode = "claim_first"` / `"optimistic"` | claim the key before the body (default), or run the body first and insert the record with its result after it, for bodies whose every effect is in this transaction ([`Mode`]) |
//! | `replay = "in_transaction"` / `"read_first"` | find a stored result inside the call's transaction (default), or with one plain read before it: a replay in one statement ([`Replay`]) |
//! | `max_response_bytes = N` | refuse results whose JSON exceeds N bytes ([`Error::ResponseTooLarge`]) |
//! | `abandon_after = "30s"` | `async fn` on PostgreSQL or MySQL: the server ends a session whose call sat idle in its transaction this long, freeing the key |
//! | `crate = "path"` | where this crate is reachable if renamed or re-exported |
//!
//! The default `name` is the module path and the function's name.
//! **Renaming or moving the function changes it** (old records then no
//! longer answer), and two methods of the same name in one module share it:
//! production code should always set `name`.
//!
//! The function must return `Result<T, E>` where `T: Serialize +
//! DeserializeOwned` and `E: From<diesel_idempotent::Error>`; the connection
//! is `&mut` a connection that implements [`IdempotentConnection`]
//! (`SqliteConnection`, `PgConnection`, or a generic `C: IdempotentConnection`).
//! Return `Result<Outcome<T>, E>` to learn whether a call was replayed.
//! Return `Result<Settled<T, F>, E>` when the call can fail for good: a
//! `Settled::Terminal(f)` (a declined card) is stored and replayed like a
//! value while the body's effects roll back; an `Err` stays transient
//! (nothing stored, the retry runs). See [`Settled`].
//!
//! # HTTP (feature `axum`)
//!
//! `diesel_idempotent::axum` has the `Idempotency-Key` extractor (bare or RFC 8941 string
//! form), RFC 9457 problem+json answers for the library's errors (400, 409
//! with `Retry-After`, 422, 500 without internals) and for axum's
//! rejections, and `axum::Reply`, a response stored with its status and
//! replayed with `Idempotent-Replayed: true`. As the attribute's `key`, the
//! extractor adds the request's method and matched route to the
//! fingerprint.
//!
//! # `async fn` (feature `async`)
//!
//! On an `async fn` the connection is a diesel-async 0.9 connection
//! (`AsyncPgConnection`, `AsyncMysqlConnection`,
//! `SyncConnectionWrapper<SqliteConnection>`, or a generic
//! `C: AsyncIdempotentConnection`), from a deadpool or bb8 pool or not.
//! Every pattern and option behaves as on a blocking `fn`: one procedure
//! drives both. On PostgreSQL the library's `BEGIN` travels with the claim,
//! in one round trip. The future is `Send` when the body's is. A future dropped at
//! any `.await` stores nothing and leaves no connection inside its
//! transaction for a pool to hand out; what each backend and pool does is
//! in the `AsyncIdempotentConnection` documentation and the README's
//! section on cancellation.
//!
//! # Backends and features
//!
//! `sqlite` (default), `postgres` and `mysql` (MySQL 8, MariaDB 10.5+).
//! `sqlite` links the system libsqlite3; `bundled-sqlite` compiles SQLite
//! from source instead. Because `sqlite` is a default feature, a
//! PostgreSQL-only build turns the defaults off:
//! `default-features = false, features = ["postgres"]`.
//! Create the record table with
//! [`migrate`], or write Diesel CLI migration folders with
//! `diesel-idempotent migrations --backend postgres --dir migrations`
//! (or [`migrations::write_diesel_cli_migrations`]). Look records up,
//! forget one, count and purge them with `diesel-idempotent inspect`,
//! `forget`, `stats` and `purge --database-url URL`, or from code with
//! [`admin`].
#![warn(missing_docs)]

/// Makes a function that takes a Diesel connection idempotent.
///
/// See the [crate documentation](crate) for the options and the guarantees.
pub use idempotent_macros::idempotent;

pub use idempotent_core::{
    Call, Clock, Error, Fingerprint, FingerprintBuilder, IdempotencyRecord, IdempotentConnection,
    IdempotentResult, ManualClock, Mode, OnConflict, Outcome, Replay, Response, RetryPolicy,
    Retryable, Settled, StableName, SystemClock, Ttl, UniqueViolation, canonical_json, fingerprint,
    get_or_create, id_or_body_hash, idempotency_records, migrate, purge_expired,
    purge_expired_with_clock, retry, sub_key, unique_index_covers,
};

#[cfg(feature = "async")]
pub use idempotent_core::{AsyncIdempotentConnection, get_or_create_async, retry_async};

/// HTTP APIs on axum 0.8 (feature `axum`): the `Idempotency-Key`
/// extractor, problem+json answers for the library's errors and axum's
/// rejections, and [`axum::Reply`], a response replayed with its status.
#[cfg(feature = "axum")]
pub mod axum {
    pub use idempotent_core::http::axum::*;
}

/// What each call reports: one `tracing` span (feature `tracing`) and the
/// metrics `idempotency_requests_total`, `idempotency_duration_seconds` and
/// `idempotency_purged_total` (feature `metrics`; the `metrics` crate the
/// library records with is re-exported here, as `telemetry::metrics`).
pub mod telemetry {
    pub use idempotent_core::telemetry::*;
}

/// Operator tools for the record table: find, list, forget, count and
/// purge records (what the `diesel-idempotent` command's `inspect`,
/// `forget`, `stats` and `purge` run). Blocking connections only; see
/// [`admin::forget`] before forgetting anything.
///
/// ```
/// use diesel::prelude::*;
/// use diesel_idempotent::admin::{self, RecordState};
/// use diesel_idempotent::idempotent;
///
/// #[idempotent(key = key, ttl = "1h", name = "orders.create")]
/// fn create_order(conn: &mut SqliteConnection, key: &str, amount: i64)
///     -> Result<i64, diesel_idempotent::Error>
/// {
///     Ok(amount)
/// }
///
/// # fn main() -> Result<(), diesel_idempotent::Error> {
/// let mut conn = SqliteConnection::establish(":memory:").expect("in-memory SQLite");
/// diesel_idempotent::migrate(&mut conn)?;
/// create_order(&mut conn, "order-1", 250)?;
///
/// let record = admin::find(&mut conn, "orders.create", "", "order-1")?.expect("stored");
/// assert_eq!(record.response.as_deref(), Some("250"));
/// let recent = admin::list(&mut conn, "orders.create", RecordState::Completed, 20)?;
/// assert_eq!(recent, [record]);
/// let stats = admin::stats(&mut conn)?;
/// assert_eq!((stats[0].live, stats[0].in_flight, stats[0].expired), (1, 0, 0));
///
/// // Dangerous: the next call with this key runs the body again.
/// assert!(admin::forget(&mut conn, "orders.create", "", "order-1")?);
/// assert!(admin::find(&mut conn, "orders.create", "", "order-1")?.is_none());
/// # Ok(()) }
/// ```
pub mod admin {
    pub use idempotent_core::admin::*;
}

/// The library's migrations (the records, the outbox, the phased calls):
/// embedded, and written as Diesel CLI folders.
pub mod migrations {
    pub use idempotent_core::migrations::{
        Backend, MIGRATION_NAME, Migration, OUTBOX_MIGRATION_NAME, OUTBOX_SCHEMA_VERSION,
        PHASED_MIGRATION_NAME, PHASED_SCHEMA_VERSION, SCHEMA_VERSION, write_diesel_cli_migrations,
    };
}

/// Effects outside the database, delivered at least once after the call
/// that caused them commits: the transactional outbox.
pub mod outbox {
    pub use idempotent_core::outbox::*;
}

/// Calls made in phases that commit one by one, with recovery points: for
/// a body that calls an external service and needs its answer.
pub mod phased {
    pub use idempotent_core::phased::*;
}

#[doc(hidden)]
pub mod __private {
    pub use idempotent_core::__private::*;
}

/// Compiles every Rust block of `README.md` as a doc test, so the README's
/// examples cannot drift from the API. Blocks that need a database are
/// `no_run`: they are compiled, not run.
#[cfg(all(
    doctest,
    feature = "sqlite",
    feature = "postgres",
    feature = "mysql",
    feature = "async"
))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
