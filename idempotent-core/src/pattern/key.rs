//! The idempotency-key pattern: a client-supplied key, its first result
//! stored and replayed.
//!
//! The procedure, in one transaction with the body ([`Mode::ClaimFirst`]):
//! validate → claim (insert-first) → on conflict load and [`judge`] →
//! replay / mismatch / take over an expired record → run the body → store
//! its result. [`Mode::Optimistic`] runs the body first and then inserts
//! the record with its result, judging a conflict the same way.
//! [`Replay::ReadFirst`] answers a replay with one read before any of it.
//! [`judge`] and the validators hold every decision and do no I/O, so a
//! non-blocking driver can reuse them unchanged.

use std::future::ready;
use std::panic;
use std::time::Duration;

use chrono::{NaiveDateTime, SubsecRound};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::clock::{Clock, SystemClock};
use crate::fingerprint::Fingerprint;
use crate::outbox::context::{Frame, within};
use crate::record::{NewRecord, RecordId};
use crate::store::driver::{
    Begin, Blocking, Driver, block_on, ensure_closed_above, guarded_level, guarded_transaction,
};
#[cfg(feature = "async")]
use crate::store::nonblocking::{AsyncIdempotentConnection, NonBlocking};
use crate::store::{Claimed, IdempotentConnection, StoredState, Unwound};
use crate::telemetry::{Ending, Mark, Pattern, Telemetry};
use crate::ttl::Ttl;

/// What a `key = ..` expression of `#[idempotent]` may be: text (`String`,
/// `&str`, anything `AsRef<str>`), or a key that also identifies its
/// request (the HTTP extractor `IdempotencyKey`, whose method and matched
/// route join the fingerprint).
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "the idempotency key must be text, not `{Self}`",
    label = "the key expression must implement `AsRef<str>`",
    note = "pass a `String` or `&str` (a field such as `req.idempotency_key`), or the HTTP \
            extractor `diesel_idempotent::axum::IdempotencyKey`"
)]
pub trait KeySource {
    /// The key.
    fn key_text(&self) -> &str;

    /// The method and route of the HTTP request the key came with, which
    /// join the request's fingerprint.
    fn request_line(&self) -> Option<(&str, &str)> {
        None
    }
}

impl<K: AsRef<str> + ?Sized> KeySource for K {
    #[inline]
    fn key_text(&self) -> &str {
        self.as_ref()
    }
}

/// Adds an HTTP request's method and route to a fingerprint (nothing for a
/// key without them, so plain keys keep their fingerprints).
#[doc(hidden)]
pub fn add_request_line(
    builder: crate::FingerprintBuilder,
    request_line: Option<(&str, &str)>,
) -> crate::FingerprintBuilder {
    #[derive(Serialize)]
    struct RequestLine<'a> {
        method: &'a str,
        route: &'a str,
    }
    match request_line {
        Some((method, route)) => builder.named_arg(
            "the Idempotency-Key's method and route",
            &RequestLine { method, route },
        ),
        None => builder,
    }
}

/// The longest key, scope or namespace, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// How often a call that owns its transaction starts it again after a
/// transient failure of the claim (before the body ran).
const CLAIM_TRANSACTIONS: usize = 5;

/// How often a claim is retried when the record it collided with vanished
/// (purged) or was renewed by a concurrent caller in between.
const CLAIM_ATTEMPTS: usize = 4;

/// A result a function under `#[idempotent]` can store and replay.
///
/// Implemented for every `T: Serialize + DeserializeOwned` (stored as JSON)
/// and for [`Outcome<T>`], which also tells whether the value was replayed.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored as an idempotent result",
    label = "the `Ok` type must implement `serde::Serialize` and `serde::de::DeserializeOwned`",
    note = "derive them: `#[derive(serde::Serialize, serde::Deserialize)]`"
)]
pub trait Response: Sized {
    /// Whether a value of this type can be a terminal error
    /// ([`Response::is_terminal`]). When it can, the body runs in a level
    /// of its own (a savepoint: two statements more per first call), so
    /// that a terminal answer's effects can be rolled back while its
    /// record is kept.
    const MAY_BE_TERMINAL: bool = false;

    /// The JSON stored for this value.
    fn to_stored_json(&self) -> Result<String, serde_json::Error>;
    /// The value rebuilt from a stored JSON, for a replay.
    fn from_stored_json(json: &str) -> Result<Self, serde_json::Error>;

    /// Whether this value is a terminal error: the key's final answer,
    /// stored and replayed like a value, while everything the body did in
    /// the database is rolled back. See [`Settled`].
    fn is_terminal(&self) -> bool {
        false
    }
}

impl<T: Serialize + DeserializeOwned> Response for T {
    fn to_stored_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    fn from_stored_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }
}

/// The return type of a function under `#[idempotent]`: `Result<T, E>` with
/// `T: `[`Response`] and `E: From<diesel_idempotent::Error>`.
#[diagnostic::on_unimplemented(
    message = "`#[idempotent]` cannot store and replay `{Self}`: return `Result<T, E>` with `T: Serialize + DeserializeOwned` and `E: From<diesel_idempotent::Error>`",
    label = "the function's return type",
    note = "the `Ok` type is stored as JSON and read back on a replay: `#[derive(serde::Serialize, serde::Deserialize)]`",
    note = "`QueryResult<T>` (`Result<T, diesel::result::Error>`) does not qualify: Diesel's error cannot carry the library's own (a call in flight, a key reused with another request). Return an error type that converts from both:\n    enum AppError {{ Idempotency(diesel_idempotent::Error), Db(diesel::result::Error) }}\n    impl From<diesel_idempotent::Error> for AppError {{ fn from(e: diesel_idempotent::Error) -> Self {{ Self::Idempotency(e) }} }}\n    impl From<diesel::result::Error> for AppError {{ fn from(e: diesel::result::Error) -> Self {{ Self::Db(e) }} }}"
)]
pub trait IdempotentResult: Sized {
    /// The `Ok` type, stored and replayed.
    type Value: Response;
    /// The error type.
    type Error: From<Error>;
    /// Splits into a standard `Result`.
    fn into_result(self) -> Result<Self::Value, Self::Error>;
    /// Rebuilds from a standard `Result`.
    fn from_result(result: Result<Self::Value, Self::Error>) -> Self;
}

// The compiler reports the return type against the message above, not one
// of this impl's bounds (which would name `From<Error>` and nothing else).
#[diagnostic::do_not_recommend]
impl<T: Response, E: From<Error>> IdempotentResult for Result<T, E> {
    type Value = T;
    type Error = E;

    fn into_result(self) -> Result<T, E> {
        self
    }

    fn from_result(result: Result<T, E>) -> Self {
        result
    }
}

/// A result together with whether it was replayed from an earlier call.
///
/// Return `Result<Outcome<T>, E>` from a function under `#[idempotent]` to
/// learn which calls were replays; the body returns `Ok(value.into())`. Only
/// the `T` is stored.
///
/// ```
/// # extern crate idempotent_core as diesel_idempotent;
/// use diesel_idempotent::Outcome;
/// let fresh: Outcome<u32> = 7.into();
/// assert!(!fresh.is_replayed());
/// assert_eq!(*fresh, 7);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Outcome<T> {
    value: T,
    replayed: bool,
}

