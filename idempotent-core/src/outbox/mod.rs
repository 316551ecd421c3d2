//! The transactional outbox: effects outside the database, written in the
//! transaction of the call that caused them and delivered at least once
//! after it commits.
//!
//! A call's database writes commit with its idempotency record or not at
//! all. An effect outside the database (a Redis `INCR`, an e-mail, a
//! downstream HTTP call) cannot join that transaction; what can is a row
//! that asks for it. Inside the body of an `#[idempotent]` function (or a
//! [`Call::run`](crate::Call::run) body), [`push`] writes such a row, and a
//! [`Dispatcher`] later hands each row to the handler registered for its
//! kind and marks it done.
//!
//! A dispatcher leases only the kinds it has a handler for: several
//! applications (or a dispatcher per kind) can share one table, and an
//! effect whose kind no running dispatcher handles stays pending, untouched
//! (counted in [`stats`]), until one that handles it runs.
//!
//! # What is guaranteed
//!
//! - **The effect commits with the record.** [`push`] is a plain `INSERT`
//!   in the call's transaction: a body that fails, panics or is rolled back
//!   by its caller leaves no effect; a replay runs no body, so it pushes
//!   nothing.
//! - **Delivery at least once.** A pending effect is delivered, by a
//!   dispatcher that handles its kind, until a handler returns `Ok` for it
//!   (then it is `done`), or until its handler failed
//!   [`Dispatcher::max_attempts`] times (then it is `dead`). A dispatcher
//!   that crashes between a handler's effect and its mark leaves the effect
//!   leased; once the lease ends, another dispatcher delivers it again.
//! - **Never twice at once**, as long as handlers finish within the lease
//!   ([`Dispatcher::lease`], 30 s by default): a batch is leased in a short
//!   transaction that locks the rows it picks and skips those another
//!   dispatcher holds (`FOR UPDATE SKIP LOCKED` on PostgreSQL and MySQL /
//!   MariaDB 10.6+, there at READ COMMITTED; SQLite serializes writers with
//!   `BEGIN IMMEDIATE`), and a leased effect is not due again before its
//!   lease ends. Just before its handler runs, each effect's lease is
//!   renewed to a whole lease from that moment (one `UPDATE` fenced on the
//!   attempt number and the lease end it holds), so the lease counts from
//!   the handler's start, not the batch's; an effect whose lease ended and
//!   was taken over while earlier handlers of its batch ran is not
//!   delivered, and counted as [`Dispatched::lost`]. A delivery that
//!   outlives its lease may overlap a second one; its mark is then refused
//!   (it is fenced the same way) and counted as [`Dispatched::lost`], so
//!   the newer delivery's state stands. A lease or a mark that the database
//!   aborts (a deadlock, a busy SQLite file) is sent again, a few times; a
//!   mark that still fails ends the batch with the error, and its effect and
//!   the batch's undelivered ones are delivered again after the lease.
//! - **Stable ids.** An effect pushed by a call is
//!   `{namespace}/{scope}/{key}/effect/{n}` ([`effect_id`]), its `n`-th push
//!   (hashed to `sha256:..` when longer than 255 bytes or not visible
//!   ASCII). A body runs again only after its first run rolled back, effects
//!   included, so the ids are the same every time: a receiver that
//!   deduplicates by [`Effect::id`] applies each effect once (at least once
//!   plus deduplication is effectively once).
//! - **Dead letters stay.** A `dead` effect is never delivered again and
//!   never purged by [`purge_finished`]; list them with [`dead_letters`],
//!   and [`requeue`] one once its cause is fixed.
//!
//! Handlers run outside any transaction, after the lease committed, on the
//! dispatcher's connection's thread (blocking) or task (async).
//!
//! # Limits
//!
//! - An effect id names a record's key, not one lifetime of it. When a
//!   record expires and a new call takes its key, that call's pushes reuse
//!   the old effects' ids: while those rows are still stored (not yet
//!   purged, or dead) the new call fails with the database's unique
//!   violation and stores nothing. Purge done effects well within the
//!   records' TTL ([`purge_finished`]), and settle dead letters.
//! - [`Mode::Optimistic`](crate::Mode::Optimistic) runs a repeat's body
//!   again: its push meets the first call's committed effect with a unique
//!   violation. A call that owns its transaction (and waits on conflicts)
//!   answers that with the first call's result; inside a caller's
//!   transaction the repeat fails with the database error. Bodies that push
//!   suit the default claim-first mode, or
//!   [`Replay::ReadFirst`](crate::Replay::ReadFirst), which answers a repeat
//!   before its body.
//! - [`push`] finds its call through the thread that polls the body: an
//!   effect pushed from a thread or task the body spawned has no call
//!   ([`Error::PushOutsideCall`]).
//!
//! # Example
//!
//! ```
//! # extern crate idempotent_core as diesel_idempotent;
//! # #[cfg(feature = "sqlite")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use diesel::prelude::*;
//! use diesel_idempotent::{Call, outbox};
//! use std::sync::{Arc, Mutex};
//!
//! let mut conn = SqliteConnection::establish(":memory:")?;
//! diesel_idempotent::migrate(&mut conn)?;
//!
//! // Inside the call: the effect commits with the record.
//! Call::new("signups.create", "req-1").run(&mut conn, |conn| {
//!     // ... insert the user with `conn` ...
//!     outbox::push(conn, "welcome_email", &serde_json::json!({ "to": "ada@example.com" }))?;
//!     Ok::<_, diesel_idempotent::Error>(())
//! })?;
//!
//! // Later, anywhere: deliver what is due.
//! let sent = Arc::new(Mutex::new(Vec::new()));
//! let outbox_sent = Arc::clone(&sent);
//! let dispatcher = outbox::Dispatcher::new().handler("welcome_email", move |effect| {
//!     // A receiver deduplicates by `effect.id`.
//!     outbox_sent.lock().map_err(|e| e.to_string())?.push(effect.id.clone());
//!     Ok(())
//! });
//! let dispatched = dispatcher.drain(&mut conn)?;
//! assert_eq!(dispatched.delivered, 1);
//! assert_eq!(*sent.lock().unwrap(), ["signups.create//req-1/effect/1"]);
//! assert_eq!(outbox::effect_id("signups.create", "", "req-1", 1), "signups.create//req-1/effect/1");
//! # Ok(()) }
//! # #[cfg(not(feature = "sqlite"))] fn main() {}
//! ```

