//! Promises that hold on a bad day: panics anywhere leave the transaction
//! stack as it was, results that cannot replay are refused, duplicates that
//! cannot wait answer at once, and transient errors say they are transient.

use std::collections::{HashMap, HashSet};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Barrier, mpsc};
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::QueryResult;
use diesel::connection::{AnsiTransactionManager, Connection, TransactionManager};
use diesel_idempotent::{Clock, Error, ManualClock, Retryable, idempotent};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::*;

/// The connection's transaction depth as Diesel tracks it (0: none open).
pub fn depth<C: TestConn>(conn: &mut C) -> u32 {
    AnsiTransactionManager::transaction_manager_status_mut(conn)
        .transaction_depth()
        .expect("a usable transaction manager")
        .map_or(0, std::num::NonZeroU32::get)
}

/// What the body of [`nested_work`] does after its first insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nested {
    /// A nested transaction that commits.
    Commit,
    /// Panics inside `conn.transaction(..)`.
    PanicInside,
    /// Panics two `conn.transaction(..)` levels deep.
    PanicTwoDeep,
    /// Catches its own panic from a nested transaction and returns `Ok`,
    /// leaving that savepoint open.
    CatchItsOwnPanic,
    /// The same after a statement in the nested transaction failed (on
    /// PostgreSQL that savepoint is aborted).
    CatchItsOwnPanicAfterAFailure,
}

/// Two inserts per successful call: one in the body, one in a nested
/// transaction.
#[idempotent(key = key, ttl = "1h", name = "tests.nested", clock = clock, skip(how))]
pub fn nested_work<C: TestConn>(
    conn: &mut C,
    clock: &ManualClock,
    key: &str,
    amount: i64,
    how: Nested,
) -> Result<i64, AppError> {
    let id = conn.insert_payment(amount)?;
    match how {
        Nested::Commit => conn.transaction::<_, AppError, _>(|c| {
            c.insert_payment(amount)?;
            Ok(id)
        }),
        Nested::PanicInside => conn.transaction::<i64, AppError, _>(|c| {
            c.insert_payment(amount)?;
            panic!("panic in a nested transaction")
        }),
        Nested::PanicTwoDeep => conn.transaction::<i64, AppError, _>(|c| {
            c.transaction::<i64, AppError, _>(|c| {
                c.insert_payment(amount)?;
                panic!("panic two transactions deep")
            })
        }),
        Nested::CatchItsOwnPanic => {
            let caught = panic::catch_unwind(AssertUnwindSafe(|| {
                conn.transaction::<(), AppError, _>(|c| {
                    c.insert_payment(amount)?;
                    panic!("caught inside the body")
                })
            }));
            assert!(caught.is_err(), "the nested closure panicked");
            Ok(id)
        }
        Nested::CatchItsOwnPanicAfterAFailure => {
            let caught = panic::catch_unwind(AssertUnwindSafe(|| {
                conn.transaction::<(), AppError, _>(|c| {
                    // Account (99, 99) exists: a unique violation.
                    assert!(c.insert_account(99, 99).is_err());
                    panic!("caught inside the body")
                })
            }));
            assert!(caught.is_err(), "the nested closure panicked");
            Ok(id)
        }
    }
}