impl<T> Outcome<T> {
    /// A value computed by this call.
    pub fn fresh(value: T) -> Self {
        Outcome {
            value,
            replayed: false,
        }
    }

    /// `true` when the value was stored by an earlier call and the body did
    /// not run this time.
    pub fn is_replayed(&self) -> bool {
        self.replayed
    }

    /// The value.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The value, consuming the outcome.
    pub fn into_value(self) -> T {
        self.value
    }
}

impl<T> From<T> for Outcome<T> {
    fn from(value: T) -> Self {
        Outcome::fresh(value)
    }
}

impl<T> std::ops::Deref for Outcome<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: Response> Response for Outcome<T> {
    const MAY_BE_TERMINAL: bool = T::MAY_BE_TERMINAL;

    fn to_stored_json(&self) -> Result<String, serde_json::Error> {
        self.value.to_stored_json()
    }

    fn from_stored_json(json: &str) -> Result<Self, serde_json::Error> {
        T::from_stored_json(json).map(|value| Outcome {
            value,
            replayed: true,
        })
    }

    fn is_terminal(&self) -> bool {
        self.value.is_terminal()
    }
}

/// The answer of a call that can fail for good: a value, or a terminal
/// error. Both are the key's final answer, stored and replayed; a terminal
/// error's database effects are rolled back.
///
/// An error returned as the function's `Err` is transient: nothing is
/// stored, and a retry with the same key runs the body again. That suits
/// a failure a retry can cure (a lost connection, a deadlock, a
/// downstream timeout). A business outcome is different: a declined card
/// must be answered as declined on every retry, never charged on the
/// second. Return it as `Ok(Settled::Terminal(declined))`:
///
/// - the body runs in a savepoint of its own; a terminal answer rolls it
///   back, so the rows the body wrote before it knew the outcome are
///   undone, and the record keeps the answer (`{"terminal": ..}`);
/// - a retry with the same key and request replays the same
///   `Settled::Terminal`, without running the body;
/// - the cost is the savepoint: two statements more per first call.
///
/// ```no_run
/// # extern crate idempotent_core as diesel_idempotent;
/// # use diesel_idempotent::{Call, Settled};
/// # #[derive(Debug)] struct AppError;
/// # impl From<diesel_idempotent::Error> for AppError { fn from(_: diesel_idempotent::Error) -> Self { AppError } }
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Declined { reason: String }
/// # #[cfg(feature = "sqlite")]
/// # fn f(conn: &mut diesel::SqliteConnection, key: &str) -> Result<(), AppError> {
/// let answer = Call::new("payments.charge", key).request(&4200).run(
///     conn,
///     |conn| -> Result<Settled<u64, Declined>, AppError> {
///         // ... insert the charge with `conn`, ask the card network ...
///         Ok(Settled::Terminal(Declined { reason: "insufficient funds".into() }))
///     },
/// )?;
/// match answer.into_value() {
///     Settled::Ok(charge_id) => { /* charged */ }
///     Settled::Terminal(declined) => { /* declined, on every retry */ }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Settled<T, F> {
    /// The call's value; the body's effects are committed.
    Ok(T),
    /// A terminal error; the body's effects are rolled back.
    Terminal(F),
}

impl<T, F> Settled<T, F> {
    /// `Ok(value)` or `Err(terminal error)`.
    pub fn into_result(self) -> Result<T, F> {
        match self {
            Settled::Ok(value) => Ok(value),
            Settled::Terminal(error) => Err(error),
        }
    }

    /// Whether this is a terminal error.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Settled::Terminal(_))
    }
}

/// How a [`Settled`] is stored: `{"ok": ..}` or `{"terminal": ..}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
enum StoredSettled<'a> {
    #[serde(rename = "ok", borrow)]
    Ok(&'a serde_json::value::RawValue),
    #[serde(rename = "terminal", borrow)]
    Terminal(&'a serde_json::value::RawValue),
}

impl<T: Response, F: Serialize + DeserializeOwned> Response for Settled<T, F> {
    const MAY_BE_TERMINAL: bool = true;

    fn to_stored_json(&self) -> Result<String, serde_json::Error> {
        Ok(match self {
            Settled::Ok(value) => format!("{{\"ok\":{}}}", value.to_stored_json()?),
            Settled::Terminal(error) => {
                format!("{{\"terminal\":{}}}", serde_json::to_string(error)?)
            }
        })
    }

    fn from_stored_json(json: &str) -> Result<Self, serde_json::Error> {
        Ok(match serde_json::from_str::<StoredSettled<'_>>(json)? {
            StoredSettled::Ok(value) => Settled::Ok(T::from_stored_json(value.get())?),
            StoredSettled::Terminal(error) => Settled::Terminal(serde_json::from_str(error.get())?),
        })
    }

    fn is_terminal(&self) -> bool {
        Settled::is_terminal(self)
    }
}

/// What a call does when its key is held by a call that has not finished
/// (an uncommitted transaction on another connection).
///
/// A duplicate that waits holds its connection while it waits: with a
/// pool, [`OnConflict::Wait`] lets duplicates of a slow call take every
/// connection for as long as that call runs; [`OnConflict::WaitFor`]
/// bounds that, and [`OnConflict::Reject`] holds a connection for one
/// round trip.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnConflict {
    /// Wait for that transaction, then replay its result (or run the body
    /// if it rolled back), as long as the database lets a lock wait last
    /// (`lock_timeout`, `innodb_lock_wait_timeout`, SQLite's busy timeout;
    /// a wait that times out is a retryable [`Error::Database`]). The
    /// default.
    #[default]
    Wait,
    /// Wait at most this long for that transaction, then return
    /// [`Error::InFlight`] (HTTP 409; never a database error). If it
    /// finishes in time, as [`OnConflict::Wait`]: replay its result, or run
    /// the body if it rolled back. [`Call::wait_for`] is the shorthand;
    /// `Duration::ZERO` is [`OnConflict::Reject`].
    ///
    /// The limit bounds each lock wait of the claim:
    ///
    /// - PostgreSQL: the claim runs with `lock_timeout` set to the limit
    ///   (in milliseconds, rounded up) for the transaction, restored after
    ///   it;
    /// - MySQL / MariaDB: with the session's `innodb_lock_wait_timeout` set
    ///   to the limit in whole seconds, rounded up (at least 1 s: `"300ms"`
    ///   waits up to a second), restored after it;
    /// - SQLite serializes writers before the claim, at its `BEGIN
    ///   IMMEDIATE`: a call that owns its transaction waits at most the
    ///   limit there (the connection's busy timeout is set to it for the
    ///   `BEGIN` and restored after it). That is a wait for the database's
    ///   write lock, which a call with any key may hold, so a call whose key
    ///   is not in flight can get `InFlight` too (its retry runs). Inside a
    ///   caller's transaction the library begins no transaction of its own:
    ///   there is nothing to bound, and the call behaves as with `Wait`.
    WaitFor(Duration),
    /// Return [`Error::InFlight`] at once (HTTP 409). PostgreSQL: the claim
    /// runs with `lock_timeout = 1ms`; MariaDB: `innodb_lock_wait_timeout = 0`
    /// (MySQL 8 waits at least 1 s); SQLite serializes writers before the
    /// claim, so a duplicate waits for the database lock as with `Wait`.
    Reject,
}