#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(unused_imports, dead_code)
)]

use std::collections::HashMap;
use std::fmt;
use std::future::ready;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::clock::{Clock, SystemClock};
use crate::store::IdempotentConnection;
use crate::store::driver::{Blocking, block_on};
#[cfg(feature = "async")]
use crate::store::nonblocking::{AsyncIdempotentConnection, NonBlocking};

pub(crate) mod context;
mod dispatch;
pub(crate) mod store;

#[doc(hidden)]
pub use store::{
    AsyncOutboxStatements, DueRow, EntryRow, Lease, Mark, NewEffect, OutboxStatements,
};

/// The longest effect id or kind, in bytes (the columns' width).
pub const MAX_ID_LEN: usize = 255;

/// The id of an effect: what a receiver deduplicates by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EffectId(String);

impl EffectId {
    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EffectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<EffectId> for String {
    fn from(id: EffectId) -> Self {
        id.0
    }
}

impl AsRef<str> for EffectId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The id of the `n`-th effect (from 1) pushed by the call with this
/// namespace, scope and key: `{namespace}/{scope}/{key}/effect/{n}`, each
/// part with `%` written `%25` and `/` written `%2F` (so two calls never
/// share an id), or, when that text is longer than 255 bytes or holds
/// characters that are not visible ASCII, `sha256:` and the 64 lowercase
/// hex digits of its SHA-256.
///
/// ```
/// # extern crate idempotent_core as diesel_idempotent;
/// use diesel_idempotent::outbox::effect_id;
/// assert_eq!(effect_id("orders.create", "tenant-7", "k-1", 2), "orders.create/tenant-7/k-1/effect/2");
/// assert_eq!(effect_id("orders.create", "eu/fr", "k-1", 1), "orders.create/eu%2Ffr/k-1/effect/1");
/// assert!(effect_id("orders.create", "a tenant", "k-1", 1).starts_with("sha256:"));
/// ```
pub fn effect_id(namespace: &str, scope: &str, key: &str, n: u32) -> String {
    crate::derived::derived_id(namespace, scope, key, &["effect", &n.to_string()])
}

/// Checks an effect id or kind: 1 to 255 bytes.
fn validate(what: &'static str, text: &str) -> Result<(), Error> {
    let reason = if text.is_empty() {
        "it is empty"
    } else if text.len() > MAX_ID_LEN {
        "it is longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(Error::InvalidEffect { what, reason })
}

/// The payload's JSON, and a checked kind.
fn prepare<P: Serialize + ?Sized>(kind: &str, payload: &P) -> Result<String, Error> {
    validate("kind", kind)?;
    serde_json::to_string(payload).map_err(|source| Error::Serialization {
        what: "the effect's payload",
        source,
    })
}

/// The id of the running call's next effect and the call's time.
fn next_in_call() -> Result<(EffectId, NaiveDateTime), Error> {
    let frame = context::current().ok_or(Error::PushOutsideCall)?;
    let id = effect_id(
        frame.namespace(),
        frame.scope(),
        frame.key(),
        frame.next_effect(),
    );
    Ok((EffectId(id), frame.now()))
}

/// The running call's time, or the system clock's outside a call.
fn now_for_push() -> NaiveDateTime {
    context::current()
        .map(|frame| frame.now())
        .unwrap_or_else(|| SystemClock.now().naive_utc().trunc_subsecs(6))
}

/// Writes an effect of `kind` with `payload` (as JSON) in the transaction
/// of the running idempotent call, to be delivered once it commits; returns
/// its id, [`effect_id`]`(namespace, scope, key, n)` for the call's `n`-th
/// push.
///
/// Call it inside the body of an `#[idempotent]` function (key or hash
/// pattern, any mode) or of [`Call::run`](crate::Call::run), with the
/// connection the body got. Outside a call it returns
/// [`Error::PushOutsideCall`]; use [`push_with_id`] there (also inside a
/// `get_or_create` function, which keeps no record to derive an id from).
/// The effect is due at the call's clock's time.
///
/// A duplicate id is a database error: two different effects would share
/// an id.
pub fn push<C: IdempotentConnection, P: Serialize + ?Sized>(
    conn: &mut C,
    kind: &str,
    payload: &P,
) -> Result<EffectId, Error> {
    let payload = prepare(kind, payload)?;
    let (id, now) = next_in_call()?;
    insert(conn, id, kind, &payload, now)
}

/// [`push`] with an id of the caller's choosing (1 to 255 bytes), in
/// whatever transaction `conn` is in (none: the `INSERT` commits on its
/// own). Due at the running call's time inside a call, at the system
/// clock's time outside.
pub fn push_with_id<C: IdempotentConnection, P: Serialize + ?Sized>(
    conn: &mut C,
    id: &str,
    kind: &str,
    payload: &P,
) -> Result<EffectId, Error> {
    validate("id", id)?;
    let payload = prepare(kind, payload)?;
    insert(
        conn,
        EffectId(id.to_owned()),
        kind,
        &payload,
        now_for_push(),
    )
}

fn insert<C: IdempotentConnection>(
    conn: &mut C,
    id: EffectId,
    kind: &str,
    payload: &str,
    now: NaiveDateTime,
) -> Result<EffectId, Error> {
    OutboxStatements::outbox_insert(conn, &dispatch::new_effect(&id.0, kind, payload, now))?;
    Ok(id)
}

/// [`push`] on a diesel-async connection, inside an `async` idempotent
/// call's body (feature `async`).
#[cfg(feature = "async")]
pub async fn push_async<C: AsyncIdempotentConnection, P: Serialize + ?Sized + Sync>(
    conn: &mut C,
    kind: &str,
    payload: &P,
) -> Result<EffectId, Error> {
    let payload = prepare(kind, payload)?;
    let (id, now) = next_in_call()?;
    insert_async(conn, id, kind, &payload, now).await
}

/// [`push_with_id`] on a diesel-async connection (feature `async`).
#[cfg(feature = "async")]
pub async fn push_with_id_async<C: AsyncIdempotentConnection, P: Serialize + ?Sized + Sync>(
    conn: &mut C,
    id: &str,
    kind: &str,
    payload: &P,
) -> Result<EffectId, Error> {
    validate("id", id)?;
    let payload = prepare(kind, payload)?;
    let now = now_for_push();
    insert_async(conn, EffectId(id.to_owned()), kind, &payload, now).await
}

#[cfg(feature = "async")]
async fn insert_async<C: AsyncIdempotentConnection>(
    conn: &mut C,
    id: EffectId,
    kind: &str,
    payload: &str,
    now: NaiveDateTime,
) -> Result<EffectId, Error> {
    AsyncOutboxStatements::outbox_insert(conn, &dispatch::new_effect(&id.0, kind, payload, now))
        .await?;
    Ok(id)
}

/// An effect being delivered: what a handler gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    /// Its id: deduplicate by it.
    pub id: String,
    /// Its kind, which chose the handler.
    pub kind: String,
    /// Its payload, as JSON.
    pub payload: String,
    /// Which delivery this is: 1 for the first.
    pub attempt: u32,
    /// When it was pushed (UTC).
    pub created_at: NaiveDateTime,
}

impl Effect {
    /// The payload, read as a `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_str(&self.payload).map_err(|source| Error::EffectPayloadUnreadable {
            id: self.id.clone(),
            kind: self.kind.clone(),
            source,
        })
    }
}

