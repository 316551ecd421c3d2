//! Cancellation safety of `async` calls (feature `async`): a call whose
//! future is dropped (a `tokio::time::timeout`, a `select!`, a client that
//! went away) at any await point leaves no claim, no record and no open
//! transaction behind. The next caller of the key gets it within a bound and
//! runs the body exactly once, and the dropped call's connection is never
//! handed out, or used again, inside the dropped call's transaction.
//!
//! The await points: waiting at the claim behind a held key, right after
//! the claim, mid-body (after the body's insert), mid-statement (a slow
//! statement of the body), and while the result is stored (the record's
//! `UPDATE` held at a gate). Each test is written once, generic over the
//! backend and its pool, with one line per backend and pool below.
//!
//! Without a server the PostgreSQL and MySQL tests fail; without a feature
//! one test reports what was skipped.

#[cfg(feature = "async")]
mod common;

#[cfg(not(feature = "async"))]
#[test]
fn async_cancellation_skipped_feature_disabled() {
    println!("SKIPPED: async cancellation tests (build with --features async)");
}

#[cfg(all(feature = "async", not(feature = "postgres")))]
#[test]
fn postgres_cancellation_skipped_feature_disabled() {
    println!("SKIPPED: postgres async cancellation tests (build with --features async,postgres)");
}

#[cfg(all(feature = "async", not(feature = "mysql")))]
#[test]
fn mysql_cancellation_skipped_feature_disabled() {
    println!("SKIPPED: mysql async cancellation tests (build with --features async,mysql)");
}

#[cfg(all(feature = "async", not(feature = "sqlite")))]
#[test]
fn sqlite_cancellation_skipped_feature_disabled() {
    println!("SKIPPED: sqlite async cancellation tests (build with --features async,sqlite)");
}

/// The generic tests and what they need from each backend. (With a backend
/// feature off, what only its tests use is unused.)
#[cfg(feature = "async")]
#[cfg_attr(
    not(all(feature = "postgres", feature = "mysql", feature = "sqlite")),
    allow(dead_code, unused_imports)
)]
mod cancellation {
    use std::collections::BTreeMap;
    use std::future::Future;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::time::{Duration, Instant};

    use diesel::connection::SimpleConnection;
    use diesel::query_builder::SqlQuery;
    use diesel::query_dsl::methods::LoadQuery;
    use diesel::sql_types::BigInt;
    use diesel::{Connection, QueryableByName, RunQueryDsl};
    use diesel_async::{AsyncConnection, TransactionManager};
    use diesel_idempotent::{Call, OnConflict, Outcome};
    use tokio::sync::oneshot;

    use crate::common::async_backends::{AsyncBackend, TestPool};
    use crate::common::{AppError, Backend, TestConn};

    /// The namespace of every call here.
    const NAMESPACE: &str = "tests.cancellation";
    /// How soon after a dropped call its key must be free.
    pub const BOUND: Duration = Duration::from_secs(2);
    /// `abandon_after` of the PostgreSQL tests that set it; the key must
    /// then be free within it and [`ABANDON_SLACK`].
    pub const ABANDON_AFTER: Duration = Duration::from_millis(300);
    /// `abandon_after` of the MySQL tests (`wait_timeout` counts whole
    /// seconds).
    pub const MYSQL_ABANDON_AFTER: Duration = Duration::from_secs(1);
    const ABANDON_SLACK: Duration = Duration::from_millis(700);
    /// How long a test waits for a state it set up itself (a lock waiter, a
    /// running statement) before failing.
    const SETUP: Duration = Duration::from_secs(30);
    /// An uncancelled caller of the randomized rounds that has no answer
    /// after this long is stuck.
    const STUCK: Duration = Duration::from_secs(10);

    /// The request (and the payment's amount) of the key under test.
    const AMOUNT: i64 = 100;
    /// The request of the call made on the dropped call's connection, or on
    /// the pool's next connection, afterwards.
    const NEXT_AMOUNT: i64 = 200;
    /// What each caller's body returns, to tell who ran it.
    const DROPPED: i64 = 1;
    const HOLDER: i64 = 2;
    const DUPLICATE: i64 = 3;
    const NEXT: i64 = 4;
    const STALLED: i64 = 5;