impl OnConflict {
    /// How long each lock wait of the claim may last: `None` as long as the
    /// database lets it, `Duration::ZERO` not at all.
    fn lock_wait_limit(self) -> Option<Duration> {
        match self {
            OnConflict::Wait => None,
            OnConflict::WaitFor(limit) => Some(limit),
            OnConflict::Reject => Some(Duration::ZERO),
        }
    }
}

/// When a call writes its record: before the body runs or after.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Claim the key with an `INSERT` before the body runs, store the result
    /// with an `UPDATE` after it: a first call is the body and 2 statements
    /// (and the transaction's `BEGIN`/`COMMIT`). A concurrent duplicate
    /// waits at the claim and never runs the body. The default.
    #[default]
    ClaimFirst,
    /// Run the body first, then insert the record with its result in one
    /// statement: a first call is the body and 1 statement. When the insert
    /// finds the key taken, the transaction is rolled back, undoing the
    /// body's effects, and the call replays, waits or reports a mismatch
    /// as in [`Mode::ClaimFirst`] (a record that expired is taken over and
    /// the body's effects kept).
    ///
    /// Only for a body whose every effect is a statement on this connection
    /// in this transaction: a concurrent duplicate, a replay (unless
    /// [`Replay::ReadFirst`] answers it) and a mismatched request all run
    /// the body and roll it back. An e-mail sent, an HTTP call made or a
    /// row written on another connection would not roll back.
    Optimistic,
}

/// How a call looks for a stored result before it does anything else.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Replay {
    /// Inside the call's transaction, where the claim finds the record.
    /// The default.
    #[default]
    InTransaction,
    /// First one plain `SELECT` of the record, outside the library's
    /// transaction (in the caller's, if one is open): a finished, unexpired
    /// record of the same request is replayed from it, in one statement.
    /// Anything else (no record, another request, an unfinished or expired
    /// record) goes on as [`Replay::InTransaction`]: one statement more than
    /// without the read. Suits traffic where repeats are common (webhook
    /// redeliveries, at-least-once consumers, client retries).
    ///
    /// The read takes no lock and never sees a record another transaction
    /// has not committed. On MySQL it needs READ COMMITTED or stricter
    /// (InnoDB's default is REPEATABLE READ): a read at READ UNCOMMITTED
    /// could see an uncommitted result.
    ReadFirst,
}

/// One idempotent call: where its record lives and what request it carries.
///
/// This is the runtime behind `#[idempotent(key = ..)]`, usable directly:
///
/// ```no_run
/// # extern crate idempotent_core as diesel_idempotent;
/// # use diesel::prelude::*;
/// # use diesel_idempotent::{Call, Ttl};
/// # #[derive(Debug)] struct AppError;
/// # impl From<diesel_idempotent::Error> for AppError { fn from(_: diesel_idempotent::Error) -> Self { AppError } }
/// # #[cfg(feature = "sqlite")]
/// # fn f(conn: &mut SqliteConnection, key: &str, amount: i64) -> Result<(), AppError> {
/// let outcome = Call::new("payments.create", key)
///     .ttl(Ttl::parse("24h")?)
///     .request(&amount)
///     .run(conn, |conn| -> Result<i64, AppError> {
///         // ... insert the payment with `conn` ...
///         Ok(amount)
///     })?;
/// if outcome.is_replayed() { /* answered from the record */ }
/// # Ok(()) }
/// ```
pub struct Call<'a> {
    namespace: &'a str,
    key: &'a str,
    scope: &'a str,
    ttl: Ttl,
    clock: &'a dyn Clock,
    fingerprint: Result<Fingerprint, Error>,
    max_response_bytes: Option<usize>,
    on_conflict: OnConflict,
    mode: Mode,
    replay: Replay,
    abandon_after: Option<Duration>,
    pattern: Pattern,
}

impl std::fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("namespace", &self.namespace)
            .field("scope", &self.scope)
            .field("key", &self.key)
            .field("ttl", &self.ttl)
            .field("fingerprint", &self.fingerprint)
            .field("on_conflict", &self.on_conflict)
            .field("mode", &self.mode)
            .field("replay", &self.replay)
            .finish_non_exhaustive()
    }
}

impl<'a> Call<'a> {
    /// A call in `namespace` (the function's stable name) under `key`, with
    /// no scope, the default TTL (24 hours), the system clock and an empty
    /// request.
    pub fn new(namespace: &'a str, key: &'a str) -> Self {
        Call {
            namespace,
            key,
            scope: "",
            ttl: Ttl::DEFAULT,
            clock: &SystemClock,
            fingerprint: Fingerprint::builder().finish(),
            max_response_bytes: None,
            on_conflict: OnConflict::Wait,
            mode: Mode::ClaimFirst,
            replay: Replay::InTransaction,
            abandon_after: None,
            pattern: Pattern::Key,
        }
    }

    /// The pattern the call's span reports (`#[idempotent(hash)]` sets
    /// [`Pattern::Hash`]); [`Pattern::Key`] by default.
    #[doc(hidden)]
    pub fn pattern(mut self, pattern: Pattern) -> Self {
        self.pattern = pattern;
        self
    }

    /// For an `async` call ([`Call::run_async`]): if the call's future is
    /// dropped and its transaction left open, or its body stalls, the
    /// server ends the session after the transaction has been idle this
    /// long, releasing the key (PostgreSQL: `SET LOCAL
    /// idle_in_transaction_session_timeout`; MySQL: the session's
    /// `wait_timeout`, in whole seconds, restored after the call). A
    /// backstop for what the drop itself cannot do; it counts every pause
    /// between two statements, so it must exceed the longest pause of the
    /// body. Ignored by blocking calls and on SQLite (see
    /// `AsyncIdempotentConnection`).
    ///
    /// `Duration::ZERO` sets no timeout.
    pub fn abandon_after(mut self, after: Duration) -> Self {
        self.abandon_after = Some(after).filter(|after| !after.is_zero());
        self
    }

    /// When the record is written: before the body ([`Mode::ClaimFirst`],
    /// the default) or with its result after it ([`Mode::Optimistic`]).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Whether a replay is looked for with one read before the transaction
    /// ([`Replay::ReadFirst`]) or inside it ([`Replay::InTransaction`], the
    /// default).
    pub fn replay(mut self, replay: Replay) -> Self {
        self.replay = replay;
        self
    }

    /// What to do when the key is held by a call that has not finished.
    pub fn on_conflict(mut self, on_conflict: OnConflict) -> Self {
        self.on_conflict = match on_conflict {
            OnConflict::WaitFor(limit) if limit.is_zero() => OnConflict::Reject,
            other => other,
        };
        self
    }

