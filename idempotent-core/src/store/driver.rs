//! One procedure, two drivers.
//!
//! The patterns are written once, as `async` code over [`Driver`]: the few
//! statements they send and the transaction they hold. [`Blocking`] drives
//! a Diesel connection: each statement runs when it is called and returns a
//! ready future, so [`block_on`] finishes the whole procedure in one poll.
//! The non-blocking driver (feature `async`) awaits diesel-async's futures
//! and adds what only async code needs: a guard for a call whose future is
//! dropped mid-way.

use std::any::Any;
use std::future::{Future, Ready, poll_fn, ready};
use std::num::NonZeroU32;
use std::panic::{self, AssertUnwindSafe};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::QueryResult;
use diesel::connection::{AnsiTransactionManager, TransactionManager};

use super::{Claimed, IdempotentConnection, StoredState, Unwound};
use crate::record::{NewRecord, RecordId};

/// A connection as the patterns use it: its transaction and the record
/// statements. Every future is `Send` when the connection is, so an
/// `async fn` under `#[idempotent]` is `Send` when its body is.
pub(crate) trait Driver {
    /// The connection the function body receives.
    type Conn;

    /// The database's `db.system.name` (`postgresql`, `mysql`, `sqlite`).
    const DB_SYSTEM: &'static str;

    /// Whether a plain `SELECT` can take and wait for row locks (InnoDB
    /// inside a SERIALIZABLE transaction).
    const PLAIN_READS_MAY_LOCK: bool;

    fn conn(&mut self) -> &mut Self::Conn;

    /// The transaction depth (0 outside a transaction).
    fn depth(&mut self) -> QueryResult<u32>;

    /// Begins the library's level: a transaction (SQLite: `BEGIN
    /// IMMEDIATE`), or a savepoint inside the caller's transaction.
    fn begin(&mut self) -> impl Future<Output = QueryResult<()>> + Send;

    /// Begins the library's level as [`Driver::begin`] does, when the next
    /// statement is [`Driver::claim_or_load`]: a driver that can send both
    /// in one round trip (diesel-async's PostgreSQL connection pipelines
    /// them) may hold its `BEGIN` back until then.
    fn begin_before_claim(&mut self) -> impl Future<Output = QueryResult<()>> + Send {
        self.begin()
    }

    /// Begins the library's level as [`Driver::begin`] does, waiting at
    /// most `limit` for a lock the `BEGIN` itself takes (SQLite's `BEGIN
    /// IMMEDIATE` at the top takes the database's write lock; elsewhere the
    /// `BEGIN` takes none). A `BEGIN` that gave up fails with the
    /// database's busy or lock-timeout error and opened nothing.
    fn begin_within(&mut self, limit: Duration) -> impl Future<Output = QueryResult<()>> + Send {
        let _ = limit;
        self.begin()
    }

    /// Commits (releases) the innermost level.
    fn commit(&mut self) -> impl Future<Output = QueryResult<()>> + Send;

    /// Rolls back the innermost level.
    fn rollback(&mut self) -> impl Future<Output = QueryResult<()>> + Send;

    fn claim_or_load(
        &mut self,
        record: &NewRecord<'_>,
    ) -> impl Future<Output = QueryResult<Claimed>> + Send;

    fn load(
        &mut self,
        id: RecordId<'_>,
    ) -> impl Future<Output = QueryResult<Option<StoredState>>> + Send;

    fn read_committed(
        &mut self,
        id: RecordId<'_>,
    ) -> impl Future<Output = QueryResult<Option<StoredState>>> + Send;

    fn take_over(
        &mut self,
        record: &NewRecord<'_>,
        now: NaiveDateTime,
    ) -> impl Future<Output = QueryResult<bool>> + Send;

    fn complete(
        &mut self,
        id: RecordId<'_>,
        response: &str,
    ) -> impl Future<Output = QueryResult<usize>> + Send;

    /// Cuts each row-lock wait to `limit` (`Duration::ZERO`: no wait);
    /// returns what [`Driver::restore_lock_waits`] needs to put the setting
    /// back.
    fn limit_lock_waits(
        &mut self,
        limit: Duration,
    ) -> impl Future<Output = QueryResult<LockWaits>> + Send;

    /// Puts row-lock waits back as they were after the statements in
    /// between succeeded (`failed = false`) or failed.
    fn restore_lock_waits(
        &mut self,
        saved: LockWaits,
        failed: bool,
    ) -> impl Future<Output = QueryResult<()>> + Send;

    fn reads_from_snapshot(&mut self) -> impl Future<Output = QueryResult<bool>> + Send;
}

/// A dialect's lock-wait setting from before [`Driver::limit_lock_waits`].
pub(crate) type LockWaits = Option<String>;

/// A blocking Diesel connection as a [`Driver`].
pub(crate) struct Blocking<'c, C>(pub(crate) &'c mut C);

