//! Calls made in phases that commit one by one, with recovery points.
//!
//! A function under `#[idempotent]` runs once, in one transaction with its
//! record. A call that must reach a service outside the database and keep
//! its answer (charge a card at a processor and store the charge's id)
//! cannot: the charge does not roll back with the transaction. A
//! [`PhasedCall`] splits such a call into *phases*:
//!
//! - each phase runs in a transaction of its own and commits on its own,
//!   together with the call's *recovery point*: a value of your type `P`
//!   (an enum of the points the call can stop at) that says where the next
//!   phase starts, stored as JSON in `idempotency_phased_calls`;
//! - a phase ends with [`Step::Next`] (the next recovery point: another
//!   phase follows) or [`Step::Finish`] (the call's answer, stored and
//!   replayed to every later call with the same key, like a [`Call`]'s);
//! - the first call *claims* the key: it inserts the record, holding a
//!   *lease* on it ([`PhasedCall::lease`], 60 seconds by default), in a
//!   statement of its own that commits before phase 1 begins; the lease is
//!   renewed at the end of each phase. A concurrent first call waits for
//!   that one statement, never for phase 1. A retry that finds the lease live answers
//!   [`Error::InFlight`]; one that finds it ended (the holder crashed, or
//!   stalled longer than the lease) *takes the call over* and resumes from
//!   the last recovery point ([`Phase::point`]). The takeover is one
//!   compare-and-set `UPDATE`, committed on its own before the resumed
//!   phase begins (so racing retries wait for one statement, never for the
//!   winner's phase): it moves the lease only if the record still has the
//!   holder, the phase count and the ended lease that the retry read. Of
//!   several retries racing for one record, exactly one takes it over.
//! - every phase end is fenced on the lease: a holder whose call was taken
//!   over while it stalled finds out when its phase tries to commit; that
//!   phase is rolled back and the holder gets [`Error::LeaseLost`].
//!
//! # What a retry does after a crash
//!
//! A phase's transaction commits its database writes and its recovery
//! point together, or neither. So wherever a process dies:
//!
//! - before the first phase commits: only the claim was stored (no
//!   recovery point); once the lease has ended a retry takes the call over
//!   and runs the first phase again, external call included;
//! - inside any other phase, before its commit (before, during or after its
//!   external call): that phase's writes are rolled back, the last recovery
//!   point stands; once the lease has ended a retry resumes there and runs
//!   the phase again, external call included;
//! - after a phase's commit: a retry resumes at the next phase; the
//!   committed phase never runs again;
//! - after the last phase's commit, before the answer reached the client:
//!   a retry replays the stored answer; no phase runs.
//!
//! A phase that runs again may therefore repeat its external call. Send
//! every external call with [`Phase::external_key`] as its idempotency key
//! (the `Idempotency-Key` header of Stripe and most payment processors):
//! it is derived from the record's namespace, scope and key and the name
//! you give, so it is the same on every attempt and after a takeover, and
//! the external service answers the repeat with its first answer instead
//! of acting twice. **The external service must deduplicate by that key**;
//! one that does not can act twice after a crash.
//!
//! A phase that returns `Err`, the first included, is rolled back and
//! releases the lease at once, so an immediate retry resumes at that phase
//! (the first: from no recovery point). A phase that panics
//! is rolled back and the panic goes on; its lease is left to run out, as
//! a crashed process would leave it.
//!
//! # Rules
//!
//! - [`PhasedCall::run`] must be called outside any transaction (each
//!   phase must really commit): inside one it returns
//!   [`Error::PhasedCallInTransaction`] and runs nothing.
//! - An external call belongs before the phase's database writes, inside
//!   the phase; its answer is kept by returning it in the next recovery
//!   point or by writing it in the phase's transaction.
//! - A phase may run again after it was interrupted; all it did in the
//!   database was rolled back, so only its external effects can repeat, and
//!   those are deduplicated by the external key.
//! - Choose the lease longer than the longest phase: a phase still running
//!   when its lease ends can be taken over, and is then rolled back when it
//!   ends.
//!
//! # Example
//!
//! A payment in three phases on SQLite; the processor is faked by a
//! closure that deduplicates by the idempotency key it is sent.
//!
//! ```
//! # extern crate idempotent_core as diesel_idempotent;
//! # #[cfg(feature = "sqlite")] {
//! use std::cell::RefCell;
//! use std::collections::HashMap;
//!
//! use diesel::prelude::*;
//! use diesel_idempotent::phased::{PhasedCall, Step};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! enum Point {
//!     Started { payment: i64 },
//!     Charged { payment: i64, charge: String },
//! }
//!
//! #[derive(Debug)]
//! enum AppError {
//!     Idempotency(diesel_idempotent::Error),
//!     Db(diesel::result::Error),
//! }
//! impl From<diesel_idempotent::Error> for AppError {
//!     fn from(e: diesel_idempotent::Error) -> Self { AppError::Idempotency(e) }
//! }
//! impl From<diesel::result::Error> for AppError {
//!     fn from(e: diesel::result::Error) -> Self { AppError::Db(e) }
//! }
//!
//! let mut conn = SqliteConnection::establish(":memory:").unwrap();
//! diesel_idempotent::migrate(&mut conn).unwrap();
//! diesel::sql_query("CREATE TABLE payments (id INTEGER PRIMARY KEY, charge TEXT)")
//!     .execute(&mut conn)
//!     .unwrap();
//!
//! // The processor: one charge per idempotency key.
//! let charges = RefCell::new(HashMap::<String, String>::new());
//! let charge = |idempotency_key: &str| -> String {
//!     let mut charges = charges.borrow_mut();
//!     let next = format!("ch_{}", charges.len() + 1);
//!     charges.entry(idempotency_key.to_owned()).or_insert(next).clone()
//! };
//!
//! let pay = |conn: &mut SqliteConnection| {
//!     PhasedCall::new("payments.pay", "order-17")
//!         .request(&4200)
//!         .run(conn, |phase| -> Result<Step<Point, String>, AppError> {
//!             match phase.point() {
//!                 None => {
//!                     diesel::sql_query("INSERT INTO payments (id) VALUES (17)")
//!                         .execute(phase.conn())?;
//!                     Ok(Step::Next(Point::Started { payment: 17 }))
//!                 }
//!                 Some(Point::Started { payment }) => {
//!                     let payment = *payment;
//!                     // The external call, with the key that makes a
//!                     // repeat harmless; then the phase's own writes.
//!                     let id = charge(&phase.external_key("charge"));
//!                     diesel::sql_query("UPDATE payments SET charge = ? WHERE id = ?")
//!                         .bind::<diesel::sql_types::Text, _>(&id)
//!                         .bind::<diesel::sql_types::BigInt, _>(payment)
//!                         .execute(phase.conn())?;
//!                     Ok(Step::Next(Point::Charged { payment, charge: id }))
//!                 }
//!                 Some(Point::Charged { charge, .. }) => {
//!                     Ok(Step::Finish(format!("receipt for {charge}")))
//!                 }
//!             }
//!         })
//! };
//!
//! let first = pay(&mut conn).unwrap();
//! assert_eq!(first.value(), "receipt for ch_1");
//! let again = pay(&mut conn).unwrap();
//! assert!(again.is_replayed());
//! assert_eq!(again.value(), "receipt for ch_1");
//! assert_eq!(charges.borrow().len(), 1);
//! # }
//! ```
//!
//! [`Call`]: crate::Call