    /// Waits at most `limit` for a call that holds the key, then answers
    /// [`Error::InFlight`]: `.on_conflict(OnConflict::WaitFor(limit))`
    /// (see [`OnConflict::WaitFor`] for each backend; MySQL rounds up to
    /// whole seconds). `Duration::ZERO` never waits, as
    /// [`OnConflict::Reject`].
    pub fn wait_for(self, limit: Duration) -> Self {
        self.on_conflict(OnConflict::WaitFor(limit))
    }

    /// Refuses to store a result whose JSON exceeds `limit` bytes: the call
    /// fails with [`Error::ResponseTooLarge`] and rolls back with nothing
    /// stored. Unlimited by default.
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = Some(limit);
        self
    }

    /// Keeps this call's record apart from other tenants' equal keys.
    pub fn scope(mut self, scope: &'a str) -> Self {
        self.scope = scope;
        self
    }

    /// How long the record answers for its key.
    pub fn ttl(mut self, ttl: Ttl) -> Self {
        self.ttl = ttl;
        self
    }

    /// The clock that stamps and expires records (tests use a
    /// [`crate::ManualClock`]).
    pub fn clock(mut self, clock: &'a dyn Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The request whose fingerprint a later call with the same key must
    /// match.
    pub fn request<T: Serialize + ?Sized>(mut self, request: &T) -> Self {
        self.fingerprint = Fingerprint::of(request);
        self
    }

    /// A fingerprint computed elsewhere (or the error computing it).
    pub fn fingerprint(mut self, fingerprint: Result<Fingerprint, Error>) -> Self {
        self.fingerprint = fingerprint;
        self
    }

    /// Runs `body` at most once for this key and returns its result, or the
    /// stored result of the call that ran it, marked as replayed.
    pub fn run<C, T, E, F>(self, conn: &mut C, body: F) -> Result<Outcome<T>, E>
    where
        C: IdempotentConnection,
        T: Response,
        E: From<Error>,
        F: FnOnce(&mut C) -> Result<T, E>,
    {
        block_on(self.run_with(&mut Blocking(conn), move |conn: &mut C| {
            ready(body(conn).map(Outcome::fresh))
        }))
    }

    /// Like [`Call::run`], for a body that returns any [`IdempotentResult`]
    /// (what `#[idempotent]` calls, with the function's own return type).
    pub fn run_response<C, R, F>(self, conn: &mut C, body: F) -> R
    where
        C: IdempotentConnection,
        R: IdempotentResult,
        F: FnOnce(&mut C) -> R,
    {
        R::from_result(block_on(
            self.run_with(&mut Blocking(conn), move |conn: &mut C| {
                ready(body(conn).into_result())
            }),
        ))
    }

    /// [`Call::run`] for an `async` body on a diesel-async connection
    /// (feature `async`). Same decisions, same statements, same errors. If
    /// the returned future is dropped before it finishes, the call's level
    /// is rolled back and nothing is stored; see `AsyncIdempotentConnection`
    /// for what happens to the connection.
    #[cfg(feature = "async")]
    pub async fn run_async<C, T, E, F>(self, conn: &mut C, body: F) -> Result<Outcome<T>, E>
    where
        C: AsyncIdempotentConnection,
        T: Response,
        E: From<Error>,
        F: AsyncFnOnce(&mut C) -> Result<T, E>,
    {
        let mut driver = NonBlocking::new(conn, self.abandon_after);
        self.run_with(&mut driver, async move |conn: &mut C| {
            body(conn).await.map(Outcome::fresh)
        })
        .await
    }

    /// [`Call::run_response`] for an `async` body (what `#[idempotent]`
    /// calls on an `async fn`; feature `async`).
    #[cfg(feature = "async")]
    pub async fn run_response_async<C, R, F>(self, conn: &mut C, body: F) -> R
    where
        C: AsyncIdempotentConnection,
        R: IdempotentResult,
        F: AsyncFnOnce(&mut C) -> R,
    {
        let mut driver = NonBlocking::new(conn, self.abandon_after);
        R::from_result(
            self.run_with(&mut driver, async move |conn: &mut C| {
                body(conn).await.into_result()
            })
            .await,
        )
    }

    /// The procedure, once for both drivers, inside the call's span: not an
    /// `async fn`, so that the span's wrapper is the only level it adds to
    /// the future (see `Traced::wrap`).
    fn run_with<D, O, E, F>(
        self,
        conn: &mut D,
        body: F,
    ) -> impl Future<Output = Result<O, E>> + use<'a, '_, D, O, E, F>
    where
        D: Driver,
        O: Response,
        E: From<Error>,
        F: AsyncFnOnce(&mut D::Conn) -> Result<O, E>,
    {
        let telemetry = Telemetry::start(
            self.pattern,
            self.namespace,
            self.scope,
            self.key,
            D::DB_SYSTEM,
        );
        let traced = telemetry.traced();
        traced.wrap(self.answer(conn, body, telemetry))
    }

    /// The call's answer; how it ended is recorded where it is decided,
    /// once, on the span and in the metrics.
    async fn answer<D, O, E, F>(
        self,
        conn: &mut D,
        body: F,
        telemetry: Telemetry<'a>,
    ) -> Result<O, E>
    where
        D: Driver,
        O: Response,
        E: From<Error>,
        F: AsyncFnOnce(&mut D::Conn) -> Result<O, E>,
    {
        let (answer, ending) = 'decided: {
            let prepared = match self.prepare() {
                Ok(prepared) => prepared,
                Err(e) => break 'decided failed(e),
            };
            if prepared.replay == Replay::ReadFirst {
                match read_first(conn, &prepared).await {
                    Ok(Some(json)) => break 'decided replayed(prepared.replayed(&json)),
                    Ok(None) => {}
                    Err(e) => break 'decided failed(e),
                }
            }
            let owns_transaction = match conn.depth() {
                Ok(depth) => depth == 0,
                Err(e) => break 'decided failed(Error::Database(e)),
            };
            let result = match prepared.mode {
                Mode::ClaimFirst => {
                    claim_first(conn, &prepared, owns_transaction, &telemetry, body).await
                }
                Mode::Optimistic => optimistic(conn, &prepared, &telemetry, body).await,
            };
            match result {
                Ok(out) => (Ok(out), Ending::EXECUTED),
                // An optimistic call whose body, or the check of its result,
                // failed: a concurrent duplicate's failure may come from the
                // first call's committed effects.
                Err(Unwound::Failed(Failure::Body(e)))
                    if prepared.optimistic_looks_again(owns_transaction) =>
                {
                    after_error(conn, &prepared, e, Ending::body_failed::<E>()).await
                }
                Err(Unwound::Failed(Failure::Result(e)))
                    if prepared.optimistic_looks_again(owns_transaction) =>
                {
                    let ending = Ending::failed(&e);
                    after_error(conn, &prepared, E::from(e), ending).await
                }
                Err(Unwound::Failed(Failure::Claim(e)))
                    if prepared.optimistic_looks_again(owns_transaction)
                        && e.is_aborted_claim() =>
                {
                    match after_aborted_insert(conn, &prepared, e).await {
                        Ok(out) => (Ok(out), Ending::REPLAYED),
                        Err(e) => failed(e),
                    }
                }
                Err(Unwound::Failed(Failure::Body(e))) => (Err(e), Ending::body_failed::<E>()),
                Err(Unwound::Failed(Failure::Replay(json))) => replayed(prepared.replayed(&json)),
                Err(Unwound::Failed(
                    Failure::Library(e) | Failure::Claim(e) | Failure::Result(e),
                )) => failed(e),
                // Recorded as a panic when `telemetry` is dropped.
                Err(Unwound::Panicked(payload)) => panic::resume_unwind(payload),
            }
        };
        telemetry.finish(ending);
        answer
    }

    fn prepare(self) -> Result<Prepared<'a>, Error> {
        let fingerprint = self.fingerprint?;
        validate_namespace(self.namespace)?;
        validate_key(self.key)?;
        validate_scope(self.scope)?;
        let now = self.clock.now().naive_utc().trunc_subsecs(6);
        let ttl = chrono::Duration::from_std(self.ttl.as_duration())
            .unwrap_or_else(|_| chrono::Duration::days(366));
        let expires_at = now.checked_add_signed(ttl).unwrap_or(NaiveDateTime::MAX);
        Ok(Prepared {
            namespace: self.namespace,
            key: self.key,
            scope: self.scope,
            fingerprint,
            now,
            expires_at,
            max_response_bytes: self.max_response_bytes,
            on_conflict: self.on_conflict,
            mode: self.mode,
            replay: self.replay,
        })
    }
}