    /// Where the dropped call's future is when it is dropped.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Point {
        /// Waiting at the claim behind a call that holds the key.
        AtClaim,
        /// The key claimed; the body waits before its first statement.
        AfterClaim,
        /// The body inserted its payment and waits.
        MidBody,
        /// The body's slow statement is running.
        MidStatement,
        /// The body returned; the record's `UPDATE` with the result waits
        /// at a gate.
        StoringResult,
    }

    impl Point {
        fn describe(self) -> &'static str {
            match self {
                Point::AtClaim => "while it waited at the claim",
                Point::AfterClaim => "right after its claim",
                Point::MidBody => "mid-body",
                Point::MidStatement => "mid-statement",
                Point::StoringResult => "while its result was being stored",
            }
        }
    }

    /// Where the dropped call's connection comes from.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Via {
        Deadpool,
        Bb8,
        /// A plain connection, used again after the drop.
        Plain,
    }

    /// Holds the record's `UPDATE` of one connection until opened.
    pub struct Gate {
        /// Whether the `UPDATE` waits at the gate now.
        reached: Box<dyn FnMut() -> bool + Send>,
        open: Option<Box<dyn FnOnce() + Send>>,
    }

    impl Gate {
        fn open(&mut self) {
            if let Some(open) = self.open.take() {
                open();
            }
        }
    }

    impl Drop for Gate {
        fn drop(&mut self) {
            self.open();
        }
    }

    /// What the tests need from a backend besides [`AsyncBackend`]. The
    /// associated fns take a blocking connection to the test database (the
    /// test's monitor).
    pub trait Cancellation: AsyncBackend {
        /// Whether dropping a call waits for the statement it is running
        /// (the SQLite wrapper's statements run on a blocking thread, and a
        /// dropped one is waited for).
        const DROP_WAITS_FOR_STATEMENT: bool = false;
        /// Whether a plain connection's next call works after a call on it
        /// was dropped (otherwise it may also fail with
        /// `BrokenTransactionManager`).
        const USABLE_AFTER_DROP: bool = false;
        /// A statement that keeps the session busy well past [`BOUND`]
        /// (SQLite: about a second of work; its drop waits for it).
        const SLOW_STATEMENT: &'static str;

        /// Whether a session of the database runs [`Self::SLOW_STATEMENT`]
        /// now (true where the backend cannot tell).
        fn slow_statement_running(conn: &mut Self::Conn) -> bool;
        /// Sessions of the database waiting for a lock (`None` where the
        /// backend cannot tell).
        fn lock_waiters(conn: &mut Self::Conn) -> Option<i64>;
        /// Sessions of the database inside a transaction and idle (SQLite:
        /// whether a connection holds the write lock).
        fn idle_in_transaction(conn: &mut Self::Conn) -> i64;
        /// Committed payments, counted per amount.
        fn payments_by_amount(conn: &mut Self::Conn) -> BTreeMap<i64, i64>;
        /// Makes the record `UPDATE`s of `conn` wait at a gate until it is
        /// opened.
        fn gate_record_updates(
            &self,
            conn: &mut Self::AsyncConn,
        ) -> impl Future<Output = Gate> + Send;
    }

    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }

    #[derive(QueryableByName)]
    struct ByAmount {
        #[diesel(sql_type = BigInt)]
        amount: i64,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }

    /// The `n` of a `SELECT COUNT(*) AS n ..`.
    fn scalar<C: Connection>(conn: &mut C, sql: &str) -> i64
    where
        SqlQuery: LoadQuery<'static, C, N>,
    {
        diesel::sql_query(sql)
            .get_result::<N>(conn)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .n
    }

    fn by_amount<C: Connection>(conn: &mut C) -> BTreeMap<i64, i64>
    where
        SqlQuery: LoadQuery<'static, C, ByAmount>,
    {
        diesel::sql_query("SELECT amount, COUNT(*) AS n FROM payments GROUP BY amount")
            .load::<ByAmount>(conn)
            .expect("payments per amount")
            .into_iter()
            .map(|row| (row.amount, row.n))
            .collect()
    }

    #[cfg(feature = "postgres")]
    impl Cancellation for crate::common::Postgres {
        const SLOW_STATEMENT: &'static str = "SELECT pg_sleep(10)";

        fn slow_statement_running(conn: &mut Self::Conn) -> bool {
            scalar(
                conn,
                "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
                 AND state = 'active' AND query LIKE 'SELECT pg_sleep%'",
            ) > 0
        }

        fn lock_waiters(conn: &mut Self::Conn) -> Option<i64> {
            Some(scalar(
                conn,
                "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock'",
            ))
        }

        fn idle_in_transaction(conn: &mut Self::Conn) -> i64 {
            // Both 'idle in transaction' and 'idle in transaction (aborted)'.
            scalar(
                conn,
                "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
                 AND state LIKE 'idle in transaction%'",
            )
        }

        fn payments_by_amount(conn: &mut Self::Conn) -> BTreeMap<i64, i64> {
            by_amount(conn)
        }

        async fn gate_record_updates(&self, _: &mut Self::AsyncConn) -> Gate {
            let mut setup = self.connect();
            setup
                .batch_execute(
                    "CREATE TABLE gate (id INT PRIMARY KEY, n INT NOT NULL);
                     INSERT INTO gate VALUES (1, 0);
                     CREATE FUNCTION pass_gate() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN UPDATE gate SET n = n + 1 WHERE id = 1; RETURN NEW; END $$;
                     CREATE TRIGGER record_update_gate BEFORE UPDATE ON idempotency_records
                     FOR EACH ROW EXECUTE FUNCTION pass_gate();",
                )
                .expect("the gate trigger");
            let mut holder = self.connect();
            holder
                .batch_execute("BEGIN; UPDATE gate SET n = n WHERE id = 1")
                .expect("the gate's row lock");
            let mut monitor = self.connect();
            Gate {
                reached: Box::new(move || Self::lock_waiters(&mut monitor) >= Some(1)),
                open: Some(Box::new(move || {
                    // Closing the connection would open it too.
                    let _ = holder.batch_execute("ROLLBACK");
                })),
            }
        }
    }

    #[cfg(feature = "mysql")]
    impl Cancellation for crate::common::Mysql {
        const SLOW_STATEMENT: &'static str = "SELECT SLEEP(10)";

        fn slow_statement_running(conn: &mut Self::Conn) -> bool {
            scalar(
                conn,
                "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST \
                 WHERE DB = DATABASE() AND INFO LIKE 'SELECT SLEEP%'",
            ) > 0
        }

        fn lock_waiters(conn: &mut Self::Conn) -> Option<i64> {
            // The statements the tests hold at a lock (a running one cannot
            // finish): a claim, or the record's update, which shows the
            // gate trigger's statement. (INNODB_TRX is a cache that polling
            // keeps stale.)
            Some(scalar(
                conn,
                "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST \
                 WHERE DB = DATABASE() AND ID <> CONNECTION_ID() AND COMMAND <> 'Sleep' \
                 AND (INFO LIKE 'INSERT IGNORE INTO%idempotency_records%' \
                 OR INFO LIKE 'UPDATE%idempotency_records%' OR INFO LIKE 'UPDATE gate %')",
            ))
        }

        fn idle_in_transaction(conn: &mut Self::Conn) -> i64 {
            // MySQL shows no transaction state per session reliably: a
            // transaction left open holds the locks of its writes, which a
            // locking read that does not wait runs into.
            let mut held = 0;
            for table in ["idempotency_records", "payments"] {
                let sql = format!("SELECT COUNT(*) AS n FROM {table} FOR UPDATE NOWAIT");
                match diesel::sql_query(&sql).get_result::<N>(conn) {
                    Ok(_) => {}
                    Err(e) if e.to_string().contains("Lock wait timeout") => held += 1,
                    Err(e) => panic!("{sql}: {e}"),
                }
            }
            held
        }

        fn payments_by_amount(conn: &mut Self::Conn) -> BTreeMap<i64, i64> {
            by_amount(conn)
        }

        async fn gate_record_updates(&self, _: &mut Self::AsyncConn) -> Gate {
            let mut setup = self.connect();
            for sql in [
                "CREATE TABLE gate (id INT PRIMARY KEY, n INT NOT NULL) ENGINE = InnoDB",
                "INSERT INTO gate VALUES (1, 0)",
                "CREATE TRIGGER record_update_gate BEFORE UPDATE ON idempotency_records \
                 FOR EACH ROW UPDATE gate SET n = n + 1 WHERE id = 1",
            ] {
                setup.batch_execute(sql).expect("the gate trigger");
            }
            let mut holder = self.connect();
            holder
                .batch_execute("BEGIN")
                .expect("the gate's transaction");
            holder
                .batch_execute("UPDATE gate SET n = n WHERE id = 1")
                .expect("the gate's row lock");
            let mut monitor = self.connect();
            Gate {
                reached: Box::new(move || Self::lock_waiters(&mut monitor) >= Some(1)),
                open: Some(Box::new(move || {
                    // Closing the connection would open it too.
                    let _ = holder.batch_execute("ROLLBACK");
                })),
            }
        }
    }

    #[cfg(feature = "sqlite")]
    diesel::define_sql_function! {
        /// Waits, in a trigger, until the test opens the gate.
        fn record_gate() -> diesel::sql_types::Integer;
    }

    #[cfg(feature = "sqlite")]
    impl Cancellation for crate::common::Sqlite {
        const DROP_WAITS_FOR_STATEMENT: bool = true;
        const USABLE_AFTER_DROP: bool = true;
        const SLOW_STATEMENT: &'static str = "WITH RECURSIVE c(x) AS \
             (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) SELECT COUNT(*) FROM c";

        fn slow_statement_running(_: &mut Self::Conn) -> bool {
            true
        }

        fn lock_waiters(_: &mut Self::Conn) -> Option<i64> {
            None
        }

        fn idle_in_transaction(conn: &mut Self::Conn) -> i64 {
            conn.batch_execute("PRAGMA busy_timeout = 0")
                .expect("busy timeout off");
            let held = conn.batch_execute("BEGIN IMMEDIATE").is_err();
            if !held {
                conn.batch_execute("ROLLBACK").expect("rollback");
            }
            conn.batch_execute("PRAGMA busy_timeout = 60000")
                .expect("busy timeout back");
            i64::from(held)
        }

        fn payments_by_amount(conn: &mut Self::Conn) -> BTreeMap<i64, i64> {
            by_amount(conn)
        }

        async fn gate_record_updates(&self, conn: &mut Self::AsyncConn) -> Gate {
            use std::sync::{Mutex, mpsc};
            let (entered, has_entered) = mpsc::channel::<()>();
            let (release, released) = mpsc::channel::<()>();
            let (entered, released) = (Mutex::new(entered), Mutex::new(released));
            conn.spawn_blocking(move |conn| {
                record_gate_utils::register_nondeterministic_impl(conn, move || {
                    let _ = entered.lock().unwrap().send(());
                    let _ = released.lock().unwrap().recv_timeout(SETUP);
                    0
                })?;
                // A TEMP trigger: only this connection's updates pass it.
                diesel::sql_query(
                    "CREATE TEMP TRIGGER record_update_gate BEFORE UPDATE ON main.idempotency_records \
                     BEGIN SELECT record_gate(); END",
                )
                .execute(conn)
                .map(drop)
            })
            .await
            .expect("the gate trigger");
            Gate {
                reached: Box::new(move || has_entered.try_recv().is_ok()),
                open: Some(Box::new(move || {
                    let _ = release.send(());
                })),
            }
        }
    }

    /// Returns once `condition` holds, polling it; fails after `within`.
    /// The condition may block (it sends statements on a blocking
    /// connection).
    async fn until(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        loop {
            if tokio::task::block_in_place(&mut condition) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: not within {within:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// How the body of a call waits, and where.
    #[derive(Default)]
    struct Stall {
        at: Option<At>,
        /// Told when the body reaches `at`.
        entered: Option<oneshot::Sender<()>>,
        /// What the body waits for at `at`; without it, forever.
        release: Option<oneshot::Receiver<()>>,
        /// Whether the body fails (after its insert).
        fail: bool,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum At {
        /// Waits before its insert.
        BeforeInsert,
        /// Waits after its insert, then inserts once more.
        AfterInsert,
        /// Runs the backend's slow statement after its insert.
        InSlowStatement,
    }

    impl Stall {
        fn at(at: At, entered: oneshot::Sender<()>) -> Self {
            Stall {
                at: Some(at),
                entered: Some(entered),
                ..Stall::default()
            }
        }

        fn signal(&mut self) {
            if let Some(entered) = self.entered.take() {
                let _ = entered.send(());
            }
        }

        async fn wait(&mut self) {
            self.signal();
            match self.release.take() {
                Some(release) => {
                    let _ = release.await;
                }
                None => std::future::pending::<()>().await,
            }
        }
    }

    async fn insert<B: AsyncBackend>(conn: &mut B::AsyncConn, amount: i64) -> Result<(), AppError> {
        let sql = format!("INSERT INTO payments (amount) VALUES ({amount})");
        B::execute(conn, &sql).await?;
        Ok(())
    }

    /// The function under test: one payment of `amount`; returns `returns`.
    async fn body<B: Cancellation>(
        conn: &mut B::AsyncConn,
        amount: i64,
        returns: i64,
        mut stall: Stall,
    ) -> Result<i64, AppError> {
        if stall.at == Some(At::BeforeInsert) {
            stall.wait().await;
        }
        insert::<B>(conn, amount).await?;
        match stall.at {
            Some(At::AfterInsert) => {
                stall.wait().await;
                insert::<B>(conn, amount).await?;
            }
            Some(At::InSlowStatement) => {
                stall.signal();
                B::execute(conn, B::SLOW_STATEMENT).await?;
            }
            _ => {}
        }
        if stall.fail {
            return Err(AppError::Declined);
        }
        Ok(returns)
    }

    /// A call of `key` with request `amount`.
    fn call<'a>(key: &'a str, amount: &'a i64, abandon_after: Option<Duration>) -> Call<'a> {
        let call = Call::new(NAMESPACE, key).request(amount);
        match abandon_after {
            Some(after) => call.abandon_after(after),
            None => call,
        }
    }

    async fn pay<B: Cancellation>(
        conn: &mut B::AsyncConn,
        call: Call<'_>,
        amount: i64,
        returns: i64,
        stall: Stall,
    ) -> Result<Outcome<i64>, AppError> {
        call.run_async(conn, async move |conn: &mut B::AsyncConn| {
            body::<B>(conn, amount, returns, stall).await
        })
        .await
    }

    /// Polls `call` until `ready` completes, then drops it (first polling
    /// `ready`, so a call that could finish is still dropped when ready).
    async fn drop_when<F: Future>(call: F, ready: impl Future<Output = ()>, point: Point) {
        let mut call = Box::pin(call);
        tokio::select! {
            biased;
            () = ready => {}
            _ = call.as_mut() => panic!("the call finished before it could be dropped {}", point.describe()),
        }
        drop(call);
    }

    /// Runs a call of `key` on `conn` and drops its future at `point`.
    async fn drop_at<B: Cancellation>(
        db: &B,
        monitor: &mut B::Conn,
        conn: &mut B::AsyncConn,
        key: &str,
        point: Point,
        abandon_after: Option<Duration>,
    ) {
        match point {
            Point::AtClaim => {
                // The key's holder, on its own connection and task: it
                // waits before its insert until released, then fails (its
                // rollback lets the dropped call's pending claim through,
                // which must then be rolled back too).
                let (entered, holder_entered) = oneshot::channel();
                let (release, holder_released) = oneshot::channel();
                let mut holder_conn = db.connect_async().await;
                let holder_key = key.to_owned();
                let holder = tokio::spawn(async move {
                    let stall = Stall {
                        release: Some(holder_released),
                        fail: true,
                        ..Stall::at(At::BeforeInsert, entered)
                    };
                    let call = call(&holder_key, &AMOUNT, None);
                    pay::<B>(&mut holder_conn, call, AMOUNT, HOLDER, stall)
                        .await
                        .map(|out| *out)
                });
                holder_entered.await.expect("the first call holds the key");
                let mut release = Some(release);
                let waiting = pay::<B>(
                    conn,
                    call(key, &AMOUNT, abandon_after),
                    AMOUNT,
                    DROPPED,
                    Stall::default(),
                );
                drop_when(
                    waiting,
                    async {
                        if B::lock_waiters(monitor).is_some() {
                            until(SETUP, "the duplicate waits at the claim", || {
                                B::lock_waiters(monitor) >= Some(1)
                            })
                            .await;
                        } else {
                            // The backend cannot tell: the duplicate waits
                            // for the database lock the holder has; drop it
                            // after a while.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        if B::DROP_WAITS_FOR_STATEMENT {
                            // The drop waits for the pending statement, which
                            // waits for the holder.
                            let _ = release.take().map(|release| release.send(()));
                        }
                    },
                    point,
                )
                .await;
                let _ = release.take().map(|release| release.send(()));
                let held = holder.await.expect("the first call's task");
                assert!(
                    matches!(held, Err(AppError::Declined)),
                    "the first call fails as its body says: {held:?}"
                );
            }
            Point::AfterClaim | Point::MidBody | Point::MidStatement => {
                let at = match point {
                    Point::AfterClaim => At::BeforeInsert,
                    Point::MidBody => At::AfterInsert,
                    _ => At::InSlowStatement,
                };
                let (entered, has_entered) = oneshot::channel();
                let running = pay::<B>(
                    conn,
                    call(key, &AMOUNT, abandon_after),
                    AMOUNT,
                    DROPPED,
                    Stall::at(at, entered),
                );
                drop_when(
                    running,
                    async {
                        has_entered.await.expect("the body starts");
                        if point == Point::MidStatement {
                            until(SETUP, "the slow statement runs", || {
                                B::slow_statement_running(monitor)
                            })
                            .await;
                        }
                    },
                    point,
                )
                .await;
            }
            Point::StoringResult => {
                let mut gate = db.gate_record_updates(conn).await;
                let storing = pay::<B>(
                    conn,
                    call(key, &AMOUNT, abandon_after),
                    AMOUNT,
                    DROPPED,
                    Stall::default(),
                );
                drop_when(
                    storing,
                    async {
                        until(
                            SETUP,
                            "the result's update waits at the gate",
                            &mut gate.reached,
                        )
                        .await;
                        if B::DROP_WAITS_FOR_STATEMENT {
                            gate.open();
                        }
                    },
                    point,
                )
                .await;
                gate.open();
            }
        }
    }

    /// The bound within which a dropped call's key is free.
    fn bound(abandon_after: Option<Duration>) -> Duration {
        abandon_after.map_or(BOUND, |after| after + ABANDON_SLACK)
    }

    /// A duplicate of the dropped call, on another connection, must get the
    /// key by `from + bound` and run the body.
    async fn duplicate_runs_the_body<B: Cancellation>(
        conn: &mut B::AsyncConn,
        key: &str,
        abandon_after: Option<Duration>,
        from: Instant,
        point: Point,
    ) {
        let bound = bound(abandon_after);
        let duplicate = pay::<B>(
            conn,
            call(key, &AMOUNT, abandon_after),
            AMOUNT,
            DUPLICATE,
            Stall::default(),
        );
        let answer = tokio::time::timeout(bound.saturating_sub(from.elapsed()), duplicate)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{}: a duplicate on another connection did not get the key within {bound:?} \
                     after the call was dropped {}",
                    B::NAME,
                    point.describe()
                )
            });
        let out = answer.unwrap_or_else(|e| {
            panic!(
                "{}: the duplicate after a drop {} failed: {e:?}",
                B::NAME,
                point.describe()
            )
        });
        assert!(
            !out.is_replayed(),
            "{}: the call dropped {} stored a result, which the duplicate replayed",
            B::NAME,
            point.describe()
        );
        assert_eq!(*out, DUPLICATE);
    }

    /// Exactly one payment of `amount` is committed.
    fn committed_once<B: Cancellation>(monitor: &mut B::Conn, amount: i64, what: &str) {
        let committed = B::payments_by_amount(monitor)
            .get(&amount)
            .copied()
            .unwrap_or(0);
        assert_eq!(committed, 1, "{}: committed executions of {what}", B::NAME);
    }

    /// No session of the test database stays idle inside a transaction.
    async fn no_transaction_left<B: Cancellation>(monitor: &mut B::Conn, after: &str) {
        let what = format!(
            "{}: a session stayed idle in a transaction (or held its locks) {after}",
            B::NAME
        );
        until(BOUND, &what, || B::idle_in_transaction(monitor) == 0).await;
    }

    /// A `reject` call of `key` answers `InFlight`: the key is held.
    async fn key_is_held<B: Cancellation>(conn: &mut B::AsyncConn, key: &str, point: Point) {
        let call = call(key, &AMOUNT, None).on_conflict(OnConflict::Reject);
        let answer = pay::<B>(conn, call, AMOUNT, DUPLICATE, Stall::default()).await;
        assert!(
            matches!(
                answer,
                Err(AppError::Idempotency(
                    diesel_idempotent::Error::InFlight { .. }
                ))
            ),
            "{}: the key of a call dropped {} is held until its connection is closed \
             (the driver sends nothing when the call is dropped); got {answer:?}",
            B::NAME,
            point.describe()
        );
    }

    /// Diesel's view of `conn`: outside any transaction, not broken.
    fn outside_any_transaction<B: Cancellation>(conn: &mut B::AsyncConn) {
        let depth =
            <B::AsyncConn as AsyncConnection>::TransactionManager::transaction_manager_status_mut(
                conn,
            )
            .transaction_depth();
        assert!(
            matches!(depth, Ok(None)),
            "{}: the pool handed out a connection inside a transaction: {depth:?}",
            B::NAME
        );
    }

    /// The next call on the dropped call's own connection works in a fresh
    /// transaction (its write committed) or is a typed error; never a write
    /// that silently joins the dropped call's transaction.
    async fn next_call_on_the_same_connection<B: Cancellation>(
        conn: &mut B::AsyncConn,
        monitor: &mut B::Conn,
        point: Point,
    ) {
        let answer = pay::<B>(
            conn,
            call("next", &NEXT_AMOUNT, None),
            NEXT_AMOUNT,
            NEXT,
            Stall::default(),
        )
        .await;
        match answer {
            Ok(out) => {
                assert!(!out.is_replayed());
                committed_once::<B>(
                    monitor,
                    NEXT_AMOUNT,
                    "a call on the connection of a dropped call",
                );
            }
            Err(AppError::Idempotency(diesel_idempotent::Error::Database(
                diesel::result::Error::BrokenTransactionManager,
            ))) if !B::USABLE_AFTER_DROP => {
                assert_eq!(
                    B::payments_by_amount(monitor).get(&NEXT_AMOUNT),
                    None,
                    "{}: a call that failed committed a payment",
                    B::NAME
                );
            }
            Err(e) => panic!(
                "{}: the next call on the connection of a call dropped {} failed: {e:?}",
                B::NAME,
                point.describe()
            ),
        }
    }

    /// A call dropped at `point`, on a connection from `via`: the key is
    /// free within the bound, the body ran once, and the connection is not
    /// used again inside the dropped call's transaction.
    pub async fn dropped_call<B: Cancellation>(
        via: Via,
        point: Point,
        abandon_after: Option<Duration>,
    ) {
        let db = B::fresh();
        match via {
            Via::Deadpool => {
                let pool = db.deadpool(4);
                dropped_call_on_pool(&db, pool, true, point, abandon_after).await;
            }
            Via::Bb8 => {
                let pool = db.bb8(4).await;
                dropped_call_on_pool(&db, pool, false, point, abandon_after).await;
            }
            Via::Plain => dropped_call_on_plain_connection(&db, point, abandon_after).await,
        }
    }

    async fn dropped_call_on_pool<B: Cancellation, P: TestPool<Conn = B::AsyncConn>>(
        db: &B,
        pool: P,
        deadpool: bool,
        point: Point,
        abandon_after: Option<Duration>,
    ) {
        let key = "dropped";
        let mut monitor = db.connect();
        let mut dropped = pool.checkout().await;
        let mut other = pool.checkout().await;
        drop_at(db, &mut monitor, &mut *dropped, key, point, abandon_after).await;
        // Back to the pool: bb8 checks it there, deadpool at its next
        // checkout.
        drop(dropped);
        let mut from = Instant::now();
        if deadpool && !B::DEADPOOL_RELEASES_ON_DROP && abandon_after.is_none() {
            // The known limit: the connection sits in the pool inside the
            // dropped call's transaction until it is checked out again
            // (with `abandon_after`, until the server closes it).
            // A call dropped while it waited at the claim has its pending
            // insert killed (`KILL QUERY`): it may never take the key.
            if point != Point::AtClaim {
                key_is_held::<B>(&mut *other, key, point).await;
            }
            drop(pool.checkout().await);
            from = Instant::now();
        }
        duplicate_runs_the_body::<B>(&mut *other, key, abandon_after, from, point).await;
        committed_once::<B>(&mut monitor, AMOUNT, "the key's body");
        assert_eq!(monitor.count_records().unwrap(), 1, "{}: records", B::NAME);
        no_transaction_left::<B>(
            &mut monitor,
            &format!("after a call was dropped {}", point.describe()),
        )
        .await;

        let mut next = pool.checkout().await;
        outside_any_transaction::<B>(&mut *next);
        let out = pay::<B>(
            &mut *next,
            call("next", &NEXT_AMOUNT, None),
            NEXT_AMOUNT,
            NEXT,
            Stall::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: a call on the pool's next connection: {e:?}", B::NAME));
        assert!(!out.is_replayed());
        committed_once::<B>(
            &mut monitor,
            NEXT_AMOUNT,
            "a call on the pool's next connection",
        );
    }

    async fn dropped_call_on_plain_connection<B: Cancellation>(
        db: &B,
        point: Point,
        abandon_after: Option<Duration>,
    ) {
        let key = "dropped";
        let mut monitor = db.connect();
        let mut dropped = Some(db.connect_async().await);
        let mut other = db.connect_async().await;
        drop_at(
            db,
            &mut monitor,
            dropped.as_mut().unwrap(),
            key,
            point,
            abandon_after,
        )
        .await;
        let mut from = Instant::now();
        if !B::DEADPOOL_RELEASES_ON_DROP && abandon_after.is_none() {
            // The driver sends nothing when a call is dropped: the
            // connection keeps the transaction until it is closed (with
            // `abandon_after`, the server closes it).
            let mut conn = dropped.take().unwrap();
            next_call_on_the_same_connection::<B>(&mut conn, &mut monitor, point).await;
            if point != Point::AtClaim {
                key_is_held::<B>(&mut other, key, point).await;
            }
            drop(conn);
            from = Instant::now();
        }
        duplicate_runs_the_body::<B>(&mut other, key, abandon_after, from, point).await;
        committed_once::<B>(&mut monitor, AMOUNT, "the key's body");
        assert_eq!(monitor.count_records().unwrap(), 1, "{}: records", B::NAME);
        no_transaction_left::<B>(
            &mut monitor,
            &format!("after a call was dropped {}", point.describe()),
        )
        .await;
        if let Some(mut conn) = dropped {
            next_call_on_the_same_connection::<B>(&mut conn, &mut monitor, point).await;
        }
    }

    /// PostgreSQL's `abandon_after`: a call that stalls while holding the
    /// key (not dropped) is ended by the server after that idle time; a
    /// duplicate then gets the key, and the stalled call, resumed, fails
    /// with nothing of it committed.
    pub async fn abandon_after_ends_a_stalled_call<
        B: Cancellation,
        P: TestPool<Conn = B::AsyncConn>,
    >(
        db: &B,
        pool: P,
    ) {
        let key = "stalled";
        let mut monitor = db.connect();
        let (entered, has_entered) = oneshot::channel();
        let (release, released) = oneshot::channel();
        let stalled_pool = pool.clone();
        let stalled = tokio::spawn(async move {
            let mut conn = stalled_pool.checkout().await;
            let stall = Stall {
                release: Some(released),
                ..Stall::at(At::AfterInsert, entered)
            };
            let call = call(key, &AMOUNT, Some(ABANDON_AFTER));
            pay::<B>(&mut *conn, call, AMOUNT, STALLED, stall)
                .await
                .map(|out| *out)
        });
        has_entered.await.expect("the stalled call holds the key");
        let from = Instant::now();
        let mut other = pool.checkout().await;
        duplicate_runs_the_body::<B>(&mut *other, key, Some(ABANDON_AFTER), from, Point::MidBody)
            .await;

        release.send(()).expect("the stalled call waits");
        let answer = stalled.await.expect("the stalled call's task");
        assert!(
            answer.is_err(),
            "the stalled call, resumed after the server ended its transaction, must fail: {answer:?}"
        );
        // The duplicate's payment only: the stalled call's two are gone.
        committed_once::<B>(&mut monitor, AMOUNT, "the key's body");
        let replay = pay::<B>(
            &mut *other,
            call(key, &AMOUNT, None),
            AMOUNT,
            NEXT,
            Stall::default(),
        )
        .await
        .expect("a replay");
        assert!(replay.is_replayed());
        assert_eq!(*replay, DUPLICATE);
        no_transaction_left::<B>(&mut monitor, "after abandon_after ended a stalled call").await;
    }

    /// Duplicates waiting at the claim behind a call that is then dropped
    /// mid-body: none fails, one runs the body and the others replay it.
    /// Ten keys, six duplicates each.
    pub async fn waiters_behind_a_dropped_call<
        B: Cancellation,
        P: TestPool<Conn = B::AsyncConn>,
    >(
        db: &B,
        pool: P,
    ) {
        const KEYS: i64 = 10;
        const WAITERS: i64 = 6;
        let mut monitor = db.connect();
        for round in 0..KEYS {
            let key = format!("waited-for-{round}");
            let amount = AMOUNT + round;
            let mut dropped = pool.checkout().await;
            let (entered, has_entered) = oneshot::channel();
            let running = pay::<B>(
                &mut *dropped,
                call(&key, &amount, None),
                amount,
                DROPPED,
                Stall::at(At::AfterInsert, entered),
            );
            let mut waiters = Vec::new();
            drop_when(
                running,
                async {
                    has_entered.await.expect("the body starts");
                    for waiter in 0..WAITERS {
                        let (pool, key) = (pool.clone(), key.clone());
                        waiters.push(tokio::spawn(async move {
                            let mut conn = pool.checkout().await;
                            let call = call(&key, &amount, None);
                            let waiting =
                                pay::<B>(&mut *conn, call, amount, 10 + waiter, Stall::default());
                            tokio::time::timeout(STUCK, waiting).await
                        }));
                    }
                    if B::lock_waiters(&mut monitor).is_some() {
                        until(SETUP, "the duplicates wait at the claim", || {
                            B::lock_waiters(&mut monitor) >= Some(WAITERS)
                        })
                        .await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Point::MidBody,
            )
            .await;
            drop(dropped);
            let mut answers = Vec::new();
            for waiter in waiters {
                let answer = waiter.await.expect("a waiter's task").unwrap_or_else(|_| {
                    panic!(
                        "{}: a duplicate of {key} got no answer within {STUCK:?}",
                        B::NAME
                    )
                });
                answers.push(answer.unwrap_or_else(|e| {
                    panic!(
                        "{}: a duplicate waiting behind a call of {key} dropped mid-body failed: {e:?}",
                        B::NAME
                    )
                }));
            }
            let fresh: Vec<_> = answers.iter().filter(|out| !out.is_replayed()).collect();
            assert_eq!(
                fresh.len(),
                1,
                "{}: duplicates of {key} that ran the body: {answers:?}",
                B::NAME
            );
            assert!(
                answers.iter().all(|out| **out == **fresh[0]),
                "{}: the duplicates of {key} got different results: {answers:?}",
                B::NAME
            );
            committed_once::<B>(&mut monitor, amount, &key);
            no_transaction_left::<B>(&mut monitor, "after the duplicates finished").await;
        }
    }

    /// A small xorshift generator: the same rounds on every run.
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, n: u64) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x % n
        }
    }

    const SEED: u64 = 0x9E37_79B9_7F4A_7C15;

    /// A round's body: one payment of the round's amount, a few ms of work.
    /// Counts the bodies that got past their insert in `inserted`.
    async fn work<B: Cancellation>(
        conn: &mut B::AsyncConn,
        key: &str,
        round: i64,
        caller: i64,
        work: Duration,
        inserted: &AtomicI64,
    ) -> Result<i64, AppError> {
        let call = Call::new(NAMESPACE, key).request(&round);
        let out = call
            .run_async(
                conn,
                async move |conn: &mut B::AsyncConn| -> Result<i64, AppError> {
                    insert::<B>(conn, round).await?;
                    inserted.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(work).await;
                    Ok(caller)
                },
            )
            .await?;
        Ok(*out)
    }

    /// `rounds` rounds of `callers` concurrent callers of one key (a fresh
    /// key per round), each on its own pooled connection; some are
    /// cancelled before their claim, some mid-body, some not at all. Each
    /// key's body commits exactly once, every caller that finished and a
    /// final uncancelled call agree on its result, and no key stays held.
    pub async fn random_cancellations<B: Cancellation, P: TestPool<Conn = B::AsyncConn>>(
        db: &B,
        pool: P,
        rounds: i64,
        callers: i64,
    ) {
        let mut monitor = db.connect();
        let mut rng = XorShift(SEED);
        let (mut cancelled, mut finished) = (0, 0);
        let inserted = Arc::new(AtomicI64::new(0));
        for round in 1..=rounds {
            let key = format!("round-{round}");
            let mut tasks = Vec::new();
            for caller in 0..callers {
                let cancel_after = match rng.below(3) {
                    // Before the claim, or soon after the caller began waiting at it.
                    0 => Some(Duration::from_micros(rng.below(1_000))),
                    // Later: waiting at the claim, or mid-body for the
                    // caller that holds the key (bodies take 2 to 5 ms).
                    1 => Some(Duration::from_micros(2_000 + rng.below(6_000))),
                    _ => None,
                };
                let work_for = Duration::from_micros(2_000 + rng.below(3_000));
                let (pool, key, inserted) = (pool.clone(), key.clone(), Arc::clone(&inserted));
                tasks.push(tokio::spawn(async move {
                    let mut conn = pool.checkout().await;
                    let running = work::<B>(&mut *conn, &key, round, caller, work_for, &inserted);
                    match cancel_after {
                        Some(after) => tokio::time::timeout(after, running).await.ok(),
                        None => Some(tokio::time::timeout(STUCK, running).await.unwrap_or_else(|_| {
                            panic!("{}: an uncancelled caller of {key} got no answer within {STUCK:?}", B::NAME)
                        })),
                    }
                }));
            }
            let mut answers = Vec::new();
            for task in tasks {
                match task.await.expect("a caller's task") {
                    Some(answer) => {
                        finished += 1;
                        answers.push(answer.unwrap_or_else(|e| {
                            panic!("{}: a caller of {key} failed: {e:?}", B::NAME)
                        }));
                    }
                    None => cancelled += 1,
                }
            }
            let mut conn = pool.checkout().await;
            let last = tokio::time::timeout(
                BOUND,
                work::<B>(&mut *conn, &key, round, callers, Duration::ZERO, &inserted),
            )
            .await
            .unwrap_or_else(|_| {
                panic!("{}: {key} is still held {BOUND:?} after its round", B::NAME)
            })
            .unwrap_or_else(|e| panic!("{}: the final call of {key} failed: {e:?}", B::NAME));
            drop(conn);
            for answer in answers {
                assert_eq!(
                    answer,
                    last,
                    "{}: callers of {key} got different results",
                    B::NAME
                );
            }
            no_transaction_left::<B>(&mut monitor, &format!("after round {round}")).await;
        }
        let committed = B::payments_by_amount(&mut monitor);
        for round in 1..=rounds {
            assert_eq!(
                committed.get(&round).copied().unwrap_or(0),
                1,
                "{}: committed executions of round {round}'s key",
                B::NAME
            );
        }
        assert_eq!(
            committed.len() as i64,
            rounds,
            "{}: payments of no round",
            B::NAME
        );
        assert_eq!(
            monitor.count_records().unwrap(),
            rounds,
            "{}: records",
            B::NAME
        );
        // Bodies past their insert whose payment is not committed: dropped
        // mid-body (a body never fails here).
        let dropped_mid_body = inserted.load(Ordering::Relaxed) - rounds;
        println!(
            "{}: {rounds} rounds x {callers} callers: {cancelled} cancelled \
             ({dropped_mid_body} of them mid-body), {finished} finished",
            B::NAME
        );
        assert!(
            cancelled > 0 && finished > 0,
            "the rounds cancel some callers and not others"
        );
        assert!(dropped_mid_body > 0, "some callers are cancelled mid-body");
    }
}

