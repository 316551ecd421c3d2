//! The one error type of the library.

/// Everything that can go wrong around an idempotent call.
///
/// Each message says what happened and what the caller should do about it.
/// The body's own errors never appear here: they are returned unchanged.
/// Functions under `#[idempotent]` return their own error type `E`, which must
/// implement `From<diesel_idempotent::Error>`.
///
/// # Which message is for whom
///
/// The variants an API client causes — [`Error::InvalidKey`],
/// [`Error::PayloadMismatch`], [`Error::InFlight`] and [`Error::LeaseLost`]
/// (HTTP 400, 422, 409, 409) —
/// have a `Display` that is safe to send to that client: it names no
/// namespace, echoes no key and gives no advice meant for the service's
/// developers. What a developer needs (the namespace, the key) is in the
/// variant's fields, which `Debug` prints: log `{:?}`, answer with `{}`.
/// Every other variant is a server-side problem whose `Display` is written
/// for the developer or operator (it may name tables, types and database
/// messages); answer those with a generic 5xx body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The idempotency key is empty, too long or holds characters outside
    /// visible ASCII. The body did not run.
    #[error(
        "invalid idempotency key: {reason}; send 1 to 255 visible ASCII characters \
         (a UUID is a good choice)"
    )]
    InvalidKey {
        /// What is wrong with the key.
        reason: &'static str,
    },

    /// The scope is too long or holds control characters. The body did not run.
    #[error(
        "invalid idempotency scope: {reason}; a scope is at most 255 bytes without \
         control characters (a tenant or user id)"
    )]
    InvalidScope {
        /// What is wrong with the scope.
        reason: &'static str,
    },

    /// The function's namespace (`name`) is empty, longer than 255 bytes or
    /// holds control characters. The body did not run.
    #[error("invalid idempotency namespace: {reason}")]
    InvalidNamespace {
        /// What is wrong with the namespace.
        reason: &'static str,
    },

    /// The key was used before with a different request (the fingerprint of the
    /// arguments differs). Nothing was changed.
    #[error(
        "this idempotency key was already used with a different request; use a new key for a \
         new request, or resend the original request to get its result"
    )]
    PayloadMismatch {
        /// The function's namespace.
        namespace: String,
        /// The key that was reused.
        key: String,
    },

    /// The key is held by a call that has not finished (it is being processed
    /// by this same transaction, or the caller chose not to wait, or not
    /// longer than `wait_for`). Nothing was changed.
    #[error(
        "a request with this idempotency key is still being processed; retry after it completes"
    )]
    InFlight {
        /// The function's namespace.
        namespace: String,
        /// The key in flight.
        key: String,
    },

    /// The stored result of an earlier call no longer deserializes into the
    /// function's result type (the type changed since it was stored).
    #[error(
        "the stored result for idempotency key {key:?} in {namespace:?} no longer matches the \
         function's result type ({source}); keep result types backward compatible \
         (e.g. `#[serde(default)]` on new fields) or change the function's `name` to start afresh"
    )]
    StoredResultUnreadable {
        /// The function's namespace.
        namespace: String,
        /// The key whose record is unreadable.
        key: String,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },

    /// The result's JSON is larger than the function's `max_response_bytes`.
    /// The transaction was rolled back: nothing was stored, nothing changed.
    #[error(
        "the result for idempotency key {key:?} in {namespace:?} is {size} bytes of JSON, over \
         the limit of {limit}; return less (an id to fetch the rest) or raise `max_response_bytes`"
    )]
    ResponseTooLarge {
        /// The function's namespace.
        namespace: String,
        /// The key of the call.
        key: String,
        /// The JSON's size in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },

    /// The result's JSON does not read back as the same value, so a replay
    /// would return something else than the first call did (a non-finite
    /// `f64`, which JSON writes as `null`; a `Deserialize` impl that rejects
    /// what its `Serialize` wrote). Checked before storing: the transaction
    /// was rolled back, nothing was stored, nothing changed.
    #[error(
        "the result for idempotency key {key:?} in {namespace:?} cannot be replayed: {reason}; \
         return a value whose JSON round-trips (finite floats, matching Serialize and \
         Deserialize impls)"
    )]
    ResultNotReplayable {
        /// The function's namespace.
        namespace: String,
        /// The key of the call.
        key: String,
        /// What did not round-trip.
        reason: String,
    },

    /// An argument or the result could not be serialized to JSON (a map
    /// whose keys are neither strings, integers, bools, chars nor unit
    /// variants; in a fingerprinted argument also a NaN or infinite float, a
    /// float map key or a key twice in one object; a failing `Serialize`
    /// impl).
    #[error(
        "could not serialize {what} to JSON: {source}; make it serializable \
         (or exclude an argument with `skip(..)`)"
    )]
    Serialization {
        /// Which value failed: an argument or the result.
        what: &'static str,
        /// What serde reported.
        #[source]
        source: serde_json::Error,
    },

    /// The database reported an error; the transaction was rolled back.
    #[error(
        "database error in idempotent call: {0}; the transaction was rolled back, retry the call"
    )]
    Database(#[from] diesel::result::Error),

    /// The record table is missing or a migration failed.
    #[error(
        "idempotency migrations failed: {0}; run `diesel_idempotent::migrate(conn)` or apply \
         the generated Diesel CLI migrations"
    )]
    Migration(String),

    /// A `purge_expired` batch size of zero (or beyond `i64::MAX`).
    #[error("purge batch size must be between 1 and i64::MAX (1000 is a good default)")]
    InvalidBatchSize,

    /// A TTL string that does not parse or is out of range.
    #[error("invalid ttl {input:?}: {reason}; write it like \"30s\", \"15m\", \"24h\" or \"7d\"")]
    InvalidTtl {
        /// The text given.
        input: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A phased call's lease ended while one of its phases ran, and another
    /// call took it over (`diesel_idempotent::phased`). This run's phase
    /// was rolled back; the call that took over goes on from the last
    /// recovery point.
    #[error(
        "another call took this request over while it was being processed; nothing of this \
         attempt was kept; retry with the same key to get its result"
    )]
    LeaseLost {
        /// The call's namespace.
        namespace: String,
        /// The call's key.
        key: String,
    },

    /// A phased call was run inside a transaction: its phases could not
    /// commit one by one. Nothing ran and nothing was stored.
    #[error(
        "the phased call for idempotency key {key:?} in {namespace:?} was run inside a \
         transaction; each phase must commit on its own, so run it on a connection with no \
         transaction open (not inside `conn.transaction(..)`)"
    )]
    PhasedCallInTransaction {
        /// The call's namespace.
        namespace: String,
        /// The call's key.
        key: String,
    },

    /// The recovery point stored by an earlier run of a phased call no
    /// longer deserializes into the call's recovery-point type (the type
    /// changed since). Nothing ran; the record is unchanged.
    #[error(
        "the recovery point stored for idempotency key {key:?} in {namespace:?} no longer \
         matches the phased call's recovery-point type ({source}); keep that type backward \
         compatible (new variants, `#[serde(default)]` on new fields) until the calls that \
         stored the old form have finished"
    )]
    RecoveryPointUnreadable {
        /// The call's namespace.
        namespace: String,
        /// The call's key.
        key: String,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },
    /// `outbox::push` was called outside the body of an idempotent call, so
    /// there is no record to derive the effect's id from. Nothing was
    /// written.
    #[error(
        "outbox::push needs a running idempotent call to derive the effect's id from: call it \
         inside the body of an #[idempotent] function or of Call::run, with the connection the \
         body got, or use outbox::push_with_id with an id of your own"
    )]
    PushOutsideCall,

    /// An effect id or kind given to the outbox is empty or longer than
    /// 255 bytes. Nothing was written.
    #[error("invalid outbox effect {what}: {reason}; use 1 to 255 bytes")]
    InvalidEffect {
        /// `id` or `kind`.
        what: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// An effect's payload does not deserialize into the type a handler
    /// asked for (`Effect::payload_as`).
    #[error(
        "the payload of outbox effect {id:?} (kind {kind:?}) does not read as the requested \
         type: {source}; read it as the type it was pushed with"
    )]
    EffectPayloadUnreadable {
        /// The effect's id.
        id: String,
        /// The effect's kind.
        kind: String,
        /// What serde reported.
        #[source]
        source: serde_json::Error,
    },

    /// An outbox dispatcher was given a connection inside a transaction:
    /// its lease must commit before the handlers run, and its marks must
    /// not wait for the caller's commit. Nothing was delivered.
    #[error(
        "the outbox dispatcher needs a connection outside any transaction (it commits its \
         lease before the handlers run): call run_once or drain outside a transaction, on a \
         connection of its own"
    )]
    DispatchInTransaction,
}

