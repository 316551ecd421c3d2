//! Promises that hold on a bad day: panics anywhere leave the transaction
//! stack as it was, results that cannot replay are refused, duplicates that
//! cannot wait answer at once, and transient errors say they are transient.
//!
//! Written once, as async code over diesel-async connections, in
//! [`nonblocking`]; `#[dual::blocking]` derives [`blocking`], the same tests
//! over Diesel's blocking connections, threads for tasks. The test of a
//! blocking-only API (`unique_index_covers`) follows the module.

use chrono::{DateTime, Utc};
use diesel_idempotent::Clock;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::*;

/// What the body of `nested_work` does after its first insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nested {
    /// A nested transaction that commits.
    Commit,
    /// Panics inside a nested transaction.
    PanicInside,
    /// Panics two nested transaction levels deep.
    PanicTwoDeep,
    /// Catches its own panic from a nested transaction and returns `Ok`,
    /// leaving that savepoint open.
    CatchItsOwnPanic,
    /// The same after a statement in the nested transaction failed (on
    /// PostgreSQL that savepoint is aborted).
    CatchItsOwnPanicAfterAFailure,
}

/// The message of a panic that `caught` must hold.
fn panic_message<R: std::fmt::Debug>(caught: std::thread::Result<R>) -> String {
    let payload = caught.expect_err("the call panics");
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Serializes as a number, panics when serialized for storing.
#[derive(Debug, PartialEq)]
pub struct PanicsOnSerialize;

impl Serialize for PanicsOnSerialize {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("panic in Serialize")
    }
}

impl<'de> Deserialize<'de> for PanicsOnSerialize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u32::deserialize(d).map(|_| PanicsOnSerialize)
    }
}

/// Panics when a stored result is read back into it.
#[derive(Debug, PartialEq, Serialize)]
pub struct PanicsOnDeserialize(u32);

impl<'de> Deserialize<'de> for PanicsOnDeserialize {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("panic in Deserialize")
    }
}

/// A tenant whose `Display` panics.
pub struct PanickyTenant;

impl std::fmt::Display for PanickyTenant {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        panic!("panic in Display of the scope")
    }
}

/// A clock that panics.
pub struct PanickyClock;

impl Clock for PanickyClock {
    fn now(&self) -> DateTime<Utc> {
        panic!("panic in Clock::now")
    }
}

/// Writes a string, reads only numbers: its JSON never reads back.
#[derive(Debug, PartialEq)]
pub struct OneWay(u32);

impl Serialize for OneWay {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for OneWay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u32::deserialize(d).map(OneWay)
    }
}

/// The user code the library calls around the body, in which
/// `panics_around_the_body_release_everything` panics.
const AROUND_THE_BODY: [&str; 4] = ["Serialize", "Deserialize", "Display", "Clock::now"];

/// The claim attempts (record inserts) among `log`'s statements.
fn claims(log: &[String]) -> usize {
    log.iter()
        .filter(|q| q.contains("INSERT") && q.contains("idempotency_records"))
        .count()
}

#[dual::blocking]
pub mod nonblocking {
    use std::cell::RefCell;
    use std::collections::{HashMap, HashSet};
    use std::sync::Arc;
    use std::time::Duration;

    use diesel::QueryResult;
    use diesel_idempotent::{Clock, Error, ManualClock, Retryable, idempotent};

    use super::{
        AROUND_THE_BODY, Nested, OneWay, PanickyClock, PanickyTenant, PanicsOnDeserialize,
        PanicsOnSerialize, claims, panic_message,
    };
    use crate::common::functions::nonblocking::*;
    use crate::common::rt::nonblocking as rt;
    use crate::common::{
        Account, AppError, AsyncSuiteBackend, AsyncTestConn, Isolation, NewPayment, Then, clock,
    };