use std::hash::{BuildHasher, Hasher};
use std::panic;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, SubsecRound, Utc};
use diesel::QueryResult;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::clock::{Clock, SystemClock};
use crate::derived::derived_id;
use crate::error::is_conflict_abort;
use crate::fingerprint::Fingerprint;
use crate::pattern::key::{Outcome, Response, validate_key, validate_namespace, validate_scope};
use crate::store::IdempotentConnection;
use crate::store::Unwound;
use crate::store::driver::{Blocking, Driver, block_on, guarded_transaction};
#[cfg(feature = "async")]
use crate::store::nonblocking::{AsyncIdempotentConnection, NonBlocking};
use crate::ttl::Ttl;

diesel::table! {
    /// One row per phased call (namespace, scope, key): where it stands,
    /// who holds it, and its answer once it finished. Times are UTC.
    idempotency_phased_calls (namespace, scope, key) {
        /// The call's namespace.
        namespace -> Text,
        /// The tenant or user scope; empty when the call has none.
        scope -> Text,
        /// The idempotency key.
        key -> Text,
        /// The request's fingerprint (`v2:` and a SHA-256).
        fingerprint -> Text,
        /// The name of the last recovery point (`started` before the first
        /// phase committed one, `finished` once the call finished).
        recovery_point -> Text,
        /// The last recovery point as JSON; NULL before the first.
        point_state -> Nullable<Text>,
        /// The call's answer as JSON; NULL until it finished.
        response -> Nullable<Text>,
        /// The token of the call that holds the lease; NULL once finished.
        lease_token -> Nullable<Text>,
        /// When the lease ends; NULL when released or finished.
        locked_until -> Nullable<Timestamp>,
        /// How many phases committed.
        phases -> Integer,
        /// When the call was first claimed (UTC).
        created_at -> Timestamp,
        /// When the record last changed (UTC).
        updated_at -> Timestamp,
        /// When a finished call stops answering for its key (UTC); far in
        /// the future while it is unfinished, which never expires.
        expires_at -> Timestamp,
    }
}

/// A row of `idempotency_phased_calls`, as [`find`] returns it.
#[derive(Debug, Clone, PartialEq, Eq, diesel::Queryable, diesel::Selectable)]
#[diesel(table_name = idempotency_phased_calls)]
pub struct PhasedCallRecord {
    /// The call's namespace.
    pub namespace: String,
    /// The tenant or user scope; empty when the call has none.
    pub scope: String,
    /// The idempotency key.
    pub key: String,
    /// The request's fingerprint.
    pub fingerprint: String,
    /// The name of the last recovery point (`started`, a point's name, or
    /// `finished`).
    pub recovery_point: String,
    /// The last recovery point as JSON.
    pub point_state: Option<String>,
    /// The answer as JSON, once the call finished.
    pub response: Option<String>,
    /// The lease holder's token; `None` once finished.
    pub lease_token: Option<String>,
    /// When the lease ends; `None` when released or finished.
    pub locked_until: Option<NaiveDateTime>,
    /// How many phases committed.
    pub phases: i32,
    /// When the call was first claimed (UTC).
    pub created_at: NaiveDateTime,
    /// When the record last changed (UTC).
    pub updated_at: NaiveDateTime,
    /// When a finished call stops answering for its key (UTC).
    pub expires_at: NaiveDateTime,
}

impl PhasedCallRecord {
    /// Whether the call finished: its answer is stored.
    pub fn is_finished(&self) -> bool {
        self.response.is_some()
    }

    /// Whether a call holds the lease at `now` (a retry then answers
    /// [`Error::InFlight`]).
    pub fn is_leased_at(&self, now: DateTime<Utc>) -> bool {
        self.response.is_none()
            && self
                .locked_until
                .is_some_and(|until| until > now.naive_utc())
    }
}

/// What a phase returns: another phase follows from this recovery point,
/// or the call is finished with this answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<P, T> {
    /// Commit this recovery point; the next phase starts from it.
    Next(P),
    /// Commit this answer; every later call with the key replays it.
    Finish(T),
}

/// What a phase gets: the connection (inside the phase's transaction), the
/// recovery point it starts from, and the key for its external calls.
pub struct Phase<'c, C, P> {
    conn: &'c mut C,
    point: Option<P>,
    namespace: &'c str,
    scope: &'c str,
    key: &'c str,
    resumed: bool,
}

impl<C, P> std::fmt::Debug for Phase<'_, C, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Phase")
            .field("namespace", &self.namespace)
            .field("scope", &self.scope)
            .field("key", &self.key)
            .field("has_point", &self.point.is_some())
            .field("resumed", &self.resumed)
            .finish_non_exhaustive()
    }
}