impl Error {
    /// Whether retrying the same call (its whole transaction) later can
    /// succeed: the key was in flight, or the database failed transiently
    /// (serialization failure or deadlock, a lock wait that timed out, a
    /// busy SQLite file, a lost connection). See [`crate::Retryable`] for
    /// how each database error is recognised.
    ///
    /// `Database(BrokenTransactionManager)` is not retryable on the same
    /// connection: Diesel could not roll a transaction back and no longer
    /// knows its state. Drop that connection (a pool discards it when
    /// `is_broken` says so) and retry on a new one.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::InFlight { .. } => true,
            Error::Database(e) => is_transient(e),
            Error::LeaseLost { .. } => true,
            _ => false,
        }
    }

    /// The variant's name in snake case (`in_flight`, `payload_mismatch`,
    /// `database`, ..): the `error.type` of a call's span.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidKey { .. } => "invalid_key",
            Error::InvalidScope { .. } => "invalid_scope",
            Error::InvalidNamespace { .. } => "invalid_namespace",
            Error::PayloadMismatch { .. } => "payload_mismatch",
            Error::InFlight { .. } => "in_flight",
            Error::StoredResultUnreadable { .. } => "stored_result_unreadable",
            Error::ResponseTooLarge { .. } => "response_too_large",
            Error::ResultNotReplayable { .. } => "result_not_replayable",
            Error::Serialization { .. } => "serialization",
            Error::Database(_) => "database",
            Error::Migration(_) => "migration",
            Error::InvalidBatchSize => "invalid_batch_size",
            Error::InvalidTtl { .. } => "invalid_ttl",
            Error::LeaseLost { .. } => "lease_lost",
            Error::PhasedCallInTransaction { .. } => "phased_call_in_transaction",
            Error::RecoveryPointUnreadable { .. } => "recovery_point_unreadable",
            Error::PushOutsideCall => "push_outside_call",
            Error::InvalidEffect { .. } => "invalid_effect",
            Error::EffectPayloadUnreadable { .. } => "effect_payload_unreadable",
            Error::DispatchInTransaction => "dispatch_in_transaction",
        }
    }

    /// The idempotency key the error names, if it names one.
    fn key(&self) -> Option<&str> {
        match self {
            Error::PayloadMismatch { key, .. }
            | Error::InFlight { key, .. }
            | Error::StoredResultUnreadable { key, .. }
            | Error::ResponseTooLarge { key, .. }
            | Error::ResultNotReplayable { key, .. }
            | Error::LeaseLost { key, .. }
            | Error::PhasedCallInTransaction { key, .. }
            | Error::RecoveryPointUnreadable { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The error's message with its idempotency key replaced by `#` and the
    /// first 16 hex digits of the key's SHA-256 (the `key.hash` of the
    /// call's span): what a log at INFO or above may hold. A key is a
    /// client's secret-ish token; its hash still finds its calls.
    pub fn redacted(&self) -> String {
        let text = self.to_string();
        match self.key() {
            Some(key) => text.replace(
                &format!("{key:?}"),
                &format!("#{}", crate::telemetry::short_hash(key)),
            ),
            None => text,
        }
    }

    /// Whether the database aborted a claim that had not run the body yet
    /// (a serialization failure or a deadlock), so the library may start
    /// its own transaction again. A lock wait that timed out is not one: the
    /// call waited its full time already.
    pub(crate) fn is_aborted_claim(&self) -> bool {
        match self {
            Error::Database(e) => is_conflict_abort(e),
            _ => false,
        }
    }
}

/// Messages of transient errors that Diesel reports as
/// `DatabaseErrorKind::Unknown`, with the error each stands for. Diesel does
/// not expose SQLSTATE or error numbers for those, so the database's own
/// (English) message text is matched: keep `lc_messages` in English on
/// PostgreSQL servers.
const LOCK_TIMEOUT_MESSAGES: [&str; 3] = [
    "canceling statement due to lock timeout", // PostgreSQL 55P03 (lock_timeout)
    "could not obtain lock on",                // PostgreSQL 55P03 (NOWAIT)
    "Lock wait timeout exceeded",              // MySQL/MariaDB 1205
];
const DEADLOCK_MESSAGES: [&str; 2] = [
    "deadlock detected", // PostgreSQL 40P01
    // MySQL/MariaDB 1213, which blocking Diesel reports as a
    // SerializationFailure and diesel-async as `Unknown`.
    "Deadlock found when trying to get lock",
];
/// SQLite's SQLITE_BUSY: its busy timeout ran out.
const SQLITE_BUSY_MESSAGE: &str = "database is locked";
const BUSY_OR_LOST_MESSAGES: [&str; 9] = [
    SQLITE_BUSY_MESSAGE,
    "database table is locked", // SQLite SQLITE_LOCKED
    "server has gone away",     // MySQL/MariaDB 2006
    "Lost connection to",       // MySQL/MariaDB 2013
    // diesel-async on MySQL (mysql_async): the socket failed or closed.
    "Input/output error",
    "Connection to the server is closed",
    // PostgreSQL ending the session: an administrator's or a fast
    // shutdown's (57P01), `idle_in_transaction_session_timeout`'s (25P03,
    // `abandon_after`), `idle_session_timeout`'s (57P05), a recovery
    // conflict's on a standby. diesel-async can read this message before
    // it sees the socket close.
    "terminating connection due to",
    // 57P02: another server process crashed.
    "terminating connection because of crash",
    // 57P03, while the server shuts down.
    "the database system is shutting down",
];
/// What diesel-async on PostgreSQL (tokio-postgres) reports, as
/// `UnableToSendCommand`, for a connection that closed or failed: the
/// blocking driver's `ClosedConnection`.
const PG_LOST_MESSAGES: [&str; 2] = ["connection closed", "error communicating with the server"];

fn unknown_message_matches(error: &diesel::result::Error, messages: &[&str]) -> bool {
    use diesel::result::{DatabaseErrorKind, Error as D};
    match error {
        D::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            messages.iter().any(|m| info.message().contains(m))
        }
        _ => false,
    }
}

/// A lock wait that timed out (PostgreSQL 55P03, MySQL 1205).
pub(crate) fn is_lock_timeout(error: &diesel::result::Error) -> bool {
    unknown_message_matches(error, &LOCK_TIMEOUT_MESSAGES)
}

/// A wait for a lock that ran out of time: a lock wait timeout (PostgreSQL
/// 55P03, MySQL 1205) or SQLite's busy timeout (SQLITE_BUSY).
pub(crate) fn is_lock_wait_exhausted(error: &diesel::result::Error) -> bool {
    is_lock_timeout(error) || unknown_message_matches(error, &[SQLITE_BUSY_MESSAGE])
}

/// A transaction the database aborted to resolve a conflict: a
/// serialization failure (PostgreSQL 40001, MySQL 1213 deadlock) or a
/// PostgreSQL deadlock (40P01).
pub(crate) fn is_conflict_abort(error: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error as D};
    matches!(
        error,
        D::DatabaseError(DatabaseErrorKind::SerializationFailure, _)
    ) || unknown_message_matches(error, &DEADLOCK_MESSAGES)
}