/// One test per await point, for one backend and connection source; the
/// bound is 2 s, or `abandon_after` + 700 ms when set.
#[cfg(feature = "async")]
macro_rules! dropped_call_tests {
    (#[$cfg:meta] $backend:ty, $via:ident, $abandon_after:expr; $($name:ident => $point:ident),* $(,)?) => {
        $(
            #[$cfg]
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                cancellation::dropped_call::<$backend>(
                    cancellation::Via::$via,
                    cancellation::Point::$point,
                    $abandon_after,
                )
                .await;
            }
        )*
    };
}

#[cfg(feature = "async")]
dropped_call_tests!(#[cfg(feature = "postgres")] common::Postgres, Deadpool, None;
    pg_deadpool_dropped_at_the_claim_leaves_no_claim => AtClaim,
    pg_deadpool_dropped_after_the_claim_leaves_no_claim => AfterClaim,
    pg_deadpool_dropped_mid_body_leaves_no_claim => MidBody,
    pg_deadpool_dropped_mid_statement_leaves_no_claim => MidStatement,
    pg_deadpool_dropped_while_storing_the_result_leaves_no_claim => StoringResult,
);

#[cfg(feature = "async")]
dropped_call_tests!(#[cfg(feature = "postgres")] common::Postgres, Bb8, None;
    pg_bb8_dropped_at_the_claim_leaves_no_claim => AtClaim,
    pg_bb8_dropped_after_the_claim_leaves_no_claim => AfterClaim,
    pg_bb8_dropped_mid_body_leaves_no_claim => MidBody,
    pg_bb8_dropped_mid_statement_leaves_no_claim => MidStatement,
    pg_bb8_dropped_while_storing_the_result_leaves_no_claim => StoringResult,
);

