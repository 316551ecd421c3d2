//! diesel-async connections (feature `async`): the same statements,
//! awaited, and a guard for a call whose future is dropped mid-way.

use std::future::Future;
use std::num::NonZeroU32;
use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::QueryResult;
use diesel_async::{AsyncConnection, TransactionManager};

use super::driver::{Driver, LockWaits};
use super::{Claimed, StoredState};
use crate::record::{NewRecord, RecordId};

/// A diesel-async connection the `#[idempotent]` attribute can keep records
/// on, under an `async fn` (feature `async`).
///
/// Implemented for `AsyncPgConnection` (with `postgres`),
/// `AsyncMysqlConnection` (with `mysql`) and
/// `SyncConnectionWrapper<SqliteConnection>` (with `sqlite`). A pooled
/// connection from diesel-async's deadpool or bb8 pool dereferences to one:
/// pass `&mut conn` to a function that takes the connection type, or
/// `&mut *conn` to one generic over this trait.
///
/// # A call whose future is dropped
///
/// A future dropped before it finishes (a client disconnect, a
/// `tokio::time::timeout`, a `select!`) stores nothing, and leaves no
/// connection inside the call's transaction for a pool to hand out again:
///
/// - PostgreSQL: the drop sends `ROLLBACK` (inside a caller's transaction,
///   `ROLLBACK TO SAVEPOINT` of the call's level), queued behind a
///   statement still running, which at the top it cancels with a cancel
///   request on a connection of its own (not while the call's `BEGIN` and
///   claim, pipelined, are on their way: a cancel that failed the `BEGIN`
///   would leave the claim to commit on its own); and it marks the connection
///   broken. The key is free as soon as the server runs the rollback; a
///   pool discards the connection; a plain connection's next transaction
///   (a caller's commit included) fails with `BrokenTransactionManager`.
///   `abandon_after` is a server-side backstop (`SET LOCAL
///   idle_in_transaction_session_timeout`) for a transaction that no
///   statement reaches any more.
/// - MySQL / MariaDB: the drop marks the connection broken (the driver
///   cannot send a statement without being polled) and kills a statement
///   still running (`KILL QUERY` from a connection of its own). bb8 closes
///   it when it is returned, and the server rolls back; deadpool discards it
///   at its next checkout, so the key stays held until then; a plain
///   connection holds it until it is dropped, and its next transaction
///   fails with `BrokenTransactionManager` (a statement sent outside a
///   transaction would run inside the abandoned one: drop the connection).
///   `abandon_after` sets the session's `wait_timeout` (whole seconds,
///   rounded up) for the call, restored after it: the server closes a
///   connection left idle that long, in a pool or not, which bounds how
///   long a dropped call holds its key.
/// - SQLite (`SyncConnectionWrapper`): the drop rolls the call's levels back
///   on the wrapper's blocking thread and waits for it, on any runtime; the
///   connection stays usable at its depth before the call.
///
/// The methods are the library's storage statements; they are not part of
/// the stable API and are hidden from the documentation.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a diesel-async connection that `#[idempotent]` can use in an `async fn`",
    label = "an `async fn` under `#[idempotent]` takes a diesel-async connection",
    note = "use `diesel_async::AsyncPgConnection`, `diesel_async::AsyncMysqlConnection` or \
            `diesel_async::sync_connection_wrapper::SyncConnectionWrapper<SqliteConnection>` \
            (feature `async` of diesel-idempotent with the backend's feature)",
    note = "a blocking Diesel connection (`PgConnection`, `MysqlConnection`, `SqliteConnection`) \
            goes with a plain `fn`: remove `async`"
)]
pub trait AsyncIdempotentConnection:
    AsyncConnection
    + crate::outbox::AsyncOutboxStatements
    + crate::phased::AsyncPhasedStatements
    + Send
    + Sized
{
    /// The database, as OpenTelemetry's `db.system.name` names it
    /// (`postgresql`, `mysql`, `sqlite`).
    #[doc(hidden)]
    const DB_SYSTEM: &'static str;

    /// Whether a plain `SELECT` can take and wait for row locks: InnoDB
    /// turns it into a locking read inside a SERIALIZABLE transaction.
    #[doc(hidden)]
    const PLAIN_READS_MAY_LOCK: bool = false;

    /// Begins the library's level (see `IdempotentConnection`); with
    /// `abandon_after`, PostgreSQL also sets the idle timeout, in the same
    /// round trip at the top level.
    #[doc(hidden)]
    fn begin_idempotent(
        &mut self,
        abandon_after: Option<Duration>,
    ) -> impl Future<Output = QueryResult<()>> + Send;

    /// Begins the library's level as `begin_idempotent` does, waiting at
    /// most `limit` for a lock the `BEGIN` itself takes (see
    /// `IdempotentConnection`: SQLite's `BEGIN IMMEDIATE`).
    #[doc(hidden)]
    fn begin_idempotent_within(
        &mut self,
        abandon_after: Option<Duration>,
        limit: Duration,
    ) -> impl Future<Output = QueryResult<()>> + Send {
        let _ = limit;
        self.begin_idempotent(abandon_after)
    }

    /// Called once the library's level has ended (committed or rolled
    /// back), with the `abandon_after` its `begin_idempotent` got: undoes
    /// what that set for the session (MySQL's `wait_timeout`).
    #[doc(hidden)]
    fn end_idempotent(
        &mut self,
        abandon_after: Option<Duration>,
    ) -> impl Future<Output = QueryResult<()>> + Send {
        let _ = abandon_after;
        std::future::ready(Ok(()))
    }

    #[doc(hidden)]
    fn claim_or_load(
        &mut self,
        record: &NewRecord<'_>,
    ) -> impl Future<Output = QueryResult<Claimed>> + Send;

    /// Begins the library's level at the top (outside any transaction), as
    /// `begin_idempotent` does, and sends the claim. The outer result is
    /// the `BEGIN`'s (`Err`: no level was opened), the inner one the
    /// claim's. PostgreSQL sends both in one round trip.
    #[doc(hidden)]
    fn begin_and_claim_or_load(
        &mut self,
        abandon_after: Option<Duration>,
        record: &NewRecord<'_>,
    ) -> impl Future<Output = QueryResult<QueryResult<Claimed>>> + Send {
        async move {
            self.begin_idempotent(abandon_after).await?;
            Ok(self.claim_or_load(record).await)
        }
    }

    #[doc(hidden)]
    fn load(
        &mut self,
        id: RecordId<'_>,
    ) -> impl Future<Output = QueryResult<Option<StoredState>>> + Send;

    #[doc(hidden)]
    fn read_committed(
        &mut self,
        id: RecordId<'_>,
    ) -> impl Future<Output = QueryResult<Option<StoredState>>> + Send;

    #[doc(hidden)]
    fn take_over(
        &mut self,
        record: &NewRecord<'_>,
        now: NaiveDateTime,
    ) -> impl Future<Output = QueryResult<bool>> + Send;

    #[doc(hidden)]
    fn complete(
        &mut self,
        id: RecordId<'_>,
        response: &str,
    ) -> impl Future<Output = QueryResult<usize>> + Send;

    #[doc(hidden)]
    fn limit_lock_waits(
        &mut self,
        limit: Duration,
    ) -> impl Future<Output = QueryResult<LockWaits>> + Send;

    #[doc(hidden)]
    fn restore_lock_waits(
        &mut self,
        saved: LockWaits,
        failed: bool,
    ) -> impl Future<Output = QueryResult<()>> + Send;

    #[doc(hidden)]
    fn reads_from_snapshot(&mut self) -> impl Future<Output = QueryResult<bool>> + Send;

    /// Called when a call's future is dropped while the library's level,
    /// begun at `depth`, is open: whatever the connection can do without
    /// being awaited so that the level ends and the connection is not
    /// reused inside it.
    #[doc(hidden)]
    fn abandon(&mut self, depth: u32);

    /// `abandon` at the top, for a call dropped while its `BEGIN` and its
    /// claim are on their way together (`begin_and_claim_or_load`).
    #[doc(hidden)]
    fn abandon_begin_and_claim(&mut self) {
        self.abandon(0);
    }
}