// Each future is ready when returned: the statement ran in the call.
#[allow(refining_impl_trait)]
impl<C: IdempotentConnection> Driver for Blocking<'_, C> {
    type Conn = C;
    const DB_SYSTEM: &'static str = C::DB_SYSTEM;
    const PLAIN_READS_MAY_LOCK: bool = C::PLAIN_READS_MAY_LOCK;

    fn conn(&mut self) -> &mut C {
        self.0
    }

    fn depth(&mut self) -> QueryResult<u32> {
        AnsiTransactionManager::transaction_manager_status_mut(self.0)
            .transaction_depth()
            .map(|depth| depth.map_or(0, NonZeroU32::get))
    }

    fn begin(&mut self) -> Ready<QueryResult<()>> {
        ready(self.0.begin_idempotent())
    }

    fn begin_within(&mut self, limit: Duration) -> Ready<QueryResult<()>> {
        ready(self.0.begin_idempotent_within(limit))
    }

    fn commit(&mut self) -> Ready<QueryResult<()>> {
        ready(AnsiTransactionManager::commit_transaction(self.0))
    }

    fn rollback(&mut self) -> Ready<QueryResult<()>> {
        ready(AnsiTransactionManager::rollback_transaction(self.0))
    }

    fn claim_or_load(&mut self, record: &NewRecord<'_>) -> Ready<QueryResult<Claimed>> {
        ready(self.0.claim_or_load(record))
    }

    fn load(&mut self, id: RecordId<'_>) -> Ready<QueryResult<Option<StoredState>>> {
        ready(self.0.load(id))
    }

    fn read_committed(&mut self, id: RecordId<'_>) -> Ready<QueryResult<Option<StoredState>>> {
        ready(self.0.read_committed(id))
    }

    fn take_over(
        &mut self,
        record: &NewRecord<'_>,
        now: NaiveDateTime,
    ) -> Ready<QueryResult<bool>> {
        ready(self.0.take_over(record, now))
    }

    fn complete(&mut self, id: RecordId<'_>, response: &str) -> Ready<QueryResult<usize>> {
        ready(self.0.complete(id, response))
    }

    fn limit_lock_waits(&mut self, limit: Duration) -> Ready<QueryResult<LockWaits>> {
        ready(self.0.limit_lock_waits(limit))
    }

    fn restore_lock_waits(&mut self, saved: LockWaits, failed: bool) -> Ready<QueryResult<()>> {
        ready(self.0.restore_lock_waits(saved, failed))
    }

    fn reads_from_snapshot(&mut self) -> Ready<QueryResult<bool>> {
        ready(self.0.reads_from_snapshot())
    }
}

/// Runs a future to completion on this thread. The blocking driver's
/// futures are ready when created, so its procedures finish in one poll;
/// anything else parks the thread until woken.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);

    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }

    let mut future = pin!(future);
    // The usual case, without allocating a waker: ready at once.
    if let Poll::Ready(output) = future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        return output;
    }
    // Polled again at once with a waker that unparks this thread, so a
    // wake-up the no-op waker swallowed is not lost.
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        thread::park();
    }
}

/// Awaits `future`, returning a panic inside it as a value.
pub(crate) async fn catch_unwind<F: Future>(
    future: F,
) -> Result<F::Output, Box<dyn Any + Send + 'static>> {
    let mut future = pin!(future);
    poll_fn(
        |cx| match panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(payload) => Poll::Ready(Err(payload)),
        },
    )
    .await
}

/// Rolls back every transaction level above `depth` (savepoints the code
/// inside left open, e.g. a `conn.transaction(..)` that a panic unwound).
async fn roll_back_to<D: Driver>(driver: &mut D, depth: u32) -> QueryResult<()> {
    while driver.depth()? > depth {
        driver.rollback().await?;
    }
    Ok(())
}

/// The error of a body that returned with `levels` transaction levels of its
/// own still open.
fn left_open(levels: u32) -> diesel::result::Error {
    diesel::result::Error::DatabaseError(
        diesel::result::DatabaseErrorKind::Unknown,
        Box::new(format!(
            "the function returned with {levels} transaction level(s) of its own still open \
             (a panic caught inside a nested transaction, or a transaction begun and never \
             ended); everything the call did was rolled back and nothing was stored: end \
             every transaction the function begins"
        )),
    )
}

/// Fails when a transaction level above `depth` is still open: code that
/// returned normally left it open, and nothing more may be sent inside it.
pub(crate) fn ensure_closed_above<D: Driver>(driver: &mut D, depth: u32) -> QueryResult<()> {
    match driver.depth()? {
        now if now > depth => Err(left_open(now - depth)),
        _ => Ok(()),
    }
}