/// What a handler's failure is: any error, sent between threads.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// What one [`Dispatcher::run_once`] or [`Dispatcher::drain`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dispatched {
    /// Handled and marked done.
    pub delivered: usize,
    /// Failed (the handler's error or panic), due again after the
    /// back-off.
    pub retried: usize,
    /// Failed on their last attempt: now dead.
    pub dead: usize,
    /// Their lease had ended and another dispatcher had leased them: either
    /// before their handler began (not delivered by this dispatcher), or
    /// while it ran (delivered, but the mark was refused and the newer
    /// delivery's state stands).
    pub lost: usize,
}

impl Dispatched {
    /// How many effects were leased.
    pub fn total(&self) -> usize {
        self.delivered + self.retried + self.dead + self.lost
    }
}

impl std::ops::AddAssign for Dispatched {
    fn add_assign(&mut self, other: Self) {
        self.delivered += other.delivered;
        self.retried += other.retried;
        self.dead += other.dead;
        self.lost += other.lost;
    }
}

/// The text of a handler's failure.
fn failure_text(error: &HandlerError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The text of a handler's panic.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text payload".to_owned());
    format!("the handler panicked: {message}")
}

/// The failure of an effect whose kind has no handler (none is leased:
/// only the handled kinds are).
fn no_handler(kind: &str) -> String {
    format!("no handler for kind `{kind}`: register one with `.handler(\"{kind}\", ..)`")
}