#[cfg(feature = "async")]
dropped_call_tests!(#[cfg(feature = "postgres")] common::Postgres, Plain, None;
    pg_connection_dropped_at_the_claim_leaves_no_claim => AtClaim,
    pg_connection_dropped_after_the_claim_leaves_no_claim => AfterClaim,
    pg_connection_dropped_mid_body_leaves_no_claim => MidBody,
    pg_connection_dropped_mid_statement_leaves_no_claim => MidStatement,
    pg_connection_dropped_while_storing_the_result_leaves_no_claim => StoringResult,
);

#[cfg(feature = "async")]
dropped_call_tests!(#[cfg(feature = "postgres")] common::Postgres, Deadpool, Some(cancellation::ABANDON_AFTER);
    pg_deadpool_abandon_after_dropped_at_the_claim_frees_the_key_within_it => AtClaim,
    pg_deadpool_abandon_after_dropped_after_the_claim_frees_the_key_within_it => AfterClaim,
    pg_deadpool_abandon_after_dropped_mid_body_frees_the_key_within_it => MidBody,
    pg_deadpool_abandon_after_dropped_mid_statement_frees_the_key_within_it => MidStatement,
    pg_deadpool_abandon_after_dropped_while_storing_the_result_frees_the_key_within_it => StoringResult,
);