/// Runs user code the library calls outside its own transaction (a
/// getOrCreate lookup): if it panics, every transaction level it opened is
/// rolled back before the panic goes on.
pub(crate) async fn restoring_depth<D, R, F>(driver: &mut D, f: F) -> R
where
    D: Driver,
    F: AsyncFnOnce(&mut D::Conn) -> R,
{
    let Ok(depth) = driver.depth() else {
        return f(driver.conn()).await;
    };
    // The call itself inside the catch: a blocking lookup runs when called.
    match catch_unwind(async { f(driver.conn()).await }).await {
        Ok(result) => result,
        Err(payload) => {
            let _ = roll_back_to(driver, depth).await;
            panic::resume_unwind(payload)
        }
    }
}

/// Runs `f` in the library's transaction ([`Driver::begin`]: a transaction,
/// or a savepoint inside the caller's) and leaves the connection at exactly
/// the depth it had before, whatever `f` does:
///
/// - `Ok`: committed (released), unless `f` returned with a level of its own
///   still open (it caught a panic inside a nested transaction, or began
///   one by hand): then everything is rolled back and the call fails with a
///   database error that says so, since committing would have stored a
///   result for effects that were never committed;
/// - `Err`: every level `f` opened and the library's own are rolled back;
/// - a panic anywhere in `f` (the body, a nested `conn.transaction(..)`,
///   a `Serialize` or `Deserialize` impl) is caught, every level above the
///   caller's is rolled back, and the panic is returned to be resumed.
///
/// Diesel's own `transaction` does not catch panics: without this, a panic
/// inside a nested transaction leaves the outer levels open, with the claim
/// and its locks held.
pub(crate) async fn guarded_transaction<D, R, E, F>(driver: &mut D, f: F) -> Result<R, Unwound<E>>
where
    D: Driver,
    E: From<diesel::result::Error>,
    F: AsyncFnOnce(&mut D) -> Result<R, E>,
{
    guarded_level(driver, Begin::Now, f).await
}

/// How [`guarded_level`] begins its level.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Begin {
    /// [`Driver::begin`].
    Now,
    /// [`Driver::begin_before_claim`]: `f`'s first statement is the claim.
    BeforeClaim,
    /// [`Driver::begin_within`]: the `BEGIN` waits at most this long for a
    /// lock it takes.
    Within(Duration),
}

/// [`guarded_transaction`], beginning the level as `begin` says.
pub(crate) async fn guarded_level<D, R, E, F>(
    driver: &mut D,
    begin: Begin,
    f: F,
) -> Result<R, Unwound<E>>
where
    D: Driver,
    E: From<diesel::result::Error>,
    F: AsyncFnOnce(&mut D) -> Result<R, E>,
{
    let outside = driver.depth()?;
    let inside = outside + 1;
    match begin {
        Begin::Now => driver.begin().await?,
        Begin::BeforeClaim => driver.begin_before_claim().await?,
        Begin::Within(limit) => driver.begin_within(limit).await?,
    }
    // The call itself inside the catch: a blocking body runs when called.
    let result = match catch_unwind(async { f(driver).await }).await {
        Ok(Ok(value)) => match ensure_closed_above(driver, inside) {
            Ok(()) => match driver.commit().await {
                Ok(()) => Ok(value),
                Err(e) => Err(Unwound::Failed(E::from(e))),
            },
            Err(left_open) => Err(Unwound::Failed(E::from(left_open))),
        },
        Ok(Err(e)) => Err(Unwound::Failed(e)),
        Err(payload) => Err(Unwound::Panicked(payload)),
    };
    if result.is_err() {
        // Best effort: the error or panic matters more than a failed
        // rollback, after which Diesel marks the connection broken and its
        // next use reports it. A failed commit has usually closed the
        // level already (Diesel rolls back a commit that failed).
        let _ = roll_back_to(driver, outside).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_on_finishes_a_ready_future_in_one_poll() {
        assert_eq!(block_on(ready(7)), 7);
    }

    /// A future that is pending until another thread sets its flag and
    /// wakes the waker of the future's latest poll (as the `Future`
    /// contract asks: each poll registers its own waker).
    #[test]
    fn block_on_waits_for_a_future_woken_from_another_thread() {
        use std::sync::Mutex;
        use std::sync::atomic::{AtomicBool, Ordering};

        let done = Arc::new(AtomicBool::new(false));
        let latest: Arc<Mutex<Option<Waker>>> = Arc::new(Mutex::new(None));
        let mut other = None;
        let mut polls = 0;
        let value = block_on(poll_fn(|cx| {
            polls += 1;
            *latest.lock().unwrap() = Some(cx.waker().clone());
            if done.load(Ordering::SeqCst) {
                return Poll::Ready(polls);
            }
            if other.is_none() {
                let (done, latest) = (Arc::clone(&done), Arc::clone(&latest));
                other = Some(thread::spawn(move || {
                    done.store(true, Ordering::SeqCst);
                    if let Some(waker) = latest.lock().unwrap().take() {
                        waker.wake();
                    }
                }));
            }
            Poll::Pending
        }));
        assert!(
            value >= 2,
            "ready only after the other thread ran: {value} polls"
        );
        if let Some(other) = other {
            other.join().unwrap();
        }
    }
}