    /// Two inserts per successful call: one in the body, one in a nested
    /// transaction.
    #[idempotent(key = key, ttl = "1h", name = "tests.nested", clock = clock, skip(how))]
    pub async fn nested_work<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        key: &str,
        amount: i64,
        how: Nested,
    ) -> Result<i64, AppError> {
        let id = conn.insert_payment(amount).await?;
        match how {
            Nested::Commit => {
                rt::transaction(conn, async |c: &mut C| -> Result<i64, AppError> {
                    c.insert_payment(amount).await?;
                    Ok(id)
                })
                .await
            }
            Nested::PanicInside => {
                rt::transaction(conn, async |c: &mut C| -> Result<i64, AppError> {
                    c.insert_payment(amount).await?;
                    panic!("panic in a nested transaction")
                })
                .await
            }
            Nested::PanicTwoDeep => {
                rt::transaction(conn, async |c: &mut C| -> Result<i64, AppError> {
                    rt::transaction(c, async |c: &mut C| -> Result<i64, AppError> {
                        c.insert_payment(amount).await?;
                        panic!("panic two transactions deep")
                    })
                    .await
                })
                .await
            }
            Nested::CatchItsOwnPanic => {
                let caught = rt::catch_panic(|| async {
                    rt::transaction(conn, async |c: &mut C| -> Result<(), AppError> {
                        c.insert_payment(amount).await?;
                        panic!("caught inside the body")
                    })
                    .await
                })
                .await;
                assert!(caught.is_err(), "the nested closure panicked");
                Ok(id)
            }
            Nested::CatchItsOwnPanicAfterAFailure => {
                let caught = rt::catch_panic(|| async {
                    rt::transaction(conn, async |c: &mut C| -> Result<(), AppError> {
                        // Account (99, 99) exists: a unique violation.
                        assert!(c.insert_account(99, 99).await.is_err());
                        panic!("caught inside the body")
                    })
                    .await
                })
                .await;
                assert!(caught.is_err(), "the nested closure panicked");
                Ok(id)
            }
        }
    }

    /// Another connection that fails instead of waiting for a lock: if the
    /// key or the database were still held, its call would fail.
    async fn impatient<B: AsyncSuiteBackend>(db: &B) -> B::AsyncConn {
        let mut conn = db.connect_async().await;
        conn.short_lock_waits().await.expect("short lock waits");
        conn
    }

    /// After a panic in a nested transaction, with no caller transaction:
    /// the connection is out of any transaction, a duplicate on another
    /// connection claims the key at once, and the next call on the same
    /// connection commits for everyone to see.
    pub async fn panic_in_nested_transaction_releases_the_claim<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        for (i, how) in [Nested::PanicInside, Nested::PanicTwoDeep]
            .into_iter()
            .enumerate()
        {
            let key = format!("nested-{i}");
            let message = panic_message(
                rt::catch_panic(|| async { nested_work(&mut conn, &clock, &key, 10, how).await })
                    .await,
            );
            assert!(message.starts_with("panic "), "{how:?}: {message}");
            assert_eq!(rt::depth(&mut conn), 0, "{how:?}: no transaction left open");

            let mut other = impatient(&db).await;
            nested_work(&mut other, &clock, &key, 20, Nested::Commit)
                .await
                .unwrap_or_else(|e| panic!("{how:?}: the duplicate claims at once: {e:?}"));

            nested_work(&mut conn, &clock, &format!("after-{i}"), 30, Nested::Commit)
                .await
                .expect("the same connection works");
            assert_eq!(rt::depth(&mut conn), 0);
            let mut observer = db.connect_async().await;
            assert_eq!(
                observer.count_records().await.unwrap(),
                2 * (i as i64 + 1),
                "{how:?}: the later call committed for other connections"
            );
        }
        assert_eq!(
            db.connect_async().await.count_payments().await.unwrap(),
            8,
            "nothing of the panics"
        );
    }

    /// A panic in a nested transaction inside the caller's transaction: the
    /// caller's transaction stays open and usable, and commits its own work.
    pub async fn panic_in_nested_transaction_keeps_the_callers_transaction<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        rt::transaction(&mut conn, async |c| {
            c.insert_payment(1000).await?;
            for how in [Nested::PanicInside, Nested::PanicTwoDeep] {
                panic_message(
                    rt::catch_panic(|| async { nested_work(c, &clock, "in-tx", 10, how).await })
                        .await,
                );
                assert_eq!(rt::depth(c), 1, "{how:?}: back in the caller's transaction");
            }
            nested_work(c, &clock, "after", 5, Nested::Commit).await?;
            Ok::<_, AppError>(())
        })
        .await
        .expect("the caller's transaction commits");
        assert_eq!(rt::depth(&mut conn), 0);
        let mut other = impatient(&db).await;
        assert_eq!(
            other.count_payments().await.unwrap(),
            3,
            "the caller's insert and the later call's two"
        );
        assert_eq!(other.record_keys().await.unwrap(), ["after"]);
        nested_work(&mut other, &clock, "in-tx", 7, Nested::Commit)
            .await
            .expect("the key a panic left is free at once");
    }

    /// A body that catches its own panic and returns `Ok` with a savepoint
    /// still open: nothing is stored, everything is rolled back, the stack
    /// is intact.
    pub async fn body_leaving_a_transaction_open_is_rolled_back<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        conn.insert_account(99, 99).await.unwrap();
        for how in [
            Nested::CatchItsOwnPanic,
            Nested::CatchItsOwnPanicAfterAFailure,
        ] {
            let (log, result) = rt::statements(&mut conn, async |c| {
                nested_work(c, &clock, "left-open", 10, how).await
            })
            .await;
            let err = result.expect_err("refused");
            assert!(
                matches!(&err, AppError::Idempotency(Error::Database(e)) if e.to_string().contains("still open")),
                "{how:?}: {err:?}"
            );
            assert!(
                !log.iter()
                    .any(|q| q.starts_with("UPDATE") && q.contains("idempotency_records")),
                "{how:?}: nothing is stored inside the level the body left open: {log:#?}"
            );
            assert_eq!(rt::depth(&mut conn), 0);
        }
        let mut other = impatient(&db).await;
        assert_eq!(other.count_payments().await.unwrap(), 0);
        assert_eq!(other.count_records().await.unwrap(), 0);
        nested_work(&mut other, &clock, "left-open", 10, Nested::Commit)
            .await
            .expect("free");
    }

    #[idempotent(key = key, name = "tests.panicky", clock = clock)]
    pub async fn store_number<C: AsyncTestConn>(
        conn: &mut C,
        clock: &dyn Clock,
        key: &str,
    ) -> Result<u32, AppError> {
        conn.insert_payment(1).await?;
        Ok(7)
    }

    #[idempotent(key = key, name = "tests.panicky", clock = clock)]
    pub async fn panicky_serialize<C: AsyncTestConn>(
        conn: &mut C,
        clock: &dyn Clock,
        key: &str,
    ) -> Result<PanicsOnSerialize, AppError> {
        conn.insert_payment(1).await?;
        Ok(PanicsOnSerialize)
    }

    #[idempotent(key = key, name = "tests.panicky", clock = clock)]
    pub async fn panicky_deserialize<C: AsyncTestConn>(
        conn: &mut C,
        clock: &dyn Clock,
        key: &str,
    ) -> Result<PanicsOnDeserialize, AppError> {
        conn.insert_payment(1).await?;
        Ok(PanicsOnDeserialize(7))
    }

    #[idempotent(key = key, scope = tenant, name = "tests.panicky", clock = clock)]
    pub async fn panicky_scope<C: AsyncTestConn>(
        conn: &mut C,
        clock: &dyn Clock,
        tenant: &PanickyTenant,
        key: &str,
    ) -> Result<u32, AppError> {
        conn.insert_payment(1).await?;
        Ok(7)
    }

    /// Panics in the user code the library calls around the body (the
    /// result's `Serialize`, the stored result's `Deserialize`, the scope's
    /// `Display`, a custom `Clock`) leave no transaction, no record and no
    /// lock.
    pub async fn panics_around_the_body_release_everything<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        for what in AROUND_THE_BODY {
            let message = match what {
                "Serialize" => panic_message(
                    rt::catch_panic(|| async { panicky_serialize(&mut conn, &clock, "ser").await })
                        .await,
                ),
                "Deserialize" => {
                    store_number(&mut conn, &clock, "de").await.expect("stored");
                    panic_message(
                        rt::catch_panic(|| async {
                            panicky_deserialize(&mut conn, &clock, "de").await
                        })
                        .await,
                    )
                }
                "Display" => panic_message(
                    rt::catch_panic(|| async {
                        panicky_scope(&mut conn, &clock, &PanickyTenant, "scope").await
                    })
                    .await,
                ),
                "Clock::now" => panic_message(
                    rt::catch_panic(|| async {
                        store_number(&mut conn, &PanickyClock, "clock").await
                    })
                    .await,
                ),
                other => unreachable!("{other}"),
            };
            assert!(message.contains(what), "{what}: {message}");
            assert_eq!(rt::depth(&mut conn), 0, "{what}: no transaction left open");
            let mut other = impatient(&db).await;
            nested_work(
                &mut other,
                &clock,
                &format!("other-{what}"),
                1,
                Nested::Commit,
            )
            .await
            .unwrap_or_else(|e| panic!("{what}: another connection writes at once: {e:?}"));
        }
        let mut other = impatient(&db).await;
        assert_eq!(
            other.record_keys().await.unwrap(),
            [
                "de",
                "other-Clock::now",
                "other-Deserialize",
                "other-Display",
                "other-Serialize"
            ],
            "only the stored number and the other connection's calls"
        );
        // The key whose result panicked in `Serialize` is free: a
        // well-behaved function of the same namespace claims it at once.
        assert_eq!(store_number(&mut other, &clock, "ser").await.unwrap(), 7);
    }

    /// getOrCreate: a panic in a nested transaction inside the create body
    /// leaves the stack as it was and the natural key free.
    #[idempotent(get_or_create = conn.find_account(customer_id, bank_id))]
    pub async fn open_account_then_panic<C: AsyncTestConn>(
        conn: &mut C,
        customer_id: i64,
        bank_id: i64,
    ) -> QueryResult<Account> {
        rt::transaction(conn, async |c: &mut C| -> QueryResult<Account> {
            c.insert_account(customer_id, bank_id).await?;
            panic!("panic in a nested transaction of the create body")
        })
        .await
    }

    /// A lookup that panics inside a transaction of its own.
    pub async fn panicking_lookup<C: AsyncTestConn>(conn: &mut C) -> QueryResult<Option<Account>> {
        rt::transaction(conn, async |_: &mut C| -> QueryResult<Option<Account>> {
            panic!("panic in the lookup")
        })
        .await
    }

    #[idempotent(get_or_create = panicking_lookup(conn))]
    pub async fn open_account_with_panicking_lookup<C: AsyncTestConn>(
        conn: &mut C,
        customer_id: i64,
    ) -> QueryResult<Account> {
        conn.insert_account(customer_id, 1).await
    }

    pub async fn get_or_create_panic_in_nested_transaction_releases<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        panic_message(
            rt::catch_panic(|| async { open_account_then_panic(&mut conn, 5, 5).await }).await,
        );
        assert_eq!(rt::depth(&mut conn), 0);
        panic_message(
            rt::catch_panic(|| async { open_account_with_panicking_lookup(&mut conn, 5).await })
                .await,
        );
        assert_eq!(rt::depth(&mut conn), 0, "a panic in the lookup");
        rt::transaction(&mut conn, async |c| {
            panic_message(
                rt::catch_panic(|| async { open_account_then_panic(c, 6, 6).await }).await,
            );
            assert_eq!(rt::depth(c), 1, "the caller's transaction is intact");
            Ok::<_, AppError>(())
        })
        .await
        .unwrap();
        let mut other = impatient(&db).await;
        assert_eq!(other.count_accounts().await.unwrap(), 0);
        open_account(&mut other, 5, 5)
            .await
            .expect("the natural key is free at once");
        open_account(&mut other, 6, 6)
            .await
            .expect("the natural key is free at once");
    }

    /// Returns `value`; it is left out of the fingerprint, where NaN and the
    /// infinities are refused, so that they reach the result.
    #[idempotent(key = key, name = "tests.float", clock = clock, skip(value))]
    pub async fn measure<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        key: &str,
        value: f64,
    ) -> Result<f64, AppError> {
        conn.insert_payment(1).await?;
        Ok(value)
    }

    #[idempotent(key = key, name = "tests.one_way", clock = clock)]
    pub async fn one_way<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        key: &str,
    ) -> Result<OneWay, AppError> {
        conn.insert_payment(1).await?;
        Ok(OneWay(3))
    }

    #[idempotent(key = key, name = "tests.map", clock = clock)]
    pub async fn tally<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        key: &str,
    ) -> Result<HashMap<String, i64>, AppError> {
        conn.insert_payment(1).await?;
        Ok((0..50).map(|i| (format!("k{i}"), i)).collect())
    }

    #[idempotent(key = key, name = "tests.nested_option", clock = clock)]
    pub async fn maybe_maybe<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        key: &str,
    ) -> Result<Option<Option<i64>>, AppError> {
        conn.insert_payment(1).await?;
        Ok(Some(None))
    }

    /// A result whose JSON does not read back as the same value is refused
    /// before it is stored; values that do round-trip (maps in any order)
    /// are not refused.
    pub async fn results_that_cannot_replay_are_refused<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        for (key, value) in [
            ("nan", f64::NAN),
            ("inf", f64::INFINITY),
            ("-inf", f64::NEG_INFINITY),
        ] {
            let err = measure(&mut conn, &clock, key, value)
                .await
                .expect_err("refused");
            assert!(
                matches!(&err, AppError::Idempotency(Error::ResultNotReplayable { key: k, .. }) if k == key),
                "{err:?}"
            );
        }
        let err = one_way(&mut conn, &clock, "one-way")
            .await
            .expect_err("refused");
        assert!(
            matches!(
                &err,
                AppError::Idempotency(Error::ResultNotReplayable { .. })
            ),
            "{err:?}"
        );
        assert_eq!(conn.count_records().await.unwrap(), 0, "nothing stored");
        assert_eq!(conn.count_payments().await.unwrap(), 0, "nothing changed");

        assert_eq!(
            measure(&mut conn, &clock, "finite", 1.5).await.unwrap(),
            1.5
        );
        assert_eq!(
            measure(&mut conn, &clock, "finite", 1.5).await.unwrap(),
            1.5
        );
        let first = tally(&mut conn, &clock, "map")
            .await
            .expect("a HashMap round-trips");
        assert_eq!(tally(&mut conn, &clock, "map").await.unwrap(), first);
        // serde_json's documented loss: `Some(None)` reads back as `None`.
        assert_eq!(
            maybe_maybe(&mut conn, &clock, "opt").await.unwrap(),
            Some(None)
        );
        assert_eq!(maybe_maybe(&mut conn, &clock, "opt").await.unwrap(), None);
        assert_eq!(
            conn.count_payments().await.unwrap(),
            3,
            "one execution each"
        );
    }

    #[idempotent(key = key, name = "tests.set", clock = clock)]
    pub async fn tags<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        key: &str,
    ) -> Result<HashSet<String>, AppError> {
        conn.insert_payment(1).await?;
        Ok((0..40).map(|i| format!("tag-{i}")).collect())
    }

    /// Ordinary values are stored, and every replay returns exactly what the
    /// first call did: floats as arithmetic makes them (bit for bit), sets
    /// in any iteration order.
    pub async fn ordinary_results_replay_exactly<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let mut floats = vec![
            11.0_f64 * 1.1,
            5.0_f64.ln(),
            123_456_789.123_456_79_f64,
            3.026_199_944_157_320_3e-52,
            0.1,
            -0.0,
            1e300,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
        ];
        floats.extend((1..40).map(|i| f64::from(i) / 3.0));
        floats.extend((1..40).map(|i| f64::from(i).sqrt() * 1.1));
        for (i, value) in floats.into_iter().enumerate() {
            let key = format!("float-{i}");
            let first = measure(&mut conn, &clock, &key, value)
                .await
                .unwrap_or_else(|e| panic!("{value:e} is stored: {e:?}"));
            let replay = measure(&mut conn, &clock, &key, value).await.unwrap();
            assert_eq!(
                (first.to_bits(), replay.to_bits()),
                (value.to_bits(), value.to_bits()),
                "{value:e}"
            );
        }
        let first = tags(&mut conn, &clock, "set")
            .await
            .expect("a HashSet round-trips");
        assert_eq!(tags(&mut conn, &clock, "set").await.unwrap(), first);
    }

    /// Holds `key` in an open transaction on its own connection while `f`
    /// runs on the test's task, then commits.
    async fn while_held<B: AsyncSuiteBackend, R>(
        db: &Arc<B>,
        clock: &Arc<ManualClock>,
        key: &str,
        f: impl AsyncFnOnce() -> R,
    ) -> R {
        let (held_tx, held_rx) = rt::channel();
        let (done_tx, done_rx) = rt::channel::<()>();
        let holder = rt::spawn({
            let (db, clock, key) = (Arc::clone(db), Arc::clone(clock), key.to_owned());
            move || async move {
                let mut conn = db.connect_async().await;
                rt::transaction(&mut conn, async |c| {
                    create_payment(c, &clock, &key, &NewPayment::eur(1), Then::Succeed).await?;
                    held_tx.send(()).unwrap();
                    let _ = done_rx.recv().await;
                    Ok::<_, AppError>(())
                })
                .await
            }
        });
        held_rx
            .recv_timeout(rt::DEADLINE)
            .await
            .expect("the key is held");
        let result = f().await;
        done_tx.send(()).unwrap();
        rt::join(holder).await.expect("the holder commits");
        result
    }

    /// `on_conflict = "reject"` answers `InFlight` after one claim attempt,
    /// for a key held by a first call and for one held by a take-over of its
    /// expired record.
    pub async fn reject_answers_after_one_claim<B: AsyncSuiteBackend>() {
        if !B::REJECTS_AT_ONCE {
            println!(
                "[{}] on_conflict = \"reject\" waits for the database lock here (see \
                 on_conflict_reject_answers_in_flight); nothing more to check",
                B::NAME
            );
            return;
        }
        let db = Arc::new(B::fresh());
        let clock = Arc::new(clock());
        let req = NewPayment::eur(1);
        let mut conn = db.connect_async().await;
        let (log, result) = while_held(&db, &clock, "held", async || {
            rt::statements(&mut conn, async |c| {
                create_payment_or_reject(c, &clock, "held", &req, Then::Succeed).await
            })
            .await
        })
        .await;
        assert!(
            matches!(
                result.as_ref().unwrap_err().idempotency(),
                Some(Error::InFlight { .. })
            ),
            "{result:?}"
        );
        assert_eq!(claims(&log), 1, "one claim attempt: {log:#?}");

        // The record expires; a caller takes it over and holds it.
        clock.advance(Duration::from_secs(2 * 3600));
        let (log, result) = while_held(&db, &clock, "held", async || {
            rt::statements(&mut conn, async |c| {
                create_payment_or_reject(c, &clock, "held", &req, Then::Succeed).await
            })
            .await
        })
        .await;
        assert!(
            matches!(
                result.as_ref().unwrap_err().idempotency(),
                Some(Error::InFlight { .. })
            ),
            "behind a take-over: {result:?}"
        );
        assert_eq!(claims(&log), 1, "one claim attempt: {log:#?}");
        assert_eq!(
            db.connect_async().await.count_payments().await.unwrap(),
            2,
            "the holders only"
        );
    }

    /// A duplicate in wait mode whose lock wait times out gets a retryable
    /// error after waiting once (no internal retry multiplies the wait).
    pub async fn lock_wait_timeout_is_retryable_and_waited_once<B: AsyncSuiteBackend>() {
        let db = Arc::new(B::fresh());
        let clock = Arc::new(clock());
        let mut conn = impatient(&*db).await;
        let (log, result) = while_held(&db, &clock, "held", async || {
            rt::statements(&mut conn, async |c| {
                create_payment(c, &clock, "held", &NewPayment::eur(1), Then::Succeed).await
            })
            .await
        })
        .await;
        let err = result.expect_err("the wait times out");
        assert!(
            err.idempotency().is_some_and(Error::is_retryable) && Retryable::is_retryable(&err),
            "a lock wait timeout is transient: {err:?}"
        );
        assert!(claims(&log) <= 1, "waited once: {log:#?}");
        // After the holder committed, the retry replays.
        create_payment(
            &mut conn,
            &clock,
            "held",
            &NewPayment::eur(1),
            Then::Succeed,
        )
        .await
        .expect("the retry replays");
        assert_eq!(db.connect_async().await.count_payments().await.unwrap(), 1);
    }

    /// getOrCreate inside the caller's REPEATABLE READ / SERIALIZABLE
    /// transaction whose snapshot predates the winner's row: the loser gets
    /// a retryable error, and `retry` converges on the winner's row.
    pub async fn get_or_create_invisible_winner_is_retryable<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let policy = diesel_idempotent::RetryPolicy::new().base_delay(Duration::ZERO);
        // MySQL's SERIALIZABLE reads with locks: there the winner would wait
        // for the loser instead of committing unseen.
        let snapshot_levels = B::ISOLATION_LEVELS.iter().filter(|l| {
            **l != Isolation::ReadCommitted
                && !(B::NAME == "mysql" && **l == Isolation::Serializable)
        });
        for (i, level) in snapshot_levels.enumerate() {
            let customer = 500 + i as i64;
            let first = rt::transaction_at(&mut conn, *level, async |c| {
                c.count_accounts().await?; // the snapshot is taken here
                open_account(&mut db.connect_async().await, customer, 1).await?; // the winner commits
                open_account_checked(c, customer, 1).await
            })
            .await;
            let err = first.expect_err("the winner is invisible to this snapshot");
            assert!(
                Retryable::is_retryable(&err),
                "[{}] {level:?}: retryable, not {err:?}",
                B::NAME
            );
            // Each attempt borrows the connection for its transaction; the
            // attempts run one after another, so the borrow is never
            // contended.
            let attempts = RefCell::new(&mut conn);
            #[allow(clippy::await_holding_refcell_ref)]
            let settled = diesel_idempotent::retry_async(&policy, || async {
                let mut conn = attempts.borrow_mut();
                rt::transaction_at(&mut **conn, *level, async |c| {
                    open_account_checked(c, customer, 1).await
                })
                .await
            })
            .await
            .expect("a retry converges");
            assert_eq!(
                Some(settled),
                conn.find_account(customer, 1).await.unwrap(),
                "{level:?}"
            );
        }
        // At READ COMMITTED (or outside a transaction) a unique violation
        // the lookup cannot explain is another constraint's, returned
        // unchanged. A new session, at the backend's default level: the
        // transactions above may have set this one's.
        let mut conn = db.connect_async().await;
        open_account(&mut conn, 900, 1).await.unwrap();
        let err = rt::transaction(&mut conn, async |c| {
            diesel_idempotent::get_or_create_async(
                c,
                async |_| Ok(None::<Account>),
                async |c| c.insert_account(900, 1).await,
            )
            .await
        })
        .await
        .expect_err("unique violation");
        if B::NAME == "mysql" {
            // The session is at REPEATABLE READ (InnoDB's default): the
            // library cannot tell this from an invisible winner, and says
            // "retry" (documented).
            assert!(Retryable::is_retryable(&err), "{err:?}");
        } else {
            assert!(
                diesel_idempotent::UniqueViolation::is_unique_violation(&err),
                "{err:?}"
            );
        }
    }

    /// At READ COMMITTED a unique violation the second lookup cannot explain
    /// is another constraint's: returned unchanged, not as a retryable
    /// error.
    pub async fn get_or_create_unrelated_violation_at_read_committed_is_unchanged<
        B: AsyncSuiteBackend,
    >() {
        if !B::ISOLATION_LEVELS.contains(&Isolation::ReadCommitted) {
            println!("[{}] has no READ COMMITTED: nothing to check", B::NAME);
            return;
        }
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        open_account(&mut conn, 901, 1).await.unwrap();
        for _ in 0..3 {
            let err = rt::transaction_at(&mut conn, Isolation::ReadCommitted, async |c| {
                c.count_accounts().await?;
                Ok(diesel_idempotent::get_or_create_async(
                    c,
                    async |_| Ok(None::<Account>),
                    async |c| c.insert_account(901, 1).await,
                )
                .await?)
            })
            .await
            .expect_err("unique violation");
            assert!(
                matches!(&err, AppError::Db(e) if diesel_idempotent::UniqueViolation::is_unique_violation(e)),
                "[{}] {err:?}",
                B::NAME
            );
        }
    }

    /// A real deadlock between two transactions is retryable (PostgreSQL
    /// 40P01, MySQL 1213).
    pub async fn deadlocks_are_retryable<B: AsyncSuiteBackend>() {
        if !B::REJECTS_AT_ONCE {
            println!("[{}] no row locks, no deadlocks: nothing to check", B::NAME);
            return;
        }
        let db = Arc::new(B::fresh());
        let (a, b) = {
            let mut conn = db.connect_async().await;
            (
                conn.insert_payment(1).await.unwrap(),
                conn.insert_payment(2).await.unwrap(),
            )
        };
        let barrier = Arc::new(rt::Barrier::new(2));
        let run = |first: i64, second: i64| {
            let (db, barrier) = (Arc::clone(&db), Arc::clone(&barrier));
            rt::spawn(move || async move {
                let mut conn = db.connect_async().await;
                rt::transaction(&mut conn, async |c| {
                    c.touch_payment(first).await?;
                    barrier.wait().await;
                    c.touch_payment(second).await
                })
                .await
            })
        };
        let one = run(a, b);
        let two = run(b, a);
        let results: Vec<QueryResult<()>> = vec![rt::join(one).await, rt::join(two).await];
        let failures: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(
            !failures.is_empty(),
            "one of the two is chosen as the victim"
        );
        for e in failures {
            assert!(Retryable::is_retryable(e), "[{}] {e:?}", B::NAME);
        }
    }

    /// What `SELECT .. NOWAIT`-style and `lock_timeout` waits report is
    /// retryable where the backend has them.
    pub async fn nowait_lock_failures_are_retryable<B: AsyncSuiteBackend>() {
        if !B::REJECTS_AT_ONCE {
            // SQLite: a busy database file.
            let db = B::fresh();
            let mut holder = db.connect_async().await;
            let mut other = impatient(&db).await;
            let err = rt::transaction(&mut holder, async |c| -> Result<(), AppError> {
                c.insert_payment(1).await?;
                other
                    .insert_payment(2)
                    .await
                    .map_err(AppError::from)
                    .map(drop)
            })
            .await
            .expect_err("the file is locked");
            assert!(Retryable::is_retryable(&err), "{err:?}");
            return;
        }
        let db = B::fresh();
        let id = db.connect_async().await.insert_payment(1).await.unwrap();
        let mut holder = db.connect_async().await;
        let mut other = db.connect_async().await;
        let err = rt::transaction(&mut holder, async |c| -> Result<(), AppError> {
            c.touch_payment(id).await?;
            other.lock_payment_nowait(id).await.map_err(AppError::from)
        })
        .await
        .expect_err("the row is locked");
        assert!(Retryable::is_retryable(&err), "[{}] {err:?}", B::NAME);
    }
}