/// The outcome of the library's transaction, before it is turned into the
/// caller's error type.
type Ended<O, E> = Result<O, Unwound<Failure<E>>>;

/// A call that failed with the library's `error`, and how it ended.
fn failed<O, E: From<Error>>(error: Error) -> (Result<O, E>, Ending) {
    let ending = Ending::failed(&error);
    (Err(E::from(error)), ending)
}

/// A call answered from the record (or failed reading it back).
fn replayed<O, E: From<Error>>(value: Result<O, Error>) -> (Result<O, E>, Ending) {
    match value {
        Ok(value) => (Ok(value), Ending::REPLAYED),
        Err(e) => failed(e),
    }
}

/// [`Mode::ClaimFirst`]: claim, run the body, store its result.
async fn claim_first<D, O, E, F>(
    conn: &mut D,
    prepared: &Prepared<'_>,
    owns_transaction: bool,
    telemetry: &Telemetry<'_>,
    body: F,
) -> Ended<O, E>
where
    D: Driver,
    O: Response,
    F: AsyncFnOnce(&mut D::Conn) -> Result<O, E>,
{
    // A claim that the database aborted (a deadlock between two callers
    // taking over the same expired record, a serialization failure)
    // fails before the body runs; when this call owns the transaction
    // it is safe to start it again. Nothing else is retried here: an
    // `InFlight` answer or a lock wait that timed out goes back to the
    // caller at once.
    let mut body = Some(body);
    let mut attempt = 0;
    loop {
        attempt += 1;
        telemetry.mark(Mark::ClaimStart);
        let result = in_level(conn, prepared, async |conn: &mut D| {
            let claim = prepared.record(None);
            let step = settle(conn, prepared, &claim)
                .await
                .map_err(Failure::Claim)?;
            telemetry.mark(Mark::ClaimEnd);
            match step {
                Step::Replay(json) => Err(Failure::Replay(json)),
                Step::Hold => {
                    let Some(body) = body.take() else {
                        return Err(Failure::Library(prepared.in_flight()));
                    };
                    telemetry.mark(Mark::BodyStart);
                    let out = run_body(conn, prepared, body).await?;
                    telemetry.mark(Mark::BodyEnd);
                    let json = prepared.stored_json(&out)?;
                    match conn.complete(prepared.id(), &json).await? {
                        1 => Ok(out),
                        _ => Err(Failure::Library(prepared.in_flight())),
                    }
                }
            }
        })
        .await;
        match result {
            Err(Unwound::Failed(Failure::Claim(e)))
                if owns_transaction && e.is_aborted_claim() && attempt < CLAIM_TRANSACTIONS =>
            {
                continue;
            }
            other => return other,
        }
    }
}