/// Runs `f`, which must panic, and returns the panic's message.
fn expect_panic<R: std::fmt::Debug>(f: impl FnOnce() -> R) -> String {
    let payload = panic::catch_unwind(AssertUnwindSafe(f)).expect_err("the call panics");
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Another connection that fails instead of waiting for a lock: if the key
/// or the database were still held, its call would fail.
fn impatient<B: Backend>(db: &B) -> B::Conn {
    let mut conn = db.connect();
    conn.short_lock_waits().expect("short lock waits");
    conn
}

/// After a panic in a nested transaction, with no caller transaction: the
/// connection is out of any transaction, a duplicate on another connection
/// claims the key at once, and the next call on the same connection commits
/// for everyone to see.
pub fn panic_in_nested_transaction_releases_the_claim<B: Backend>() {
    let db = B::fresh();
    let mut conn = db.connect();
    let clock = clock();
    for (i, how) in [Nested::PanicInside, Nested::PanicTwoDeep]
        .into_iter()
        .enumerate()
    {
        let key = format!("nested-{i}");
        let message = expect_panic(|| nested_work(&mut conn, &clock, &key, 10, how));
        assert!(message.starts_with("panic "), "{how:?}: {message}");
        assert_eq!(depth(&mut conn), 0, "{how:?}: no transaction left open");

        let mut other = impatient(&db);
        nested_work(&mut other, &clock, &key, 20, Nested::Commit)
            .unwrap_or_else(|e| panic!("{how:?}: the duplicate claims at once: {e:?}"));

        nested_work(&mut conn, &clock, &format!("after-{i}"), 30, Nested::Commit)
            .expect("the same connection works");
        assert_eq!(depth(&mut conn), 0);
        let mut observer = db.connect();
        assert_eq!(
            observer.count_records().unwrap(),
            2 * (i as i64 + 1),
            "{how:?}: the later call committed for other connections"
        );
    }
    assert_eq!(
        db.connect().count_payments().unwrap(),
        8,
        "nothing of the panics"
    );
}

/// A panic in a nested transaction inside the caller's transaction: the
/// caller's transaction stays open and usable, and commits its own work.
pub fn panic_in_nested_transaction_keeps_the_callers_transaction<B: Backend>() {
    let db = B::fresh();
    let mut conn = db.connect();
    let clock = clock();
    conn.transaction::<_, AppError, _>(|c| {
        c.insert_payment(1000)?;
        for how in [Nested::PanicInside, Nested::PanicTwoDeep] {
            expect_panic(|| nested_work(c, &clock, "in-tx", 10, how));
            assert_eq!(depth(c), 1, "{how:?}: back in the caller's transaction");
        }
        nested_work(c, &clock, "after", 5, Nested::Commit)?;
        Ok(())
    })
    .expect("the caller's transaction commits");
    assert_eq!(depth(&mut conn), 0);
    let mut other = impatient(&db);
    assert_eq!(
        other.count_payments().unwrap(),
        3,
        "the caller's insert and the later call's two"
    );
    assert_eq!(other.record_keys().unwrap(), ["after"]);
    nested_work(&mut other, &clock, "in-tx", 7, Nested::Commit)
        .expect("the key a panic left is free at once");
}

/// A body that catches its own panic and returns `Ok` with a savepoint still
/// open: nothing is stored, everything is rolled back, the stack is intact.
pub fn body_leaving_a_transaction_open_is_rolled_back<B: Backend>() {
    let db = B::fresh();
    let mut conn = db.connect();
    let clock = clock();
    conn.insert_account(99, 99).unwrap();
    for how in [
        Nested::CatchItsOwnPanic,
        Nested::CatchItsOwnPanicAfterAFailure,
    ] {
        let (log, result) = statements(&mut conn, |c| nested_work(c, &clock, "left-open", 10, how));
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
        assert_eq!(depth(&mut conn), 0);
    }
    let mut other = impatient(&db);
    assert_eq!(other.count_payments().unwrap(), 0);
    assert_eq!(other.count_records().unwrap(), 0);
    nested_work(&mut other, &clock, "left-open", 10, Nested::Commit).expect("free");
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

#[idempotent(key = key, name = "tests.panicky", clock = clock)]
pub fn store_number<C: TestConn>(
    conn: &mut C,
    clock: &dyn Clock,
    key: &str,
) -> Result<u32, AppError> {
    conn.insert_payment(1)?;
    Ok(7)
}

#[idempotent(key = key, name = "tests.panicky", clock = clock)]
pub fn panicky_serialize<C: TestConn>(
    conn: &mut C,
    clock: &dyn Clock,
    key: &str,
) -> Result<PanicsOnSerialize, AppError> {
    conn.insert_payment(1)?;
    Ok(PanicsOnSerialize)
}

#[idempotent(key = key, name = "tests.panicky", clock = clock)]
pub fn panicky_deserialize<C: TestConn>(
    conn: &mut C,
    clock: &dyn Clock,
    key: &str,
) -> Result<PanicsOnDeserialize, AppError> {
    conn.insert_payment(1)?;
    Ok(PanicsOnDeserialize(7))
}

/// A tenant whose `Display` panics.
pub struct PanickyTenant;

impl std::fmt::Display for PanickyTenant {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        panic!("panic in Display of the scope")
    }
}

#[idempotent(key = key, scope = tenant, name = "tests.panicky", clock = clock)]
pub fn panicky_scope<C: TestConn>(
    conn: &mut C,
    clock: &dyn Clock,
    tenant: &PanickyTenant,
    key: &str,
) -> Result<u32, AppError> {
    conn.insert_payment(1)?;
    Ok(7)
}

/// A clock that panics.
pub struct PanickyClock;

impl Clock for PanickyClock {
    fn now(&self) -> DateTime<Utc> {
        panic!("panic in Clock::now")
    }
}

/// Panics in the user code the library calls around the body (the result's
/// `Serialize`, the stored result's `Deserialize`, the scope's `Display`, a
/// custom `Clock`) leave no transaction, no record and no lock.
pub fn panics_around_the_body_release_everything<B: Backend>() {
    let db = B::fresh();
    let mut conn = db.connect();
    let clock = clock();
    type Case<'a, C> = (&'static str, Box<dyn Fn(&mut C) -> String + 'a>);
    let cases: [Case<'_, B::Conn>; 4] = [
        (
            "Serialize",
            Box::new(|c| expect_panic(|| panicky_serialize(c, &clock, "ser"))),
        ),
        (
            "Deserialize",
            Box::new(|c| {
                store_number(c, &clock, "de").expect("stored");
                expect_panic(|| panicky_deserialize(c, &clock, "de"))
            }),
        ),
        (
            "Display",
            Box::new(|c| expect_panic(|| panicky_scope(c, &clock, &PanickyTenant, "scope"))),
        ),
        (
            "Clock::now",
            Box::new(|c| expect_panic(|| store_number(c, &PanickyClock, "clock"))),
        ),
    ];
    for (what, case) in &cases {
        let message = case(&mut conn);
        assert!(message.contains(what), "{what}: {message}");
        assert_eq!(depth(&mut conn), 0, "{what}: no transaction left open");
        let mut other = impatient(&db);
        nested_work(
            &mut other,
            &clock,
            &format!("other-{what}"),
            1,
            Nested::Commit,
        )
        .unwrap_or_else(|e| panic!("{what}: another connection writes at once: {e:?}"));
    }
    let mut other = impatient(&db);
    assert_eq!(
        other.record_keys().unwrap(),
        [
            "de",
            "other-Clock::now",
            "other-Deserialize",
            "other-Display",
            "other-Serialize"
        ],
        "only the stored number and the other connection's calls"
    );
    // The key whose result panicked in `Serialize` is free: a well-behaved
    // function of the same namespace claims it at once.
    assert_eq!(store_number(&mut other, &clock, "ser").unwrap(), 7);
}

/// getOrCreate: a panic in a nested transaction inside the create body
/// leaves the stack as it was and the natural key free.
#[idempotent(get_or_create = conn.find_account(customer_id, bank_id))]
pub fn open_account_then_panic<C: TestConn>(
    conn: &mut C,
    customer_id: i64,
    bank_id: i64,
) -> QueryResult<Account> {
    conn.transaction(|c| {
        c.insert_account(customer_id, bank_id)?;
        panic!("panic in a nested transaction of the create body")
    })
}

/// A lookup that panics inside a transaction of its own.
pub fn panicking_lookup<C: TestConn>(conn: &mut C) -> QueryResult<Option<Account>> {
    conn.transaction(|_| panic!("panic in the lookup"))
}

#[idempotent(get_or_create = panicking_lookup(conn))]
pub fn open_account_with_panicking_lookup<C: TestConn>(
    conn: &mut C,
    customer_id: i64,
) -> QueryResult<Account> {
    conn.insert_account(customer_id, 1)
}

pub fn get_or_create_panic_in_nested_transaction_releases<B: Backend>() {
    let db = B::fresh();
    let mut conn = db.connect();
    expect_panic(|| open_account_then_panic(&mut conn, 5, 5));
    assert_eq!(depth(&mut conn), 0);
    expect_panic(|| open_account_with_panicking_lookup(&mut conn, 5));
    assert_eq!(depth(&mut conn), 0, "a panic in the lookup");
    conn.transaction::<_, AppError, _>(|c| {
        expect_panic(|| open_account_then_panic(c, 6, 6));
        assert_eq!(depth(c), 1, "the caller's transaction is intact");
        Ok(())
    })
    .unwrap();
    let mut other = impatient(&db);
    assert_eq!(other.count_accounts().unwrap(), 0);
    open_account(&mut other, 5, 5).expect("the natural key is free at once");
    open_account(&mut other, 6, 6).expect("the natural key is free at once");
}

/// Returns `value`; it is left out of the fingerprint, where NaN and the
/// infinities are refused, so that they reach the result.
#[idempotent(key = key, name = "tests.float", clock = clock, skip(value))]
pub fn measure<C: TestConn>(
    conn: &mut C,
    clock: &ManualClock,
    key: &str,
    value: f64,
) -> Result<f64, AppError> {
    conn.insert_payment(1)?;
    Ok(value)
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

#[idempotent(key = key, name = "tests.one_way", clock = clock)]
pub fn one_way<C: TestConn>(
    conn: &mut C,
    clock: &ManualClock,
    key: &str,
) -> Result<OneWay, AppError> {
    conn.insert_payment(1)?;
    Ok(OneWay(3))
}

#[idempotent(key = key, name = "tests.map", clock = clock)]
pub fn tally<C: TestConn>(
    conn: &mut C,
    clock: &ManualClock,
    key: &str,
) -> Result<HashMap<String, i64>, AppError> {
    conn.insert_payment(1)?;
    Ok((0..50).map(|i| (format!("k{i}"), i)).collect())
}

#[idempotent(key = key, name = "tests.nested_option", clock = clock)]
pub fn maybe_maybe<C: TestConn>(
    conn: &mut C,
    clock: &ManualClock,
    key: &str,
) -> Result<Option<Option<i64>>, AppError> {
    conn.insert_payment(1)?;
    Ok(Some(None))
}

/// A result whose JSON does not read back as the same value is refused
/// before it is stored; values that do round-trip (maps in any order) are
/// not refused.
pub fn results_that_cannot_replay_are_refused<B: Backend>() {
    let db = B::fresh();
    let mut conn = db.connect();
    let clock = clock();
    for (key, value) in [
        ("nan", f64::NAN),
        ("inf", f64::INFINITY),
        ("-inf", f64::NEG_INFINITY),
    ] {
        let err = measure(&mut conn, &clock, key, value).expect_err("refused");
        assert!(
            matches!(&err, AppError::Idempotency(Error::ResultNotReplayable { key: k, .. }) if k == key),
            "{err:?}"
        );
    }
    let err = one_way(&mut conn, &clock, "one-way").expect_err("refused");
    assert!(
        matches!(
            &err,
            AppError::Idempotency(Error::ResultNotReplayable { .. })
        ),
        "{err:?}"
    );
    assert_eq!(conn.count_records().unwrap(), 0, "nothing stored");
    assert_eq!(conn.count_payments().unwrap(), 0, "nothing changed");

    assert_eq!(measure(&mut conn, &clock, "finite", 1.5).unwrap(), 1.5);
    assert_eq!(measure(&mut conn, &clock, "finite", 1.5).unwrap(), 1.5);
    let first = tally(&mut conn, &clock, "map").expect("a HashMap round-trips");
    assert_eq!(tally(&mut conn, &clock, "map").unwrap(), first);
    // serde_json's documented loss: `Some(None)` reads back as `None`.
    assert_eq!(maybe_maybe(&mut conn, &clock, "opt").unwrap(), Some(None));
    assert_eq!(maybe_maybe(&mut conn, &clock, "opt").unwrap(), None);
    assert_eq!(conn.count_payments().unwrap(), 3, "one execution each");
}

#[idempotent(key = key, name = "tests.set", clock = clock)]
pub fn tags<C: TestConn>(
    conn: &mut C,
    clock: &ManualClock,
    key: &str,
) -> Result<HashSet<String>, AppError> {
    conn.insert_payment(1)?;
    Ok((0..40).map(|i| format!("tag-{i}")).collect())
}

/// Ordinary values are stored, and every replay returns exactly what the
/// first call did: floats as arithmetic makes them (bit for bit), sets in
/// any iteration order.
pub fn ordinary_results_replay_exactly<B: Backend>() {
    let db = B::fresh();
    let mut conn = db.connect();
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
            .unwrap_or_else(|e| panic!("{value:e} is stored: {e:?}"));
        let replay = measure(&mut conn, &clock, &key, value).unwrap();
        assert_eq!(
            (first.to_bits(), replay.to_bits()),
            (value.to_bits(), value.to_bits()),
            "{value:e}"
        );
    }
    let first = tags(&mut conn, &clock, "set").expect("a HashSet round-trips");
    assert_eq!(tags(&mut conn, &clock, "set").unwrap(), first);
}

fn claims(log: &[String]) -> usize {
    log.iter()
        .filter(|q| q.contains("INSERT") && q.contains("idempotency_records"))
        .count()
}

/// Holds `key` in an open transaction on its own connection while `f` runs
/// on the test's thread, then commits.
fn while_held<B: Backend, R>(db: &B, clock: &ManualClock, key: &str, f: impl FnOnce() -> R) -> R {
    let (held_tx, held_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let done_tx = done_tx;
        let holder = s.spawn(move || {
            let mut conn = db.connect();
            conn.transaction::<_, AppError, _>(|c| {
                create_payment(c, clock, key, &NewPayment::eur(1), Then::Succeed)?;
                held_tx.send(()).unwrap();
                let _ = done_rx.recv();
                Ok(())
            })
        });
        held_rx.recv().expect("the key is held");
        let result = f();
        done_tx.send(()).unwrap();
        holder.join().unwrap().expect("the holder commits");
        result
    })
}