type BlockingHandler = Arc<dyn Fn(&Effect) -> Result<(), HandlerError> + Send + Sync>;

/// Delivers due effects to blocking handlers registered by kind.
///
/// ```
/// # extern crate idempotent_core as diesel_idempotent;
/// use diesel_idempotent::outbox::Dispatcher;
/// use std::time::Duration;
///
/// let dispatcher = Dispatcher::new()
///     .handler("counter.incr", |effect| {
///         let by: i64 = effect.payload_as()?;
///         // ... INCR by `by`, deduplicated by `effect.id` ...
///         # let _ = by;
///         Ok(())
///     })
///     .lease(Duration::from_secs(60))
///     .max_attempts(5);
/// # let _ = dispatcher;
/// ```
#[derive(Clone, Default)]
pub struct Dispatcher {
    handlers: HashMap<String, BlockingHandler>,
    settings: dispatch::Settings,
}

/// A dispatcher as `Debug` shows it: its kinds, sorted, and its settings.
fn debug_dispatcher<'k>(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    kinds: impl Iterator<Item = &'k String>,
    settings: &dispatch::Settings,
) -> fmt::Result {
    let mut kinds: Vec<&String> = kinds.collect();
    kinds.sort();
    f.debug_struct(name)
        .field("kinds", &kinds)
        .field("settings", settings)
        .finish()
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_dispatcher(f, "Dispatcher", self.handlers.keys(), &self.settings)
    }
}

