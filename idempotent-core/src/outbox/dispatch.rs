//! The dispatcher's procedure, once for both drivers: lease a batch of due
//! effects of the kinds it handles in a short transaction, renew each
//! effect's lease just before its handler runs (so every handler gets the
//! whole lease, however late in the batch it comes), deliver it outside any
//! transaction, and write how the delivery ended, fenced on the attempt and
//! the lease end it holds.

use std::future::{Future, Ready, ready};
use std::panic;
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDateTime, SubsecRound};

use super::store::{DEAD, DONE, DueRow, Lease, Mark, NewEffect, OutboxStatements, PENDING};
use super::{Dispatched, Effect};
use crate::Error;
use crate::clock::Clock;
use crate::store::driver::{Blocking, Driver, guarded_transaction};
use crate::store::{IdempotentConnection, Unwound};

/// The most ids one statement lists (SQLite takes at most 32766 bound
/// values, older builds 999).
pub(crate) const MAX_IDS_PER_STATEMENT: usize = 500;

/// How often a lease or a mark the database aborted is sent.
const ATTEMPTS: u32 = 5;

/// The longest `last_error` kept, in bytes.
const MAX_ERROR_LEN: usize = 4000;

/// A [`Driver`] that can also send the outbox's delivery statements.
pub(crate) trait OutboxDriver: Driver {
    /// What the lease's transaction needs set before its `BEGIN`.
    fn before_lease(&mut self) -> impl Future<Output = diesel::QueryResult<()>> + Send;

    fn due(
        &mut self,
        kinds: &[String],
        now: NaiveDateTime,
        limit: i64,
    ) -> impl Future<Output = diesel::QueryResult<Vec<DueRow>>> + Send;

    fn lease(
        &mut self,
        ids: &[String],
        until: NaiveDateTime,
    ) -> impl Future<Output = diesel::QueryResult<usize>> + Send;

    fn renew(
        &mut self,
        held: &Lease<'_>,
        until: NaiveDateTime,
    ) -> impl Future<Output = diesel::QueryResult<usize>> + Send;

    fn mark(&mut self, mark: &Mark<'_>) -> impl Future<Output = diesel::QueryResult<usize>> + Send;
}

// Each future is ready when returned: the statement ran in the call.
#[allow(refining_impl_trait)]
impl<C: IdempotentConnection> OutboxDriver for Blocking<'_, C> {
    fn before_lease(&mut self) -> Ready<diesel::QueryResult<()>> {
        ready(OutboxStatements::outbox_before_lease(self.0))
    }

    fn due(
        &mut self,
        kinds: &[String],
        now: NaiveDateTime,
        limit: i64,
    ) -> Ready<diesel::QueryResult<Vec<DueRow>>> {
        ready(OutboxStatements::outbox_due(self.0, kinds, now, limit))
    }

    fn lease(&mut self, ids: &[String], until: NaiveDateTime) -> Ready<diesel::QueryResult<usize>> {
        ready(OutboxStatements::outbox_lease(self.0, ids, until))
    }

    fn renew(
        &mut self,
        held: &Lease<'_>,
        until: NaiveDateTime,
    ) -> Ready<diesel::QueryResult<usize>> {
        ready(OutboxStatements::outbox_renew(self.0, held, until))
    }

    fn mark(&mut self, mark: &Mark<'_>) -> Ready<diesel::QueryResult<usize>> {
        ready(OutboxStatements::outbox_mark(self.0, mark))
    }
}

#[cfg(feature = "async")]
impl<C: crate::store::nonblocking::AsyncIdempotentConnection> OutboxDriver
    for crate::store::nonblocking::NonBlocking<'_, C>
{
    async fn before_lease(&mut self) -> diesel::QueryResult<()> {
        super::store::AsyncOutboxStatements::outbox_before_lease(self.conn()).await
    }

    async fn due(
        &mut self,
        kinds: &[String],
        now: NaiveDateTime,
        limit: i64,
    ) -> diesel::QueryResult<Vec<DueRow>> {
        super::store::AsyncOutboxStatements::outbox_due(self.conn(), kinds, now, limit).await
    }

    async fn lease(&mut self, ids: &[String], until: NaiveDateTime) -> diesel::QueryResult<usize> {
        super::store::AsyncOutboxStatements::outbox_lease(self.conn(), ids, until).await
    }

    async fn renew(
        &mut self,
        held: &Lease<'_>,
        until: NaiveDateTime,
    ) -> diesel::QueryResult<usize> {
        super::store::AsyncOutboxStatements::outbox_renew(self.conn(), held, until).await
    }

    async fn mark(&mut self, mark: &Mark<'_>) -> diesel::QueryResult<usize> {
        super::store::AsyncOutboxStatements::outbox_mark(self.conn(), mark).await
    }
}