/// `on_conflict = "reject"` answers `InFlight` after one claim attempt, for
/// a key held by a first call and for one held by a take-over of its
/// expired record.
pub fn reject_answers_after_one_claim<B: Backend>() {
    if !B::REJECTS_AT_ONCE {
        println!(
            "[{}] on_conflict = \"reject\" waits for the database lock here (see \
             on_conflict_reject_answers_in_flight); nothing more to check",
            B::NAME
        );
        return;
    }
    let db = B::fresh();
    let clock = clock();
    let req = NewPayment::eur(1);
    let mut conn = db.connect();
    let answer = while_held(&db, &clock, "held", || {
        statements(&mut conn, |c| {
            create_payment_or_reject(c, &clock, "held", &req, Then::Succeed)
        })
    });
    let (log, result) = answer;
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
    let (log, result) = while_held(&db, &clock, "held", || {
        statements(&mut conn, |c| {
            create_payment_or_reject(c, &clock, "held", &req, Then::Succeed)
        })
    });
    assert!(
        matches!(
            result.as_ref().unwrap_err().idempotency(),
            Some(Error::InFlight { .. })
        ),
        "behind a take-over: {result:?}"
    );
    assert_eq!(claims(&log), 1, "one claim attempt: {log:#?}");
    assert_eq!(
        db.connect().count_payments().unwrap(),
        2,
        "the holders only"
    );
}

