//! Operator tools for the record table: look a record up, list what a
//! namespace holds, forget a record, count records, purge expired ones in
//! batches. The `diesel-idempotent` command line tool's `inspect`,
//! `forget`, `stats` and `purge` are these functions.
//!
//! Each function sends its statements on the connection it is given, as
//! they are: inside the caller's transaction when one is open (and undone
//! by its rollback), on their own otherwise. Blocking connections only.
//!
//! A record is *in flight* while its first call runs: its result is not
//! stored yet. That call's transaction has not committed, so only that
//! transaction sees the record (a reader at MySQL's READ UNCOMMITTED
//! aside): from another connection, in-flight lists and counts show
//! records written outside the library's transactions only. A record is
//! *completed* once its result is stored, *live* until its `expires_at`,
//! and *expired* from then on (a call treats it as absent).

use chrono::{DateTime, Utc};

use crate::clock::{Clock, SystemClock};
use crate::error::Error;
use crate::record::{IdempotencyRecord, RecordId};
use crate::store::{IdempotentConnection, Tally};

/// Which live records [`list`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordState {
    /// Records without a stored result (`response IS NULL`), oldest
    /// `created_at` first: calls still running, as far as the connection
    /// can see them (see the [module documentation](self)).
    InFlight,
    /// Records with a stored result, most recent `created_at` first.
    Completed,
}

/// What [`stats`] counts in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamespaceStats {
    /// The namespace (the function's `name`).
    pub namespace: String,
    /// Records that have not expired, in flight or completed.
    pub live: u64,
    /// The live records without a stored result (counted in `live` too).
    pub in_flight: u64,
    /// Records that have expired and are waiting to be purged.
    pub expired: u64,
}

/// The record of `key` in `namespace` and `scope` (`""` for a function
/// without a scope), expired or not; `None` when there is none.
///
/// A record whose first call has not committed is invisible outside that
/// call's transaction (see the [module documentation](self)).
pub fn find<C: IdempotentConnection>(
    conn: &mut C,
    namespace: &str,
    scope: &str,
    key: &str,
) -> Result<Option<IdempotencyRecord>, Error> {
    let id = RecordId {
        namespace,
        scope,
        key,
    };
    Ok(conn.find_record(id)?)
}

/// At most `limit` live records of `namespace` in `state`, every scope:
/// in flight oldest first, completed most recent first (ties by scope and
/// key). Expired records are left out.
pub fn list<C: IdempotentConnection>(
    conn: &mut C,
    namespace: &str,
    state: RecordState,
    limit: usize,
) -> Result<Vec<IdempotencyRecord>, Error> {
    list_with_clock(conn, namespace, state, limit, &SystemClock)
}

/// [`list`], with expiry judged at `clock`'s time.
pub fn list_with_clock<C: IdempotentConnection>(
    conn: &mut C,
    namespace: &str,
    state: RecordState,
    limit: usize,
    clock: &dyn Clock,
) -> Result<Vec<IdempotencyRecord>, Error> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    Ok(conn.list_records(namespace, state, clock.now().naive_utc(), limit)?)
}

/// Deletes the record of `key` in `namespace` and `scope`, expired or not;
/// `true` when there was one.
///
/// **Dangerous**: the next call with this key runs the body again, and
/// whatever the first call did (a payment, an email) happens a second
/// time. It is for operators who know the first call's effects are gone
/// or must be redone: a record stored by mistake, a request that has to be
/// replayed for real.
///
/// It reads the record first ([`find`], a plain read that never waits for
/// a call in flight) and deletes exactly the record it read. A call still
/// in flight has not committed its record, so on every backend there is
/// nothing to forget: `false`, at once, and the call's record stays when it
/// commits. A record replaced between the read and the delete (an expired
/// one taken over by a new call) is left alone: `false`. Both statements
/// run inside the caller's transaction when one is open.
pub fn forget<C: IdempotentConnection>(
    conn: &mut C,
    namespace: &str,
    scope: &str,
    key: &str,
) -> Result<bool, Error> {
    let Some(record) = find(conn, namespace, scope, key)? else {
        return Ok(false);
    };
    let id = RecordId {
        namespace,
        scope,
        key,
    };
    Ok(conn.forget_record(id, record.created_at)? > 0)
}

/// Live, in-flight and expired records per namespace, sorted by
/// namespace; a namespace appears when it holds at least one record.
///
/// Three counting statements, each reading every record of the table (or
/// the index on `expires_at`); under concurrent writes the counts are
/// those of three close instants.
pub fn stats<C: IdempotentConnection>(conn: &mut C) -> Result<Vec<NamespaceStats>, Error> {
    stats_with_clock(conn, &SystemClock)
}

/// [`stats`], with expiry judged at `clock`'s time.
pub fn stats_with_clock<C: IdempotentConnection>(
    conn: &mut C,
    clock: &dyn Clock,
) -> Result<Vec<NamespaceStats>, Error> {
    let now = clock.now().naive_utc();
    let mut namespaces = std::collections::BTreeMap::<String, NamespaceStats>::new();
    for tally in [Tally::Live, Tally::InFlight, Tally::Expired] {
        for (namespace, count) in conn.tally_records(tally, now)? {
            let count = u64::try_from(count).unwrap_or(0);
            let entry =
                namespaces
                    .entry(namespace)
                    .or_insert_with_key(|namespace| NamespaceStats {
                        namespace: namespace.clone(),
                        live: 0,
                        in_flight: 0,
                        expired: 0,
                    });
            match tally {
                Tally::Live => entry.live = count,
                Tally::InFlight => entry.in_flight = count,
                Tally::Expired => entry.expired = count,
            }
        }
    }
    Ok(namespaces.into_values().collect())
}

/// Deletes at most `batch_size` records expired at `now` (those that
/// expire first), in one statement; returns how many it deleted. Fewer
/// than `batch_size` means none was left (or another purge took them).
///
/// [`crate::purge_expired`] repeats this until a batch comes back short;
/// call it yourself to pace or time the batches. On PostgreSQL rows locked
/// by another transaction are skipped, not waited for.
///
/// Fails with [`Error::InvalidBatchSize`] for a `batch_size` of 0 or one
/// beyond `i64::MAX`.
pub fn purge_batch<C: IdempotentConnection>(
    conn: &mut C,
    now: DateTime<Utc>,
    batch_size: usize,
) -> Result<usize, Error> {
    let limit = match i64::try_from(batch_size) {
        Ok(limit) if limit > 0 => limit,
        _ => return Err(Error::InvalidBatchSize),
    };
    let deleted = conn.purge_batch(now.naive_utc(), limit)?;
    crate::telemetry::purged(C::DB_SYSTEM, deleted);
    Ok(deleted)
}

/// How many records have expired and wait to be purged (the total of a
/// purge's progress).
pub fn count_expired<C: IdempotentConnection>(conn: &mut C) -> Result<u64, Error> {
    count_expired_with_clock(conn, &SystemClock)
}

/// [`count_expired`], with expiry judged at `clock`'s time.
pub fn count_expired_with_clock<C: IdempotentConnection>(
    conn: &mut C,
    clock: &dyn Clock,
) -> Result<u64, Error> {
    let count = conn.count_expired_records(clock.now().naive_utc())?;
    Ok(u64::try_from(count).unwrap_or(0))
}