/// Runs `f` in the call's transaction level ([`guarded_level`]), begun as
/// its [`OnConflict`] and [`Mode`] ask. With [`OnConflict::WaitFor`] the
/// `BEGIN` waits at most the limit for the database's write lock where
/// writers take it at the `BEGIN` (SQLite's `BEGIN IMMEDIATE`); one that
/// gave up answers [`Error::InFlight`], as the claim does after a bounded
/// wait.
async fn in_level<D, O, E, F>(conn: &mut D, call: &Prepared<'_>, f: F) -> Ended<O, E>
where
    D: Driver,
    F: AsyncFnOnce(&mut D) -> Result<O, Failure<E>>,
{
    let begin = match (call.on_conflict, call.mode) {
        (OnConflict::WaitFor(limit), _) => Begin::Within(limit),
        // The claim is the level's first statement: a driver may send the
        // `BEGIN` with it.
        (OnConflict::Wait, Mode::ClaimFirst) => Begin::BeforeClaim,
        // The body comes first, or the lock-wait setting does.
        (OnConflict::Wait, Mode::Optimistic) | (OnConflict::Reject, _) => Begin::Now,
    };
    // Set once the level is open: a failure before it is the `BEGIN`'s.
    let mut begun = false;
    let result = guarded_level(conn, begin, async |conn: &mut D| {
        begun = true;
        f(conn).await
    })
    .await;
    match result {
        Err(Unwound::Failed(Failure::Library(Error::Database(e))))
            if !begun
                && matches!(begin, Begin::Within(_))
                && crate::error::is_lock_wait_exhausted(&e) =>
        {
            Err(Unwound::Failed(Failure::Claim(call.in_flight())))
        }
        other => other,
    }
}

/// [`Mode::Optimistic`]: run the body, then insert the record with its
/// result; a key found taken rolls the body back (or, expired, is taken
/// over).
async fn optimistic<D, O, E, F>(
    conn: &mut D,
    prepared: &Prepared<'_>,
    telemetry: &Telemetry<'_>,
    body: F,
) -> Ended<O, E>
where
    D: Driver,
    O: Response,
    F: AsyncFnOnce(&mut D::Conn) -> Result<O, E>,
{
    in_level(conn, prepared, async |conn: &mut D| {
        telemetry.mark(Mark::BodyStart);
        let out = run_body(conn, prepared, body).await?;
        telemetry.mark(Mark::BodyEnd);
        // A result this call cannot store is its error only if no earlier
        // call's result answers the key (`after_error`).
        let json = prepared.stored_json(&out).map_err(Failure::Result)?;
        let record = prepared.record(Some(&json));
        telemetry.mark(Mark::ClaimStart);
        let step = settle(conn, prepared, &record)
            .await
            .map_err(Failure::Claim)?;
        telemetry.mark(Mark::ClaimEnd);
        match step {
            Step::Hold => Ok(out),
            // Undo the body's effects: the earlier call's stand.
            Step::Replay(json) => Err(Failure::Replay(json)),
        }
    })
    .await
}

/// The answer of an optimistic call whose body failed, or whose result
/// could not be stored (too large, not replayable), after its transaction
/// rolled back. A concurrent duplicate's body can fail because of the first
/// call's committed effects (the unique row it inserted, the balance it
/// debited), and a repeat's result can differ from the first call's; then
/// the first call's record is committed, and the caller gets what
/// claim-first would have given it: the replay, or the mismatch. Otherwise,
/// and if the read itself fails, the call's own error.
///
/// The read is the claim's load (on MySQL a locking read, which never sees
/// an uncommitted record whatever the isolation level and waits for one to
/// commit), sent outside any transaction: only a call that owned its
/// transaction gets here (see [`Prepared::optimistic_looks_again`]).
/// `ending` is how the call ends with its own error.
async fn after_error<D, O, E>(
    conn: &mut D,
    call: &Prepared<'_>,
    error: E,
    ending: Ending,
) -> (Result<O, E>, Ending)
where
    D: Driver,
    O: Response,
    E: From<Error>,
{
    let Ok(Some(existing)) = conn.load(call.id()).await else {
        return (Err(error), ending);
    };
    match judge(&existing, call.fingerprint.as_str(), call.now) {
        Verdict::Replay(json) => replayed(call.replayed(json)),
        Verdict::Mismatch => failed(call.mismatch()),
        Verdict::InFlight | Verdict::Expired => (Err(error), ending),
    }
}

/// What [`after_aborted_insert`] found.
enum Looked {
    Replay(String),
    Mismatch,
    /// Nothing to answer with (or the look failed): the original error.
    Nothing,
}

impl From<diesel::result::Error> for Looked {
    fn from(_: diesel::result::Error) -> Self {
        Looked::Nothing
    }
}

/// The answer of an optimistic call whose own transaction the database
/// aborted at the insert: InnoDB picks a deadlock victim when callers take
/// over one expired record together (each holds a shared lock on it and
/// wants the exclusive one). The body's effects are rolled back and it
/// cannot run again, but the caller that won may have stored a result for
/// this request: look once more, in a transaction that waits (like a claim)
/// for a holder that has not committed and is always rolled back, and
/// replay it. Otherwise the database's error, which is retryable.
async fn after_aborted_insert<D, O>(
    conn: &mut D,
    call: &Prepared<'_>,
    error: Error,
) -> Result<O, Error>
where
    D: Driver,
    O: Response,
{
    let claim = call.record(None);
    let looked = guarded_transaction(conn, async |conn: &mut D| -> Result<(), Looked> {
        let Claimed::Existing(existing) = conn.claim_or_load(&claim).await? else {
            // The key was free: roll back the claim just inserted.
            return Err(Looked::Nothing);
        };
        Err(
            match judge(&existing, call.fingerprint.as_str(), call.now) {
                Verdict::Replay(json) => Looked::Replay(json.to_owned()),
                Verdict::Mismatch => Looked::Mismatch,
                Verdict::InFlight | Verdict::Expired => Looked::Nothing,
            },
        )
    })
    .await;
    match looked {
        Err(Unwound::Failed(Looked::Replay(json))) => call.replayed(&json),
        Err(Unwound::Failed(Looked::Mismatch)) => Err(call.mismatch()),
        Err(Unwound::Panicked(payload)) => panic::resume_unwind(payload),
        Ok(()) | Err(Unwound::Failed(Looked::Nothing)) => Err(error),
    }
}

/// Runs the body in the library's transaction level; nothing more may be
/// sent inside a level the body left open (the guard rolls it back).
///
/// A result type that can be a terminal error ([`Response::MAY_BE_TERMINAL`])
/// runs the body in a level of its own, rolled back when the body's answer
/// is terminal: its effects are undone, its answer is stored.
async fn run_body<D, O, E, F>(
    conn: &mut D,
    prepared: &Prepared<'_>,
    body: F,
) -> Result<O, Failure<E>>
where
    D: Driver,
    O: Response,
    F: AsyncFnOnce(&mut D::Conn) -> Result<O, E>,
{
    if !O::MAY_BE_TERMINAL {
        return run_body_here(conn, prepared, body).await;
    }
    let level = guarded_level(conn, Begin::Now, async |conn: &mut D| {
        let out = run_body_here(conn, prepared, body)
            .await
            .map_err(Own::Failed)?;
        if out.is_terminal() {
            Err(Own::Terminal(out))
        } else {
            Ok(out)
        }
    })
    .await;
    match level {
        Ok(out) | Err(Unwound::Failed(Own::Terminal(out))) => Ok(out),
        Err(Unwound::Failed(Own::Failed(failure))) => Err(failure),
        // Resumed inside the library's level, whose guard rolls it back.
        Err(Unwound::Panicked(payload)) => panic::resume_unwind(payload),
    }
}

/// How the body's own level ended early: it failed, or it answered with a
/// terminal error whose effects are rolled back.
enum Own<O, E> {
    Failed(Failure<E>),
    Terminal(O),
}

impl<O, E> From<diesel::result::Error> for Own<O, E> {
    fn from(e: diesel::result::Error) -> Self {
        Own::Failed(Failure::from(e))
    }
}

/// The body runs as the current call ([`crate::outbox::push`] derives its
/// effects' ids from it), called inside the first poll: a blocking body
/// runs when called.
async fn run_body_here<D, O, E, F>(
    conn: &mut D,
    prepared: &Prepared<'_>,
    body: F,
) -> Result<O, Failure<E>>
where
    D: Driver,
    F: AsyncFnOnce(&mut D::Conn) -> Result<O, E>,
{
    let depth = conn.depth()?;
    let call = Frame::new(
        prepared.namespace,
        prepared.scope,
        prepared.key,
        prepared.now,
    );
    let out = within(call, async { body(conn.conn()).await })
        .await
        .map_err(Failure::Body)?;
    ensure_closed_above(conn, depth)?;
    Ok(out)
}

/// [`Replay::ReadFirst`]: the stored result, when one plain read finds a
/// finished, unexpired record of this request; `None` otherwise.
async fn read_first<D: Driver>(conn: &mut D, call: &Prepared<'_>) -> Result<Option<String>, Error> {
    let read =
        if D::PLAIN_READS_MAY_LOCK && call.on_conflict != OnConflict::Wait && conn.depth()? > 0 {
            // Inside the caller's SERIALIZABLE transaction InnoDB makes this
            // read a locking one. `reject` never waits for a lock, and
            // `wait_for` waits only at the claim (its limit bounds the call's
            // wait, not each statement's): a read that would wait is a miss,
            // and the claim answers, `InFlight` or after its bounded wait.
            with_lock_wait_limit(conn, Duration::ZERO, async |conn: &mut D| {
                conn.read_committed(call.id())
                    .await
                    .map_err(Error::Database)
            })
            .await?
            .flatten()
        } else {
            conn.read_committed(call.id()).await?
        };
    let Some(existing) = read else {
        return Ok(None);
    };
    Ok(
        match judge(&existing, call.fingerprint.as_str(), call.now) {
            Verdict::Replay(json) => Some(json.to_owned()),
            Verdict::Mismatch | Verdict::InFlight | Verdict::Expired => None,
        },
    )
}

/// Runs `f` with each row-lock wait cut to `limit`
/// ([`Driver::limit_lock_waits`]; `Duration::ZERO`: no wait at all):
/// `Ok(None)` when a statement in it waited that long for another
/// transaction's lock (the transaction may be aborted: roll it back).
async fn with_lock_wait_limit<D, R, F>(
    conn: &mut D,
    limit: Duration,
    f: F,
) -> Result<Option<R>, Error>
where
    D: Driver,
    F: AsyncFnOnce(&mut D) -> Result<R, Error>,
{
    let saved = conn.limit_lock_waits(limit).await?;
    let result = f(conn).await;
    conn.restore_lock_waits(saved, result.is_err()).await?;
    match result {
        Ok(value) => Ok(Some(value)),
        Err(Error::Database(e)) if crate::error::is_lock_timeout(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A validated call, stamped with the clock's time.
struct Prepared<'a> {
    namespace: &'a str,
    key: &'a str,
    scope: &'a str,
    fingerprint: Fingerprint,
    now: NaiveDateTime,
    expires_at: NaiveDateTime,
    max_response_bytes: Option<usize>,
    on_conflict: OnConflict,
    mode: Mode,
    replay: Replay,
}

impl Prepared<'_> {
    /// Whether an optimistic call that failed looks for an earlier call's
    /// result before it answers ([`after_error`], [`after_aborted_insert`]):
    /// only when it owned its transaction, so the look runs on a connection
    /// that the rollback left outside any transaction, reading the latest
    /// committed record. Inside a caller's transaction the look would read
    /// that transaction's snapshot, or run after the database had already
    /// aborted it (an InnoDB deadlock ends the caller's whole transaction).
    /// Not with [`OnConflict::Reject`], whose answers never wait for a lock,
    /// nor with [`OnConflict::WaitFor`], whose wait the look would not bound.
    fn optimistic_looks_again(&self, owns_transaction: bool) -> bool {
        self.mode == Mode::Optimistic && owns_transaction && self.on_conflict == OnConflict::Wait
    }

    fn mismatch(&self) -> Error {
        Error::PayloadMismatch {
            namespace: self.namespace.to_owned(),
            key: self.key.to_owned(),
        }
    }

    /// The stored JSON of an earlier call, read back as the replayed value.
    fn replayed<O: Response>(&self, json: &str) -> Result<O, Error> {
        O::from_stored_json(json).map_err(|source| Error::StoredResultUnreadable {
            namespace: self.namespace.to_owned(),
            key: self.key.to_owned(),
            source,
        })
    }

    fn in_flight(&self) -> Error {
        Error::InFlight {
            namespace: self.namespace.to_owned(),
            key: self.key.to_owned(),
        }
    }

    /// The JSON to store for `out`: within the size limit, and read back as
    /// the same value, so every replay returns what the first call did.
    fn stored_json<O: Response>(&self, out: &O) -> Result<String, Error> {
        let json = out
            .to_stored_json()
            .map_err(|source| Error::Serialization {
                what: "the result",
                source,
            })?;
        if let Some(limit) = self.max_response_bytes
            && json.len() > limit
        {
            return Err(Error::ResponseTooLarge {
                namespace: self.namespace.to_owned(),
                key: self.key.to_owned(),
                size: json.len(),
                limit,
            });
        }
        let not_replayable = |reason: String| Error::ResultNotReplayable {
            namespace: self.namespace.to_owned(),
            key: self.key.to_owned(),
            reason,
        };
        let again = O::from_stored_json(&json)
            .and_then(|back| back.to_stored_json())
            .map_err(|e| {
                not_replayable(format!(
                    "its JSON `{}` does not read back: {e}",
                    preview(&json)
                ))
            })?;
        // Byte equality is the common case; maps whose iteration order
        // differs between two instances (`HashMap`) compare as JSON values.
        if again != json && !same_json_value(&json, &again) {
            return Err(not_replayable(format!(
                "its JSON `{}` reads back as `{}`",
                preview(&json),
                preview(&again)
            )));
        }
        Ok(json)
    }

    fn id(&self) -> RecordId<'_> {
        RecordId {
            namespace: self.namespace,
            scope: self.scope,
            key: self.key,
        }
    }

    /// This call's record: a claim (`response: None`) or, in
    /// [`Mode::Optimistic`], the finished record.
    fn record<'r>(&'r self, response: Option<&'r str>) -> NewRecord<'r> {
        NewRecord {
            namespace: self.namespace,
            scope: self.scope,
            key: self.key,
            fingerprint: self.fingerprint.as_str(),
            response,
            created_at: self.now,
            expires_at: self.expires_at,
        }
    }
}

/// Whether two JSON texts hold the same value, reading object members and
/// array elements in any order: a `HashMap` or `HashSet` serializes in its
/// own iteration order, which differs between two equal instances.
/// (Floats parse exactly: serde_json's `float_roundtrip` is on.)
fn same_json_value(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(a), Ok(b)) => same_ignoring_order(&a, &b),
        _ => false,
    }
}

