//! The transactional outbox against the real database: effects pushed in
//! idempotent calls commit with their records and only then; dispatchers
//! deliver them at least once (also after a dispatcher is killed mid
//! delivery), never twice at once, retry with back-off, give up, and fence
//! a delivery whose lease was taken over. Time moves only on a
//! `ManualClock`.

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use diesel::Connection;
use diesel::connection::SimpleConnection;
use diesel::query_builder::SqlQuery;
use diesel::query_dsl::methods::LoadQuery;
use diesel_idempotent::outbox::{self, Dispatched, Dispatcher, EffectState, effect_id};
use diesel_idempotent::{Call, Clock, Error, ManualClock, Mode, idempotent};

use super::statements::Count;
use super::{AppError, Backend, ClickEvent, DatabaseUrl, TestConn, clock};

const NS: &str = "outbox.calls";
const INNER: &str = "outbox.inner";
const KIND: &str = "order_placed";

/// The child role of the crash test: the database's URL, and the Unix
/// second its clock stands at.
const CHILD_URL: &str = "DIESEL_IDEMPOTENT_OUTBOX_CHILD_URL";
const CHILD_CLOCK: &str = "DIESEL_IDEMPOTENT_OUTBOX_CHILD_CLOCK";
/// The crash test's name in each backend's test binary.
const CRASH_TEST: &str = "outbox_redelivers_after_a_crash_mid_delivery";

/// A count read with a plain SQL statement (`SELECT COUNT(*) AS n ..`).
fn count<C>(conn: &mut C, sql: &str) -> i64
where
    SqlQuery: LoadQuery<'static, C, Count>,
{
    diesel::RunQueryDsl::get_result::<Count>(diesel::sql_query(sql), conn)
        .expect(sql)
        .n
}

/// How many effects are in `state`.
fn in_state<C>(conn: &mut C, state: &str) -> i64
where
    SqlQuery: LoadQuery<'static, C, Count>,
{
    count(
        conn,
        &format!("SELECT COUNT(*) AS n FROM idempotency_outbox WHERE state = '{state}'"),
    )
}

fn state_of<C: TestConn>(conn: &mut C, id: &str) -> outbox::OutboxEntry {
    outbox::find_effect(conn, id)
        .unwrap()
        .unwrap_or_else(|| panic!("no effect {id}"))
}

fn exists<C: TestConn>(conn: &mut C, id: &str) -> bool {
    outbox::find_effect(conn, id).unwrap().is_some()
}

/// One order per key and tenant; pushes one effect.
#[idempotent(key = key, scope = tenant, name = "outbox.orders", clock = clock)]
fn place_order<C: TestConn>(
    conn: &mut C,
    clock: &ManualClock,
    tenant: &str,
    key: &str,
    amount: i64,
) -> Result<String, AppError> {
    conn.insert_payment(amount)?;
    Ok(outbox::push(conn, KIND, &amount)?.into())
}

/// An event consumed once, keyed by its hash; pushes one effect.
#[idempotent(hash, name = "outbox.events", clock = clock)]
fn consume_event<C: TestConn>(
    conn: &mut C,
    clock: &ManualClock,
    event: &ClickEvent,
) -> Result<String, AppError> {
    Ok(outbox::push(conn, "click", event)?.into())
}

/// A call under `key` on `clock` whose body pushes `n` effects and returns
/// their ids.
fn push_n<C: TestConn>(
    conn: &mut C,
    clock: &ManualClock,
    key: &str,
    n: u32,
) -> Result<diesel_idempotent::Outcome<Vec<String>>, AppError> {
    Call::new(NS, key)
        .clock(clock)
        .request(&n)
        .run(conn, |conn| -> Result<Vec<String>, AppError> {
            (0..n)
                .map(|i| Ok(outbox::push(conn, KIND, &i)?.to_string()))
                .collect()
        })
}