impl<C, P> Phase<'_, C, P> {
    /// The connection, inside this phase's transaction: what the phase
    /// writes commits with its recovery point, or not at all.
    pub fn conn(&mut self) -> &mut C {
        self.conn
    }

    /// The recovery point this phase starts from; `None` in the first
    /// phase.
    pub fn point(&self) -> Option<&P> {
        self.point.as_ref()
    }

    /// The idempotency key to send with the external call `name` (the
    /// `Idempotency-Key` header): derived from the call's namespace, scope
    /// and key, the same on every attempt and after a takeover, so that
    /// the external service answers a repeat with its first answer.
    /// `name` tells the call's external calls apart (`"charge"`,
    /// `"refund"`). The key is `{namespace}/{scope}/{key}/{name}`, each
    /// part with `%` written `%25` and `/` written `%2F` (so two calls or
    /// names never share a key), or `sha256:` and the hex SHA-256 of that
    /// text when it is longer than 255 bytes or not visible ASCII.
    pub fn external_key(&self, name: &str) -> String {
        derived_id(self.namespace, self.scope, self.key, &[name])
    }

    /// Whether this run took the call over or resumed it after an earlier
    /// run stopped (crashed, failed, or let its lease run out): its phases
    /// may have been interrupted before, and an external call may have been
    /// made already (with the same [`Phase::external_key`]).
    pub fn resumed(&self) -> bool {
        self.resumed
    }
}

/// A call made in phases, each committed with a recovery point (see the
/// [module documentation](self)).
pub struct PhasedCall<'a> {
    namespace: &'a str,
    key: &'a str,
    scope: &'a str,
    ttl: Ttl,
    lease: Duration,
    clock: &'a dyn Clock,
    fingerprint: Result<Fingerprint, Error>,
}

impl std::fmt::Debug for PhasedCall<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhasedCall")
            .field("namespace", &self.namespace)
            .field("scope", &self.scope)
            .field("key", &self.key)
            .field("ttl", &self.ttl)
            .field("lease", &self.lease)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The lease of a call that does not set one.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

impl<'a> PhasedCall<'a> {
    /// A phased call in `namespace` under `key`, with no scope, a TTL of
    /// 24 hours, a lease of 60 seconds, the system clock and an empty
    /// request.
    pub fn new(namespace: &'a str, key: &'a str) -> Self {
        PhasedCall {
            namespace,
            key,
            scope: "",
            ttl: Ttl::DEFAULT,
            lease: DEFAULT_LEASE,
            clock: &SystemClock,
            fingerprint: Fingerprint::builder().finish(),
        }
    }

    /// Keeps this call's record apart from other tenants' equal keys.
    pub fn scope(mut self, scope: &'a str) -> Self {
        self.scope = scope;
        self
    }

    /// How long a finished call replays its answer (24 hours by default).
    /// An unfinished call never expires: a retry must always be able to
    /// resume it, since an external effect may have happened.
    pub fn ttl(mut self, ttl: Ttl) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long a run holds the call after it claims or takes it over and
    /// after each phase's end, before a retry may take it over (60 seconds
    /// by default). Longer than the longest phase, external call included.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The clock that stamps leases and expiry (tests use a
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

    /// Runs the call's phases, from the start or from the last recovery
    /// point, until one returns [`Step::Finish`]; returns its answer, or the
    /// stored answer of the run that finished (marked as replayed).
    ///
    /// Errors: [`Error::PayloadMismatch`] (the key was used with another
    /// request), [`Error::InFlight`] (another run holds the lease),
    /// [`Error::LeaseLost`] (this run's lease was taken over while a phase
    /// ran; that phase was rolled back), [`Error::PhasedCallInTransaction`]
    /// (called inside a transaction), and `phase`'s own errors, after which
    /// the lease is released so that a retry resumes at once.
    pub fn run<C, P, T, E, F>(self, conn: &mut C, mut phase: F) -> Result<Outcome<T>, E>
    where
        C: IdempotentConnection,
        P: Serialize + DeserializeOwned,
        T: Response,
        E: From<Error>,
        F: FnMut(&mut Phase<'_, C, P>) -> Result<Step<P, T>, E>,
    {
        block_on(
            self.run_with(&mut Blocking(conn), async |p: &mut Phase<'_, C, P>| {
                phase(p)
            }),
        )
    }

    /// [`PhasedCall::run`] on a diesel-async connection, for phases that
    /// are `async` (feature `async`). Same decisions, same statements, same
    /// errors. A future dropped while a phase runs rolls that phase back,
    /// as a panic would; its lease is left to run out.
    #[cfg(feature = "async")]
    pub async fn run_async<C, P, T, E, F>(self, conn: &mut C, phase: F) -> Result<Outcome<T>, E>
    where
        C: AsyncIdempotentConnection,
        P: Serialize + DeserializeOwned,
        T: Response,
        E: From<Error>,
        F: AsyncFnMut(&mut Phase<'_, C, P>) -> Result<Step<P, T>, E>,
    {
        let mut driver = NonBlocking::new(conn, None);
        self.run_with(&mut driver, phase).await
    }

    fn prepare(self) -> Result<Prepared<'a>, Error> {
        let fingerprint = self.fingerprint?;
        validate_namespace(self.namespace)?;
        validate_key(self.key)?;
        validate_scope(self.scope)?;
        Ok(Prepared {
            namespace: self.namespace,
            scope: self.scope,
            key: self.key,
            fingerprint,
            ttl: to_chrono(self.ttl.as_duration()),
            lease: to_chrono(self.lease),
            clock: self.clock,
            token: lease_token(self.namespace, self.scope, self.key),
        })
    }

    /// The procedure, once for both drivers.
    async fn run_with<D, P, T, E, F>(self, driver: &mut D, mut phase: F) -> Result<Outcome<T>, E>
    where
        D: PhasedDriver,
        P: Serialize + DeserializeOwned,
        T: Response,
        E: From<Error>,
        F: AsyncFnMut(&mut Phase<'_, D::Conn, P>) -> Result<Step<P, T>, E>,
    {
        let call = self.prepare()?;
        if driver.depth().map_err(Error::Database)? != 0 {
            return Err(E::from(Error::PhasedCallInTransaction {
                namespace: call.namespace.to_owned(),
                key: call.key.to_owned(),
            }));
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            let start = match begin(driver, &call).await {
                Ok(Begun::Replay(json)) => {
                    return Outcome::<T>::from_stored_json(&json)
                        .map_err(|source| Error::StoredResultUnreadable {
                            namespace: call.namespace.to_owned(),
                            key: call.key.to_owned(),
                            source,
                        })
                        .map_err(E::from);
                }
                Ok(Begun::Start(start)) => start,
                Ok(Begun::Claim) => match claim(driver, &call).await {
                    Ok(true) => Start {
                        point: None,
                        phases: 0,
                        resumed: false,
                    },
                    // A concurrent first call claimed the key between the
                    // look and the claim: look again.
                    Ok(false) if attempts < LOOKS => continue,
                    Ok(false) => return Err(E::from(call.in_flight())),
                    Err(e) => return Err(E::from(e)),
                },
                Err(e) => return Err(E::from(e)),
            };
            return run_phases(driver, &call, start, &mut phase).await;
        }
    }
}

/// How often a call looks at the record again after a concurrent call
/// changed it between its look and its write.
const LOOKS: usize = 3;

/// How often the claim is sent when the database aborts it to resolve a
/// conflict (a deadlock or serialization failure).
const CLAIMS: usize = 3;

/// The recovery point's name before the first phase committed.
const STARTED: &str = "started";
/// The recovery point's name of a finished call.
const FINISHED: &str = "finished";

/// The `expires_at` of an unfinished call, which never expires (nothing
/// reads an unfinished call's `expires_at`; only a finished call's
/// answer expires): the latest instant every dialect binds, MySQL's
/// `TIMESTAMP` parameters included.
fn never() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2038, 1, 19)
        .and_then(|date| date.and_hms_opt(3, 14, 7))
        .unwrap_or(NaiveDateTime::MAX)
}