fn same_ignoring_order(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Array(a), Value::Array(b)) => {
            a == b || (a.len() == b.len() && sorted_canonical(a) == sorted_canonical(b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, v)| b.get(k).is_some_and(|w| same_ignoring_order(v, w)))
        }
        _ => a == b,
    }
}

/// The canonical texts of an array's elements, sorted: equal for two arrays
/// holding the same elements in any order (nested collections included).
fn sorted_canonical(values: &[serde_json::Value]) -> Vec<Vec<u8>> {
    let mut texts: Vec<Vec<u8>> = values
        .iter()
        .map(crate::fingerprint::canonical_json_lenient)
        .collect();
    texts.sort_unstable();
    texts
}

/// The start of a JSON text, for an error message.
fn preview(json: &str) -> String {
    const MAX: usize = 80;
    match json.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &json[..end]),
        None => json.to_owned(),
    }
}

/// Why the transaction around the body ended early.
enum Failure<E> {
    Body(E),
    /// Before the body ran.
    Claim(Error),
    Library(Error),
    /// An earlier call stored this JSON: roll back and return it.
    Replay(String),
    /// The body's result cannot be stored (too large, not replayable, not
    /// serializable).
    Result(Error),
}

impl<E> From<diesel::result::Error> for Failure<E> {
    fn from(e: diesel::result::Error) -> Self {
        Failure::Library(Error::Database(e))
    }
}

impl<E> From<Error> for Failure<E> {
    fn from(e: Error) -> Self {
        Failure::Library(e)
    }
}

/// What writing this call's record decided.
enum Step {
    /// The record is this call's: run the body ([`Mode::ClaimFirst`]), or
    /// the result is stored ([`Mode::Optimistic`]).
    Hold,
    /// An earlier call stored this JSON: return it.
    Replay(String),
}

/// The verdict on an existing record.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'s> {
    /// Same request, result stored: replay it.
    Replay(&'s str),
    /// Another request used this key.
    Mismatch,
    /// Same request, but its first call has not finished.
    InFlight,
    /// The record has expired: the key is free again.
    Expired,
}