// Blocking only: `unique_index_covers` has no async form.

/// A unique index is only a guard for getOrCreate when it makes the plain
/// lookup columns unique at every insert: not an expression index, not a
/// partial index, not a deferrable constraint.
pub fn unique_index_covers_only_plain_immediate_indexes<B: Backend>() {
    let db = B::fresh();
    let mut conn = db.connect();
    let cases = conn.create_tricky_index_tables().expect("tables");
    for (table, columns, expected) in cases {
        assert_eq!(
            diesel_idempotent::unique_index_covers(&mut conn, table, columns).unwrap(),
            expected,
            "[{}] {table} {columns:?}",
            B::NAME
        );
    }
}

/// Instantiates this file's tests for one backend in one flavour (see
/// `conformance!`).
#[macro_export]
macro_rules! hardening_tests {
    (blocking $backend:ty) => {
        $crate::hardening_tests!(@both blocking $backend);
        // Not written once for both flavours.
        $crate::conformance!(@plain $backend; hardening;
            unique_index_covers_only_plain_immediate_indexes,
        );
    };
    (nonblocking $backend:ty) => {
        $crate::hardening_tests!(@both nonblocking $backend);
    };
    (@both $flavour:ident $backend:ty) => {
        $crate::conformance!(@each $flavour $backend; hardening;
            panic_in_nested_transaction_releases_the_claim,
            panic_in_nested_transaction_keeps_the_callers_transaction,
            body_leaving_a_transaction_open_is_rolled_back,
            panics_around_the_body_release_everything,
            get_or_create_panic_in_nested_transaction_releases,
            results_that_cannot_replay_are_refused,
            ordinary_results_replay_exactly,
            get_or_create_unrelated_violation_at_read_committed_is_unchanged,
            reject_answers_after_one_claim,
            lock_wait_timeout_is_retryable_and_waited_once,
            get_or_create_invisible_winner_is_retryable,
            deadlocks_are_retryable,
            nowait_lock_failures_are_retryable,
        );
    };
}