#[cfg(feature = "async")]
dropped_call_tests!(#[cfg(feature = "postgres")] common::Postgres, Plain, Some(cancellation::ABANDON_AFTER);
    pg_connection_abandon_after_dropped_at_the_claim_frees_the_key_within_it => AtClaim,
    pg_connection_abandon_after_dropped_after_the_claim_frees_the_key_within_it => AfterClaim,
    pg_connection_abandon_after_dropped_mid_body_frees_the_key_within_it => MidBody,
    pg_connection_abandon_after_dropped_mid_statement_frees_the_key_within_it => MidStatement,
    pg_connection_abandon_after_dropped_while_storing_the_result_frees_the_key_within_it => StoringResult,
);

#[cfg(feature = "async")]
dropped_call_tests!(#[cfg(feature = "mysql")] common::Mysql, Bb8, None;
    mysql_bb8_dropped_at_the_claim_leaves_no_claim => AtClaim,
    mysql_bb8_dropped_after_the_claim_leaves_no_claim => AfterClaim,
    mysql_bb8_dropped_mid_body_leaves_no_claim => MidBody,
    mysql_bb8_dropped_mid_statement_leaves_no_claim => MidStatement,
    mysql_bb8_dropped_while_storing_the_result_leaves_no_claim => StoringResult,
);