/// The settings both dispatchers take, written once.
macro_rules! settings_methods {
    () => {
        /// How long a delivery may take, counted from its handler's start,
        /// before the effect is due again (another dispatcher may then
        /// deliver it): 30 s by default. Keep it above the slowest
        /// handler's time.
        pub fn lease(mut self, lease: Duration) -> Self {
            self.settings.lease = lease;
            self
        }

        /// After how many failed deliveries an effect is dead: 10 by
        /// default (at least 1).
        pub fn max_attempts(mut self, max_attempts: u32) -> Self {
            self.settings.max_attempts = max_attempts.max(1);
            self
        }

        /// How long a failed effect waits before its next delivery: `first`
        /// after the first failure, doubled after each one, at most `max`
        /// (1 s to 5 min by default).
        pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
            self.settings.first_backoff = first;
            self.settings.max_backoff = max.max(first);
            self
        }

        /// How many effects one batch leases: 100 by default (at least 1).
        pub fn batch_size(mut self, batch_size: usize) -> Self {
            self.settings.batch_size = batch_size.max(1);
            self
        }

        /// The clock that decides what is due and stamps leases and marks
        /// (tests use a [`crate::ManualClock`]); the system clock by default.
        pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
            self.settings.clock = clock;
            self
        }
    };
}

impl Dispatcher {
    /// A dispatcher with no handlers and the default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for effects of `kind` (replacing an earlier
    /// one). `Ok` marks the effect done; an error or a panic is a failed
    /// delivery, retried after the back-off.
    pub fn handler(
        mut self,
        kind: &str,
        handler: impl Fn(&Effect) -> Result<(), HandlerError> + Send + Sync + 'static,
    ) -> Self {
        self.handlers.insert(kind.to_owned(), Arc::new(handler));
        self
    }

    settings_methods!();

    /// Leases one batch of due effects of the kinds it has handlers for in
    /// a short transaction (none without handlers), delivers each to its
    /// handler outside any transaction, and marks it: done, due again
    /// after the back-off, or dead. `conn` must not be inside a
    /// transaction ([`Error::DispatchInTransaction`]).
    pub fn run_once<C: IdempotentConnection>(&self, conn: &mut C) -> Result<Dispatched, Error> {
        block_on(dispatch::run_once(
            &mut Blocking(conn),
            self,
            &self.settings,
        ))
    }

    /// Runs batches until one finds nothing due; returns what they did.
    pub fn drain<C: IdempotentConnection>(&self, conn: &mut C) -> Result<Dispatched, Error> {
        block_on(dispatch::drain(&mut Blocking(conn), self, &self.settings))
    }
}

impl dispatch::Deliver for Dispatcher {
    fn kinds(&self) -> Vec<String> {
        self.handlers.keys().cloned().collect()
    }

    fn deliver<'a>(
        &'a self,
        effect: &'a Effect,
    ) -> impl Future<Output = Result<(), String>> + Send + 'a {
        let result = match self.handlers.get(&effect.kind) {
            None => Err(no_handler(&effect.kind)),
            Some(handler) => match panic::catch_unwind(AssertUnwindSafe(|| handler(effect))) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(failure_text(&error)),
                Err(payload) => Err(panic_text(payload.as_ref())),
            },
        };
        ready(result)
    }
}