pub fn outbox_push_commits_with_the_record_and_only_then<B: Backend>()
where
    SqlQuery: LoadQuery<'static, B::Conn, Count>,
{
    let db = B::fresh();
    let mut conn = db.connect();
    let clock = clock();

    // Committed with the record; the n-th push is effect n.
    let ids = push_n(&mut conn, &clock, "k-1", 2).unwrap().into_value();
    assert_eq!(
        ids,
        [effect_id(NS, "", "k-1", 1), effect_id(NS, "", "k-1", 2)]
    );
    assert_eq!(ids[0], "outbox.calls//k-1/effect/1");
    let first = state_of(&mut conn, &ids[0]);
    assert_eq!(
        (first.kind.as_str(), first.payload.as_str(), first.state),
        (KIND, "0", EffectState::Pending)
    );
    assert_eq!(first.attempts, 0);
    assert_eq!(first.created_at, clock.now().naive_utc());
    assert_eq!(first.available_at, clock.now().naive_utc());
    assert_eq!(first.finished_at, None);

    // A replay runs no body: it pushes nothing.
    let replay = push_n(&mut conn, &clock, "k-1", 2).unwrap();
    assert!(replay.is_replayed());
    assert_eq!(replay.into_value(), ids);
    assert_eq!(in_state(&mut conn, "pending"), 2);

    // A body that fails leaves no effect; its retry pushes the same ids.
    let failed =
        Call::new(NS, "k-2")
            .clock(&clock)
            .run(&mut conn, |conn| -> Result<(), AppError> {
                outbox::push(conn, KIND, &1)?;
                Err(AppError::Declined)
            });
    assert!(matches!(failed, Err(AppError::Declined)));
    assert!(!exists(&mut conn, &effect_id(NS, "", "k-2", 1)));
    let retried = Call::new(NS, "k-2")
        .clock(&clock)
        .run(&mut conn, |conn| -> Result<String, AppError> {
            Ok(outbox::push(conn, KIND, &1)?.into())
        })
        .unwrap();
    assert_eq!(retried.into_value(), effect_id(NS, "", "k-2", 1));

    // A caller that rolls back its transaction rolls the effect back.
    let rolled_back = conn.transaction(|conn| -> Result<(), AppError> {
        push_n(conn, &clock, "k-3", 1)?;
        assert!(exists(conn, &effect_id(NS, "", "k-3", 1)));
        Err(AppError::Declined)
    });
    assert!(rolled_back.is_err());
    assert!(!exists(&mut conn, &effect_id(NS, "", "k-3", 1)));

    // Nested calls number their own effects; the outer call's go on.
    let outer = Call::new(NS, "k-4")
        .clock(&clock)
        .run(&mut conn, |conn| -> Result<Vec<String>, AppError> {
            let a = outbox::push(conn, KIND, &"outer-1")?;
            let inner = Call::new(INNER, "k-4")
                .clock(&clock)
                .run(conn, |conn| -> Result<Vec<String>, AppError> {
                    let x = outbox::push(conn, KIND, &"inner-1")?;
                    let y = outbox::push(conn, KIND, &"inner-2")?;
                    Ok(vec![x.into(), y.into()])
                })?
                .into_value();
            let b = outbox::push(conn, KIND, &"outer-2")?;
            Ok([vec![a.into()], inner, vec![b.into()]].concat())
        })
        .unwrap()
        .into_value();
    assert_eq!(
        outer,
        [
            effect_id(NS, "", "k-4", 1),
            effect_id(INNER, "", "k-4", 1),
            effect_id(INNER, "", "k-4", 2),
            effect_id(NS, "", "k-4", 2),
        ]
    );
    assert_eq!(state_of(&mut conn, &outer[3]).payload, "\"outer-2\"");

    // The attribute's key and scope name the effect; so does a hash key.
    let id = place_order(&mut conn, &clock, "tenant-1", "o-1", 250).unwrap();
    assert_eq!(id, effect_id("outbox.orders", "tenant-1", "o-1", 1));
    assert_eq!(
        place_order(&mut conn, &clock, "tenant-1", "o-1", 250).unwrap(),
        id,
        "replayed"
    );
    let event = ClickEvent {
        user_id: 7,
        url: "/a".to_owned(),
        occurred_at: 1,
        delivery: 1,
    };
    let id = consume_event(&mut conn, &clock, &event).unwrap();
    assert!(
        id.starts_with("outbox.events//v2:") && id.ends_with("/effect/1"),
        "{id}"
    );
    assert_eq!(consume_event(&mut conn, &clock, &event).unwrap(), id);

    // A long key gives a hashed id of fixed length.
    let long = "k".repeat(255);
    let ids = push_n(&mut conn, &clock, &long, 1).unwrap().into_value();
    assert_eq!(ids, [effect_id(NS, "", &long, 1)]);
    assert!(ids[0].starts_with("sha256:") && ids[0].len() == 71);

    // Optimistic mode: the repeat's body runs and rolls back; the first
    // call's effect stands alone.
    for _ in 0..2 {
        Call::new(NS, "k-5")
            .clock(&clock)
            .mode(Mode::Optimistic)
            .run(&mut conn, |conn| -> Result<String, AppError> {
                Ok(outbox::push(conn, KIND, &5)?.into())
            })
            .unwrap();
    }
    assert!(exists(&mut conn, &effect_id(NS, "", "k-5", 1)));
    assert!(!exists(&mut conn, &effect_id(NS, "", "k-5", 2)));

    // Outside a call: the typed error, and nothing written; an id of one's
    // own works anywhere.
    let before = in_state(&mut conn, "pending");
    assert!(matches!(
        outbox::push(&mut conn, KIND, &1),
        Err(Error::PushOutsideCall)
    ));
    assert_eq!(in_state(&mut conn, "pending"), before);
    let own = outbox::push_with_id(&mut conn, "custom-1", KIND, &1).unwrap();
    assert_eq!(own.as_str(), "custom-1");
    assert!(exists(&mut conn, "custom-1"));
    assert!(matches!(
        outbox::push_with_id(&mut conn, "custom-1", KIND, &1),
        Err(Error::Database(_))
    ));
    assert!(matches!(
        outbox::push_with_id(&mut conn, "", KIND, &1),
        Err(Error::InvalidEffect { what: "id", .. })
    ));
}

/// The crash test's receiver: applies an effect once per id, and counts
/// every delivery.
fn apply<C: Connection>(conn: &mut C, dialect: &str, id: &str) -> diesel::QueryResult<()> {
    assert!(!id.contains('\''), "{id}");
    let once = if dialect == "mysql" {
        format!("INSERT IGNORE INTO outbox_receiver (effect_id) VALUES ('{id}')")
    } else {
        format!("INSERT INTO outbox_receiver (effect_id) VALUES ('{id}') ON CONFLICT DO NOTHING")
    };
    conn.transaction(|conn| {
        conn.batch_execute(&format!(
            "INSERT INTO outbox_deliveries (effect_id) VALUES ('{id}')"
        ))?;
        conn.batch_execute(&once)
    })
}

