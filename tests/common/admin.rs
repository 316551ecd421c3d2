//! The operator tools of `diesel_idempotent::admin` against the real
//! database: records are written by `#[idempotent]` calls on the test
//! clock, then found, listed, forgotten, counted and purged. Blocking
//! connections only, as the API.

use std::time::Duration;

use diesel::Connection;
use diesel_idempotent::admin::{self, NamespaceStats, RecordState};
use diesel_idempotent::{Call, Clock, Error, ManualClock, idempotent};

use super::{AppError, Backend, TestConn, clock};

const ORDERS: &str = "admin.orders";
const SESSIONS: &str = "admin.sessions";

/// One payment per key and tenant; its result is the payment's id.
#[idempotent(key = key, scope = tenant, ttl = "1h", name = "admin.orders", clock = clock)]
fn place_order<C: TestConn>(
    conn: &mut C,
    clock: &ManualClock,
    tenant: &str,
    key: &str,
    amount: i64,
) -> Result<i64, AppError> {
    Ok(conn.insert_payment(amount)?)
}

/// Records of another namespace, with a shorter TTL.
#[idempotent(key = key, ttl = "10m", name = "admin.sessions", clock = clock)]
fn open_session<C: TestConn>(
    conn: &mut C,
    clock: &ManualClock,
    key: &str,
) -> Result<i64, AppError> {
    Ok(conn.insert_payment(0)?)
}

fn keys(records: &[diesel_idempotent::IdempotencyRecord]) -> Vec<&str> {
    records.iter().map(|r| r.key.as_str()).collect()
}

fn stats(namespace: &str, live: u64, in_flight: u64, expired: u64) -> NamespaceStats {
    NamespaceStats {
        namespace: namespace.to_owned(),
        live,
        in_flight,
        expired,
    }
}

pub fn admin_find_returns_the_record_expired_or_not<B: Backend>() {
    let db = B::fresh();
    let mut conn = db.connect();
    let clock = clock();
    let id = place_order(&mut conn, &clock, "tenant-1", "order-1", 250).unwrap();

    let record = admin::find(&mut conn, ORDERS, "tenant-1", "order-1")
        .unwrap()
        .expect("the call's record");
    assert_eq!(record, conn.load_record(ORDERS, "order-1").unwrap());
    assert_eq!(
        (record.scope.as_str(), record.response.as_deref()),
        ("tenant-1", Some(id.to_string().as_str()))
    );
    assert!(record.fingerprint.starts_with("v2:"), "{record:?}");
    assert_eq!(record.created_at, clock.now().naive_utc());
    assert_eq!(
        record.expires_at - record.created_at,
        chrono::Duration::hours(1)
    );
    assert!(!record.is_in_flight() && !record.is_expired_at(clock.now()));

    for (namespace, scope, key) in [
        (ORDERS, "", "order-1"),
        (ORDERS, "tenant-2", "order-1"),
        (ORDERS, "tenant-1", "order-2"),
        (SESSIONS, "tenant-1", "order-1"),
    ] {
        assert_eq!(
            admin::find(&mut conn, namespace, scope, key).unwrap(),
            None,
            "{namespace} {scope:?} {key}"
        );
    }

    clock.advance(Duration::from_secs(3600));
    let expired = admin::find(&mut conn, ORDERS, "tenant-1", "order-1")
        .unwrap()
        .expect("an expired record is still found");
    assert!(
        expired.is_expired_at(clock.now()),
        "expires_at is the instant it stops"
    );
    assert_eq!(expired, record);
}