#[cfg(feature = "async")]
type AsyncHandler = Arc<
    dyn Fn(Effect) -> std::pin::Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>
        + Send
        + Sync,
>;

/// [`Dispatcher`] for diesel-async connections and `async` handlers
/// (feature `async`): the same procedure and settings.
#[cfg(feature = "async")]
#[derive(Clone, Default)]
pub struct AsyncDispatcher {
    handlers: HashMap<String, AsyncHandler>,
    settings: dispatch::Settings,
}

#[cfg(feature = "async")]
impl fmt::Debug for AsyncDispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_dispatcher(f, "AsyncDispatcher", self.handlers.keys(), &self.settings)
    }
}

#[cfg(feature = "async")]
impl AsyncDispatcher {
    /// A dispatcher with no handlers and the default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the `async` `handler` for effects of `kind` (replacing an
    /// earlier one); see [`Dispatcher::handler`].
    pub fn handler<F, Fut>(mut self, kind: &str, handler: F) -> Self
    where
        F: Fn(Effect) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.handlers.insert(
            kind.to_owned(),
            Arc::new(move |effect| Box::pin(handler(effect))),
        );
        self
    }

    settings_methods!();

    /// [`Dispatcher::run_once`] on a diesel-async connection.
    pub async fn run_once<C: AsyncIdempotentConnection>(
        &self,
        conn: &mut C,
    ) -> Result<Dispatched, Error> {
        dispatch::run_once(&mut NonBlocking::new(conn, None), self, &self.settings).await
    }

    /// [`Dispatcher::drain`] on a diesel-async connection.
    pub async fn drain<C: AsyncIdempotentConnection>(
        &self,
        conn: &mut C,
    ) -> Result<Dispatched, Error> {
        dispatch::drain(&mut NonBlocking::new(conn, None), self, &self.settings).await
    }
}

#[cfg(feature = "async")]
impl dispatch::Deliver for AsyncDispatcher {
    fn kinds(&self) -> Vec<String> {
        self.handlers.keys().cloned().collect()
    }

    async fn deliver(&self, effect: &Effect) -> Result<(), String> {
        let Some(handler) = self.handlers.get(&effect.kind) else {
            return Err(no_handler(&effect.kind));
        };
        let handler = Arc::clone(handler);
        let effect = effect.clone();
        match crate::store::driver::catch_unwind(async move { handler(effect).await }).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(failure_text(&error)),
            Err(payload) => Err(panic_text(payload.as_ref())),
        }
    }
}

/// The state of an effect in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EffectState {
    /// Waiting for a delivery, being delivered, or waiting out a back-off.
    Pending,
    /// Delivered.
    Done,
    /// Given up after its last attempt; see [`requeue`].
    Dead,
}

impl EffectState {
    fn parse(text: &str) -> Result<Self, Error> {
        match text {
            store::PENDING => Ok(EffectState::Pending),
            store::DONE => Ok(EffectState::Done),
            store::DEAD => Ok(EffectState::Dead),
            other => Err(Error::Database(
                diesel::result::Error::DeserializationError(
                    format!("unknown outbox state {other:?}: expected pending, done or dead")
                        .into(),
                ),
            )),
        }
    }
}

/// One effect's row, for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The effect's id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Its payload, as JSON.
    pub payload: String,
    /// Its state.
    pub state: EffectState,
    /// How many deliveries were begun.
    pub attempts: u32,
    /// While pending: when it is due, or when its delivery's lease ends.
    pub available_at: NaiveDateTime,
    /// The error of its latest failed delivery.
    pub last_error: Option<String>,
    /// When it was pushed.
    pub created_at: NaiveDateTime,
    /// When it was delivered or given up.
    pub finished_at: Option<NaiveDateTime>,
}