// deadpool on MySQL: the key stays held until the connection's next
// checkout (asserted), then is free.
#[cfg(feature = "async")]
dropped_call_tests!(#[cfg(feature = "mysql")] common::Mysql, Deadpool, None;
    mysql_deadpool_dropped_at_the_claim_holds_the_key_until_the_next_checkout => AtClaim,
    mysql_deadpool_dropped_after_the_claim_holds_the_key_until_the_next_checkout => AfterClaim,
    mysql_deadpool_dropped_mid_body_holds_the_key_until_the_next_checkout => MidBody,
    mysql_deadpool_dropped_mid_statement_holds_the_key_until_the_next_checkout => MidStatement,
    mysql_deadpool_dropped_while_storing_the_result_holds_the_key_until_the_next_checkout => StoringResult,
);

// A plain MySQL connection: the key stays held until the connection is
// closed (asserted); its next call is a typed error.
#[cfg(feature = "async")]
dropped_call_tests!(#[cfg(feature = "mysql")] common::Mysql, Plain, None;
    mysql_connection_dropped_at_the_claim_holds_the_key_until_closed => AtClaim,
    mysql_connection_dropped_after_the_claim_holds_the_key_until_closed => AfterClaim,
    mysql_connection_dropped_mid_body_holds_the_key_until_closed => MidBody,
    mysql_connection_dropped_mid_statement_holds_the_key_until_closed => MidStatement,
    mysql_connection_dropped_while_storing_the_result_holds_the_key_until_closed => StoringResult,
);