pub fn admin_list_orders_live_records_by_state<B: Backend>() {
    let db = B::fresh();
    let mut conn = db.connect();
    let clock = clock();
    for (i, key) in ["order-1", "order-2", "order-3"].into_iter().enumerate() {
        let tenant = if i == 1 { "tenant-2" } else { "tenant-1" };
        place_order(&mut conn, &clock, tenant, key, 10).unwrap();
        clock.advance(Duration::from_secs(60));
    }
    open_session(&mut conn, &clock, "session-1").unwrap();
    let list = |conn: &mut B::Conn, state, limit| {
        admin::list_with_clock(conn, ORDERS, state, limit, &clock).unwrap()
    };

    let completed = list(&mut conn, RecordState::Completed, 10);
    assert_eq!(
        keys(&completed),
        ["order-3", "order-2", "order-1"],
        "newest first"
    );
    assert_eq!(completed[1].scope, "tenant-2", "every scope");
    assert_eq!(
        keys(&list(&mut conn, RecordState::Completed, 2)),
        ["order-3", "order-2"]
    );
    assert!(list(&mut conn, RecordState::Completed, 0).is_empty());
    assert!(
        list(&mut conn, RecordState::InFlight, 10).is_empty(),
        "every call committed its result"
    );

    // The first order expires (1 h after it was placed); the session's
    // 10 minutes are long gone, and another namespace anyway.
    clock.advance(Duration::from_secs(3600 - 3 * 60));
    assert_eq!(
        keys(&list(&mut conn, RecordState::Completed, 10)),
        ["order-3", "order-2"],
        "expired records are left out"
    );
    assert!(
        admin::list_with_clock(&mut conn, SESSIONS, RecordState::Completed, 10, &clock)
            .unwrap()
            .is_empty()
    );

    // Calls in flight, oldest first, as their own transaction sees them:
    // a call whose body makes a second call.
    let seen = Call::new(ORDERS, "held-1")
        .clock(&clock)
        .run(&mut conn, |conn| -> Result<Vec<String>, AppError> {
            clock.advance(Duration::from_secs(1));
            Call::new(ORDERS, "held-2")
                .clock(&clock)
                .run(conn, |conn| -> Result<Vec<String>, AppError> {
                    let held =
                        admin::list_with_clock(conn, ORDERS, RecordState::InFlight, 10, &clock)?;
                    assert!(held.iter().all(|r| r.is_in_flight()), "{held:?}");
                    Ok(held.into_iter().map(|r| r.key).collect())
                })
                .map(|outcome| outcome.into_value())
        })
        .unwrap()
        .into_value();
    assert_eq!(seen, ["held-1", "held-2"]);
    assert!(
        list(&mut conn, RecordState::InFlight, 10).is_empty(),
        "both completed"
    );
    assert_eq!(
        keys(&list(&mut conn, RecordState::Completed, 10)),
        ["held-2", "held-1", "order-3", "order-2"]
    );
}

pub fn admin_forget_lets_the_next_call_run_the_body<B: Backend>() {
    let db = B::fresh();
    let mut conn = db.connect();
    let clock = clock();
    let first = place_order(&mut conn, &clock, "tenant-1", "order-1", 250).unwrap();
    place_order(&mut conn, &clock, "tenant-1", "order-2", 300).unwrap();
    assert_eq!(
        place_order(&mut conn, &clock, "tenant-1", "order-1", 250).unwrap(),
        first,
        "replayed"
    );
    assert_eq!(conn.count_payments().unwrap(), 2);

    // Inside a transaction that rolls back, the record stays.
    let kept = conn.transaction(|conn| {
        assert!(admin::forget(conn, ORDERS, "tenant-1", "order-1")?);
        assert_eq!(admin::find(conn, ORDERS, "tenant-1", "order-1")?, None);
        Err::<(), _>(diesel::result::Error::RollbackTransaction.into())
    });
    assert!(matches!(
        kept,
        Err(Error::Database(diesel::result::Error::RollbackTransaction))
    ));
    assert!(
        admin::find(&mut conn, ORDERS, "tenant-1", "order-1")
            .unwrap()
            .is_some()
    );

    assert!(
        !admin::forget(&mut conn, ORDERS, "tenant-2", "order-1").unwrap(),
        "other scope"
    );
    assert!(admin::forget(&mut conn, ORDERS, "tenant-1", "order-1").unwrap());
    assert_eq!(
        admin::find(&mut conn, ORDERS, "tenant-1", "order-1").unwrap(),
        None
    );
    assert!(
        !admin::forget(&mut conn, ORDERS, "tenant-1", "order-1").unwrap(),
        "gone"
    );
    assert_eq!(conn.record_keys().unwrap(), ["order-2"], "the others stay");

    let again = place_order(&mut conn, &clock, "tenant-1", "order-1", 250).unwrap();
    assert_ne!(again, first, "a new payment");
    assert_eq!(conn.count_payments().unwrap(), 3, "the body ran again");
    assert_eq!(
        place_order(&mut conn, &clock, "tenant-1", "order-1", 250).unwrap(),
        again,
        "and its new record answers"
    );
    assert_eq!(conn.count_payments().unwrap(), 3);
}

pub fn admin_stats_count_live_in_flight_and_expired_per_namespace<B: Backend>() {
    let db = B::fresh();
    let mut conn = db.connect();
    let clock = clock();
    assert_eq!(admin::stats_with_clock(&mut conn, &clock).unwrap(), []);
    for key in ["order-1", "order-2", "order-3"] {
        place_order(&mut conn, &clock, "tenant-1", key, 1).unwrap();
    }
    for key in ["session-1", "session-2"] {
        open_session(&mut conn, &clock, key).unwrap();
    }
    assert_eq!(
        admin::stats_with_clock(&mut conn, &clock).unwrap(),
        [stats(ORDERS, 3, 0, 0), stats(SESSIONS, 2, 0, 0)]
    );

    clock.advance(Duration::from_secs(10 * 60));
    open_session(&mut conn, &clock, "session-3").unwrap();
    assert_eq!(
        admin::stats_with_clock(&mut conn, &clock).unwrap(),
        [stats(ORDERS, 3, 0, 0), stats(SESSIONS, 1, 0, 2)],
        "the first sessions expired"
    );

    // A call in flight counts as live and in flight, in its transaction.
    let mut inside = Vec::new();
    Call::new(ORDERS, "held")
        .clock(&clock)
        .run(&mut conn, |conn| -> Result<(), AppError> {
            inside = admin::stats_with_clock(conn, &clock)?;
            Ok(())
        })
        .unwrap();
    assert_eq!(inside, [stats(ORDERS, 4, 1, 0), stats(SESSIONS, 1, 0, 2)]);

    // An hour on, the orders placed first have expired; the held call's
    // record (`Call`'s default TTL, a day) is live.
    clock.advance(Duration::from_secs(3600));
    assert_eq!(
        admin::stats_with_clock(&mut conn, &clock).unwrap(),
        [stats(ORDERS, 1, 0, 3), stats(SESSIONS, 0, 0, 3)]
    );
}