/// A duplicate in wait mode whose lock wait times out gets a retryable
/// error after waiting once (no internal retry multiplies the wait).
pub fn lock_wait_timeout_is_retryable_and_waited_once<B: Backend>() {
    let db = B::fresh();
    let clock = clock();
    let mut conn = impatient(&db);
    let (log, result) = while_held(&db, &clock, "held", || {
        statements(&mut conn, |c| {
            create_payment(c, &clock, "held", &NewPayment::eur(1), Then::Succeed)
        })
    });
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
    .expect("the retry replays");
    assert_eq!(db.connect().count_payments().unwrap(), 1);
}

/// getOrCreate inside the caller's REPEATABLE READ / SERIALIZABLE
/// transaction whose snapshot predates the winner's row: the loser gets a
/// retryable error, and `retry` converges on the winner's row.
pub fn get_or_create_invisible_winner_is_retryable<B: Backend>() {
    let db = B::fresh();
    let mut conn = db.connect();
    let policy = diesel_idempotent::RetryPolicy::new().base_delay(Duration::ZERO);
    // MySQL's SERIALIZABLE reads with locks: there the winner would wait
    // for the loser instead of committing unseen.
    let snapshot_levels = B::ISOLATION_LEVELS.iter().filter(|l| {
        **l != Isolation::ReadCommitted && !(B::NAME == "mysql" && **l == Isolation::Serializable)
    });
    for (i, level) in snapshot_levels.enumerate() {
        let customer = 500 + i as i64;
        let first = conn.transaction_at(*level, |c| {
            c.count_accounts()?; // the snapshot is taken here
            open_account(&mut db.connect(), customer, 1)?; // the winner commits
            open_account_checked(c, customer, 1)
        });
        let err = first.expect_err("the winner is invisible to this snapshot");
        assert!(
            Retryable::is_retryable(&err),
            "[{}] {level:?}: retryable, not {err:?}",
            B::NAME
        );
        let settled = diesel_idempotent::retry(&policy, || {
            conn.transaction_at(*level, |c| open_account_checked(c, customer, 1))
        })
        .expect("a retry converges");
        assert_eq!(
            Some(settled),
            conn.find_account(customer, 1).unwrap(),
            "{level:?}"
        );
    }
    // At READ COMMITTED (or outside a transaction) a unique violation the
    // lookup cannot explain is another constraint's, returned unchanged.
    open_account(&mut conn, 900, 1).unwrap();
    let err = conn
        .transaction(|c| {
            diesel_idempotent::get_or_create(
                c,
                |_| Ok(None::<Account>),
                |c| c.insert_account(900, 1),
            )
        })
        .expect_err("unique violation");
    if B::NAME == "mysql" {
        // The session is at REPEATABLE READ (InnoDB's default): the library
        // cannot tell this from an invisible winner, and says "retry"
        // (documented).
        assert!(Retryable::is_retryable(&err), "{err:?}");
    } else {
        assert!(
            diesel_idempotent::UniqueViolation::is_unique_violation(&err),
            "{err:?}"
        );
    }
}