/// The transaction depth of `conn` (0 outside a transaction).
pub(crate) fn depth<C: AsyncIdempotentConnection>(conn: &mut C) -> QueryResult<u32> {
    C::TransactionManager::transaction_manager_status_mut(conn)
        .transaction_depth()
        .map(|depth| depth.map_or(0, NonZeroU32::get))
}

/// A diesel-async connection as a [`Driver`], with the guard for a dropped
/// call: while the library's level is open, dropping the driver (the call's
/// future was dropped) calls [`AsyncIdempotentConnection::abandon`].
pub(crate) struct NonBlocking<'c, C: AsyncIdempotentConnection> {
    conn: &'c mut C,
    abandon_after: Option<Duration>,
    /// The depth the library's level was begun at, while it is open.
    open_above: Option<u32>,
    /// The level is begun but its `BEGIN` not yet sent: it goes with the
    /// claim (`Driver::begin_before_claim`).
    begin_pending: bool,
    /// The held-back `BEGIN` and the claim are on their way together.
    begin_with_claim: bool,
}

impl<'c, C: AsyncIdempotentConnection> NonBlocking<'c, C> {
    pub(crate) fn new(conn: &'c mut C, abandon_after: Option<Duration>) -> Self {
        NonBlocking {
            conn,
            abandon_after,
            open_above: None,
            begin_pending: false,
            begin_with_claim: false,
        }
    }