impl OutboxEntry {
    fn from_row(row: EntryRow) -> Result<Self, Error> {
        let (id, kind, payload, state, attempts, available_at, last_error, created_at, finished_at) =
            row;
        Ok(OutboxEntry {
            id,
            kind,
            payload,
            state: EffectState::parse(&state)?,
            attempts: u32::try_from(attempts).unwrap_or(0),
            available_at,
            last_error,
            created_at,
            finished_at,
        })
    }
}

/// How many effects are in each state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStats {
    /// Pending: due, being delivered, or waiting out a back-off.
    pub pending: u64,
    /// Of those, the ones due now (not leased, back-off over).
    pub due: u64,
    /// Delivered (until purged).
    pub done: u64,
    /// Given up.
    pub dead: u64,
}

fn batch_limit(batch: usize) -> Result<i64, Error> {
    i64::try_from(batch)
        .ok()
        .filter(|limit| *limit > 0)
        .ok_or(Error::InvalidBatchSize)
}

/// Deletes the effects delivered (`done`) before `finished_before`, in
/// batches of `batch`, until none is left; returns how many were deleted.
/// Dead effects are kept.
pub fn purge_finished<C: IdempotentConnection>(
    conn: &mut C,
    finished_before: DateTime<Utc>,
    batch: usize,
) -> Result<usize, Error> {
    let limit = batch_limit(batch)?;
    let before = finished_before.naive_utc();
    let mut total = 0usize;
    loop {
        let ids = conn.outbox_finished(before, limit)?;
        if ids.is_empty() {
            return Ok(total);
        }
        for chunk in ids.chunks(dispatch::MAX_IDS_PER_STATEMENT) {
            total = total.saturating_add(conn.outbox_delete_finished(chunk, before)?);
        }
        if ids.len() < batch {
            return Ok(total);
        }
    }
}

/// At most `limit` dead effects, the earliest given up first.
pub fn dead_letters<C: IdempotentConnection>(
    conn: &mut C,
    limit: usize,
) -> Result<Vec<OutboxEntry>, Error> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    conn.outbox_in_state(store::DEAD, limit)?
        .into_iter()
        .map(OutboxEntry::from_row)
        .collect()
}

/// The effect with this id, whatever its state.
pub fn find_effect<C: IdempotentConnection>(
    conn: &mut C,
    id: &str,
) -> Result<Option<OutboxEntry>, Error> {
    conn.outbox_find(id)?.map(OutboxEntry::from_row).transpose()
}

/// Makes the dead effect `id` pending again, due now, with its attempts
/// reset (its `last_error` is kept until its next delivery); `false` when
/// no dead effect has this id.
pub fn requeue<C: IdempotentConnection>(conn: &mut C, id: &str) -> Result<bool, Error> {
    requeue_with_clock(conn, id, &SystemClock)
}

/// [`requeue`], due at `clock`'s time.
pub fn requeue_with_clock<C: IdempotentConnection>(
    conn: &mut C,
    id: &str,
    clock: &dyn Clock,
) -> Result<bool, Error> {
    let now = clock.now().naive_utc().trunc_subsecs(6);
    Ok(conn.outbox_requeue(id, now)? == 1)
}

/// How many effects are pending (and due now), done and dead.
pub fn stats<C: IdempotentConnection>(conn: &mut C) -> Result<OutboxStats, Error> {
    stats_with_clock(conn, &SystemClock)
}

/// [`stats`], with "due" judged at `clock`'s time.
pub fn stats_with_clock<C: IdempotentConnection>(
    conn: &mut C,
    clock: &dyn Clock,
) -> Result<OutboxStats, Error> {
    let now = clock.now().naive_utc().trunc_subsecs(6);
    let mut stats = OutboxStats::default();
    for (state, count) in conn.outbox_count_states()? {
        let count = u64::try_from(count).unwrap_or(0);
        match state.as_str() {
            store::PENDING => stats.pending = count,
            store::DONE => stats.done = count,
            store::DEAD => stats.dead = count,
            _ => {}
        }
    }
    stats.due = u64::try_from(conn.outbox_count_due(now)?).unwrap_or(0);
    Ok(stats)
}