/// At READ COMMITTED a unique violation the second lookup cannot explain is
/// another constraint's: returned unchanged, not as a retryable error.
pub fn get_or_create_unrelated_violation_at_read_committed_is_unchanged<B: Backend>() {
    if !B::ISOLATION_LEVELS.contains(&Isolation::ReadCommitted) {
        println!("[{}] has no READ COMMITTED: nothing to check", B::NAME);
        return;
    }
    let db = B::fresh();
    let mut conn = db.connect();
    open_account(&mut conn, 901, 1).unwrap();
    for _ in 0..3 {
        let err = conn
            .transaction_at(Isolation::ReadCommitted, |c| {
                c.count_accounts()?;
                Ok(diesel_idempotent::get_or_create(
                    c,
                    |_| Ok(None::<Account>),
                    |c| c.insert_account(901, 1),
                )?)
            })
            .expect_err("unique violation");
        assert!(
            matches!(&err, AppError::Db(e) if diesel_idempotent::UniqueViolation::is_unique_violation(e)),
            "[{}] {err:?}",
            B::NAME
        );
    }
}

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

/// A real deadlock between two transactions is retryable (PostgreSQL
/// 40P01, MySQL 1213).
pub fn deadlocks_are_retryable<B: Backend>() {
    if !B::REJECTS_AT_ONCE {
        println!("[{}] no row locks, no deadlocks: nothing to check", B::NAME);
        return;
    }
    let db = B::fresh();
    let (a, b) = {
        let mut conn = db.connect();
        (
            conn.insert_payment(1).unwrap(),
            conn.insert_payment(2).unwrap(),
        )
    };
    let barrier = Barrier::new(2);
    let results: Vec<QueryResult<()>> = std::thread::scope(|s| {
        let run = |first: i64, second: i64| {
            let barrier = &barrier;
            let db = &db;
            s.spawn(move || {
                let mut conn = db.connect();
                conn.transaction(|c| {
                    c.touch_payment(first)?;
                    barrier.wait();
                    c.touch_payment(second)
                })
            })
        };
        let one = run(a, b);
        let two = run(b, a);
        vec![one.join().unwrap(), two.join().unwrap()]
    });
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
pub fn nowait_lock_failures_are_retryable<B: Backend>() {
    if !B::REJECTS_AT_ONCE {
        // SQLite: a busy database file.
        let db = B::fresh();
        let mut holder = db.connect();
        let mut other = impatient(&db);
        let err = holder
            .transaction::<(), AppError, _>(|c| {
                c.insert_payment(1)?;
                other.insert_payment(2).map_err(AppError::from).map(drop)
            })
            .expect_err("the file is locked");
        assert!(Retryable::is_retryable(&err), "{err:?}");
        return;
    }
    let db = B::fresh();
    let id = db.connect().insert_payment(1).unwrap();
    let mut holder = db.connect();
    let mut other = db.connect();
    let err = holder
        .transaction::<(), AppError, _>(|c| {
            c.touch_payment(id)?;
            other.lock_payment_nowait(id).map_err(AppError::from)
        })
        .expect_err("the row is locked");
    assert!(Retryable::is_retryable(&err), "[{}] {err:?}", B::NAME);
}

/// Instantiates this file's tests for one backend in one flavour (see
/// `conformance!`).
#[macro_export]
macro_rules! hardening_tests {
    (blocking $backend:ty) => {
        $crate::hardening_tests!(@both blocking $backend);
        // Not written once for both flavours.
        $crate::conformance!(@plain $backend; hardening;
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
            unique_index_covers_only_plain_immediate_indexes,
            deadlocks_are_retryable,
            nowait_lock_failures_are_retryable,
        );
    };
    (nonblocking $backend:ty) => {
        $crate::hardening_tests!(@both nonblocking $backend);
    };
    (@both $flavour:ident $backend:ty) => {

    };
}