    /// Forgets the open level once the connection is back at its depth;
    /// `true` when it did.
    fn settle_guard(&mut self) -> bool {
        if let Some(outside) = self.open_above
            && depth(self.conn).is_ok_and(|now| now <= outside)
        {
            self.open_above = None;
            return true;
        }
        false
    }

    /// Sends the held-back `BEGIN`, if any (for a statement other than
    /// the claim).
    async fn send_pending_begin(&mut self) -> QueryResult<()> {
        if !std::mem::take(&mut self.begin_pending) {
            return Ok(());
        }
        let begun = self.conn.begin_idempotent(self.abandon_after).await;
        if begun.is_err() {
            return self.after_level(begun).await;
        }
        begun
    }

    /// After a commit or rollback: once the level is closed, undoes the
    /// session settings of `abandon_after`. The commit's or rollback's own
    /// error comes first.
    async fn after_level(&mut self, ended: QueryResult<()>) -> QueryResult<()> {
        if self.settle_guard() && self.abandon_after.is_some() {
            let restored = self.conn.end_idempotent(self.abandon_after).await;
            return ended.and(restored);
        }
        ended
    }

    /// Begins the library's level now; with `limit`, the `BEGIN` waits at
    /// most that long for a lock it takes (`Driver::begin_within`).
    async fn begin_level(&mut self, limit: Option<Duration>) -> QueryResult<()> {
        let outside = depth(self.conn)?;
        // Armed before the `BEGIN` is sent: a drop while it is on its way
        // leaves the connection's state unknown.
        if self.open_above.is_none() {
            self.open_above = Some(outside);
        }
        let begun = match limit {
            None => self.conn.begin_idempotent(self.abandon_after).await,
            Some(limit) => {
                self.conn
                    .begin_idempotent_within(self.abandon_after, limit)
                    .await
            }
        };
        if begun.is_err() {
            return self.after_level(begun).await;
        }
        begun
    }
}

impl<C: AsyncIdempotentConnection> Drop for NonBlocking<'_, C> {
    fn drop(&mut self) {
        if self.begin_pending {
            // The level's `BEGIN` was never sent.
            return;
        }
        if let Some(outside) = self.open_above.take() {
            if self.begin_with_claim {
                self.conn.abandon_begin_and_claim();
                return;
            }
            self.conn.abandon(outside);
        }
    }
}