// MySQL's `abandon_after` (the session's `wait_timeout`): the server
// closes the idle connection of a dropped call, in a pool or not, so the
// key is free within it without a checkout.
#[cfg(feature = "async")]
dropped_call_tests!(#[cfg(feature = "mysql")] common::Mysql, Deadpool, Some(cancellation::MYSQL_ABANDON_AFTER);
    mysql_deadpool_abandon_after_dropped_at_the_claim_frees_the_key_within_it => AtClaim,
    mysql_deadpool_abandon_after_dropped_after_the_claim_frees_the_key_within_it => AfterClaim,
    mysql_deadpool_abandon_after_dropped_mid_body_frees_the_key_within_it => MidBody,
    mysql_deadpool_abandon_after_dropped_mid_statement_frees_the_key_within_it => MidStatement,
    mysql_deadpool_abandon_after_dropped_while_storing_the_result_frees_the_key_within_it => StoringResult,
);

#[cfg(feature = "async")]
dropped_call_tests!(#[cfg(feature = "mysql")] common::Mysql, Plain, Some(cancellation::MYSQL_ABANDON_AFTER);
    mysql_connection_abandon_after_dropped_at_the_claim_frees_the_key_within_it => AtClaim,
    mysql_connection_abandon_after_dropped_after_the_claim_frees_the_key_within_it => AfterClaim,
    mysql_connection_abandon_after_dropped_mid_body_frees_the_key_within_it => MidBody,
    mysql_connection_abandon_after_dropped_mid_statement_frees_the_key_within_it => MidStatement,
    mysql_connection_abandon_after_dropped_while_storing_the_result_frees_the_key_within_it => StoringResult,
);

#[cfg(feature = "async")]
dropped_call_tests!(#[cfg(feature = "sqlite")] common::Sqlite, Deadpool, None;
    sqlite_deadpool_dropped_at_the_claim_leaves_no_claim => AtClaim,
    sqlite_deadpool_dropped_after_the_claim_leaves_no_claim => AfterClaim,
    sqlite_deadpool_dropped_mid_body_leaves_no_claim => MidBody,
    sqlite_deadpool_dropped_mid_statement_leaves_no_claim => MidStatement,
    sqlite_deadpool_dropped_while_storing_the_result_leaves_no_claim => StoringResult,
);

#[cfg(feature = "async")]
dropped_call_tests!(#[cfg(feature = "sqlite")] common::Sqlite, Bb8, None;
    sqlite_bb8_dropped_at_the_claim_leaves_no_claim => AtClaim,
    sqlite_bb8_dropped_after_the_claim_leaves_no_claim => AfterClaim,
    sqlite_bb8_dropped_mid_body_leaves_no_claim => MidBody,
    sqlite_bb8_dropped_mid_statement_leaves_no_claim => MidStatement,
    sqlite_bb8_dropped_while_storing_the_result_leaves_no_claim => StoringResult,
);

