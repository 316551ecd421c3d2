//! The guarantees of every call shape: [`Mode::ClaimFirst`] or
//! [`Mode::Optimistic`], each with [`Replay::InTransaction`] or
//! [`Replay::ReadFirst`]. One generic test body serves all four through the
//! runtime [`Call`](diesel_idempotent::Call) builder; the concurrency test
//! also runs a function under
//! `#[idempotent(mode = "optimistic", replay = "read_first")]`.
//!
//! Written once, as async code over diesel-async connections, in
//! [`nonblocking`]; `#[dual::blocking]` derives [`blocking`], the same tests
//! over Diesel's blocking connections, threads for tasks.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use diesel_idempotent::{Error, ManualClock, Mode, Outcome, Replay};

use super::{AppError, Payment};

/// The namespace of every call made through a [`Payer`].
pub const NAMESPACE: &str = "tests.modes";

/// The TTL of every call made through a [`Payer`].
pub const TTL: Duration = Duration::from_secs(3600);

/// When a call writes its record and where it looks for a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub mode: Mode,
    pub replay: Replay,
}

impl Shape {
    pub const CLAIM_FIRST: Shape = Shape {
        mode: Mode::ClaimFirst,
        replay: Replay::InTransaction,
    };
    pub const OPTIMISTIC: Shape = Shape {
        mode: Mode::Optimistic,
        replay: Replay::InTransaction,
    };
    pub const READ_FIRST: Shape = Shape {
        mode: Mode::ClaimFirst,
        replay: Replay::ReadFirst,
    };
    pub const OPTIMISTIC_READ_FIRST: Shape = Shape {
        mode: Mode::Optimistic,
        replay: Replay::ReadFirst,
    };

    /// A short name, used in keys and messages.
    pub fn name(self) -> &'static str {
        match (self.mode, self.replay) {
            (Mode::ClaimFirst, Replay::InTransaction) => "claim_first",
            (Mode::Optimistic, Replay::InTransaction) => "optimistic",
            (Mode::ClaimFirst, Replay::ReadFirst) => "read_first",
            (Mode::Optimistic, Replay::ReadFirst) => "optimistic+read_first",
        }
    }

    /// Whether a replay runs the body (and rolls it back): an optimistic
    /// call finds the key taken only after the body ran, unless a read
    /// first answered it.
    pub fn replay_runs_body(self) -> bool {
        self.mode == Mode::Optimistic && self.replay == Replay::InTransaction
    }
}

/// Every shape; the first (the default) is also the subject of the rest of
/// the suite and is here as the reference the others must match.
pub const SHAPES: [Shape; 4] = [
    Shape::CLAIM_FIRST,
    Shape::OPTIMISTIC,
    Shape::READ_FIRST,
    Shape::OPTIMISTIC_READ_FIRST,
];

/// The shapes that read first.
pub const READ_FIRST_SHAPES: [Shape; 2] = [Shape::READ_FIRST, Shape::OPTIMISTIC_READ_FIRST];

/// The clock a [`Payer`] reads: borrowed from the test, or shared with the
/// threads or tasks that call through the payer.
#[derive(Debug)]
pub enum PayerClock<'a> {
    Borrowed(&'a ManualClock),
    Shared(Arc<ManualClock>),
}

impl Deref for PayerClock<'_> {
    type Target = ManualClock;

    fn deref(&self) -> &ManualClock {
        match self {
            PayerClock::Borrowed(clock) => clock,
            PayerClock::Shared(clock) => clock,
        }
    }
}

impl<'a> From<&'a ManualClock> for PayerClock<'a> {
    fn from(clock: &'a ManualClock) -> Self {
        PayerClock::Borrowed(clock)
    }
}

impl From<&Arc<ManualClock>> for PayerClock<'_> {
    fn from(clock: &Arc<ManualClock>) -> Self {
        PayerClock::Shared(Arc::clone(clock))
    }
}

fn is_mismatch(result: &Result<Outcome<Payment>, AppError>, key: &str) -> bool {
    matches!(
        result.as_ref().err().and_then(AppError::idempotency),
        Some(Error::PayloadMismatch { key: k, .. }) if k == key
    )
}

fn is_in_flight(result: &Result<Outcome<Payment>, AppError>, key: &str) -> bool {
    matches!(
        result.as_ref().err().and_then(AppError::idempotency),
        Some(Error::InFlight { key: k, .. }) if k == key
    )
}

#[dual::blocking]
pub mod nonblocking {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use diesel::OptionalExtension;
    use diesel_idempotent::{
        Call, Clock, IdempotencyRecord, ManualClock, Mode, OnConflict, Outcome, Ttl, idempotent,
    };

    use super::{
        NAMESPACE, PayerClock, READ_FIRST_SHAPES, SHAPES, Shape, TTL, is_in_flight, is_mismatch,
    };
    use crate::common::rt::nonblocking as rt;
    use crate::common::{
        Account, AppError, AsyncSuiteBackend, AsyncTestConn, NewPayment, Payment, Then, clock,
    };