/// The crash test's dispatcher, on `clock`: 30 s leases, one handler that
/// applies the effect on `receiver` and then runs `after`.
fn crash_dispatcher<C: Connection + Send + 'static>(
    receiver: C,
    dialect: &'static str,
    clock: Arc<ManualClock>,
    after: impl Fn() + Send + Sync + 'static,
) -> Dispatcher {
    let receiver = Mutex::new(receiver);
    Dispatcher::new()
        .lease(Duration::from_secs(30))
        .clock(clock)
        .handler(KIND, move |effect| {
            let mut conn = receiver.lock().map_err(|e| e.to_string())?;
            apply(&mut *conn, dialect, &effect.id)?;
            after();
            Ok(())
        })
}

/// The child process: delivers the due effect, and hangs for ever after
/// applying it, before its mark.
fn crash_child<B: Backend>(url: &str, at: i64) -> ! {
    let connect = || {
        let mut conn = <B::Conn as Connection>::establish(url).expect("the child connects");
        if B::NAME == "sqlite" {
            conn.batch_execute("PRAGMA busy_timeout = 60000")
                .expect("busy timeout");
        }
        conn
    };
    let clock = Arc::new(ManualClock::at_unix_seconds(at));
    let dispatcher = crash_dispatcher(connect(), B::NAME, clock, || {
        loop {
            std::thread::park();
        }
    });
    let _ = dispatcher.run_once(&mut connect());
    unreachable!("the handler never returns");
}

pub fn outbox_redelivers_after_a_crash_mid_delivery<B: Backend + DatabaseUrl>()
where
    SqlQuery: LoadQuery<'static, B::Conn, Count>,
{
    if let Ok(url) = std::env::var(CHILD_URL) {
        let at = std::env::var(CHILD_CLOCK)
            .expect("the child's clock")
            .parse()
            .expect("seconds");
        crash_child::<B>(&url, at);
    }
    let db = B::fresh();
    let mut conn = db.connect();
    for table in [
        "CREATE TABLE outbox_receiver (effect_id VARCHAR(255) NOT NULL PRIMARY KEY)",
        "CREATE TABLE outbox_deliveries (effect_id VARCHAR(255) NOT NULL)",
    ] {
        conn.batch_execute(table).unwrap();
    }
    let start = 1_790_000_000;
    let clock = Arc::new(ManualClock::at_unix_seconds(start));
    let id = push_n(&mut conn, &clock, "crash-1", 1)
        .unwrap()
        .into_value()[0]
        .clone();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CRASH_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_URL, db.url())
        .env(CHILD_CLOCK, start.to_string())
        .stdout(Stdio::null())
        .spawn()
        .expect("the child dispatcher starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&mut conn, "SELECT COUNT(*) AS n FROM outbox_receiver") == 0 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the child dispatcher exited ({status}) before applying the effect");
        }
        assert!(
            Instant::now() < deadline,
            "the child never applied the effect"
        );
        std::thread::yield_now();
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let leased = state_of(&mut conn, &id);
    assert_eq!((leased.state, leased.attempts), (EffectState::Pending, 1));

    let dispatcher = crash_dispatcher(db.connect(), B::NAME, Arc::clone(&clock), || {});
    // Still leased to the dead dispatcher: not due.
    assert_eq!(
        dispatcher.run_once(&mut conn).unwrap(),
        Dispatched::default()
    );
    clock.advance(Duration::from_secs(31));
    assert_eq!(
        dispatcher.run_once(&mut conn).unwrap(),
        Dispatched {
            delivered: 1,
            ..Dispatched::default()
        }
    );
    assert_eq!(
        count(&mut conn, "SELECT COUNT(*) AS n FROM outbox_deliveries"),
        2,
        "delivered again after the lease"
    );
    assert_eq!(
        count(&mut conn, "SELECT COUNT(*) AS n FROM outbox_receiver"),
        1,
        "applied once"
    );
    let done = state_of(&mut conn, &id);
    assert_eq!((done.state, done.attempts), (EffectState::Done, 2));
    assert_eq!(done.finished_at, Some(clock.now().naive_utc()));
    assert_eq!(dispatcher.drain(&mut conn).unwrap(), Dispatched::default());
}

/// Retries a call or a batch that the database aborted (a deadlock, a busy
/// file); fails the test on anything else or after many tries.
fn retrying<T, E: std::fmt::Debug>(
    what: &str,
    retryable: impl Fn(&E) -> bool,
    mut f: impl FnMut() -> Result<T, E>,
) -> T {
    for _ in 0..50 {
        match f() {
            Ok(value) => return value,
            Err(e) if retryable(&e) => continue,
            Err(e) => panic!("{what}: {e:?}"),
        }
    }
    panic!("{what}: still failing after 50 tries");
}