pub fn admin_purge_batch_deletes_expired_records_in_bounded_batches<B: Backend>() {
    let db = B::fresh();
    let mut conn = db.connect();
    let clock = clock();
    for i in 0..30 {
        open_session(&mut conn, &clock, &format!("session-{i}")).unwrap();
    }
    place_order(&mut conn, &clock, "tenant-1", "order-1", 1).unwrap();
    assert_eq!(
        admin::count_expired_with_clock(&mut conn, &clock).unwrap(),
        0
    );
    assert_eq!(admin::purge_batch(&mut conn, clock.now(), 7).unwrap(), 0);

    clock.advance(Duration::from_secs(10 * 60));
    assert_eq!(
        admin::count_expired_with_clock(&mut conn, &clock).unwrap(),
        30
    );
    assert!(matches!(
        admin::purge_batch(&mut conn, clock.now(), 0),
        Err(Error::InvalidBatchSize)
    ));
    let mut batches = Vec::new();
    loop {
        let deleted = admin::purge_batch(&mut conn, clock.now(), 7).unwrap();
        batches.push(deleted);
        assert_eq!(
            admin::count_expired_with_clock(&mut conn, &clock).unwrap(),
            30 - batches.iter().sum::<usize>() as u64
        );
        if deleted < 7 {
            break;
        }
    }
    assert_eq!(batches, [7, 7, 7, 7, 2]);
    assert_eq!(
        conn.record_keys().unwrap(),
        ["order-1"],
        "the live record stays"
    );
    // With the system clock (years after the test clock) it has expired.
    assert_eq!(admin::count_expired(&mut conn).unwrap(), 1);
}

/// `forget` of a key whose first call is still running finds nothing: that
/// call has not committed its record, so `forget` returns `false` and the
/// record the call then commits stays (the module's documentation).
pub fn admin_forget_of_a_call_in_flight_finds_nothing<B: Backend>() {
    let db = B::fresh();
    let clock = clock();
    let (db, clock) = (&db, &clock);
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let forgot = std::thread::scope(|s| {
        let holder = s.spawn(move || {
            let mut conn = db.connect();
            Call::new(ORDERS, "held")
                .scope("tenant-1")
                .clock(clock)
                .run(&mut conn, |conn| -> Result<i64, AppError> {
                    let id = conn.insert_payment(1)?;
                    entered_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    Ok(id)
                })
                .unwrap()
        });
        entered_rx.recv().unwrap();
        // The answer comes while the call is still in flight: forget
        // neither waits for the call nor deletes what it commits.
        let (forgot_tx, forgot_rx) = std::sync::mpsc::channel();
        s.spawn(move || {
            let mut conn = db.connect();
            forgot_tx
                .send(admin::forget(&mut conn, ORDERS, "tenant-1", "held").unwrap())
                .unwrap();
        });
        let forgot = forgot_rx.recv_timeout(crate::common::rt::DEADLINE);
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        forgot.expect("forget answers while the call is in flight, without waiting for it")
    });
    assert!(!forgot, "a record in flight is not there to forget");
    let mut conn = db.connect();
    assert!(
        admin::find(&mut conn, ORDERS, "tenant-1", "held")
            .unwrap()
            .is_some(),
        "the call's record stays"
    );
}

/// Instantiates this file's tests for one backend (see `conformance!`):
/// blocking connections only, as the API.
#[macro_export]
macro_rules! admin_tests {
    (blocking $backend:ty) => {
        $crate::conformance!(@plain $backend; admin;
            admin_find_returns_the_record_expired_or_not,
            admin_list_orders_live_records_by_state,
            admin_forget_lets_the_next_call_run_the_body,
            admin_stats_count_live_in_flight_and_expired_per_namespace,
            admin_purge_batch_deletes_expired_records_in_bounded_batches,
            admin_forget_of_a_call_in_flight_finds_nothing,
        );
    };
    (nonblocking $backend:ty) => {};
}