    /// Makes payments, once per key, in one [`Shape`], counting how often the
    /// body started (whether or not its effects were kept).
    #[derive(Debug)]
    pub struct Payer<'a> {
        pub shape: Shape,
        clock: PayerClock<'a>,
        on_conflict: OnConflict,
        runs: AtomicUsize,
    }

    impl<'a> Payer<'a> {
        /// A payer reading `clock`: a `&ManualClock`, or an
        /// `&Arc<ManualClock>` for a payer that threads or tasks share.
        pub fn new(shape: Shape, clock: impl Into<PayerClock<'a>>) -> Self {
            Payer {
                shape,
                clock: clock.into(),
                on_conflict: OnConflict::Wait,
                runs: AtomicUsize::new(0),
            }
        }

        /// The same payer, answering `InFlight` for a key held by an
        /// unfinished call.
        pub fn rejecting(mut self) -> Self {
            self.on_conflict = OnConflict::Reject;
            self
        }

        /// The same payer, waiting at most `limit` for a key held by an
        /// unfinished call, then answering `InFlight`.
        pub fn waiting_at_most(mut self, limit: Duration) -> Self {
            self.on_conflict = OnConflict::WaitFor(limit);
            self
        }

        /// How often the body started.
        pub fn runs(&self) -> usize {
            self.runs.load(Ordering::SeqCst)
        }

        /// The payment `req` under `key`: the body inserts one row into
        /// `payments`, then ends as `then` says.
        pub async fn pay<C: AsyncTestConn>(
            &self,
            conn: &mut C,
            key: &str,
            req: &NewPayment,
            then: Then,
        ) -> Result<Outcome<Payment>, AppError> {
            Call::new(NAMESPACE, key)
                .ttl(Ttl::from_secs(TTL.as_secs()))
                .clock(&*self.clock)
                .request(req)
                .mode(self.shape.mode)
                .replay(self.shape.replay)
                .on_conflict(self.on_conflict)
                .run_async(conn, async |conn: &mut C| -> Result<Payment, AppError> {
                    self.runs.fetch_add(1, Ordering::SeqCst);
                    let id = conn.insert_payment(req.amount).await?;
                    match then {
                        Then::Succeed => Ok(Payment {
                            id,
                            amount: req.amount,
                        }),
                        Then::Fail => Err(AppError::Declined),
                        Then::Panic => panic!("injected panic after the payment insert"),
                    }
                })
                .await
        }
    }

    /// A payment under `#[idempotent]` with both new options: the attribute
    /// path of [`Mode::Optimistic`] and
    /// [`Replay::ReadFirst`](super::Replay::ReadFirst).
    #[idempotent(
        key = key,
        ttl = "1h",
        name = "tests.modes_attribute",
        clock = clock,
        mode = "optimistic",
        replay = "read_first"
    )]
    pub async fn create_payment_optimistic_read_first<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        key: &str,
        req: &NewPayment,
    ) -> Result<Outcome<Payment>, AppError> {
        let id = conn.insert_payment(req.amount).await?;
        Ok(Payment {
            id,
            amount: req.amount,
        }
        .into())
    }

    /// Opens the account of `customer` at bank 1 under `key` in `mode`: the
    /// body's insert is guarded by the `accounts` unique constraint.
    pub async fn open_account<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        key: &str,
        customer: i64,
        mode: Mode,
    ) -> Result<Outcome<Account>, AppError> {
        Call::new("tests.modes_accounts", key)
            .clock(clock)
            .request(&customer)
            .mode(mode)
            .run_async(conn, async |conn: &mut C| -> Result<Account, AppError> {
                Ok(conn.insert_account(customer, 1).await?)
            })
            .await
    }

    /// The record of `key` in [`NAMESPACE`], if there is one.
    async fn record<C: AsyncTestConn>(conn: &mut C, key: &str) -> Option<IdempotencyRecord> {
        conn.load_record(NAMESPACE, key)
            .await
            .optional()
            .expect("read the record")
    }

    /// The stored result of `key`.
    async fn stored<C: AsyncTestConn>(conn: &mut C, key: &str) -> Payment {
        let rec = record(conn, key)
            .await
            .unwrap_or_else(|| panic!("{key}: no record"));
        let json = rec
            .response
            .unwrap_or_else(|| panic!("{key}: no stored result"));
        serde_json::from_str(&json).expect("a stored payment")
    }

    async fn payments<C: AsyncTestConn>(conn: &mut C) -> i64 {
        conn.count_payments().await.expect("count payments")
    }

    /// A first call that holds its key in an uncommitted transaction on its
    /// own connection, its result written, until [`Held::finish`].
    struct Held {
        /// What the held call returned (not committed).
        first: Payment,
        finish: rt::Sender<bool>,
        task: rt::Task<Result<Payment, AppError>>,
    }

    impl Held {
        /// Commits (`true`) or rolls back the held call's transaction and
        /// returns what that transaction returned.
        async fn finish(self, commit: bool) -> Result<Payment, AppError> {
            let _ = self.finish.send(commit);
            rt::join(self.task).await
        }
    }

    /// Starts a first call of `payer` on its own connection inside a
    /// caller's transaction and returns once its result is written
    /// (uncommitted). If the test fails before [`Held::finish`], the holder
    /// rolls back.
    async fn hold<B: AsyncSuiteBackend>(
        db: &Arc<B>,
        payer: &Arc<Payer<'static>>,
        key: &str,
        req: &NewPayment,
    ) -> Held {
        let (held_tx, held_rx) = rt::channel();
        let (finish_tx, finish_rx) = rt::channel::<bool>();
        let task = rt::spawn({
            let (db, payer) = (Arc::clone(db), Arc::clone(payer));
            let (key, req) = (key.to_owned(), req.clone());
            move || async move {
                let mut conn = db.connect_async().await;
                rt::transaction(&mut conn, async |conn| {
                    let outcome = payer.pay(conn, &key, &req, Then::Succeed).await?;
                    let written = record(conn, &key)
                        .await
                        .and_then(|rec| rec.response)
                        .is_some();
                    held_tx
                        .send((outcome.clone(), written))
                        .expect("the test waits");
                    if finish_rx.recv().await.unwrap_or(false) {
                        Ok(outcome.into_value())
                    } else {
                        Err(AppError::Declined)
                    }
                })
                .await
            }
        });
        let (outcome, written) = held_rx
            .recv_timeout(rt::DEADLINE)
            .await
            .expect("the first call holds the key");
        assert!(!outcome.is_replayed(), "the held call ran its body");
        assert!(
            written,
            "the held call's result is written in its transaction"
        );
        Held {
            first: outcome.into_value(),
            finish: finish_tx,
            task,
        }
    }

    /// Calls `payer` on a connection of its own, in a new thread or task.
    fn pay_on_own_connection<B: AsyncSuiteBackend>(
        db: &Arc<B>,
        payer: &Arc<Payer<'static>>,
        key: &str,
        req: &NewPayment,
    ) -> rt::Task<Result<Outcome<Payment>, AppError>> {
        let (db, payer) = (Arc::clone(db), Arc::clone(payer));
        let (key, req) = (key.to_owned(), req.clone());
        rt::spawn(move || async move {
            let mut conn = db.connect_async().await;
            payer.pay(&mut conn, &key, &req, Then::Succeed).await
        })
    }

    /// First call: the body runs once and its result is stored with the
    /// record's timestamps.
    pub async fn shapes_first_call_runs_body_and_stores<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        for shape in SHAPES {
            let payer = Payer::new(shape, &clock);
            let key = format!("first-{}", shape.name());
            let before = payments(&mut conn).await;
            let first = payer
                .pay(&mut conn, &key, &NewPayment::eur(1200), Then::Succeed)
                .await
                .unwrap_or_else(|e| panic!("{shape:?}: {e:?}"));
            assert!(!first.is_replayed(), "{shape:?}");
            assert_eq!(first.amount, 1200, "{shape:?}");
            assert_eq!(payer.runs(), 1, "{shape:?}");
            assert_eq!(
                payments(&mut conn).await,
                before + 1,
                "{shape:?}: one effect"
            );
            assert_eq!(&stored(&mut conn, &key).await, first.value(), "{shape:?}");
            let rec = record(&mut conn, &key).await.unwrap();
            let now = clock.now().naive_utc();
            assert_eq!(rec.created_at, now, "{shape:?}");
            assert_eq!(
                rec.expires_at,
                now + chrono::Duration::hours(1),
                "{shape:?}"
            );
            assert!(rec.fingerprint.starts_with("v2:"), "{shape:?}");
        }
    }

    /// A repeat returns the stored result, marked replayed, on the same
    /// connection and another, with no second effect; where the replay does
    /// not run the body, a body that would fail or panic does not matter.
    pub async fn shapes_replay_returns_stored_result_without_a_second_effect<
        B: AsyncSuiteBackend,
    >() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let mut other = db.connect_async().await;
        let clock = clock();
        let req = NewPayment::eur(500);
        for shape in SHAPES {
            let payer = Payer::new(shape, &clock);
            let key = format!("replay-{}", shape.name());
            let before = payments(&mut conn).await;
            let first = payer
                .pay(&mut conn, &key, &req, Then::Succeed)
                .await
                .unwrap();
            let rec = record(&mut conn, &key).await.unwrap();
            clock.advance(Duration::from_secs(59 * 60));
            let mut repeats = vec![
                payer.pay(&mut conn, &key, &req, Then::Succeed).await,
                payer.pay(&mut other, &key, &req, Then::Succeed).await,
            ];
            // A body that would fail: where the replay runs the body, the
            // failure is rolled back and the call answers with the replay.
            repeats.push(payer.pay(&mut conn, &key, &req, Then::Fail).await);
            if !shape.replay_runs_body() {
                repeats.push(payer.pay(&mut other, &key, &req, Then::Panic).await);
            }
            for again in &repeats {
                let again = again
                    .as_ref()
                    .unwrap_or_else(|e| panic!("{shape:?}: {e:?}"));
                assert!(again.is_replayed(), "{shape:?}");
                assert_eq!(again.value(), first.value(), "{shape:?}");
            }
            let expected_runs = if shape.replay_runs_body() { 4 } else { 1 };
            assert_eq!(payer.runs(), expected_runs, "{shape:?}: body starts");
            assert_eq!(
                payments(&mut conn).await,
                before + 1,
                "{shape:?}: the body's effect once"
            );
            assert_eq!(
                record(&mut conn, &key).await,
                Some(rec),
                "{shape:?}: unchanged"
            );
            assert_eq!(
                (rt::depth(&mut conn), rt::depth(&mut other)),
                (0, 0),
                "{shape:?}: out of any transaction"
            );
            clock.advance(Duration::from_secs(60 * 60));
        }
    }

    /// The key reused with another request: `PayloadMismatch`, no second
    /// effect, the record unchanged.
    pub async fn shapes_mismatch_has_no_second_effect<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        for shape in SHAPES {
            let payer = Payer::new(shape, &clock);
            let key = format!("mismatch-{}", shape.name());
            let before = payments(&mut conn).await;
            payer
                .pay(&mut conn, &key, &NewPayment::eur(100), Then::Succeed)
                .await
                .unwrap();
            let rec = record(&mut conn, &key).await.unwrap();
            for other in [
                NewPayment::eur(101),
                NewPayment {
                    amount: 100,
                    currency: "USD".into(),
                },
            ] {
                // A body that would fail too: where the body runs before the
                // record is found, its failure is rolled back and the call
                // answers with the mismatch.
                for then in [Then::Succeed, Then::Fail] {
                    let result = payer.pay(&mut conn, &key, &other, then).await;
                    assert!(is_mismatch(&result, &key), "{shape:?}: {result:?}");
                }
            }
            assert_eq!(
                payments(&mut conn).await,
                before + 1,
                "{shape:?}: one effect"
            );
            assert_eq!(
                record(&mut conn, &key).await,
                Some(rec),
                "{shape:?}: unchanged"
            );
        }
    }

    /// At its expiry (`expires_at == now`) a record no longer answers, for
    /// the same request or another: the body runs again, its effects are
    /// kept, and its result replaces the old.
    pub async fn shapes_expired_record_is_taken_over<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        for shape in SHAPES {
            for same_request in [true, false] {
                let what = format!("{shape:?}, same request: {same_request}");
                let payer = Payer::new(shape, &clock);
                let key = format!("expired-{}-{same_request}", shape.name());
                let old_req = NewPayment::eur(1);
                let new_req = NewPayment::eur(if same_request { 1 } else { 2 });
                let before = payments(&mut conn).await;
                let first = payer
                    .pay(&mut conn, &key, &old_req, Then::Succeed)
                    .await
                    .unwrap();
                clock.advance(TTL);
                let second = payer
                    .pay(&mut conn, &key, &new_req, Then::Succeed)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e:?}"));
                assert!(!second.is_replayed(), "{what}: not replayed at expiry");
                assert_ne!(second.value(), first.value(), "{what}");
                assert_eq!(second.amount, new_req.amount, "{what}");
                assert_eq!(payer.runs(), 2, "{what}");
                assert_eq!(payments(&mut conn).await, before + 2, "{what}: both kept");
                assert_eq!(&stored(&mut conn, &key).await, second.value(), "{what}");
                let rec = record(&mut conn, &key).await.unwrap();
                assert_eq!(rec.created_at, clock.now().naive_utc(), "{what}: renewed");
                // The renewed record answers for the new request.
                let third = payer
                    .pay(&mut conn, &key, &new_req, Then::Succeed)
                    .await
                    .unwrap();
                assert!(third.is_replayed(), "{what}");
                assert_eq!(third.value(), second.value(), "{what}");
                if !same_request {
                    let old = payer.pay(&mut conn, &key, &old_req, Then::Succeed).await;
                    assert!(is_mismatch(&old, &key), "{what}: {old:?}");
                }
                assert_eq!(payments(&mut conn).await, before + 2, "{what}");
                clock.advance(TTL);
            }
        }
    }

    /// A body that fails or panics leaves neither a record nor an effect,
    /// and the connection out of any transaction; the retry runs the body.
    pub async fn shapes_body_error_and_panic_leave_nothing<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let req = NewPayment::eur(42);
        for shape in SHAPES {
            let payer = Payer::new(shape, &clock);
            let key = format!("fails-{}", shape.name());
            let before = payments(&mut conn).await;
            let failed = payer.pay(&mut conn, &key, &req, Then::Fail).await;
            assert!(
                matches!(failed, Err(AppError::Declined)),
                "{shape:?}: the body's own error: {failed:?}"
            );
            assert_eq!(record(&mut conn, &key).await, None, "{shape:?}");
            assert_eq!(payments(&mut conn).await, before, "{shape:?}");
            let caught =
                rt::catch_panic(|| async { payer.pay(&mut conn, &key, &req, Then::Panic).await })
                    .await;
            let payload = caught.expect_err("the panic reaches the caller");
            assert_eq!(
                payload.downcast_ref::<&str>().copied(),
                Some("injected panic after the payment insert"),
                "{shape:?}"
            );
            assert_eq!(rt::depth(&mut conn), 0, "{shape:?}");
            assert_eq!(record(&mut conn, &key).await, None, "{shape:?}");
            assert_eq!(payments(&mut conn).await, before, "{shape:?}");
            let retried = payer
                .pay(&mut conn, &key, &req, Then::Succeed)
                .await
                .unwrap();
            assert!(!retried.is_replayed(), "{shape:?}");
            assert_eq!(payer.runs(), 3, "{shape:?}");
            assert_eq!(
                db.connect_async().await.count_payments().await.unwrap(),
                before + 1,
                "{shape:?}: committed"
            );
        }
    }

    /// Inside a caller's transaction that rolls back: the call and its
    /// replay in the same transaction succeed, and the rollback removes both
    /// the record and the effect; the retry runs the body.
    pub async fn shapes_caller_rollback_removes_record_and_effect<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let req = NewPayment::eur(9);
        for shape in SHAPES {
            let payer = Payer::new(shape, &clock);
            let key = format!("rollback-{}", shape.name());
            let before = payments(&mut conn).await;
            let result: Result<(), AppError> = rt::transaction(&mut conn, async |conn| {
                let first = payer.pay(conn, &key, &req, Then::Succeed).await?;
                assert!(!first.is_replayed(), "{shape:?}");
                let again = payer.pay(conn, &key, &req, Then::Succeed).await?;
                assert!(
                    again.is_replayed(),
                    "{shape:?}: replayed in the transaction"
                );
                assert_eq!(again.value(), first.value(), "{shape:?}");
                assert!(
                    record(conn, &key).await.is_some(),
                    "{shape:?}: visible inside"
                );
                assert_eq!(payments(conn).await, before + 1, "{shape:?}");
                Err(AppError::Declined)
            })
            .await;
            assert!(
                matches!(result, Err(AppError::Declined)),
                "{shape:?}: {result:?}"
            );
            assert_eq!(
                record(&mut conn, &key).await,
                None,
                "{shape:?}: record rolled back"
            );
            assert_eq!(
                payments(&mut conn).await,
                before,
                "{shape:?}: effect rolled back"
            );
            let retried = payer
                .pay(&mut conn, &key, &req, Then::Succeed)
                .await
                .unwrap();
            assert!(!retried.is_replayed(), "{shape:?}: the retry runs the body");
            assert_eq!(payments(&mut conn).await, before + 1, "{shape:?}");
        }
    }

    /// Inside a caller's transaction that commits: a first call and its
    /// replay in the same transaction, then a replay on another connection;
    /// and a replay of a committed record inside a caller's transaction,
    /// which keeps the caller's own work while (optimistic) the body's is
    /// undone.
    pub async fn shapes_in_caller_transaction_commit<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let mut other = db.connect_async().await;
        let clock = clock();
        let req = NewPayment::eur(9);
        for shape in SHAPES {
            let payer = Payer::new(shape, &clock);
            let key = format!("commit-{}", shape.name());
            let before = payments(&mut conn).await;
            let first = rt::transaction(&mut conn, async |conn| {
                conn.insert_payment(-1).await?; // the caller's own work
                let first = payer.pay(conn, &key, &req, Then::Succeed).await?;
                let again = payer.pay(conn, &key, &req, Then::Succeed).await?;
                assert!(!first.is_replayed() && again.is_replayed(), "{shape:?}");
                assert_eq!(again.value(), first.value(), "{shape:?}");
                Ok::<_, AppError>(first.into_value())
            })
            .await
            .unwrap_or_else(|e| panic!("{shape:?}: {e:?}"));
            assert_eq!(
                payments(&mut conn).await,
                before + 2,
                "{shape:?}: caller's and body's"
            );
            let replay = payer
                .pay(&mut other, &key, &req, Then::Succeed)
                .await
                .unwrap();
            assert!(replay.is_replayed(), "{shape:?}");
            assert_eq!(replay.value(), &first, "{shape:?}");

            // A replay inside another caller's transaction.
            let replay = rt::transaction(&mut other, async |conn| {
                conn.insert_payment(-2).await?;
                let replay = payer.pay(conn, &key, &req, Then::Succeed).await?;
                conn.insert_payment(-3).await?;
                Ok::<_, AppError>(replay)
            })
            .await
            .unwrap_or_else(|e| panic!("{shape:?}: {e:?}"));
            assert!(replay.is_replayed(), "{shape:?}");
            assert_eq!(replay.value(), &first, "{shape:?}");
            assert_eq!(
                payments(&mut conn).await,
                before + 4,
                "{shape:?}: the caller's work kept, the body's once"
            );
            assert_eq!(&stored(&mut conn, &key).await, &first, "{shape:?}");
        }
    }

    /// 64 threads on 64 connections call with one key at once, a few
    /// rounds, in every shape and through the attribute: one effect per key,
    /// and every caller gets the same result.
    pub async fn shapes_concurrent_duplicates_run_body_once<B: AsyncSuiteBackend>() {
        const THREADS: usize = 64;
        const ROUNDS: usize = 3;
        let db = Arc::new(B::fresh());
        let clock = Arc::new(clock());
        let payers: Arc<Vec<Payer<'static>>> =
            Arc::new(SHAPES.iter().map(|s| Payer::new(*s, &clock)).collect());
        let variants = SHAPES.len() + 1;
        let name = |v: usize| SHAPES.get(v).map_or("attribute", |s| s.name());
        let barrier = Arc::new(rt::Barrier::new(THREADS));
        // Workers never panic mid-round (that would strand the others at the
        // barrier): they collect results, asserted afterwards.
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (db, clock) = (Arc::clone(&db), Arc::clone(&clock));
                let (payers, barrier) = (Arc::clone(&payers), Arc::clone(&barrier));
                rt::spawn(move || async move {
                    let mut conn = db.connect_async().await;
                    let mut results = Vec::new();
                    for round in 0..ROUNDS {
                        for v in 0..variants {
                            let key = format!("dup-{v}-{round}");
                            let req = NewPayment::eur((round * variants + v) as i64);
                            barrier.wait().await;
                            let result = match payers.get(v) {
                                Some(payer) => {
                                    payer.pay(&mut conn, &key, &req, Then::Succeed).await
                                }
                                None => {
                                    create_payment_optimistic_read_first(
                                        &mut conn, &clock, &key, &req,
                                    )
                                    .await
                                }
                            };
                            let replayed = result.as_ref().is_ok_and(Outcome::is_replayed);
                            results.push((
                                result
                                    .map(Outcome::into_value)
                                    .map_err(|e| format!("{} round {round}: {e:?}", name(v))),
                                replayed,
                            ));
                        }
                    }
                    results
                })
            })
            .collect();
        let mut per_thread: Vec<Vec<(Result<Payment, String>, bool)>> = Vec::new();
        for worker in workers {
            per_thread.push(rt::join(worker).await);
        }
        for i in 0..ROUNDS * variants {
            let first = per_thread[0][i]
                .0
                .as_ref()
                .unwrap_or_else(|e| panic!("{e}"));
            let mut fresh = 0;
            for results in &per_thread {
                let (got, replayed) = &results[i];
                let got = got.as_ref().unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(
                    got,
                    first,
                    "{} call {i}: callers disagree",
                    name(i % variants)
                );
                fresh += usize::from(!replayed);
            }
            assert_eq!(
                fresh,
                1,
                "{} call {i}: one caller ran it",
                name(i % variants)
            );
        }
        let mut conn = db.connect_async().await;
        let executions = conn.count_payments().await.unwrap();
        println!(
            "[{}] {THREADS} threads x {ROUNDS} rounds x {variants} shapes: {executions} effects \
             kept; body started {}",
            B::NAME,
            payers
                .iter()
                .map(|p| format!("{} times ({})", p.runs(), p.shape.name()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        assert_eq!(
            executions,
            (ROUNDS * variants) as i64,
            "exactly one effect per key"
        );
        assert_eq!(
            conn.count_records().await.unwrap(),
            (ROUNDS * variants) as i64
        );
    }

    /// A duplicate of a first call held uncommitted on another connection
    /// waits for it, then replays its result (first commits) or runs the
    /// body itself (first rolls back): one effect either way.
    pub async fn shapes_duplicate_waits_for_held_first_call<B: AsyncSuiteBackend>() {
        let db = Arc::new(B::fresh());
        let clock = Arc::new(clock());
        let req = NewPayment::eur(77);
        for shape in SHAPES {
            for commit in [true, false] {
                let holder = Arc::new(Payer::new(shape, &clock));
                let duplicate = Arc::new(Payer::new(shape, &clock));
                let key = format!("held-{}-{commit}", shape.name());
                let before = payments(&mut db.connect_async().await).await;
                let held = hold(&db, &holder, &key, &req).await;
                let dup = pay_on_own_connection(&db, &duplicate, &key, &req);
                db.wait_for_lock_waiters_async(1).await;
                let first_result = held.first.clone();
                let first = held.finish(commit).await;
                let dup = rt::join(dup)
                    .await
                    .unwrap_or_else(|e| panic!("{shape:?} commit={commit}: {e:?}"));
                // (The payment ids cannot tell the two results apart: SQLite
                // hands a rolled-back id out again.)
                if commit {
                    assert_eq!(first.unwrap(), first_result);
                    assert!(dup.is_replayed(), "{shape:?}: replayed the first result");
                    assert_eq!(dup.value(), &first_result, "{shape:?}");
                    // An optimistic duplicate ran its body before it found
                    // the key taken (unless, on SQLite, it came after the
                    // commit and read first); its effects were rolled back.
                    let most = usize::from(shape.mode == Mode::Optimistic);
                    assert!(duplicate.runs() <= most, "{shape:?}");
                } else {
                    assert!(matches!(first, Err(AppError::Declined)));
                    assert!(!dup.is_replayed(), "{shape:?}: ran the body itself");
                    assert_eq!(duplicate.runs(), 1, "{shape:?}");
                }
                let mut conn = db.connect_async().await;
                assert_eq!(
                    payments(&mut conn).await,
                    before + 1,
                    "{shape:?} commit={commit}: exactly one effect"
                );
                assert_eq!(&stored(&mut conn, &key).await, dup.value(), "{shape:?}");
            }
        }
    }

    /// A duplicate with `on_conflict = reject` of a first call held
    /// uncommitted gets `InFlight` at once (where the backend can tell;
    /// SQLite serializes writers, so it waits there) with no effect of its
    /// own, and replays once the first committed.
    pub async fn shapes_reject_answers_in_flight<B: AsyncSuiteBackend>() {
        let db = Arc::new(B::fresh());
        let clock = Arc::new(clock());
        let req = NewPayment::eur(5);
        for shape in SHAPES {
            let holder = Arc::new(Payer::new(shape, &clock));
            let rejecting = Arc::new(Payer::new(shape, &clock).rejecting());
            let key = format!("reject-{}", shape.name());
            let before = payments(&mut db.connect_async().await).await;
            let held = hold(&db, &holder, &key, &req).await;
            let first_result = held.first.clone();
            let (answer_tx, answer_rx) = rt::channel();
            let answering = rt::spawn({
                let (db, rejecting) = (Arc::clone(&db), Arc::clone(&rejecting));
                let (key, req) = (key.clone(), req.clone());
                move || async move {
                    let mut conn = db.connect_async().await;
                    let answer = rejecting.pay(&mut conn, &key, &req, Then::Succeed).await;
                    let _ = answer_tx.send(answer);
                }
            });
            if B::REJECTS_AT_ONCE {
                // A generous bound that only a blocked call would reach.
                let answer = answer_rx
                    .recv_timeout(rt::DEADLINE)
                    .await
                    .expect("reject answers while the key is held");
                assert!(is_in_flight(&answer, &key), "{shape:?}: {answer:?}");
                assert_eq!(held.finish(true).await.unwrap(), first_result);
                let replay = rejecting
                    .pay(&mut db.connect_async().await, &key, &req, Then::Succeed)
                    .await;
                let replay = replay.unwrap_or_else(|e| panic!("{shape:?}: {e:?}"));
                assert!(replay.is_replayed(), "{shape:?}: replayed after the commit");
                assert_eq!(replay.value(), &first_result, "{shape:?}");
            } else {
                assert_eq!(held.finish(true).await.unwrap(), first_result);
                let answer = answer_rx.recv().await.unwrap();
                let answer = answer.unwrap_or_else(|e| panic!("{shape:?}: {e:?}"));
                assert!(answer.is_replayed(), "{shape:?}: waited, then replayed");
                assert_eq!(answer.value(), &first_result, "{shape:?}");
            }
            rt::join(answering).await;
            assert_eq!(
                payments(&mut db.connect_async().await).await,
                before + 1,
                "{shape:?}: the first call's effect only"
            );
        }
    }

    /// In every shape a duplicate with a bounded wait (200 ms; MySQL rounds
    /// it up to 1 s) gets `InFlight` while the first call holds the key,
    /// and has no effect (an optimistic duplicate's body is rolled back);
    /// after the first commits it replays.
    pub async fn shapes_bounded_wait_answers_in_flight<B: AsyncSuiteBackend>() {
        let db = Arc::new(B::fresh());
        let clock = Arc::new(clock());
        let req = NewPayment::eur(8);
        for shape in SHAPES {
            let holder = Arc::new(Payer::new(shape, &clock));
            let bounded = Payer::new(shape, &clock).waiting_at_most(Duration::from_millis(200));
            let key = format!("bounded-{}", shape.name());
            let before = payments(&mut db.connect_async().await).await;
            let held = hold(&db, &holder, &key, &req).await;
            let first_result = held.first.clone();
            let mut conn = db.connect_async().await;
            let answer = bounded.pay(&mut conn, &key, &req, Then::Succeed).await;
            assert!(is_in_flight(&answer, &key), "{shape:?}: {answer:?}");
            assert_eq!(held.finish(true).await.unwrap(), first_result);
            let replay = bounded.pay(&mut conn, &key, &req, Then::Succeed).await;
            let replay = replay.unwrap_or_else(|e| panic!("{shape:?}: {e:?}"));
            assert!(replay.is_replayed(), "{shape:?}: replayed after the commit");
            assert_eq!(replay.value(), &first_result, "{shape:?}");
            assert_eq!(
                payments(&mut conn).await,
                before + 1,
                "{shape:?}: the first call's effect only"
            );
        }
    }

    /// A read-first duplicate never replays a result that is written but
    /// not committed: with `reject` it is `InFlight` (SQLite: a connection
    /// that will not wait for the database lock fails instead of
    /// replaying); with `wait` it blocks until the first call rolls back and
    /// then runs the body itself.
    pub async fn read_first_never_replays_an_uncommitted_result<B: AsyncSuiteBackend>() {
        let db = Arc::new(B::fresh());
        let clock = Arc::new(clock());
        let req = NewPayment::eur(31);
        for shape in READ_FIRST_SHAPES {
            let holder = Arc::new(Payer::new(shape, &clock));
            let waiting = Arc::new(Payer::new(shape, &clock));
            let key = format!("uncommitted-{}", shape.name());
            let before = payments(&mut db.connect_async().await).await;
            let held = hold(&db, &holder, &key, &req).await;
            let first_result = held.first.clone();
            if B::REJECTS_AT_ONCE {
                let rejecting = Arc::new(Payer::new(shape, &clock).rejecting());
                let (answer_tx, answer_rx) = rt::channel();
                let answering = rt::spawn({
                    let (db, rejecting) = (Arc::clone(&db), Arc::clone(&rejecting));
                    let (key, req) = (key.clone(), req.clone());
                    move || async move {
                        let mut conn = db.connect_async().await;
                        let answer = rejecting.pay(&mut conn, &key, &req, Then::Succeed).await;
                        let _ = answer_tx.send(answer);
                    }
                });
                // A generous bound that only a blocked call would reach.
                let answer = answer_rx
                    .recv_timeout(rt::DEADLINE)
                    .await
                    .expect("reject answers while the key is held");
                assert!(
                    is_in_flight(&answer, &key),
                    "{shape:?}: not a replay of the uncommitted result: {answer:?}"
                );
                rt::join(answering).await;
            } else {
                let mut impatient = db.connect_async().await;
                impatient.short_lock_waits().await.unwrap();
                let answer = Payer::new(shape, &clock)
                    .pay(&mut impatient, &key, &req, Then::Succeed)
                    .await;
                assert!(
                    answer.is_err(),
                    "{shape:?}: not a replay of the uncommitted result: {answer:?}"
                );
            }
            let dup = pay_on_own_connection(&db, &waiting, &key, &req);
            db.wait_for_lock_waiters_async(1).await;
            assert!(
                held.finish(false).await.is_err(),
                "the first call rolls back"
            );
            let dup = rt::join(dup)
                .await
                .unwrap_or_else(|e| panic!("{shape:?}: {e:?}"));
            // Its own result: the body ran (the ids cannot tell, SQLite
            // hands the rolled-back id out again).
            assert!(!dup.is_replayed(), "{shape:?}: ran the body itself");
            assert_eq!(waiting.runs(), 1, "{shape:?}");
            assert_eq!(dup.value().amount, first_result.amount);
            let mut conn = db.connect_async().await;
            assert_eq!(
                payments(&mut conn).await,
                before + 1,
                "{shape:?}: one payment"
            );
            assert_eq!(
                &stored(&mut conn, &key).await,
                dup.value(),
                "{shape:?}: its result is stored"
            );
        }
    }

    /// The read judges expiry at the call's own time: 1 µs before
    /// `expires_at` the record is replayed in one statement; at exactly
    /// `expires_at` it is not, and the body runs once more, its result
    /// stored.
    pub async fn read_first_respects_expiry_to_the_microsecond<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let req = NewPayment::eur(8);
        let micro = Duration::from_micros(1);
        for shape in READ_FIRST_SHAPES {
            let payer = Payer::new(shape, &clock);
            let key = format!("expiry-{}", shape.name());
            let before = payments(&mut conn).await;
            let first = payer
                .pay(&mut conn, &key, &req, Then::Succeed)
                .await
                .unwrap();
            clock.advance(TTL - micro);
            let (log, replay) = rt::statements(&mut conn, async |c| {
                payer.pay(c, &key, &req, Then::Fail).await
            })
            .await;
            let replay = replay.unwrap_or_else(|e| panic!("{shape:?}: {e:?}"));
            assert!(replay.is_replayed(), "{shape:?}: 1 µs before expiry");
            assert_eq!(replay.value(), first.value(), "{shape:?}");
            assert_eq!(log.len(), 1, "{shape:?}: one read: {log:#?}");
            clock.advance(micro);
            let (log, renewed) = rt::statements(&mut conn, async |c| {
                payer.pay(c, &key, &req, Then::Succeed).await
            })
            .await;
            let renewed = renewed.unwrap_or_else(|e| panic!("{shape:?}: {e:?}"));
            assert!(!renewed.is_replayed(), "{shape:?}: expired at expires_at");
            assert_ne!(renewed.value(), first.value(), "{shape:?}");
            assert!(log.len() > 1, "{shape:?}: the read missed: {log:#?}");
            assert_eq!(payer.runs(), 2, "{shape:?}: the body ran once more");
            assert_eq!(payments(&mut conn).await, before + 2, "{shape:?}");
            assert_eq!(&stored(&mut conn, &key).await, renewed.value(), "{shape:?}");
            clock.advance(TTL);
        }
    }

    /// An expired record, then 16 threads taking its key over at once with
    /// the same request, a few rounds, in each new shape (read-first reads
    /// the expired record and falls back to the transaction): one of them
    /// runs the body and keeps its effects, every other caller replays its
    /// result.
    ///
    /// On MySQL, callers taking over one record can deadlock in InnoDB (each
    /// holds a shared lock on it and wants the exclusive one). Claim-first
    /// restarts its own transaction (the body had not run); an optimistic
    /// call cannot (its body ran and was rolled back) and looks once more
    /// for the winner's result, which is not always there yet: then it
    /// returns the retryable error, and these callers retry as the README
    /// tells them to. Everywhere else no caller may need a retry.
    pub async fn shapes_concurrent_takeover_runs_body_once<B: AsyncSuiteBackend>() {
        const THREADS: usize = 16;
        const ROUNDS: usize = 4;
        let db = Arc::new(B::fresh());
        let clock = Arc::new(clock());
        let barrier = Arc::new(rt::Barrier::new(THREADS));
        let policy = Arc::new(
            diesel_idempotent::RetryPolicy::new()
                .max_attempts(20)
                .base_delay(Duration::from_millis(1))
                .max_delay(Duration::from_millis(20)),
        );
        let retries = Arc::new(AtomicUsize::new(0));
        for shape in [
            Shape::READ_FIRST,
            Shape::OPTIMISTIC_READ_FIRST,
            Shape::OPTIMISTIC,
        ] {
            let payer = Arc::new(Payer::new(shape, &clock));
            let key = format!("takeover-{}", shape.name());
            let mut conn = db.connect_async().await;
            let before = payments(&mut conn).await;
            // The same request every round: a read-first call finds a record
            // that matches but has expired.
            let req = NewPayment::eur(6);
            let mut previous = payer
                .pay(&mut conn, &key, &req, Then::Succeed)
                .await
                .unwrap()
                .into_value();
            let workers: Vec<_> = (0..THREADS)
                .map(|_| {
                    let (db, clock, barrier) =
                        (Arc::clone(&db), Arc::clone(&clock), Arc::clone(&barrier));
                    let (policy, retries) = (Arc::clone(&policy), Arc::clone(&retries));
                    let (payer, key, req) = (Arc::clone(&payer), key.clone(), req.clone());
                    rt::spawn(move || async move {
                        // Each attempt takes the connection and puts it back:
                        // an attempt cannot borrow it from the retried closure.
                        let slot = Mutex::new(Some(db.connect_async().await));
                        let mut results = Vec::with_capacity(ROUNDS);
                        for round in 0..ROUNDS {
                            // Everyone is done with the last round; one
                            // thread lets the record expire; then all go.
                            if barrier.wait().await.is_leader() {
                                clock.advance(TTL);
                            }
                            barrier.wait().await;
                            let attempts = AtomicUsize::new(0);
                            let result = diesel_idempotent::retry_async(&policy, || async {
                                attempts.fetch_add(1, Ordering::SeqCst);
                                let taken = slot.lock().unwrap().take();
                                let mut conn = taken.expect("the connection is back");
                                let result = payer.pay(&mut conn, &key, &req, Then::Succeed).await;
                                *slot.lock().unwrap() = Some(conn);
                                result
                            })
                            .await;
                            retries
                                .fetch_add(attempts.load(Ordering::SeqCst) - 1, Ordering::SeqCst);
                            results.push(
                                result.map_err(|e| format!("{shape:?} round {round}: {e:?}")),
                            );
                        }
                        results
                    })
                })
                .collect();
            let mut per_thread: Vec<Vec<Result<Outcome<Payment>, String>>> = Vec::new();
            for worker in workers {
                per_thread.push(rt::join(worker).await);
            }
            assert_eq!(
                payments(&mut conn).await,
                before + 1 + ROUNDS as i64,
                "{shape:?}: one effect per round"
            );
            let retried = retries.swap(0, Ordering::SeqCst);
            if !(B::NAME == "mysql" && shape.mode == Mode::Optimistic) {
                assert_eq!(retried, 0, "{shape:?}: no caller needed a retry");
            }
            let errors: Vec<&String> = per_thread
                .iter()
                .flatten()
                .filter_map(|r| r.as_ref().err())
                .collect();
            assert!(
                errors.is_empty(),
                "{} of {} callers failed, e.g. {}",
                errors.len(),
                THREADS * ROUNDS,
                errors[0]
            );
            for round in 0..ROUNDS {
                let results: Vec<&Outcome<Payment>> = per_thread
                    .iter()
                    .map(|r| r[round].as_ref().unwrap())
                    .collect();
                let fresh: Vec<_> = results.iter().filter(|o| !o.is_replayed()).collect();
                assert_eq!(
                    fresh.len(),
                    1,
                    "{shape:?} round {round}: one took the key over"
                );
                let taken_over = fresh[0].value();
                assert_ne!(
                    taken_over, &previous,
                    "{shape:?} round {round}: a new result"
                );
                previous = taken_over.clone();
                for o in &results {
                    assert_eq!(
                        o.value(),
                        taken_over,
                        "{shape:?} round {round}: callers disagree"
                    );
                }
            }
            let last = per_thread[0][ROUNDS - 1].as_ref().unwrap().value();
            assert_eq!(&stored(&mut conn, &key).await, last, "{shape:?}");
            clock.advance(TTL);
        }
    }

    /// An optimistic duplicate whose body fails on the first call's
    /// committed effect (its insert violates the unique row the first call
    /// inserted, once that call commits) answers with the first call's
    /// result, as a claim-first duplicate would have, instead of the body's
    /// error.
    pub async fn optimistic_duplicate_failing_on_the_first_calls_effects_replays<
        B: AsyncSuiteBackend,
    >() {
        let db = Arc::new(B::fresh());
        let clock = Arc::new(clock());
        let (held_tx, held_rx) = rt::channel();
        let (finish_tx, finish_rx) = rt::channel::<()>();
        let first = rt::spawn({
            let (db, clock) = (Arc::clone(&db), Arc::clone(&clock));
            move || async move {
                let mut conn = db.connect_async().await;
                rt::transaction(&mut conn, async |conn| {
                    let account = open_account(conn, &clock, "open-7", 7, Mode::Optimistic).await?;
                    held_tx.send(()).expect("the test waits");
                    finish_rx.recv().await.expect("the test lets it commit");
                    Ok::<_, AppError>(account)
                })
                .await
            }
        });
        held_rx
            .recv_timeout(rt::DEADLINE)
            .await
            .expect("the first call holds the key");
        let duplicate = rt::spawn({
            let (db, clock) = (Arc::clone(&db), Arc::clone(&clock));
            move || async move {
                let mut conn = db.connect_async().await;
                open_account(&mut conn, &clock, "open-7", 7, Mode::Optimistic).await
            }
        });
        // PostgreSQL and MySQL: the duplicate's insert waits on the first
        // call's unique row; SQLite: its transaction waits to begin.
        db.wait_for_lock_waiters_async(1).await;
        finish_tx.send(()).expect("the first call waits");
        let first = rt::join(first).await.expect("the first call commits");
        let duplicate = rt::join(duplicate)
            .await
            .expect("the duplicate answers with the first call's result");
        assert!(!first.is_replayed());
        assert!(duplicate.is_replayed(), "{duplicate:?}");
        assert_eq!(duplicate.value(), first.value());
        assert_eq!(
            db.connect_async().await.count_accounts().await.unwrap(),
            1,
            "one account"
        );
    }
}