pub fn outbox_concurrent_dispatchers_deliver_each_effect_once<B: Backend>()
where
    SqlQuery: LoadQuery<'static, B::Conn, Count>,
{
    const PRODUCERS: usize = 64;
    const DISPATCHERS: usize = 4;
    // Per producer: two calls pushing 2 and 3 effects, each sent twice.
    const PER_PRODUCER: usize = 5;
    let db = Arc::new(B::fresh());
    let clock = Arc::new(clock());
    let produced = Arc::new(AtomicUsize::new(0));
    let in_progress = Arc::new(Mutex::new(HashSet::<String>::new()));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let deliveries = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let replays = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let dispatchers: Vec<_> = (0..DISPATCHERS)
        .map(|_| {
            let (db, clock, produced, stop) = (
                Arc::clone(&db),
                Arc::clone(&clock),
                Arc::clone(&produced),
                Arc::clone(&stop),
            );
            let (in_progress, overlaps, deliveries) = (
                Arc::clone(&in_progress),
                Arc::clone(&overlaps),
                Arc::clone(&deliveries),
            );
            std::thread::spawn(move || {
                let mut conn = db.connect();
                let dispatcher = Dispatcher::new()
                    .batch_size(7)
                    .clock(clock.clone())
                    .handler(KIND, move |effect| {
                        if !in_progress.lock().unwrap().insert(effect.id.clone()) {
                            overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                        *deliveries
                            .lock()
                            .unwrap()
                            .entry(effect.id.clone())
                            .or_default() += 1;
                        std::thread::yield_now();
                        in_progress.lock().unwrap().remove(&effect.id);
                        Ok(())
                    });
                let mut total = Dispatched::default();
                loop {
                    let done = produced.load(Ordering::SeqCst) == PRODUCERS;
                    let drained =
                        retrying("drain", Error::is_retryable, || dispatcher.drain(&mut conn));
                    total += drained;
                    if done && drained.total() == 0 || stop.load(Ordering::SeqCst) {
                        return total;
                    }
                }
            })
        })
        .collect();

    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (db, clock, produced, replays) = (
                Arc::clone(&db),
                Arc::clone(&clock),
                Arc::clone(&produced),
                Arc::clone(&replays),
            );
            std::thread::spawn(move || {
                let mut conn = db.connect();
                for (call, n) in [(1, 2), (2, 3), (1, 2), (2, 3)] {
                    let key = format!("p{p}-c{call}");
                    let outcome = retrying(
                        "call",
                        |e: &AppError| diesel_idempotent::Retryable::is_retryable(e),
                        || push_n(&mut conn, &clock, &key, n),
                    );
                    if outcome.is_replayed() {
                        replays.fetch_add(1, Ordering::SeqCst);
                    }
                }
                produced.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    for producer in producers {
        producer.join().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut conn = db.connect();
    while in_state(&mut conn, "pending") > 0 {
        assert!(
            Instant::now() < deadline,
            "effects still pending after two minutes"
        );
        std::thread::yield_now();
    }
    stop.store(true, Ordering::SeqCst);
    let mut dispatched = Dispatched::default();
    for dispatcher in dispatchers {
        dispatched += dispatcher.join().unwrap();
    }

    let expected: HashSet<String> = (0..PRODUCERS)
        .flat_map(|p| {
            [(1, 2), (2, 3)].into_iter().flat_map(move |(call, n)| {
                (1..=n).map(move |i| effect_id(NS, "", &format!("p{p}-c{call}"), i))
            })
        })
        .collect();
    assert_eq!(expected.len(), PRODUCERS * PER_PRODUCER);
    assert_eq!(
        replays.load(Ordering::SeqCst),
        PRODUCERS * 2,
        "every repeat replayed"
    );
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "delivered twice at once"
    );
    let deliveries = deliveries.lock().unwrap();
    let delivered: HashSet<String> = deliveries.keys().cloned().collect();
    assert_eq!(delivered, expected, "every effect delivered, none other");
    assert!(
        deliveries.values().all(|&n| n == 1),
        "the clock never moved, so no lease ended: each delivered once"
    );
    assert_eq!(in_state(&mut conn, "pending"), 0);
    assert_eq!(
        in_state(&mut conn, "done"),
        i64::try_from(expected.len()).unwrap()
    );
    assert_eq!(
        dispatched,
        Dispatched {
            delivered: expected.len(),
            ..Dispatched::default()
        },
        "every mark written, none lost"
    );
}

/// A handler error with a message.
fn failure(message: String) -> outbox::HandlerError {
    message.into()
}

pub fn outbox_failures_retry_with_backoff_then_die_and_requeue<B: Backend>() {
    let db = B::fresh();
    let mut conn = db.connect();
    let clock = Arc::new(clock());

    // Fails twice, then succeeds: retried after each back-off.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let attempts = Arc::clone(&seen);
    let flaky = Dispatcher::new()
        .backoff(Duration::from_secs(10), Duration::from_secs(60))
        .clock(clock.clone())
        .handler(KIND, move |effect| {
            attempts.lock().unwrap().push(effect.attempt);
            match effect.attempt {
                1 | 2 => Err(failure(format!("boom {}", effect.attempt))),
                _ => Ok(()),
            }
        });
    let id = push_n(&mut conn, &clock, "flaky", 1).unwrap().into_value()[0].clone();
    let retried = Dispatched {
        retried: 1,
        ..Dispatched::default()
    };
    assert_eq!(flaky.run_once(&mut conn).unwrap(), retried);
    let entry = state_of(&mut conn, &id);
    assert_eq!(entry.last_error.as_deref(), Some("boom 1"));
    assert_eq!(entry.attempts, 1);
    let due = clock.now().naive_utc() + chrono::Duration::seconds(10);
    assert_eq!(entry.available_at, due);
    assert_eq!(flaky.drain(&mut conn).unwrap(), Dispatched::default());
    clock.advance(Duration::from_secs(10));
    assert_eq!(flaky.run_once(&mut conn).unwrap(), retried);
    assert_eq!(
        state_of(&mut conn, &id).last_error.as_deref(),
        Some("boom 2")
    );
    // Doubled: 20 s this time.
    clock.advance(Duration::from_secs(19));
    assert_eq!(flaky.run_once(&mut conn).unwrap(), Dispatched::default());
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        flaky.run_once(&mut conn).unwrap(),
        Dispatched {
            delivered: 1,
            ..Dispatched::default()
        }
    );
    let entry = state_of(&mut conn, &id);
    assert_eq!((entry.state, entry.attempts), (EffectState::Done, 3));
    assert_eq!(entry.finished_at, Some(clock.now().naive_utc()));
    assert_eq!(*seen.lock().unwrap(), [1, 2, 3]);

    // Always failing (a panic): dead after `max_attempts`, kept with its
    // last error until requeued. A kind the dispatcher has no handler for
    // is not its to lease: it stays pending and untouched.
    let doomed = Dispatcher::new()
        .max_attempts(3)
        .backoff(Duration::from_secs(1), Duration::from_secs(1))
        .clock(clock.clone())
        .handler(KIND, |_| panic!("handler exploded"));
    let doomed_id = push_n(&mut conn, &clock, "doomed", 1).unwrap().into_value()[0].clone();
    // An id of one's own, pushed in a call: due at the call's time.
    let stray_at = clock.now().naive_utc();
    let stray = Call::new(NS, "stray")
        .clock(&*clock)
        .run(&mut conn, |conn| -> Result<String, AppError> {
            Ok(outbox::push_with_id(conn, "stray-1", "unhandled", &())?.into())
        })
        .unwrap()
        .into_value();
    let mut total = Dispatched::default();
    for _ in 0..5 {
        total += doomed.drain(&mut conn).unwrap();
        clock.advance(Duration::from_secs(1));
    }
    assert_eq!(
        total,
        Dispatched {
            retried: 2,
            dead: 1,
            ..Dispatched::default()
        }
    );
    let dead = outbox::dead_letters(&mut conn, 10).unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].id, doomed_id);
    assert_eq!((dead[0].state, dead[0].attempts), (EffectState::Dead, 3));
    let error = dead[0].last_error.as_deref().unwrap();
    assert!(error.contains("handler exploded"), "{error}");
    let untouched = state_of(&mut conn, &stray);
    assert_eq!(
        (untouched.state, untouched.attempts, untouched.available_at),
        (EffectState::Pending, 0, stray_at)
    );
    assert_eq!(untouched.last_error, None);
    let stats = outbox::stats_with_clock(&mut conn, &*clock).unwrap();
    assert_eq!(
        (stats.pending, stats.due, stats.done, stats.dead),
        (1, 1, 1, 1)
    );
    // A dispatcher that has the handler delivers it.
    let stray_handler = Dispatcher::new()
        .clock(clock.clone())
        .handler("unhandled", |_| Ok(()));
    assert_eq!(
        stray_handler.drain(&mut conn).unwrap(),
        Dispatched {
            delivered: 1,
            ..Dispatched::default()
        }
    );
    assert_eq!(state_of(&mut conn, &stray).state, EffectState::Done);

    assert!(outbox::requeue_with_clock(&mut conn, &doomed_id, &*clock).unwrap());
    assert!(
        !outbox::requeue_with_clock(&mut conn, &id, &*clock).unwrap(),
        "only a dead effect is requeued"
    );
    let requeued = state_of(&mut conn, &doomed_id);
    assert_eq!(
        (requeued.state, requeued.attempts, requeued.finished_at),
        (EffectState::Pending, 0, None)
    );
    let stats = outbox::stats_with_clock(&mut conn, &*clock).unwrap();
    assert_eq!((stats.pending, stats.due, stats.dead), (1, 1, 0));
    let fixed = Dispatcher::new()
        .clock(clock.clone())
        .handler(KIND, |_| Ok(()));
    assert_eq!(fixed.drain(&mut conn).unwrap().delivered, 1);
    assert_eq!(state_of(&mut conn, &doomed_id).state, EffectState::Done);

    // Purging removes done effects finished before the cut-off, never
    // dead ones.
    let finished = outbox::purge_finished(&mut conn, clock.now(), 1).unwrap();
    assert_eq!(finished, 1, "the one finished before now");
    assert!(exists(&mut conn, &doomed_id) && exists(&mut conn, &stray));
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        outbox::purge_finished(&mut conn, clock.now(), 1).unwrap(),
        2,
        "one at a time, until none is left"
    );
    assert!(!exists(&mut conn, &doomed_id) && !exists(&mut conn, &id));
    assert!(!exists(&mut conn, "stray-1"));
    assert!(matches!(
        outbox::purge_finished(&mut conn, clock.now(), 0),
        Err(Error::InvalidBatchSize)
    ));
}

