//! The record table and its row type.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;

diesel::table! {
    /// One row per (namespace, scope, key): the request fingerprint and, once
    /// the body succeeded, its JSON result. Times are UTC.
    idempotency_records (namespace, scope, key) {
        /// The function's stable name (`name = "..."`).
        namespace -> Text,
        /// The tenant or user scope; empty when the function has none.
        scope -> Text,
        /// The idempotency key.
        key -> Text,
        /// `v2:` and the SHA-256 of the arguments' RFC 8785 form (records
        /// written before scheme `v2` hold `v1:`).
        fingerprint -> Text,
        /// The body's `Ok` value as JSON; NULL while the first call runs.
        response -> Nullable<Text>,
        /// When the first call claimed the key (UTC).
        created_at -> Timestamp,
        /// When the record stops answering for its key (UTC).
        expires_at -> Timestamp,
    }
}

/// A row of `idempotency_records`.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = idempotency_records)]
pub struct IdempotencyRecord {
    /// The function's stable name.
    pub namespace: String,
    /// The tenant or user scope; empty when the function has none.
    pub scope: String,
    /// The idempotency key.
    pub key: String,
    /// `v2:` and the SHA-256 of the arguments' RFC 8785 form (`v1:` in
    /// records written before scheme `v2`).
    pub fingerprint: String,
    /// The stored JSON result; `None` while the first call has not committed.
    pub response: Option<String>,
    /// When the key was claimed (UTC).
    pub created_at: NaiveDateTime,
    /// When the record expires (UTC).
    pub expires_at: NaiveDateTime,
}

impl IdempotencyRecord {
    /// Whether the first call has not stored its result: its transaction
    /// is still open (only that transaction sees such a record), or the row
    /// was written outside the library.
    pub fn is_in_flight(&self) -> bool {
        self.response.is_none()
    }

    /// Whether the record no longer answers for its key at `now`: its
    /// `expires_at` is `now` or earlier, as a call judges it.
    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at <= now.naive_utc()
    }
}

/// The primary key of a record.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct RecordId<'a> {
    pub namespace: &'a str,
    pub scope: &'a str,
    pub key: &'a str,
}

/// A claim: the row inserted before the body runs.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Insertable)]
#[diesel(table_name = idempotency_records)]
pub struct NewRecord<'a> {
    pub namespace: &'a str,
    pub scope: &'a str,
    pub key: &'a str,
    pub fingerprint: &'a str,
    pub response: Option<&'a str>,
    pub created_at: NaiveDateTime,
    pub expires_at: NaiveDateTime,
}

impl NewRecord<'_> {
    /// The record's primary key.
    pub fn id(&self) -> RecordId<'_> {
        RecordId {
            namespace: self.namespace,
            scope: self.scope,
            key: self.key,
        }
    }
}