/// Hands an effect to its handler: `Err` with the failure's text when the
/// handler failed, panicked or there is none for the effect's kind.
pub(crate) trait Deliver {
    /// The kinds there is a handler for: the only ones leased.
    fn kinds(&self) -> Vec<String>;

    fn deliver<'a>(
        &'a self,
        effect: &'a Effect,
    ) -> impl Future<Output = Result<(), String>> + Send + 'a;
}

/// The dispatcher's settings, shared by both dispatchers.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) lease: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) first_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) batch_size: usize,
    pub(crate) clock: Arc<dyn Clock>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            lease: Duration::from_secs(30),
            max_attempts: 10,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            batch_size: 100,
            clock: Arc::new(crate::clock::SystemClock),
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("lease", &self.lease)
            .field("max_attempts", &self.max_attempts)
            .field("first_backoff", &self.first_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl Settings {
    fn now(&self) -> NaiveDateTime {
        self.clock.now().naive_utc().trunc_subsecs(6)
    }

    /// How long after its `attempt`-th failed delivery an effect is due
    /// again: the first back-off, doubled after each attempt, at most the
    /// longest.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(63);
        let factor = 1u64 << doublings;
        let nanos = self
            .first_backoff
            .as_nanos()
            .saturating_mul(u128::from(factor));
        let max = self.max_backoff.as_nanos();
        let nanos = nanos.min(max);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// `at` plus `by`, saturating at the far future.
fn later(at: NaiveDateTime, by: Duration) -> NaiveDateTime {
    chrono::Duration::from_std(by)
        .ok()
        .and_then(|by| at.checked_add_signed(by))
        .unwrap_or(NaiveDateTime::MAX)
}

/// `text` cut to at most [`MAX_ERROR_LEN`] bytes, on a character boundary.
fn clipped(text: &str) -> &str {
    if text.len() <= MAX_ERROR_LEN {
        return text;
    }
    let mut end = MAX_ERROR_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

/// One batch: lease, deliver, mark. `driver` must be outside any
/// transaction.
pub(crate) async fn run_once<D, H>(
    driver: &mut D,
    handlers: &H,
    settings: &Settings,
) -> Result<Dispatched, Error>
where
    D: OutboxDriver,
    H: Deliver,
{
    if driver.depth()? != 0 {
        return Err(Error::DispatchInTransaction);
    }
    let limit = i64::try_from(settings.batch_size)
        .ok()
        .filter(|limit| *limit > 0)
        .ok_or(Error::InvalidBatchSize)?;
    let kinds = handlers.kinds();
    if kinds.is_empty() {
        return Ok(Dispatched::default());
    }
    let now = settings.now();
    let until = later(now, settings.lease);
    let leased = lease(driver, &kinds, now, until, limit).await?;
    let mut dispatched = Dispatched::default();
    for (id, kind, payload, attempts, created_at) in leased {
        let attempt = attempts.saturating_add(1);
        let effect = Effect {
            id,
            kind,
            payload,
            attempt: u32::try_from(attempt).unwrap_or(0),
            created_at,
        };
        let held = Lease {
            id: &effect.id,
            attempt,
            until,
        };
        let Some(held) = renew(driver, held, settings).await? else {
            dispatched.lost += 1;
            continue;
        };
        let delivered = handlers.deliver(&effect).await;
        let now = settings.now();
        let (mark, tally): (Mark<'_>, &mut usize) = match &delivered {
            Ok(()) => (
                Mark {
                    lease: held,
                    state: DONE,
                    available_at: now,
                    finished_at: Some(now),
                    last_error: None,
                },
                &mut dispatched.delivered,
            ),
            Err(error) if effect.attempt >= settings.max_attempts => (
                Mark {
                    lease: held,
                    state: DEAD,
                    available_at: now,
                    finished_at: Some(now),
                    last_error: Some(clipped(error)),
                },
                &mut dispatched.dead,
            ),
            Err(error) => (
                Mark {
                    lease: held,
                    state: PENDING,
                    available_at: later(now, settings.backoff(effect.attempt)),
                    finished_at: None,
                    last_error: Some(clipped(error)),
                },
                &mut dispatched.retried,
            ),
        };
        let marked = fenced(driver, Fenced::Mark(&mark)).await?;
        if marked == 1 {
            *tally += 1;
        } else {
            dispatched.lost += 1;
        }
    }
    Ok(dispatched)
}

/// `held` renewed to a whole lease from now, just before its handler runs:
/// `None` when the lease was taken over meanwhile (its end passed and
/// another dispatcher leased the effect, or it was requeued), so the effect
/// must not be delivered. A lease that still has its whole length left
/// (the batch's first effect, a clock that did not move) is kept as it is,
/// with no statement.
async fn renew<'a, D: OutboxDriver>(
    driver: &mut D,
    held: Lease<'a>,
    settings: &Settings,
) -> Result<Option<Lease<'a>>, Error> {
    let until = later(settings.now(), settings.lease);
    if until <= held.until {
        return Ok(Some(held));
    }
    let renewed = fenced(driver, Fenced::Renew(&held, until)).await?;
    Ok((renewed == 1).then_some(Lease { until, ..held }))
}

/// Leases at most `limit` effects due at `now` until `until`, in a short
/// transaction of its own, begun again (at most [`ATTEMPTS`] times) when
/// the database aborts it (a deadlock between dispatchers' locks, a busy
/// SQLite file): nothing was delivered yet.
async fn lease<D: OutboxDriver>(
    driver: &mut D,
    kinds: &[String],
    now: NaiveDateTime,
    until: NaiveDateTime,
    limit: i64,
) -> Result<Vec<DueRow>, Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        driver.before_lease().await?;
        let leased = guarded_transaction(driver, async |driver: &mut D| -> Result<_, Error> {
            let due = driver.due(kinds, now, limit).await?;
            if !due.is_empty() {
                let ids: Vec<String> = due.iter().map(|row| row.0.clone()).collect();
                for chunk in ids.chunks(MAX_IDS_PER_STATEMENT) {
                    driver.lease(chunk, until).await?;
                }
            }
            Ok(due)
        })
        .await;
        match leased {
            Ok(leased) => return Ok(leased),
            Err(Unwound::Failed(e)) if e.is_retryable() && attempt < ATTEMPTS => continue,
            Err(Unwound::Failed(e)) => return Err(e),
            Err(Unwound::Panicked(payload)) => panic::resume_unwind(payload),
        }
    }
}