pub fn outbox_a_delivery_that_outlived_its_lease_is_lost_not_written<B: Backend>() {
    let db = Arc::new(B::fresh());
    let mut conn = db.connect();
    let clock = Arc::new(clock());
    let id = push_n(&mut conn, &clock, "slow", 1).unwrap().into_value()[0].clone();

    // The first dispatcher freezes inside its handler.
    let (release, first) = frozen_delivery(&db, &clock);

    // Its lease ends; a second dispatcher delivers again and fails.
    let second = Dispatcher::new()
        .lease(Duration::from_secs(30))
        .backoff(Duration::from_secs(5), Duration::from_secs(5))
        .clock(clock.clone())
        .handler(KIND, |_| Err(failure("second delivery failed".to_owned())));
    assert_eq!(
        second.run_once(&mut conn).unwrap(),
        Dispatched::default(),
        "leased"
    );
    clock.advance(Duration::from_secs(31));
    assert_eq!(
        second.run_once(&mut conn).unwrap(),
        Dispatched {
            retried: 1,
            ..Dispatched::default()
        }
    );
    let newer = state_of(&mut conn, &id);

    // The first delivery finishes: its mark is refused.
    release.send(()).unwrap();
    assert_eq!(
        first.join().unwrap().unwrap(),
        Dispatched {
            lost: 1,
            ..Dispatched::default()
        }
    );
    let after = state_of(&mut conn, &id);
    assert_eq!(after, newer, "the newer delivery's state stands");
    assert_eq!((after.state, after.attempts), (EffectState::Pending, 2));
    assert_eq!(after.last_error.as_deref(), Some("second delivery failed"));
}