/// Whether a Diesel error is transient: retrying the transaction may work.
///
/// Diesel classifies serialization failures (and MySQL deadlocks) and lost
/// PostgreSQL connections; the other transient cases reach it as `Unknown`
/// errors, recognised by the database's own message.
pub(crate) fn is_transient(error: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error as D};
    let lost_async_pg = match error {
        D::DatabaseError(DatabaseErrorKind::UnableToSendCommand, info) => {
            PG_LOST_MESSAGES.iter().any(|m| info.message().contains(m))
        }
        _ => false,
    };
    matches!(
        error,
        D::DatabaseError(DatabaseErrorKind::ClosedConnection, _)
    ) || lost_async_pg
        || is_conflict_abort(error)
        || is_lock_timeout(error)
        || unknown_message_matches(error, &BUSY_OR_LOST_MESSAGES)
}

#[cfg(test)]
mod tests {
    use diesel::result::{DatabaseErrorKind, Error as D};

    use super::*;

    fn unknown(message: &str) -> D {
        D::DatabaseError(DatabaseErrorKind::Unknown, Box::new(message.to_owned()))
    }

    /// Each message matched, as the servers write it.
    #[test]
    fn every_matched_message_is_classified() {
        let transient = [
            "canceling statement due to lock timeout",
            "could not obtain lock on row in relation \"payments\"",
            "Lock wait timeout exceeded; try restarting transaction",
            "deadlock detected",
            "database is locked",
            "database table is locked",
            "MySQL server has gone away",
            "Lost connection to server during query",
            "Deadlock found when trying to get lock; try restarting transaction",
            "Input/output error: Input/output error: Broken pipe (os error 32)",
            "Connection to the server is closed.",
            "terminating connection due to administrator command",
            "terminating connection due to idle-in-transaction timeout",
            "terminating connection due to idle-session timeout",
            "terminating connection because of crash of another server process",
            "the database system is shutting down",
        ];
        for message in transient {
            assert!(is_transient(&unknown(message)), "{message}");
            assert!(
                Error::Database(unknown(message)).is_retryable(),
                "{message}"
            );
        }
        for message in &transient[..3] {
            assert!(is_lock_timeout(&unknown(message)), "{message}");
            assert!(is_lock_wait_exhausted(&unknown(message)), "{message}");
            assert!(!is_conflict_abort(&unknown(message)), "{message}");
        }
        // SQLite's busy timeout ran out (a bounded `BEGIN IMMEDIATE`); a
        // locked table (SQLITE_LOCKED) is no wait that ran out.
        assert!(is_lock_wait_exhausted(&unknown("database is locked")));
        assert!(!is_lock_wait_exhausted(&unknown(
            "database table is locked"
        )));
        assert!(!is_lock_wait_exhausted(&unknown("deadlock detected")));
        assert!(is_conflict_abort(&unknown("deadlock detected")));
        assert!(is_conflict_abort(&unknown(
            "Deadlock found when trying to get lock; try restarting transaction"
        )));
        for message in [
            "connection closed",
            "error communicating with the server: EOF",
        ] {
            let lost = D::DatabaseError(
                DatabaseErrorKind::UnableToSendCommand,
                Box::new(message.to_owned()),
            );
            assert!(
                is_transient(&lost) && !is_conflict_abort(&lost),
                "{message}"
            );
        }
        let not_sent = D::DatabaseError(
            DatabaseErrorKind::UnableToSendCommand,
            Box::new("error serializing parameter 1".to_owned()),
        );
        assert!(!is_transient(&not_sent));
        let serialization = D::DatabaseError(
            DatabaseErrorKind::SerializationFailure,
            Box::new("could not serialize access".to_owned()),
        );
        assert!(is_conflict_abort(&serialization) && is_transient(&serialization));
        let closed = D::DatabaseError(
            DatabaseErrorKind::ClosedConnection,
            Box::new("server closed the connection".to_owned()),
        );
        assert!(is_transient(&closed) && !is_conflict_abort(&closed));
        for permanent in [
            unknown("relation \"idempotency_records\" does not exist"),
            D::DatabaseError(
                DatabaseErrorKind::UniqueViolation,
                Box::new("duplicate key".to_owned()),
            ),
            D::BrokenTransactionManager,
            D::NotFound,
        ] {
            assert!(!is_transient(&permanent), "{permanent:?}");
        }
    }

    /// What an API client sees names no namespace and echoes no key; the
    /// fields (and `Debug`) keep them for the logs.
    #[test]
    fn client_facing_messages_name_no_internals() {
        let namespace = "billing::internal::create_payment";
        let key = "client-key-123";
        for error in [
            Error::PayloadMismatch {
                namespace: namespace.to_owned(),
                key: key.to_owned(),
            },
            Error::InFlight {
                namespace: namespace.to_owned(),
                key: key.to_owned(),
            },
            Error::InvalidKey {
                reason: "the key is empty",
            },
            Error::LeaseLost {
                namespace: namespace.to_owned(),
                key: key.to_owned(),
            },
        ] {
            let shown = error.to_string();
            assert!(
                !shown.contains(namespace) && !shown.contains(key) && !shown.contains("HTTP"),
                "{shown}"
            );
            let logged = format!("{error:?}");
            if !matches!(error, Error::InvalidKey { .. }) {
                assert!(
                    logged.contains(namespace) && logged.contains(key),
                    "{logged}"
                );
            }
        }
    }
}