impl<C: AsyncIdempotentConnection> Driver for NonBlocking<'_, C> {
    type Conn = C;
    const DB_SYSTEM: &'static str = C::DB_SYSTEM;
    const PLAIN_READS_MAY_LOCK: bool = C::PLAIN_READS_MAY_LOCK;

    fn conn(&mut self) -> &mut C {
        // The procedure hands the connection to the body only after the
        // claim, which sent any held-back `BEGIN`.
        self.conn
    }

    fn depth(&mut self) -> QueryResult<u32> {
        // A held-back `BEGIN` counts: the level is open for the procedure.
        Ok(depth(self.conn)? + u32::from(self.begin_pending))
    }

    async fn begin(&mut self) -> QueryResult<()> {
        self.begin_level(None).await
    }

    async fn begin_within(&mut self, limit: Duration) -> QueryResult<()> {
        self.begin_level(Some(limit)).await
    }

    async fn begin_before_claim(&mut self) -> QueryResult<()> {
        if self.begin_pending || depth(self.conn)? != 0 {
            // Inside a caller's transaction the savepoint goes first.
            return self.begin().await;
        }
        if self.open_above.is_none() {
            self.open_above = Some(0);
        }
        self.begin_pending = true;
        Ok(())
    }

    async fn commit(&mut self) -> QueryResult<()> {
        if std::mem::take(&mut self.begin_pending) {
            // Nothing was sent in the level: nothing to commit.
            self.open_above = None;
            return Ok(());
        }
        let committed = C::TransactionManager::commit_transaction(self.conn).await;
        self.after_level(committed).await
    }

    async fn rollback(&mut self) -> QueryResult<()> {
        if std::mem::take(&mut self.begin_pending) {
            self.open_above = None;
            return Ok(());
        }
        let rolled_back = C::TransactionManager::rollback_transaction(self.conn).await;
        self.after_level(rolled_back).await
    }

    async fn claim_or_load(&mut self, record: &NewRecord<'_>) -> QueryResult<Claimed> {
        if !std::mem::take(&mut self.begin_pending) {
            return AsyncIdempotentConnection::claim_or_load(self.conn, record).await;
        }
        self.begin_with_claim = true;
        let sent = self
            .conn
            .begin_and_claim_or_load(self.abandon_after, record)
            .await;
        self.begin_with_claim = false;
        match sent {
            Ok(claimed) => claimed,
            Err(not_begun) => match self.after_level(Err(not_begun)).await {
                Err(e) => Err(e),
                Ok(()) => Err(diesel::result::Error::BrokenTransactionManager),
            },
        }
    }

    async fn load(&mut self, id: RecordId<'_>) -> QueryResult<Option<StoredState>> {
        self.send_pending_begin().await?;
        AsyncIdempotentConnection::load(self.conn, id).await
    }

    async fn read_committed(&mut self, id: RecordId<'_>) -> QueryResult<Option<StoredState>> {
        self.send_pending_begin().await?;
        AsyncIdempotentConnection::read_committed(self.conn, id).await
    }

    async fn take_over(&mut self, record: &NewRecord<'_>, now: NaiveDateTime) -> QueryResult<bool> {
        self.send_pending_begin().await?;
        AsyncIdempotentConnection::take_over(self.conn, record, now).await
    }

    async fn complete(&mut self, id: RecordId<'_>, response: &str) -> QueryResult<usize> {
        self.send_pending_begin().await?;
        AsyncIdempotentConnection::complete(self.conn, id, response).await
    }

    async fn limit_lock_waits(&mut self, limit: Duration) -> QueryResult<LockWaits> {
        self.send_pending_begin().await?;
        AsyncIdempotentConnection::limit_lock_waits(self.conn, limit).await
    }

    async fn restore_lock_waits(&mut self, saved: LockWaits, failed: bool) -> QueryResult<()> {
        self.send_pending_begin().await?;
        AsyncIdempotentConnection::restore_lock_waits(self.conn, saved, failed).await
    }

    async fn reads_from_snapshot(&mut self) -> QueryResult<bool> {
        self.send_pending_begin().await?;
        AsyncIdempotentConnection::reads_from_snapshot(self.conn).await
    }
}