/// A single-row statement fenced on the lease its dispatcher holds.
enum Fenced<'a> {
    /// Move the lease's end to this time.
    Renew(&'a Lease<'a>, NaiveDateTime),
    /// Write how the delivery ended.
    Mark(&'a Mark<'a>),
}

/// Sends `statement`, again (at most [`ATTEMPTS`] times) when the database
/// aborts it: the fence makes sending it twice sending it once. An effect
/// whose mark failed for good is delivered again after its lease.
async fn fenced<D: OutboxDriver>(driver: &mut D, statement: Fenced<'_>) -> Result<usize, Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let sent = match statement {
            Fenced::Renew(held, until) => driver.renew(held, until).await,
            Fenced::Mark(mark) => driver.mark(mark).await,
        };
        match sent {
            Ok(rows) => return Ok(rows),
            Err(e) if crate::error::is_transient(&e) && attempt < ATTEMPTS => continue,
            Err(e) => return Err(Error::Database(e)),
        }
    }
}

/// Batches until one finds nothing due.
pub(crate) async fn drain<D, H>(
    driver: &mut D,
    handlers: &H,
    settings: &Settings,
) -> Result<Dispatched, Error>
where
    D: OutboxDriver,
    H: Deliver,
{
    let mut total = Dispatched::default();
    loop {
        let batch = run_once(driver, handlers, settings).await?;
        if batch.total() == 0 {
            return Ok(total);
        }
        total += batch;
    }
}

/// Inserts a pending effect with a plain `INSERT`.
pub(crate) fn new_effect<'a>(
    id: &'a str,
    kind: &'a str,
    payload: &'a str,
    now: NaiveDateTime,
) -> NewEffect<'a> {
    NewEffect {
        id,
        kind,
        payload,
        now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_up_to_the_longest() {
        let settings = Settings {
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            ..Settings::default()
        };
        let waits: Vec<u64> = (1..=6).map(|a| settings.backoff(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        assert_eq!(settings.backoff(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn long_errors_are_clipped_on_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_LEN);
        let clipped = clipped(&long);
        assert!(clipped.len() <= MAX_ERROR_LEN);
        assert!(clipped.chars().all(|c| c == 'é'));
        assert_eq!(super::clipped("short"), "short");
    }
}