#[cfg(feature = "async")]
dropped_call_tests!(#[cfg(feature = "sqlite")] common::Sqlite, Plain, None;
    sqlite_connection_dropped_at_the_claim_leaves_no_claim_and_stays_usable => AtClaim,
    sqlite_connection_dropped_after_the_claim_leaves_no_claim_and_stays_usable => AfterClaim,
    sqlite_connection_dropped_mid_body_leaves_no_claim_and_stays_usable => MidBody,
    sqlite_connection_dropped_mid_statement_leaves_no_claim_and_stays_usable => MidStatement,
    sqlite_connection_dropped_while_storing_the_result_leaves_no_claim_and_stays_usable => StoringResult,
);

/// One line per backend and pool: duplicates waiting behind a dropped call.
#[cfg(feature = "async")]
macro_rules! waiters_test {
    (#[$cfg:meta] $name:ident, $backend:ty, $pool:ident) => {
        #[$cfg]
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            use common::Backend;
            use common::async_backends::AsyncBackend;
            let db = <$backend>::fresh();
            waiters_test!(@pool db, $pool, pool);
            cancellation::waiters_behind_a_dropped_call(&db, pool).await;
        }
    };
    (@pool $db:ident, deadpool, $pool:ident) => {
        let $pool = $db.deadpool(8);
    };
    (@pool $db:ident, bb8, $pool:ident) => {
        let $pool = $db.bb8(8).await;
    };
}

#[cfg(feature = "async")]
waiters_test!(
    #[cfg(feature = "postgres")]
    pg_deadpool_duplicates_waiting_behind_a_dropped_call_get_one_execution,
    common::Postgres,
    deadpool
);
#[cfg(feature = "async")]
waiters_test!(
    #[cfg(feature = "postgres")]
    pg_bb8_duplicates_waiting_behind_a_dropped_call_get_one_execution,
    common::Postgres,
    bb8
);
#[cfg(feature = "async")]
waiters_test!(
    #[cfg(feature = "mysql")]
    mysql_bb8_duplicates_waiting_behind_a_dropped_call_get_one_execution,
    common::Mysql,
    bb8
);
#[cfg(feature = "async")]
waiters_test!(
    #[cfg(feature = "sqlite")]
    sqlite_deadpool_duplicates_waiting_behind_a_dropped_call_get_one_execution,
    common::Sqlite,
    deadpool
);

#[cfg(all(feature = "async", feature = "postgres"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_deadpool_abandon_after_ends_a_stalled_call_and_frees_its_key() {
    use common::Backend;
    use common::async_backends::AsyncBackend;
    let db = common::Postgres::fresh();
    let pool = db.deadpool(4);
    cancellation::abandon_after_ends_a_stalled_call(&db, pool).await;
}

#[cfg(all(feature = "async", feature = "postgres"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_bb8_abandon_after_ends_a_stalled_call_and_frees_its_key() {
    use common::Backend;
    use common::async_backends::AsyncBackend;
    let db = common::Postgres::fresh();
    let pool = db.bb8(4).await;
    cancellation::abandon_after_ends_a_stalled_call(&db, pool).await;
}

#[cfg(all(feature = "async", feature = "postgres"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_deadpool_200_rounds_of_16_randomly_cancelled_duplicates_commit_once() {
    use common::Backend;
    use common::async_backends::AsyncBackend;
    let db = common::Postgres::fresh();
    let pool = db.deadpool(17);
    cancellation::random_cancellations(&db, pool, 200, 16).await;
}

#[cfg(all(feature = "async", feature = "postgres"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_bb8_200_rounds_of_16_randomly_cancelled_duplicates_commit_once() {
    use common::Backend;
    use common::async_backends::AsyncBackend;
    let db = common::Postgres::fresh();
    let pool = db.bb8(17).await;
    cancellation::random_cancellations(&db, pool, 200, 16).await;
}

#[cfg(all(feature = "async", feature = "mysql"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_bb8_200_rounds_of_16_randomly_cancelled_duplicates_commit_once() {
    use common::Backend;
    use common::async_backends::AsyncBackend;
    let db = common::Mysql::fresh();
    let pool = db.bb8(17).await;
    cancellation::random_cancellations(&db, pool, 200, 16).await;
}

#[cfg(all(feature = "async", feature = "sqlite"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_deadpool_200_rounds_of_16_randomly_cancelled_duplicates_commit_once() {
    use common::Backend;
    use common::async_backends::AsyncBackend;
    let db = common::Sqlite::fresh();
    let pool = db.deadpool(17);
    cancellation::random_cancellations(&db, pool, 200, 16).await;
}

/// The attribute form on an `async fn`: what it expands to is the call
/// builder above, with `abandon_after` from the attribute.
#[cfg(all(feature = "async", feature = "postgres"))]
mod attribute {
    use std::time::{Duration, Instant};

    use diesel::sql_types::BigInt;
    use diesel_async::{AsyncPgConnection, RunQueryDsl};
    use diesel_idempotent::idempotent;
    use tokio::sync::oneshot;

    use crate::common::async_backends::AsyncBackend;
    use crate::common::{AppError, Backend, TestConn};

    /// One payment per key; waits for `release` after its insert.
    #[idempotent(
        key = key,
        ttl = "1h",
        name = "tests.cancellation.attribute",
        abandon_after = "300ms",
        skip(release)
    )]
    async fn charge(
        conn: &mut AsyncPgConnection,
        key: &str,
        amount: i64,
        release: oneshot::Receiver<()>,
    ) -> Result<i64, AppError> {
        diesel::sql_query("INSERT INTO payments (amount) VALUES ($1)")
            .bind::<BigInt, _>(amount)
            .execute(conn)
            .await?;
        let _ = release.await;
        Ok(amount)
    }

    fn released() -> oneshot::Receiver<()> {
        let (release, released) = oneshot::channel();
        release.send(()).unwrap();
        released
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn pg_attribute_async_fn_dropped_by_a_timeout_frees_its_key_within_abandon_after() {
        let db = crate::common::Postgres::fresh();
        let mut dropped = db.connect_async().await;
        let mut other = db.connect_async().await;
        let (_never, waits) = oneshot::channel();
        let timed_out = tokio::time::timeout(
            Duration::from_millis(200),
            charge(&mut dropped, "k", 7, waits),
        )
        .await;
        assert!(
            timed_out.is_err(),
            "the call waits in its body: {timed_out:?}"
        );

        let from = Instant::now();
        let duplicate = tokio::time::timeout(
            Duration::from_secs(1),
            charge(&mut other, "k", 7, released()),
        )
        .await
        .expect("a duplicate gets the key within abandon_after (300 ms) and 700 ms");
        assert_eq!(duplicate.expect("the duplicate runs the body"), 7);
        assert!(from.elapsed() < Duration::from_secs(1));
        let mut monitor = db.connect();
        assert_eq!(monitor.count_payments().unwrap(), 1, "committed executions");
        assert_eq!(monitor.count_records().unwrap(), 1);

        // The connection of the dropped call: a typed error, or a call that
        // commits.
        match charge(&mut dropped, "next", 8, released()).await {
            Ok(8) => assert_eq!(monitor.count_payments().unwrap(), 2),
            Err(AppError::Idempotency(diesel_idempotent::Error::Database(
                diesel::result::Error::BrokenTransactionManager,
            ))) => assert_eq!(monitor.count_payments().unwrap(), 1),
            other => panic!("the next call on the dropped call's connection: {other:?}"),
        }
    }
}
