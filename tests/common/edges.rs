//! Edge cases of optimistic mode, read-first and the PostgreSQL
//! claim-or-load statement: deadlocks inside a caller's transaction, dirty
//! reads, repeats whose own result could not be stored, panics on replay
//! paths, snapshot transactions, the statement cache.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use diesel::connection::{Connection, SimpleConnection};
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel_idempotent::{Call, Error, Mode, Outcome, Replay, Ttl};

use super::*;

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Raw SQL on each backend's connection.
pub trait Raw: TestConn {
    fn count_sql(&mut self, sql: &str) -> i64;
    /// A statement sent as a prepared statement (as Diesel's DSL sends them).
    fn exec_sql(&mut self, sql: &str) -> QueryResult<usize>;
}

macro_rules! raw {
    ($($(#[$m:meta])* $conn:ty),*) => {$(
        $(#[$m])*
        impl Raw for $conn {
            fn count_sql(&mut self, sql: &str) -> i64 {
                diesel::sql_query(sql).get_result::<N>(self).expect(sql).n
            }
            fn exec_sql(&mut self, sql: &str) -> QueryResult<usize> {
                diesel::sql_query(sql).execute(self)
            }
        }
    )*};
}
raw!(
    #[cfg(feature = "postgres")]
    diesel::PgConnection,
    #[cfg(feature = "mysql")]
    diesel::MysqlConnection,
    #[cfg(feature = "sqlite")]
    diesel::SqliteConnection
);

fn count<C: Raw>(conn: &mut C, sql: &str) -> i64 {
    conn.count_sql(sql)
}

fn exec<C: TestConn>(conn: &mut C, sql: &str) {
    conn.batch_execute(sql).expect(sql);
}

/// Waits until a statement starting with `prefix` waits for a lock.
fn wait_for_waiter<B: Backend>(db: &B, prefix: &str)
where
    B::Conn: Raw,
{
    let mut conn = db.connect();
    let sql = if B::NAME == "postgres" {
        format!(
            "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query LIKE '{prefix}%'"
        )
    } else {
        format!(
            "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST \
             WHERE DB = DATABASE() AND INFO LIKE '{prefix}%'"
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&mut conn, &sql) < 1 {
        assert!(Instant::now() < deadline, "no waiter on {prefix}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// An optimistic call, inside a caller's transaction that wrote a payment of
/// its own first, whose body deadlocks with an unrelated transaction (and
/// is chosen as the victim) while a finished record of the same request
/// holds the key.
///
/// Claim-first would return the deadlock error, and the caller would roll
/// back. The promise: the caller's transaction stays atomic; either the
/// call fails, or what the caller wrote before and after it commits with
/// it and rolls back with it.
pub fn optimistic_body_deadlock_in_callers_transaction<B: Backend>(mode: Mode, caller_commits: bool)
where
    B::Conn: Raw,
{
    let db = &B::fresh();
    let clock = &clock();
    let mut setup = db.connect();
    exec(
        &mut setup,
        "CREATE TABLE locks (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)",
    );
    exec(
        &mut setup,
        "INSERT INTO locks (id, v) VALUES (1, 0), (2, 0)",
    );
    exec(&mut setup, "CREATE TABLE ballast (id BIGINT PRIMARY KEY)");
    let req = NewPayment::eur(5);
    let call = |conn: &mut B::Conn,
                body: &mut dyn FnMut(&mut B::Conn) -> Result<Payment, AppError>| {
        Call::new("edges.deadlock", "k")
            .ttl(Ttl::from_secs(3600))
            .clock(clock)
            .request(&req)
            .mode(mode)
            .run(conn, |c| body(c))
    };
    // The first call, committed.
    let first = call(&mut setup, &mut |c| {
        Ok(Payment {
            id: c.insert_payment(5)?,
            amount: 5,
        })
    })
    .expect("first call");
    assert!(!first.is_replayed());

    let (locked_tx, locked_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let outcome = std::thread::scope(|s| {
        // The other side of the deadlock: a heavier transaction, so that
        // InnoDB picks the caller as the victim.
        let other = s.spawn(move || {
            let mut d = db.connect();
            d.transaction(|d| -> QueryResult<()> {
                let values: Vec<String> = (1..=200).map(|i| format!("({i})")).collect();
                exec(
                    d,
                    &format!("INSERT INTO ballast (id) VALUES {}", values.join(",")),
                );
                exec(d, "UPDATE locks SET v = v + 1 WHERE id = 2");
                locked_rx.recv().unwrap();
                go_tx.send(()).unwrap();
                // Waits for the caller's lock on 1.
                let _ = d.batch_execute("UPDATE locks SET v = v + 10 WHERE id = 1");
                Ok(())
            })
        });
        let mut c = db.connect();
        let mut after_call = None;
        let outcome = c.transaction(|c| -> Result<Outcome<Payment>, AppError> {
            // The caller's own work, before the call.
            c.insert_payment(999)?;
            let outcome = call(c, &mut |c| {
                exec(c, "UPDATE locks SET v = v + 100 WHERE id = 1");
                locked_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                wait_for_waiter(db, "UPDATE locks SET v = v + 10 WHERE id = 1");
                // Deadlock: this transaction holds 1 and wants 2.
                c.exec_sql("UPDATE locks SET v = v + 1000 WHERE id = 2")?;
                Ok(Payment {
                    id: c.insert_payment(5)?,
                    amount: 5,
                })
            })?;
            // The caller's own work, after the call.
            after_call = Some(c.insert_payment(1000));
            if caller_commits {
                Ok(outcome)
            } else {
                Err(AppError::Declined)
            }
        });
        let _ = other.join().unwrap();
        (outcome, after_call)
    });
    let (outcome, after_call) = outcome;
    let mut check = db.connect();
    let before_row = count(
        &mut check,
        "SELECT COUNT(*) AS n FROM payments WHERE amount = 999",
    );
    let after_row = count(
        &mut check,
        "SELECT COUNT(*) AS n FROM payments WHERE amount = 1000",
    );
    println!(
        "[{}] {mode:?}: call inside the caller's transaction answered {:?}; the caller's \
         transaction {}; caller's row before the call: {before_row}, after: {after_row} \
         (insert after the call: {after_call:?})",
        B::NAME,
        outcome
            .as_ref()
            .map(|o| (o.is_replayed(), o.value().clone())),
        if outcome.is_ok() && caller_commits {
            "committed"
        } else {
            "rolled back"
        }
    );
    if !caller_commits {
        assert_eq!(
            after_row, 0,
            "the caller's transaction rolled back, but the payment it inserted after the \
             call (which answered Ok) is there: it was committed on its own"
        );
    }
    if outcome.is_ok() {
        assert_eq!(
            before_row, 1,
            "the call returned Ok(replayed) and the caller's transaction committed, but the \
             payment the caller inserted before the call is gone"
        );
    }
}

/// A repeat whose body now computes a larger result (it lists the payments,
/// which grew since the first call) must still replay the first call's
/// stored result: the key was answered. Claim-first replays it; an
/// optimistic call checks the size of the result it is about to roll back.
pub fn optimistic_repeat_replays_even_if_its_own_result_would_be_too_large<B: Backend>(mode: Mode)
where
    B::Conn: Raw,
{
    let db = B::fresh();
    let mut conn = db.connect();
    let clock = clock();
    let req = NewPayment::eur(1);
    let call = |conn: &mut B::Conn| {
        Call::new("edges.big", "k")
            .clock(&clock)
            .request(&req)
            .mode(mode)
            .max_response_bytes(1024)
            .run(conn, |c| -> Result<String, AppError> {
                c.insert_payment(1)?;
                // The result lists what is there: it grows with the table.
                let n = c.count_payments()?;
                Ok("p".repeat(n as usize * 100))
            })
    };
    let first = call(&mut conn).expect("first call: 100 bytes");
    assert!(!first.is_replayed());
    for _ in 0..20 {
        conn.insert_payment(7).unwrap();
    }
    let repeat = call(&mut conn);
    println!(
        "[{}] {mode:?}: repeat answered {:?}",
        B::NAME,
        repeat
            .as_ref()
            .map(|o| (o.is_replayed(), o.len()))
            .map_err(|e| e.to_string())
    );
    let repeat = repeat.expect("the repeat replays the stored result");
    assert!(repeat.is_replayed());
    assert_eq!(repeat.value(), first.value());
}

/// MySQL at READ UNCOMMITTED, optimistic mode WITHOUT `read_first`: a
/// duplicate whose body fails while the first call is still uncommitted
/// must not answer with the first call's (uncommitted) result; the first
/// call then rolls back, so the duplicate's client would hold a result
/// that never happened.
pub fn optimistic_after_error_read_never_replays_uncommitted<B: Backend>()
where
    B::Conn: Raw,
{
    let db = &B::fresh();
    let clock = &clock();
    let req = NewPayment::eur(3);
    let call = |conn: &mut B::Conn, fail: bool| {
        Call::new("edges.dirty", "k")
            .clock(clock)
            .request(&req)
            .mode(Mode::Optimistic)
            .run(conn, move |c| -> Result<Payment, AppError> {
                let id = c.insert_payment(3)?;
                if fail {
                    Err(AppError::Declined)
                } else {
                    Ok(Payment { id, amount: 3 })
                }
            })
    };
    let (held_tx, held_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let duplicate = std::thread::scope(|s| {
        let first = s.spawn(move || {
            let mut a = db.connect();
            let r: Result<(), AppError> = a.transaction(|a| {
                call(a, false)?;
                held_tx.send(()).unwrap();
                done_rx.recv().unwrap();
                // The first call's caller rolls back.
                Err(AppError::Declined)
            });
            assert!(matches!(r, Err(AppError::Declined)));
        });
        held_rx.recv().unwrap();
        let mut b = db.connect();
        exec(
            &mut b,
            "SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
        );
        // The look after the body's error waits for the first call's
        // uncommitted record (a locking read), which waits for this call:
        // give up after a second rather than InnoDB's default 50.
        b.short_lock_waits().unwrap();
        let duplicate = call(&mut b, true);
        done_tx.send(()).unwrap();
        first.join().unwrap();
        duplicate
    });
    let mut check = db.connect();
    let records = check.count_records().unwrap();
    println!(
        "[{}] duplicate answered {:?}; records after the first call rolled back: {records}",
        B::NAME,
        duplicate
            .as_ref()
            .map(|o| (o.is_replayed(), o.value().clone()))
            .map_err(|e| e.to_string())
    );
    assert!(
        !matches!(&duplicate, Ok(o) if o.is_replayed()),
        "the duplicate replayed a result that was never committed: {duplicate:?}"
    );
}

/// At every isolation level a duplicate replays or gets a retryable error:
/// a duplicate inside a caller's transaction whose snapshot predates the
/// first call's commit, whose body would insert the unique row the first
/// call committed. (Run for claim-first; optimistic mode returns the body's
/// own error inside a caller's snapshot transaction, as the README says.)
pub fn duplicate_in_snapshot_transaction_replays_or_is_retryable<B: Backend>(mode: Mode) {
    let db = &B::fresh();
    let clock = &clock();
    let mut failures = Vec::new();
    for (l, level) in B::ISOLATION_LEVELS.iter().enumerate() {
        let key = format!("acct-{l}");
        let customer = 100 + l as i64;
        let (snap_tx, snap_rx) = mpsc::channel::<()>();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let duplicate = std::thread::scope(|s| {
            let key = &key;
            let dup = s.spawn(move || {
                let mut b = db.connect();
                b.transaction_at(*level, |c| {
                    c.count_payments()?; // the snapshot
                    snap_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                    super::modes::open_account(c, clock, key, customer, mode)
                })
            });
            snap_rx.recv().unwrap();
            let first = super::modes::open_account(&mut db.connect(), clock, key, customer, mode)
                .expect("the first call");
            assert!(!first.is_replayed());
            go_tx.send(()).unwrap();
            dup.join().unwrap()
        });
        let ok = match &duplicate {
            Ok(o) => o.is_replayed(),
            Err(e) => diesel_idempotent::Retryable::is_retryable(e),
        };
        println!(
            "[{}] {mode:?} {level:?}: the duplicate answered {}",
            B::NAME,
            match &duplicate {
                Ok(o) => format!("Ok(replayed: {})", o.is_replayed()),
                Err(e) => format!(
                    "Err({e}) retryable: {}",
                    diesel_idempotent::Retryable::is_retryable(e)
                ),
            }
        );
        if !ok {
            failures.push(format!("{level:?}: {duplicate:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "a duplicate neither replayed nor got a retryable error: {failures:#?}"
    );
}

/// PostgreSQL: a duplicate whose claim-or-load waited for a first call that
/// then committed: the statement's snapshot predates the commit, so the
/// fallback read must follow and the duplicate replays.
#[cfg(feature = "postgres")]
pub fn pg_claim_or_load_fallback_is_reached(db: &Postgres, mode: Mode) {
    let clock = &clock();
    let req = NewPayment::eur(9);
    let call = |c: &mut diesel::PgConnection| {
        Call::new("edges.fallback", "k")
            .clock(clock)
            .request(&req)
            .mode(mode)
            .run(c, |c| -> Result<Payment, AppError> {
                Ok(Payment {
                    id: c.insert_payment(9)?,
                    amount: 9,
                })
            })
    };
    let (held_tx, held_rx) = mpsc::channel::<Payment>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut a = db.connect();
            a.transaction(|a| -> Result<(), AppError> {
                let p = call(a)?.into_value();
                held_tx.send(p).unwrap();
                go_rx.recv().unwrap();
                Ok(())
            })
            .unwrap();
        });
        let first = held_rx.recv().unwrap();
        let dup = s.spawn(move || {
            let mut b = db.connect();
            statements(&mut b, |b| call(b))
        });
        db.wait_for_lock_waiters(1);
        go_tx.send(()).unwrap();
        let (log, result) = dup.join().unwrap();
        let log: Vec<String> = log.iter().map(|q| q.chars().take(40).collect()).collect();
        println!("[postgres] {mode:?} duplicate sent: {log:#?}");
        let out = result.expect("the duplicate replays");
        assert!(out.is_replayed());
        assert_eq!(out.into_value(), first);
        assert!(
            log.iter()
                .any(|q| q.starts_with("SELECT fingerprint, response, expires_at")),
            "the fallback read followed"
        );
    });
}

/// README, Backends: "Every statement of the library is a prepared
/// statement Diesel caches per connection."
#[cfg(feature = "postgres")]
pub fn pg_call_statements_are_cached(db: &Postgres) {
    let mut conn = db.connect();
    let clock = clock();
    Call::new("edges.cache", "k")
        .clock(&clock)
        .run(&mut conn, |c| -> Result<i64, AppError> {
            Ok(c.insert_payment(1)?)
        })
        .unwrap();
    diesel_idempotent::purge_expired_with_clock(&mut conn, 10, &clock).unwrap();
    let cached = |conn: &mut diesel::PgConnection, like: &str| {
        conn.count_sql(&format!(
            "SELECT COUNT(*) AS n FROM pg_prepared_statements WHERE statement LIKE '{like}%'"
        ))
    };
    let claim = cached(&mut conn, "WITH ins AS");
    let complete = cached(&mut conn, "UPDATE idempotency_records SET response");
    println!("[postgres] cached: claim-or-load {claim}, stored result {complete}");
    assert_eq!(claim, 1, "the claim is a cached prepared statement");
    assert_eq!(
        complete, 1,
        "the stored result is a cached prepared statement"
    );
}

thread_local! {
    static PANIC_ON_DESERIALIZE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A value whose `Deserialize` panics while the flag is set.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Touchy(i64);

impl<'de> serde::Deserialize<'de> for Touchy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        if PANIC_ON_DESERIALIZE.with(|f| f.get()) {
            panic!("Deserialize panics");
        }
        Ok(Touchy(n))
    }
}

fn depth<C: TestConn>(conn: &mut C) -> u32 {
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    AnsiTransactionManager::transaction_manager_status_mut(conn)
        .transaction_depth()
        .unwrap()
        .map_or(0, |d| d.get())
}

/// A `Deserialize` panic on the paths that replay after the library's
/// transaction ended (optimistic after a body error, read-first), inside a
/// caller's transaction: the caller's transaction is left at its depth and
/// usable, its commit keeps its own work, and nothing else is stored.
pub fn panics_on_replay_paths_leave_the_callers_transaction_usable<B: Backend>() {
    let db = B::fresh();
    let mut conn = db.connect();
    let clock = clock();
    let call = |c: &mut B::Conn, shape: (Mode, Replay), fail: bool| {
        Call::new("edges.touchy", "k")
            .clock(&clock)
            .mode(shape.0)
            .replay(shape.1)
            .run(c, move |c| -> Result<Touchy, AppError> {
                let id = c.insert_payment(1)?;
                if fail {
                    Err(AppError::Declined)
                } else {
                    Ok(Touchy(id))
                }
            })
    };
    call(&mut conn, (Mode::ClaimFirst, Replay::InTransaction), false).unwrap();
    // (An optimistic body that fails inside a caller's transaction returns
    // its error without looking for a replay: no `Deserialize` runs.)
    for (shape, fail) in [
        ((Mode::Optimistic, Replay::InTransaction), false),
        ((Mode::ClaimFirst, Replay::ReadFirst), false),
        ((Mode::Optimistic, Replay::ReadFirst), true),
    ] {
        let before = conn.count_payments().unwrap();
        let r: Result<(), AppError> = conn.transaction(|c| {
            c.insert_payment(500)?;
            PANIC_ON_DESERIALIZE.with(|f| f.set(true));
            let caught =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call(c, shape, fail)));
            PANIC_ON_DESERIALIZE.with(|f| f.set(false));
            assert!(
                caught.is_err(),
                "{shape:?}: the replay's Deserialize panicked"
            );
            assert_eq!(depth(c), 1, "{shape:?}: the caller's level only");
            c.insert_payment(501)?;
            Ok(())
        });
        r.unwrap_or_else(|e| panic!("{shape:?}: the caller commits: {e:?}"));
        assert_eq!(depth(&mut conn), 0);
        assert_eq!(
            conn.count_payments().unwrap(),
            before + 2,
            "{shape:?}: the caller's two rows"
        );
        assert_eq!(conn.count_records().unwrap(), 1);
    }
}

/// README: `on_conflict = "reject"` answers `InFlight` at once while the key
/// is held; `read_first`'s read "takes no lock and waits for none".
/// A read-first, rejecting duplicate inside a caller's transaction, at each
/// isolation level, while a first call holds the key uncommitted.
pub fn read_first_reject_in_callers_transaction_answers_at_once<B: Backend>(replay: Replay) {
    if !B::REJECTS_AT_ONCE {
        return;
    }
    let db = &B::fresh();
    let clock = &clock();
    let req = NewPayment::eur(4);
    let call = |c: &mut B::Conn, reject: bool| {
        let call = Call::new("edges.rf_reject", "k")
            .clock(clock)
            .request(&req)
            .replay(replay);
        let call = if reject {
            call.on_conflict(diesel_idempotent::OnConflict::Reject)
        } else {
            call
        };
        call.run(c, |c| -> Result<Payment, AppError> {
            Ok(Payment {
                id: c.insert_payment(4)?,
                amount: 4,
            })
        })
    };
    let (held_tx, held_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let mut failures = Vec::new();
    std::thread::scope(|s| {
        let holder = s.spawn(move || {
            let mut a = db.connect();
            let _ = a.transaction(|a| -> Result<(), AppError> {
                call(a, false)?;
                held_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                Err(AppError::Declined)
            });
        });
        held_rx.recv().unwrap();
        for level in B::ISOLATION_LEVELS {
            let mut b = db.connect();
            b.short_lock_waits().unwrap();
            let started = Instant::now();
            let r = b.transaction_at(*level, |c| call(c, true));
            let took = started.elapsed();
            println!(
                "[{}] {replay:?} {level:?}: reject duplicate answered after {took:?}: {:?}",
                B::NAME,
                r.as_ref()
                    .map(|o| o.is_replayed())
                    .map_err(|e| e.to_string())
            );
            let in_flight = matches!(
                r.as_ref().err().and_then(AppError::idempotency),
                Some(Error::InFlight { .. })
            );
            if !in_flight || took > Duration::from_millis(500) {
                failures.push(format!("{level:?}: after {took:?}: {r:?}"));
            }
        }
        go_tx.send(()).unwrap();
        holder.join().unwrap();
    });
    assert!(failures.is_empty(), "not InFlight at once: {failures:#?}");
}