fn to_chrono(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or_else(|_| chrono::Duration::days(366))
}

fn add(at: NaiveDateTime, duration: chrono::Duration) -> NaiveDateTime {
    at.checked_add_signed(duration).unwrap_or_else(never)
}

/// A fresh lease token: 128 bits from the process's random hasher keys,
/// the time, the thread, a counter and the call's id.
fn lease_token(namespace: &str, scope: &str, key: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let thread = std::thread::current().id();
    let half = |salt: u8| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u8(salt);
        hasher.write_u64(count);
        hasher.write_i64(nanos);
        std::hash::Hash::hash(&thread, &mut hasher);
        hasher.write(namespace.as_bytes());
        hasher.write_u8(0);
        hasher.write(scope.as_bytes());
        hasher.write_u8(0);
        hasher.write(key.as_bytes());
        hasher.finish()
    };
    format!("{:016x}{:016x}", half(1), half(2))
}

/// A validated call.
struct Prepared<'a> {
    namespace: &'a str,
    scope: &'a str,
    key: &'a str,
    fingerprint: Fingerprint,
    ttl: chrono::Duration,
    lease: chrono::Duration,
    clock: &'a dyn Clock,
    token: String,
}

impl Prepared<'_> {
    /// The clock's time, as the record stores it (microseconds).
    fn now(&self) -> NaiveDateTime {
        self.clock.now().naive_utc().trunc_subsecs(6)
    }

    fn id(&self) -> PhasedId<'_> {
        PhasedId {
            namespace: self.namespace,
            scope: self.scope,
            key: self.key,
        }
    }

    fn in_flight(&self) -> Error {
        Error::InFlight {
            namespace: self.namespace.to_owned(),
            key: self.key.to_owned(),
        }
    }

    fn lease_lost(&self) -> Error {
        Error::LeaseLost {
            namespace: self.namespace.to_owned(),
            key: self.key.to_owned(),
        }
    }

    /// The answer's JSON, checked to read back as the same value.
    fn stored_json<T: Response>(&self, answer: &T) -> Result<String, Error> {
        let json = answer
            .to_stored_json()
            .map_err(|source| Error::Serialization {
                what: "the result",
                source,
            })?;
        let not_replayable = |reason: String| Error::ResultNotReplayable {
            namespace: self.namespace.to_owned(),
            key: self.key.to_owned(),
            reason,
        };
        let again = T::from_stored_json(&json)
            .and_then(|back| back.to_stored_json())
            .map_err(|e| not_replayable(format!("its JSON does not read back: {e}")))?;
        if again != json && !same_value(&json, &again) {
            return Err(not_replayable(format!(
                "its JSON `{json}` reads back as `{again}`"
            )));
        }
        Ok(json)
    }
}

fn same_value(a: &str, b: &str) -> bool {
    matches!(
        (
            serde_json::from_str::<serde_json::Value>(a),
            serde_json::from_str::<serde_json::Value>(b),
        ),
        (Ok(a), Ok(b)) if a == b
    )
}