/// A dispatcher on its own thread and connection whose handler succeeds
/// once released; returns once the handler holds the effect.
fn frozen_delivery<B: Backend>(
    db: &Arc<B>,
    clock: &Arc<ManualClock>,
) -> (
    mpsc::Sender<()>,
    std::thread::JoinHandle<Result<Dispatched, Error>>,
) {
    let (started, is_started) = mpsc::channel::<()>();
    let (release, is_released) = mpsc::channel::<()>();
    let is_released = Mutex::new(is_released);
    let frozen = Dispatcher::new()
        .lease(Duration::from_secs(30))
        .clock(clock.clone())
        .handler(KIND, move |_| {
            started.send(()).map_err(|e| e.to_string())?;
            is_released
                .lock()
                .map_err(|e| e.to_string())?
                .recv()
                .map_err(|e| e.to_string())?;
            Ok(())
        });
    let db = Arc::clone(db);
    let delivery = std::thread::spawn(move || frozen.run_once(&mut db.connect()));
    is_started
        .recv_timeout(Duration::from_secs(60))
        .expect("the delivery began");
    (release, delivery)
}

pub fn outbox_a_stale_delivery_cannot_mark_a_requeued_effect<B: Backend>() {
    let db = Arc::new(B::fresh());
    let mut conn = db.connect();
    let clock = Arc::new(clock());
    let id = push_n(&mut conn, &clock, "requeued", 1)
        .unwrap()
        .into_value()[0]
        .clone();

    // Attempt 1 freezes; its lease ends; attempt 2 fails for good.
    let (release_stale, stale) = frozen_delivery(&db, &clock);
    clock.advance(Duration::from_secs(31));
    let failing = Dispatcher::new()
        .max_attempts(2)
        .clock(clock.clone())
        .handler(KIND, |_| Err(failure("down".to_owned())));
    assert_eq!(failing.run_once(&mut conn).unwrap().dead, 1);

    // Requeued: attempts start again, and attempt 1 is leased anew.
    assert!(outbox::requeue_with_clock(&mut conn, &id, &*clock).unwrap());
    let (release_fresh, fresh) = frozen_delivery(&db, &clock);
    assert_eq!(state_of(&mut conn, &id).attempts, 1);

    // The stale attempt 1 finishes first: its lease is not this one.
    release_stale.send(()).unwrap();
    assert_eq!(stale.join().unwrap().unwrap().lost, 1);
    assert_eq!(state_of(&mut conn, &id).state, EffectState::Pending);
    release_fresh.send(()).unwrap();
    assert_eq!(fresh.join().unwrap().unwrap().delivered, 1);
    let done = state_of(&mut conn, &id);
    assert_eq!((done.state, done.attempts), (EffectState::Done, 1));
}

pub fn outbox_dispatcher_refuses_a_connection_inside_a_transaction<B: Backend>() {
    let db = B::fresh();
    let mut conn = db.connect();
    let dispatcher = Dispatcher::new();
    let inside = conn.transaction(|conn| -> Result<(), AppError> {
        assert!(matches!(
            dispatcher.run_once(conn),
            Err(Error::DispatchInTransaction)
        ));
        Ok(())
    });
    inside.unwrap();
}

/// The outbox on the backend's diesel-async connection.
#[cfg(feature = "async")]
pub mod nonblocking {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use diesel_idempotent::outbox::{self, AsyncDispatcher, Dispatched, EffectState, effect_id};
    use diesel_idempotent::{AsyncIdempotentConnection, Call, Error, ManualClock, idempotent};

    use super::super::{AppError, AsyncBackend, clock};

    const NS: &str = "outbox.async_orders";