/// Instantiates this file's tests for one backend in one flavour (see
/// `conformance!`).
#[macro_export]
macro_rules! modes_tests {
    (blocking $backend:ty) => {
        $crate::modes_tests!(@both blocking $backend);
    };
    (nonblocking $backend:ty) => {
        $crate::modes_tests!(@both nonblocking $backend);
    };
    (@both $flavour:ident $backend:ty) => {
        $crate::conformance!(@each $flavour $backend; modes;
            shapes_first_call_runs_body_and_stores,
            shapes_replay_returns_stored_result_without_a_second_effect,
            shapes_mismatch_has_no_second_effect,
            shapes_expired_record_is_taken_over,
            shapes_body_error_and_panic_leave_nothing,
            shapes_caller_rollback_removes_record_and_effect,
            shapes_in_caller_transaction_commit,
            shapes_concurrent_duplicates_run_body_once,
            shapes_duplicate_waits_for_held_first_call,
            shapes_reject_answers_in_flight,
            shapes_bounded_wait_answers_in_flight,
            read_first_never_replays_an_uncommitted_result,
            read_first_respects_expiry_to_the_microsecond,
            shapes_concurrent_takeover_runs_body_once,
            optimistic_duplicate_failing_on_the_first_calls_effects_replays,
        );
    };
}
