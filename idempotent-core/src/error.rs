//! The one error type of the library.

/// Everything that can go wrong around an idempotent call.
///
/// Each message says what happened and what the caller should do about it.
/// The body's own errors never appear here: they are returned unchanged.
/// Functions under `#[idempotent]` return their own error type `E`, which must
/// implement `From<diesel_idempotent::Error>`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The idempotency key is empty, too long or holds characters outside
    /// visible ASCII. The body did not run.
    #[error(
        "invalid idempotency key: {reason}; send 1 to 255 visible ASCII characters \
         (a UUID is a good choice) and retry"
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
        "idempotency key {key:?} in {namespace:?} was already used with a different request; \
         use a new key for a new request, or resend the original request to get its result"
    )]
    PayloadMismatch {
        /// The function's namespace.
        namespace: String,
        /// The key that was reused.
        key: String,
    },

    /// The key is held by a call that has not finished (it is being processed
    /// by this same transaction, or the caller chose not to wait). Nothing was
    /// changed.
    #[error(
        "idempotency key {key:?} in {namespace:?} is being processed by a call that has not \
         finished; retry after it completes (an HTTP service answers 409 Conflict)"
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

    /// An argument or the result could not be serialized to JSON (a map with
    /// non-string keys, a non-finite float, a failing `Serialize` impl).
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
}

impl Error {
    /// Whether retrying the same call (its whole transaction) later can
    /// succeed: the key was in flight, or the database failed transiently
    /// (serialization failure or deadlock, a lock wait that timed out, a
    /// busy SQLite file, a lost connection).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::InFlight { .. } => true,
            Error::Database(e) => is_transient(e),
            _ => false,
        }
    }
}

/// Whether a Diesel error is transient: retrying the transaction may work.
///
/// Diesel classifies serialization failures (and MySQL deadlocks) and lost
/// PostgreSQL connections; the other transient cases reach it as `Unknown`
/// errors, recognised by the database's own message.
pub(crate) fn is_transient(error: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error as D};
    const TRANSIENT_MESSAGES: [&str; 6] = [
        "database is locked",         // SQLite SQLITE_BUSY
        "database table is locked",   // SQLite SQLITE_LOCKED
        "deadlock detected",          // PostgreSQL 40P01
        "Lock wait timeout exceeded", // MySQL 1205
        "server has gone away",       // MySQL 2006
        "Lost connection to",         // MySQL 2013
    ];
    match error {
        D::DatabaseError(
            DatabaseErrorKind::SerializationFailure | DatabaseErrorKind::ClosedConnection,
            _,
        ) => true,
        D::DatabaseError(DatabaseErrorKind::Unknown, info) => TRANSIENT_MESSAGES
            .iter()
            .any(|m| info.message().contains(m)),
        D::BrokenTransactionManager => true,
        _ => false,
    }
}