    /// Pushes two effects with `push_async`, around an await.
    #[idempotent(key = key, name = "outbox.async_orders", clock = clock)]
    pub async fn place<C: AsyncIdempotentConnection>(
        conn: &mut C,
        clock: &ManualClock,
        key: &str,
        amount: i64,
    ) -> Result<Vec<String>, AppError> {
        let first = outbox::push_async(conn, "order_placed", &amount).await?;
        tokio::task::yield_now().await;
        let second = outbox::push_async(conn, "order_billed", &amount).await?;
        Ok(vec![first.into(), second.into()])
    }

    pub async fn outbox_async_push_and_dispatch<B: AsyncBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = Arc::new(clock());

        let ids = place(&mut conn, &clock, "a-1", 42).await.unwrap();
        assert_eq!(
            ids,
            [effect_id(NS, "", "a-1", 1), effect_id(NS, "", "a-1", 2)]
        );
        assert_eq!(place(&mut conn, &clock, "a-1", 42).await.unwrap(), ids);
        assert!(matches!(
            outbox::push_async(&mut conn, "order_placed", &1).await,
            Err(Error::PushOutsideCall)
        ));
        // An id of one's own, due at the call's time.
        let custom = Call::new("outbox.async_custom", "c-1")
            .clock(&*clock)
            .run_async(&mut conn, async |conn| -> Result<String, AppError> {
                Ok(
                    outbox::push_with_id_async(conn, "async-custom", "order_placed", &7)
                        .await?
                        .into(),
                )
            })
            .await
            .unwrap();
        assert_eq!(custom.into_value(), "async-custom");

        let placed = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&placed);
        let dispatcher = AsyncDispatcher::new()
            .backoff(Duration::from_secs(1), Duration::from_secs(1))
            .clock(clock.clone())
            .handler("order_placed", move |effect| {
                let seen = Arc::clone(&seen);
                async move {
                    let amount: i64 = effect.payload_as()?;
                    tokio::task::yield_now().await;
                    seen.lock().unwrap().push((effect.id, amount));
                    Ok::<(), outbox::HandlerError>(())
                }
            })
            .handler("order_billed", |effect| async move {
                tokio::task::yield_now().await;
                assert!(effect.id.is_empty(), "billing {} exploded", effect.id);
                Ok::<(), outbox::HandlerError>(())
            });
        // On a task of its own: the dispatcher's future is `Send`.
        let drained = tokio::spawn(async move { dispatcher.drain(&mut conn).await })
            .await
            .unwrap();
        assert_eq!(
            drained.unwrap(),
            Dispatched {
                delivered: 2,
                retried: 1,
                ..Dispatched::default()
            }
        );
        let mut placed = placed.lock().unwrap().clone();
        placed.sort();
        assert_eq!(
            placed,
            [("async-custom".to_owned(), 7), (ids[0].clone(), 42)]
        );
        let mut blocking = db.connect();
        let billed = outbox::find_effect(&mut blocking, &ids[1])
            .unwrap()
            .unwrap();
        assert_eq!((billed.state, billed.attempts), (EffectState::Pending, 1));
        assert!(
            billed.last_error.as_deref().unwrap().contains("exploded"),
            "{billed:?}"
        );
        assert_eq!(
            outbox::find_effect(&mut blocking, &ids[0])
                .unwrap()
                .unwrap()
                .state,
            EffectState::Done
        );
    }
}

pub fn outbox_each_handler_gets_its_whole_lease<B: Backend>() {
    let db = B::fresh();
    let mut conn = db.connect();
    let clock = Arc::new(clock());
    let ids = push_n(&mut conn, &clock, "batch", 3).unwrap().into_value();

    // The second dispatcher records every delivery and whether the first
    // was delivering the same effect at that moment.
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let overlaps: Arc<Mutex<Vec<String>>> = Arc::default();
    let by_second: Arc<Mutex<Vec<String>>> = Arc::default();
    let second = {
        let in_flight = Arc::clone(&in_flight);
        let overlaps = Arc::clone(&overlaps);
        let by_second = Arc::clone(&by_second);
        Dispatcher::new()
            .lease(Duration::from_secs(30))
            .clock(clock.clone())
            .handler(KIND, move |effect| {
                if in_flight.lock().unwrap().contains(&effect.id) {
                    overlaps.lock().unwrap().push(effect.id.clone());
                }
                by_second.lock().unwrap().push(effect.id.clone());
                Ok(())
            })
    };

    // Each of the first dispatcher's handlers works 20 s of its 30 s
    // lease; after 10 s the second dispatcher runs, and again after 20 s.
    let by_first: Arc<Mutex<Vec<String>>> = Arc::default();
    let first = {
        let in_flight = Arc::clone(&in_flight);
        let by_first = Arc::clone(&by_first);
        let ticking = Arc::clone(&clock);
        let other = Mutex::new(db.connect());
        Dispatcher::new()
            .lease(Duration::from_secs(30))
            .batch_size(10)
            .clock(clock.clone())
            .handler(KIND, move |effect| {
                in_flight.lock().unwrap().insert(effect.id.clone());
                by_first.lock().unwrap().push(effect.id.clone());
                for _ in 0..2 {
                    ticking.advance(Duration::from_secs(10));
                    second.run_once(&mut *other.lock().unwrap()).unwrap();
                }
                in_flight.lock().unwrap().remove(&effect.id);
                Ok(())
            })
    };
    let firsts = first.run_once(&mut conn).unwrap();

    assert_eq!(*overlaps.lock().unwrap(), Vec::<String>::new());
    // The first dispatcher delivered the first two within their leases; the
    // third's lease (counted from the batch's start) ended before its
    // handler could begin, so the second dispatcher took it and the first
    // did not deliver it.
    assert_eq!(*by_first.lock().unwrap(), ids[..2]);
    assert_eq!(*by_second.lock().unwrap(), ids[2..]);
    assert_eq!(
        firsts,
        Dispatched {
            delivered: 2,
            lost: 1,
            ..Dispatched::default()
        }
    );
    // The third was leased twice: by the first dispatcher's batch, then by
    // the second.
    for (id, attempts) in ids.iter().zip([1, 1, 2]) {
        let entry = state_of(&mut conn, id);
        assert_eq!(
            (entry.state, entry.attempts),
            (EffectState::Done, attempts),
            "{id}"
        );
    }
}