/// The name of a recovery point, for operators: a string value (a unit
/// variant), or the single key of a one-key object (a variant with data);
/// otherwise `phase N`. At most 255 bytes.
fn point_name(value: &serde_json::Value, phases: i32) -> String {
    let name = match value {
        serde_json::Value::String(name) => name.clone(),
        serde_json::Value::Object(map) if map.len() == 1 => {
            map.keys().next().cloned().unwrap_or_default()
        }
        _ => format!("phase {phases}"),
    };
    let mut end = name.len().min(255);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

/// Where the first phase of this run starts: from `point` (`None`: the
/// call's first phase), after `phases` committed phases.
struct Start<P> {
    point: Option<P>,
    phases: i32,
    /// Whether this run took the record over (see [`Phase::resumed`]).
    resumed: bool,
}

/// What the look at the record decided.
enum Begun<P> {
    /// No record: claim the key.
    Claim,
    /// This run took the record over.
    Start(Start<P>),
    Replay(String),
}

/// Claims the key: inserts the record, held by this run's lease, in a
/// statement of its own that commits at once, before the first phase
/// begins. A concurrent first call therefore waits for this one statement,
/// never for the phase, and then finds the lease. `false`: the key was
/// claimed first by another call. Nothing has run yet, so a claim the
/// database aborted to resolve a conflict (MySQL answers a deadlock to
/// claims queued behind one that rolled back) is sent again, a few times.
async fn claim<D: PhasedDriver>(driver: &mut D, call: &Prepared<'_>) -> Result<bool, Error> {
    let mut sent = 0;
    loop {
        sent += 1;
        let now = call.now();
        let row = NewPhasedCall {
            namespace: call.namespace,
            scope: call.scope,
            key: call.key,
            fingerprint: call.fingerprint.as_str(),
            recovery_point: STARTED,
            point_state: None,
            response: None,
            lease_token: Some(&call.token),
            locked_until: Some(add(now, call.lease)),
            phases: 0,
            created_at: now,
            updated_at: now,
            expires_at: never(),
        };
        match driver.phased_claim(&row).await {
            Err(e) if sent < CLAIMS && is_conflict_abort(&e) => continue,
            claimed => return Ok(claimed?),
        }
    }
}

/// Looks at the record (outside any transaction) and decides: claim,
/// replay, refuse, or take over (a compare-and-set that commits on its
/// own).
async fn begin<D, P>(driver: &mut D, call: &Prepared<'_>) -> Result<Begun<P>, Error>
where
    D: PhasedDriver,
    P: DeserializeOwned,
{
    for _ in 0..LOOKS {
        let Some(row) = driver.phased_load(call.id()).await? else {
            return Ok(Begun::Claim);
        };
        let now = call.now();
        if row.fingerprint != call.fingerprint.as_str() {
            if row.response.is_some() && row.expires_at <= now {
                // An expired answer of another request: the key is free.
                driver.phased_forget_expired(call.id(), now).await?;
                continue;
            }
            return Err(Error::PayloadMismatch {
                namespace: call.namespace.to_owned(),
                key: call.key.to_owned(),
            });
        }
        if let Some(json) = row.response {
            if row.expires_at > now {
                return Ok(Begun::Replay(json));
            }
            driver.phased_forget_expired(call.id(), now).await?;
            continue;
        }
        if row.locked_until.is_some_and(|until| until > now) {
            return Err(call.in_flight());
        }
        let take = TakeOver {
            id: call.id(),
            seen_token: row.lease_token.as_deref(),
            seen_phases: row.phases,
            token: &call.token,
            now,
            locked_until: add(now, call.lease),
        };
        if !driver.phased_take_over(&take).await? {
            // Another retry took it over first, or its holder moved on.
            return Err(call.in_flight());
        }
        let point = match row.point_state {
            Some(json) => Some(serde_json::from_str::<P>(&json).map_err(|source| {
                Error::RecoveryPointUnreadable {
                    namespace: call.namespace.to_owned(),
                    key: call.key.to_owned(),
                    source,
                }
            })?),
            None => None,
        };
        return Ok(Begun::Start(Start {
            point,
            phases: row.phases,
            resumed: true,
        }));
    }
    Err(call.in_flight())
}

/// Why a phase's transaction ended early.
enum Stop<E> {
    Phase(E),
    Library(Error),
    LeaseLost,
}

impl<E> From<diesel::result::Error> for Stop<E> {
    fn from(e: diesel::result::Error) -> Self {
        Stop::Library(Error::Database(e))
    }
}

impl<E> From<Error> for Stop<E> {
    fn from(e: Error) -> Self {
        Stop::Library(e)
    }
}

/// What a committed phase returned.
enum Committed<P, T> {
    Next(P),
    Finished(T),
}

/// Runs phases from `start` until one finishes or fails.
async fn run_phases<D, P, T, E, F>(
    driver: &mut D,
    call: &Prepared<'_>,
    start: Start<P>,
    phase: &mut F,
) -> Result<Outcome<T>, E>
where
    D: PhasedDriver,
    P: Serialize + DeserializeOwned,
    T: Response,
    E: From<Error>,
    F: AsyncFnMut(&mut Phase<'_, D::Conn, P>) -> Result<Step<P, T>, E>,
{
    let Start {
        mut point,
        mut phases,
        resumed,
    } = start;
    loop {
        let ended = guarded_transaction(driver, async |driver: &mut D| {
            let mut current = Phase {
                conn: driver.conn(),
                point: point.take(),
                namespace: call.namespace,
                scope: call.scope,
                key: call.key,
                resumed,
            };
            let step = phase(&mut current).await.map_err(Stop::Phase)?;
            drop(current);
            let now = call.now();
            match step {
                Step::Next(next) => {
                    let value =
                        serde_json::to_value(&next).map_err(|source| Error::Serialization {
                            what: "the recovery point",
                            source,
                        })?;
                    let json = value.to_string();
                    let name = point_name(&value, phases.saturating_add(1));
                    let advance = Advance {
                        id: call.id(),
                        token: &call.token,
                        recovery_point: &name,
                        point_state: Some(&json),
                        response: None,
                        locked_until: Some(add(now, call.lease)),
                        now,
                        expires_at: never(),
                    };
                    if !driver.phased_advance(&advance).await? {
                        return Err(Stop::LeaseLost);
                    }
                    Ok(Committed::Next(next))
                }
                Step::Finish(answer) => {
                    let json = call.stored_json(&answer)?;
                    let advance = Advance {
                        id: call.id(),
                        token: &call.token,
                        recovery_point: FINISHED,
                        point_state: None,
                        response: Some(&json),
                        locked_until: None,
                        now,
                        expires_at: add(now, call.ttl),
                    };
                    if !driver.phased_advance(&advance).await? {
                        return Err(Stop::LeaseLost);
                    }
                    Ok(Committed::Finished(answer))
                }
            }
        })
        .await;
        let error = match ended {
            Ok(Committed::Next(next)) => {
                point = Some(next);
                phases = phases.saturating_add(1);
                continue;
            }
            Ok(Committed::Finished(answer)) => return Ok(Outcome::fresh(answer)),
            Err(Unwound::Panicked(payload)) => panic::resume_unwind(payload),
            Err(Unwound::Failed(Stop::LeaseLost)) => return Err(E::from(call.lease_lost())),
            Err(Unwound::Failed(Stop::Phase(e))) => e,
            Err(Unwound::Failed(Stop::Library(e))) => E::from(e),
        };
        // Released at once, so that a retry resumes without waiting for
        // the lease to run out. Best effort: the error matters more, and
        // an unreleased lease still ends.
        let _ = driver
            .phased_release(call.id(), &call.token, call.now())
            .await;
        return Err(error);
    }
}

/// The primary key of a phased call.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct PhasedId<'a> {
    pub namespace: &'a str,
    pub scope: &'a str,
    pub key: &'a str,
}

/// The claim: the row inserted if the key is free.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, diesel::Insertable)]
#[diesel(table_name = idempotency_phased_calls)]
pub struct NewPhasedCall<'a> {
    pub namespace: &'a str,
    pub scope: &'a str,
    pub key: &'a str,
    pub fingerprint: &'a str,
    pub recovery_point: &'a str,
    pub point_state: Option<&'a str>,
    pub response: Option<&'a str>,
    pub lease_token: Option<&'a str>,
    pub locked_until: Option<NaiveDateTime>,
    pub phases: i32,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub expires_at: NaiveDateTime,
}

/// A takeover: the lease moves to `token` if the record is still as it was
/// seen (same holder, same phase count, unfinished) and its lease ended.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct TakeOver<'a> {
    pub id: PhasedId<'a>,
    pub seen_token: Option<&'a str>,
    pub seen_phases: i32,
    pub token: &'a str,
    pub now: NaiveDateTime,
    pub locked_until: NaiveDateTime,
}