/// Decides what an existing record means for a call with `fingerprint` at
/// `now`. Pure: every driver (blocking or not) asks this.
///
/// A record whose fingerprint has the earlier scheme's `v1:` prefix
/// (written before fingerprints were RFC 8785) cannot be compared with a
/// `v2:` fingerprint; until it expires it answers every call with its key
/// as if the request matched: replayed when finished, in flight otherwise.
/// Its key still binds it to one call, so its body never runs twice.
pub fn judge<'s>(existing: &'s StoredState, fingerprint: &str, now: NaiveDateTime) -> Verdict<'s> {
    if existing.expires_at <= now {
        Verdict::Expired
    } else if existing.fingerprint != fingerprint && !existing.fingerprint.starts_with("v1:") {
        Verdict::Mismatch
    } else {
        match &existing.response {
            Some(json) => Verdict::Replay(json),
            None => Verdict::InFlight,
        }
    }
}

/// Writes `record` (a claim, or an optimistic call's finished record)
/// insert-first; on conflict, judges the record that holds the key.
///
/// With [`OnConflict::Reject`] every statement runs without waiting for row
/// locks, so a key held by an unfinished call (a first call, or another
/// caller taking over the expired record) answers [`Error::InFlight`] after
/// one attempt; with [`OnConflict::WaitFor`] each waits at most the limit,
/// and a wait that reaches it answers the same.
async fn settle<D: Driver>(
    conn: &mut D,
    call: &Prepared<'_>,
    record: &NewRecord<'_>,
) -> Result<Step, Error> {
    match call.on_conflict.lock_wait_limit() {
        None => settle_once(conn, call, record).await,
        Some(limit) => with_lock_wait_limit(conn, limit, async |conn: &mut D| {
            settle_once(conn, call, record).await
        })
        .await?
        .ok_or_else(|| call.in_flight()),
    }
}

async fn settle_once<D: Driver>(
    conn: &mut D,
    call: &Prepared<'_>,
    record: &NewRecord<'_>,
) -> Result<Step, Error> {
    for _ in 0..CLAIM_ATTEMPTS {
        let existing = match conn.claim_or_load(record).await? {
            Claimed::Inserted => return Ok(Step::Hold),
            // Purged between the insert and the load: insert again.
            Claimed::Vanished => continue,
            Claimed::Existing(existing) => existing,
        };
        match judge(&existing, call.fingerprint.as_str(), call.now) {
            Verdict::Replay(json) => return Ok(Step::Replay(json.to_owned())),
            Verdict::Mismatch => return Err(call.mismatch()),
            Verdict::InFlight => break,
            Verdict::Expired => {
                if conn.take_over(record, call.now).await? {
                    return Ok(Step::Hold);
                }
                // A concurrent caller renewed or removed it first: look again.
            }
        }
    }
    Err(call.in_flight())
}

/// Checks an idempotency key: 1 to 255 bytes of visible ASCII (`!` to `~`).
pub fn validate_key(key: &str) -> Result<(), Error> {
    let reason = if key.is_empty() {
        "the key is empty"
    } else if key.len() > MAX_KEY_LEN {
        "the key is longer than 255 bytes"
    } else if !key.bytes().all(|b| b.is_ascii_graphic()) {
        "the key holds a space, a control character or non-ASCII text"
    } else {
        return Ok(());
    };
    Err(Error::InvalidKey { reason })
}

/// Checks a scope: at most 255 bytes, no control characters, no leading or
/// trailing whitespace (may be empty).
pub fn validate_scope(scope: &str) -> Result<(), Error> {
    let reason = if scope.len() > MAX_KEY_LEN {
        "the scope is longer than 255 bytes"
    } else if scope.chars().any(char::is_control) {
        "the scope holds a control character"
    } else if scope.trim() != scope {
        "the scope begins or ends with whitespace (MySQL would ignore trailing spaces)"
    } else {
        return Ok(());
    };
    Err(Error::InvalidScope { reason })
}

/// Checks a namespace: 1 to 255 bytes, no control characters.
pub fn validate_namespace(namespace: &str) -> Result<(), Error> {
    let reason = if namespace.is_empty() {
        "the namespace is empty"
    } else if namespace.len() > MAX_KEY_LEN {
        "the namespace is longer than 255 bytes; set a shorter `name`"
    } else if namespace.chars().any(char::is_control) {
        "the namespace holds a control character"
    } else if namespace.trim() != namespace {
        "the namespace begins or ends with whitespace"
    } else {
        return Ok(());
    };
    Err(Error::InvalidNamespace { reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> NaiveDateTime {
        chrono::DateTime::from_timestamp(secs, 0)
            .unwrap()
            .naive_utc()
    }

    fn state(fp: &str, response: Option<&str>, expires: i64) -> StoredState {
        StoredState {
            fingerprint: fp.to_owned(),
            response: response.map(str::to_owned),
            expires_at: at(expires),
        }
    }

    #[test]
    fn judge_covers_every_case() {
        let done = state("v2:a", Some("42"), 100);
        assert_eq!(judge(&done, "v2:a", at(50)), Verdict::Replay("42"));
        assert_eq!(judge(&done, "v2:b", at(50)), Verdict::Mismatch);
        assert_eq!(judge(&done, "v2:a", at(100)), Verdict::Expired);
        assert_eq!(judge(&done, "v2:b", at(101)), Verdict::Expired);
        let pending = state("v2:a", None, 100);
        assert_eq!(judge(&pending, "v2:a", at(50)), Verdict::InFlight);
        assert_eq!(judge(&pending, "v2:b", at(50)), Verdict::Mismatch);
    }

    #[test]
    fn records_of_the_v1_scheme_answer_by_key_until_they_expire() {
        let done = state("v1:old", Some("42"), 100);
        assert_eq!(judge(&done, "v2:any", at(50)), Verdict::Replay("42"));
        assert_eq!(judge(&done, "v2:any", at(100)), Verdict::Expired);
        let pending = state("v1:old", None, 100);
        assert_eq!(judge(&pending, "v2:any", at(50)), Verdict::InFlight);
        // Only the `v1:` prefix is exempt.
        let other = state("v3:new", Some("42"), 100);
        assert_eq!(judge(&other, "v2:any", at(50)), Verdict::Mismatch);
    }

    #[test]
    fn key_rules() {
        assert!(validate_key("9f1c2e7a-2b1d-4c5e-8f00-123456789abc").is_ok());
        assert!(validate_key(&"k".repeat(255)).is_ok());
        for bad in [
            "",
            " ",
            "a b",
            "tab\tkey",
            "nul\0",
            "ключ",
            &"k".repeat(256),
        ] {
            assert!(
                matches!(validate_key(bad), Err(Error::InvalidKey { .. })),
                "{bad:?}"
            );
        }
        assert!(validate_scope("").is_ok());
        assert!(validate_scope("tenant 42").is_ok());
        assert!(validate_scope("a\nb").is_err());
        assert!(validate_scope("tenant ").is_err());
        assert!(validate_namespace("").is_err());
    }
}