pub fn outbox_a_dispatcher_leaves_other_kinds_alone<B: Backend>() {
    let db = B::fresh();
    let mut conn = db.connect();
    let clock = Arc::new(clock());
    // Another application's effect, in the same table.
    Call::new("billing", "invoice-7")
        .clock(&*clock)
        .run(&mut conn, |conn| -> Result<String, AppError> {
            Ok(outbox::push_with_id(conn, "billing/invoice-7", "mail.send", &"invoice 7")?.into())
        })
        .unwrap();
    let before = state_of(&mut conn, "billing/invoice-7");
    let ours = push_n(&mut conn, &clock, "ours", 1).unwrap().into_value()[0].clone();

    let orders = Dispatcher::new()
        .max_attempts(1)
        .clock(clock.clone())
        .handler(KIND, |_| Ok(()));
    let delivered = Dispatched {
        delivered: 1,
        ..Dispatched::default()
    };
    assert_eq!(orders.drain(&mut conn).unwrap(), delivered);
    clock.advance(Duration::from_secs(3600));
    assert_eq!(orders.drain(&mut conn).unwrap(), Dispatched::default());
    assert_eq!(
        Dispatcher::new()
            .clock(clock.clone())
            .drain(&mut conn)
            .unwrap(),
        Dispatched::default(),
        "a dispatcher without handlers leases nothing"
    );
    assert_eq!(state_of(&mut conn, &ours).state, EffectState::Done);
    let foreign = state_of(&mut conn, "billing/invoice-7");
    assert_eq!(foreign, before, "untouched");
    assert_eq!((foreign.state, foreign.attempts), (EffectState::Pending, 0));
    let stats = outbox::stats_with_clock(&mut conn, &*clock).unwrap();
    assert_eq!((stats.pending, stats.due, stats.done), (1, 1, 1));

    // Its own dispatcher delivers it.
    let mail = Dispatcher::new()
        .clock(clock.clone())
        .handler("mail.send", |effect| {
            assert_eq!(effect.payload_as::<String>()?, "invoice 7");
            Ok(())
        });
    assert_eq!(mail.drain(&mut conn).unwrap(), delivered);
    let foreign = state_of(&mut conn, "billing/invoice-7");
    assert_eq!((foreign.state, foreign.attempts), (EffectState::Done, 1));
}

pub fn outbox_calls_whose_scope_or_key_hold_a_slash_push_distinct_ids<B: Backend>() {
    let db = B::fresh();
    let mut conn = db.connect();
    let clock = clock();
    let mut pushed = Vec::new();
    for (scope, key) in [("a/b", "c"), ("a", "b/c")] {
        let id = Call::new(NS, key)
            .scope(scope)
            .clock(&clock)
            .run(&mut conn, |conn| -> Result<String, AppError> {
                Ok(outbox::push(conn, KIND, &scope)?.into())
            })
            .unwrap_or_else(|e| panic!("scope {scope} key {key}: {e:?}"));
        assert!(!id.is_replayed(), "scope {scope} key {key}");
        let id = id.into_value();
        assert_eq!(id, effect_id(NS, scope, key, 1));
        assert_eq!(state_of(&mut conn, &id).payload, format!("{scope:?}"));
        pushed.push(id);
    }
    assert_ne!(pushed[0], pushed[1]);
}

/// Instantiates the outbox tests for one backend.
#[macro_export]
macro_rules! outbox_tests {
    (blocking $backend:ty) => {
        $crate::conformance!(@plain $backend; outbox;
            outbox_push_commits_with_the_record_and_only_then,
            outbox_redelivers_after_a_crash_mid_delivery,
            outbox_concurrent_dispatchers_deliver_each_effect_once,
            outbox_failures_retry_with_backoff_then_die_and_requeue,
            outbox_a_delivery_that_outlived_its_lease_is_lost_not_written,
            outbox_a_stale_delivery_cannot_mark_a_requeued_effect,
            outbox_dispatcher_refuses_a_connection_inside_a_transaction,
            outbox_each_handler_gets_its_whole_lease,
            outbox_a_dispatcher_leaves_other_kinds_alone,
            outbox_calls_whose_scope_or_key_hold_a_slash_push_distinct_ids,
        );
    };
    (nonblocking $backend:ty) => {
        $crate::conformance!(@each nonblocking $backend; outbox;
            outbox_async_push_and_dispatch,
        );
    };
}