/// A phase's end, fenced on the lease token: the next recovery point, or
/// the answer.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Advance<'a> {
    pub id: PhasedId<'a>,
    pub token: &'a str,
    pub recovery_point: &'a str,
    pub point_state: Option<&'a str>,
    pub response: Option<&'a str>,
    pub locked_until: Option<NaiveDateTime>,
    pub now: NaiveDateTime,
    pub expires_at: NaiveDateTime,
}

/// The statements of a phased call on a blocking connection (a supertrait
/// of [`IdempotentConnection`]; not a stable API).
#[doc(hidden)]
pub trait PhasedStatements {
    fn phased_load(&mut self, id: PhasedId<'_>) -> QueryResult<Option<PhasedCallRecord>>;
    fn phased_claim(&mut self, row: &NewPhasedCall<'_>) -> QueryResult<bool>;
    fn phased_take_over(&mut self, take: &TakeOver<'_>) -> QueryResult<bool>;
    fn phased_advance(&mut self, advance: &Advance<'_>) -> QueryResult<bool>;
    fn phased_release(
        &mut self,
        id: PhasedId<'_>,
        token: &str,
        now: NaiveDateTime,
    ) -> QueryResult<usize>;
    fn phased_forget_expired(&mut self, id: PhasedId<'_>, now: NaiveDateTime)
    -> QueryResult<usize>;
    /// The `expires_at` of the `n`-th finished call to expire at or before
    /// `now` (0-based), if there are that many.
    fn phased_purge_cutoff(
        &mut self,
        now: NaiveDateTime,
        n: i64,
    ) -> QueryResult<Option<NaiveDateTime>>;
    /// Deletes the finished calls that expired at or before `cutoff`.
    fn phased_purge_through(&mut self, cutoff: NaiveDateTime) -> QueryResult<usize>;
}

/// The statements of a phased call on a diesel-async connection (a
/// supertrait of `AsyncIdempotentConnection`; not a stable API).
#[cfg(feature = "async")]
#[doc(hidden)]
pub trait AsyncPhasedStatements {
    fn phased_load(
        &mut self,
        id: PhasedId<'_>,
    ) -> impl Future<Output = QueryResult<Option<PhasedCallRecord>>> + Send;
    fn phased_claim(
        &mut self,
        row: &NewPhasedCall<'_>,
    ) -> impl Future<Output = QueryResult<bool>> + Send;
    fn phased_take_over(
        &mut self,
        take: &TakeOver<'_>,
    ) -> impl Future<Output = QueryResult<bool>> + Send;
    fn phased_advance(
        &mut self,
        advance: &Advance<'_>,
    ) -> impl Future<Output = QueryResult<bool>> + Send;
    fn phased_release(
        &mut self,
        id: PhasedId<'_>,
        token: &str,
        now: NaiveDateTime,
    ) -> impl Future<Output = QueryResult<usize>> + Send;
    fn phased_forget_expired(
        &mut self,
        id: PhasedId<'_>,
        now: NaiveDateTime,
    ) -> impl Future<Output = QueryResult<usize>> + Send;
}

/// A [`Driver`] that also sends the phased-call statements.
pub(crate) trait PhasedDriver: Driver {
    fn phased_load(
        &mut self,
        id: PhasedId<'_>,
    ) -> impl Future<Output = QueryResult<Option<PhasedCallRecord>>> + Send;
    fn phased_claim(
        &mut self,
        row: &NewPhasedCall<'_>,
    ) -> impl Future<Output = QueryResult<bool>> + Send;
    fn phased_take_over(
        &mut self,
        take: &TakeOver<'_>,
    ) -> impl Future<Output = QueryResult<bool>> + Send;
    fn phased_advance(
        &mut self,
        advance: &Advance<'_>,
    ) -> impl Future<Output = QueryResult<bool>> + Send;
    fn phased_release(
        &mut self,
        id: PhasedId<'_>,
        token: &str,
        now: NaiveDateTime,
    ) -> impl Future<Output = QueryResult<usize>> + Send;
    fn phased_forget_expired(
        &mut self,
        id: PhasedId<'_>,
        now: NaiveDateTime,
    ) -> impl Future<Output = QueryResult<usize>> + Send;
}

// Each future is ready when returned: the statement ran in the call.
#[allow(refining_impl_trait)]
impl<C: IdempotentConnection> PhasedDriver for Blocking<'_, C> {
    fn phased_load(
        &mut self,
        id: PhasedId<'_>,
    ) -> std::future::Ready<QueryResult<Option<PhasedCallRecord>>> {
        std::future::ready(PhasedStatements::phased_load(self.0, id))
    }

    fn phased_claim(&mut self, row: &NewPhasedCall<'_>) -> std::future::Ready<QueryResult<bool>> {
        std::future::ready(PhasedStatements::phased_claim(self.0, row))
    }

    fn phased_take_over(&mut self, take: &TakeOver<'_>) -> std::future::Ready<QueryResult<bool>> {
        std::future::ready(PhasedStatements::phased_take_over(self.0, take))
    }

    fn phased_advance(&mut self, advance: &Advance<'_>) -> std::future::Ready<QueryResult<bool>> {
        std::future::ready(PhasedStatements::phased_advance(self.0, advance))
    }

    fn phased_release(
        &mut self,
        id: PhasedId<'_>,
        token: &str,
        now: NaiveDateTime,
    ) -> std::future::Ready<QueryResult<usize>> {
        std::future::ready(PhasedStatements::phased_release(self.0, id, token, now))
    }

    fn phased_forget_expired(
        &mut self,
        id: PhasedId<'_>,
        now: NaiveDateTime,
    ) -> std::future::Ready<QueryResult<usize>> {
        std::future::ready(PhasedStatements::phased_forget_expired(self.0, id, now))
    }
}

#[cfg(feature = "async")]
impl<C: AsyncIdempotentConnection> PhasedDriver for NonBlocking<'_, C> {
    async fn phased_load(&mut self, id: PhasedId<'_>) -> QueryResult<Option<PhasedCallRecord>> {
        AsyncPhasedStatements::phased_load(self.conn(), id).await
    }

    async fn phased_claim(&mut self, row: &NewPhasedCall<'_>) -> QueryResult<bool> {
        AsyncPhasedStatements::phased_claim(self.conn(), row).await
    }

    async fn phased_take_over(&mut self, take: &TakeOver<'_>) -> QueryResult<bool> {
        AsyncPhasedStatements::phased_take_over(self.conn(), take).await
    }

    async fn phased_advance(&mut self, advance: &Advance<'_>) -> QueryResult<bool> {
        AsyncPhasedStatements::phased_advance(self.conn(), advance).await
    }

    async fn phased_release(
        &mut self,
        id: PhasedId<'_>,
        token: &str,
        now: NaiveDateTime,
    ) -> QueryResult<usize> {
        AsyncPhasedStatements::phased_release(self.conn(), id, token, now).await
    }

    async fn phased_forget_expired(
        &mut self,
        id: PhasedId<'_>,
        now: NaiveDateTime,
    ) -> QueryResult<usize> {
        AsyncPhasedStatements::phased_forget_expired(self.conn(), id, now).await
    }
}

/// The phased-call statements, written once with Diesel's DSL for both
/// drivers: `phased_statements!([] [] [::diesel::RunQueryDsl], claim)` in a
/// blocking impl, `phased_statements!([async] [.await]
/// [::diesel_async::RunQueryDsl], claim)` in an async one. `claim` is the
/// dialect's insert-if-absent: `do_nothing` (`ON CONFLICT DO NOTHING`,
/// PostgreSQL and SQLite) or `ignore` (MySQL's `INSERT IGNORE`).
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
macro_rules! phased_statements {
    ([$($async:ident)?] [$($await:tt)*] [$($dsl:tt)*], $claim:ident) => {
        $($async)? fn phased_load(
            &mut self,
            id: $crate::phased::PhasedId<'_>,
        ) -> ::diesel::QueryResult<Option<$crate::phased::PhasedCallRecord>> {
            use $($dsl)* as _;
            use ::diesel::{OptionalExtension as _, QueryDsl as _, SelectableHelper as _};
            use $crate::phased::idempotency_phased_calls::dsl as t;
            t::idempotency_phased_calls
                .find((id.namespace, id.scope, id.key))
                .select($crate::phased::PhasedCallRecord::as_select())
                .get_result(self)
                $($await)*
                .optional()
        }

        $($async)? fn phased_claim(
            &mut self,
            row: &$crate::phased::NewPhasedCall<'_>,
        ) -> ::diesel::QueryResult<bool> {
            use $($dsl)* as _;
            use $crate::phased::idempotency_phased_calls::dsl as t;
            $crate::phased::phased_insert!($claim, t::idempotency_phased_calls, row)
                .execute(self)
                $($await)*
                .map(|rows| rows == 1)
        }

        $($async)? fn phased_take_over(
            &mut self,
            take: &$crate::phased::TakeOver<'_>,
        ) -> ::diesel::QueryResult<bool> {
            use $($dsl)* as _;
            use ::diesel::{BoolExpressionMethods as _, ExpressionMethods as _, QueryDsl as _};
            use $crate::phased::idempotency_phased_calls::dsl as t;
            let id = take.id;
            let unchanged = t::idempotency_phased_calls
                .find((id.namespace, id.scope, id.key))
                .filter(t::phases.eq(take.seen_phases))
                .filter(t::response.is_null())
                .filter(t::locked_until.is_null().or(t::locked_until.le(take.now)));
            let changes = (
                t::lease_token.eq(take.token),
                t::locked_until.eq(take.locked_until),
                t::updated_at.eq(take.now),
            );
            let rows = match take.seen_token {
                Some(seen) => ::diesel::update(unchanged.filter(t::lease_token.eq(seen)))
                    .set(changes)
                    .execute(self)
                    $($await)*?,
                None => ::diesel::update(unchanged.filter(t::lease_token.is_null()))
                    .set(changes)
                    .execute(self)
                    $($await)*?,
            };
            Ok(rows == 1)
        }

        $($async)? fn phased_advance(
            &mut self,
            advance: &$crate::phased::Advance<'_>,
        ) -> ::diesel::QueryResult<bool> {
            use $($dsl)* as _;
            use ::diesel::{ExpressionMethods as _, QueryDsl as _};
            use $crate::phased::idempotency_phased_calls::dsl as t;
            let id = advance.id;
            let holder = t::idempotency_phased_calls
                .find((id.namespace, id.scope, id.key))
                .filter(t::lease_token.eq(advance.token))
                .filter(t::response.is_null());
            let finished = advance.response.is_some();
            ::diesel::update(holder)
                .set((
                    t::recovery_point.eq(advance.recovery_point),
                    t::point_state.eq(advance.point_state),
                    t::response.eq(advance.response),
                    t::lease_token.eq((!finished).then_some(advance.token)),
                    t::locked_until.eq(advance.locked_until),
                    t::phases.eq(t::phases + 1),
                    t::updated_at.eq(advance.now),
                    t::expires_at.eq(advance.expires_at),
                ))
                .execute(self)
                $($await)*
                .map(|rows| rows == 1)
        }

        $($async)? fn phased_release(
            &mut self,
            id: $crate::phased::PhasedId<'_>,
            token: &str,
            now: ::chrono::NaiveDateTime,
        ) -> ::diesel::QueryResult<usize> {
            use $($dsl)* as _;
            use ::diesel::{ExpressionMethods as _, QueryDsl as _};
            use $crate::phased::idempotency_phased_calls::dsl as t;
            ::diesel::update(
                t::idempotency_phased_calls
                    .find((id.namespace, id.scope, id.key))
                    .filter(t::lease_token.eq(token))
                    .filter(t::response.is_null()),
            )
            .set((
                t::locked_until.eq(None::<::chrono::NaiveDateTime>),
                t::updated_at.eq(now),
            ))
            .execute(self)
            $($await)*
        }

        $($async)? fn phased_forget_expired(
            &mut self,
            id: $crate::phased::PhasedId<'_>,
            now: ::chrono::NaiveDateTime,
        ) -> ::diesel::QueryResult<usize> {
            use $($dsl)* as _;
            use ::diesel::{ExpressionMethods as _, QueryDsl as _};
            use $crate::phased::idempotency_phased_calls::dsl as t;
            ::diesel::delete(
                t::idempotency_phased_calls
                    .find((id.namespace, id.scope, id.key))
                    .filter(t::response.is_not_null())
                    .filter(t::expires_at.le(now)),
            )
            .execute(self)
            $($await)*
        }
    };
}

/// The purge statements (blocking only), the same in every dialect.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
macro_rules! phased_purge_statements {
    () => {
        fn phased_purge_cutoff(
            &mut self,
            now: ::chrono::NaiveDateTime,
            n: i64,
        ) -> ::diesel::QueryResult<Option<::chrono::NaiveDateTime>> {
            use ::diesel::prelude::*;
            use $crate::phased::idempotency_phased_calls::dsl as t;
            t::idempotency_phased_calls
                .filter(t::response.is_not_null())
                .filter(t::expires_at.le(now))
                .order(t::expires_at.asc())
                .select(t::expires_at)
                .limit(1)
                .offset(n)
                .get_result(self)
                .optional()
        }

        fn phased_purge_through(
            &mut self,
            cutoff: ::chrono::NaiveDateTime,
        ) -> ::diesel::QueryResult<usize> {
            use ::diesel::prelude::*;
            use $crate::phased::idempotency_phased_calls::dsl as t;
            ::diesel::delete(
                t::idempotency_phased_calls
                    .filter(t::response.is_not_null())
                    .filter(t::expires_at.le(cutoff)),
            )
            .execute(self)
        }
    };
}

/// The dialect's insert-if-absent of one row.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
macro_rules! phased_insert {
    (do_nothing, $table:expr, $row:expr) => {
        ::diesel::insert_into($table)
            .values($row)
            .on_conflict_do_nothing()
    };
    (ignore, $table:expr, $row:expr) => {
        ::diesel::insert_or_ignore_into($table).values($row)
    };
}
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub(crate) use phased_insert;

#[cfg(feature = "sqlite")]
impl PhasedStatements for diesel::sqlite::SqliteConnection {
    phased_statements!([] [] [::diesel::RunQueryDsl], do_nothing);
    phased_purge_statements!();
}

#[cfg(feature = "postgres")]
impl PhasedStatements for diesel::pg::PgConnection {
    phased_statements!([] [] [::diesel::RunQueryDsl], do_nothing);
    phased_purge_statements!();
}

#[cfg(feature = "mysql")]
impl PhasedStatements for diesel::mysql::MysqlConnection {
    phased_statements!([] [] [::diesel::RunQueryDsl], ignore);
    phased_purge_statements!();
}

#[cfg(all(feature = "async", feature = "sqlite"))]
impl AsyncPhasedStatements
    for diesel_async::sync_connection_wrapper::SyncConnectionWrapper<
        diesel::sqlite::SqliteConnection,
    >
{
    phased_statements!([async] [.await] [::diesel_async::RunQueryDsl], do_nothing);
}

#[cfg(all(feature = "async", feature = "postgres"))]
impl AsyncPhasedStatements for diesel_async::AsyncPgConnection {
    phased_statements!([async] [.await] [::diesel_async::RunQueryDsl], do_nothing);
}

#[cfg(all(feature = "async", feature = "mysql"))]
impl AsyncPhasedStatements for diesel_async::AsyncMysqlConnection {
    phased_statements!([async] [.await] [::diesel_async::RunQueryDsl], ignore);
}

/// The phased call of `key` in `namespace` and `scope` (`""` for none),
/// finished or not, expired or not; `None` when there is none. A call
/// whose first phase has not committed shows as `started`, with no
/// recovery point and no phase committed.
pub fn find<C: IdempotentConnection>(
    conn: &mut C,
    namespace: &str,
    scope: &str,
    key: &str,
) -> Result<Option<PhasedCallRecord>, Error> {
    let id = PhasedId {
        namespace,
        scope,
        key,
    };
    Ok(PhasedStatements::phased_load(conn, id)?)
}

/// Deletes the finished phased calls that expired at or before `now`, in
/// batches of about `batch_size` (calls that expire at the same instant as
/// a batch's last one go with it), until none is left; returns how many it
/// deleted. Unfinished calls never expire: a retry must always be able to
/// resume them.
///
/// Fails with [`Error::InvalidBatchSize`] for a `batch_size` of 0 or one
/// beyond `i64::MAX`.
pub fn purge_expired<C: IdempotentConnection>(
    conn: &mut C,
    now: DateTime<Utc>,
    batch_size: usize,
) -> Result<usize, Error> {
    let batch = match i64::try_from(batch_size) {
        Ok(batch) if batch > 0 => batch,
        _ => return Err(Error::InvalidBatchSize),
    };
    let now = now.naive_utc();
    let mut total = 0usize;
    loop {
        match conn.phased_purge_cutoff(now, batch - 1)? {
            Some(cutoff) => {
                let deleted = conn.phased_purge_through(cutoff)?;
                total = total.saturating_add(deleted);
                if deleted == 0 {
                    return Ok(total);
                }
            }
            None => {
                let deleted = conn.phased_purge_through(now)?;
                return Ok(total.saturating_add(deleted));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_names_are_variant_names() {
        let unit = serde_json::json!("Started");
        assert_eq!(point_name(&unit, 1), "Started");
        let data = serde_json::json!({"Charged": {"charge": "ch_1"}});
        assert_eq!(point_name(&data, 2), "Charged");
        let other = serde_json::json!({"a": 1, "b": 2});
        assert_eq!(point_name(&other, 3), "phase 3");
        let long = serde_json::Value::String("é".repeat(200));
        assert!(point_name(&long, 1).len() <= 255);
    }

    #[test]
    fn lease_tokens_differ_between_calls_of_one_key() {
        let a = lease_token("n", "", "k");
        let b = lease_token("n", "", "k");
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }

    /// A lost lease answers like a request in flight: 409, with
    /// `Retry-After`, and a detail that names neither key nor namespace.
    #[cfg(feature = "axum")]
    #[test]
    fn a_lost_lease_is_a_conflict_to_retry() {
        let error = Error::LeaseLost {
            namespace: "billing.charge".to_owned(),
            key: "client-key-1".to_owned(),
        };
        let problem = crate::http::Problem::from(&error);
        assert_eq!(problem.status, 409);
        assert!(problem.retry_after.is_some());
        let detail = problem.detail.unwrap_or_default();
        assert!(
            !detail.contains("billing.charge") && !detail.contains("client-key-1"),
            "{detail}"
        );
        assert!(error.is_retryable());
        assert_eq!(error.kind(), "lease_lost");
    }

    #[test]
    fn unfinished_calls_never_expire() {
        assert_eq!(never().and_utc().timestamp(), i64::from(i32::MAX));
    }
}
