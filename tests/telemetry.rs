//! The span of each call (feature `tracing`) and the metrics (feature
//! `metrics`), captured from real calls on a SQLite file: a subscriber
//! layer that keeps every span's fields and every event, and metrics-util's
//! debugging recorder, installed for the test's thread only.

#[cfg(not(all(
    feature = "tracing",
    feature = "metrics",
    feature = "sqlite",
    feature = "async"
)))]
#[test]
fn telemetry_tests_skipped_feature_disabled() {
    println!(
        "SKIPPED: tests/telemetry.rs (build with the `tracing`, `metrics`, `sqlite` and `async` \
         features)"
    );
}

#[cfg(all(
    feature = "tracing",
    feature = "metrics",
    feature = "sqlite",
    feature = "async"
))]
mod telemetry {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Mutex, Once, mpsc};
    use std::time::Duration;

    use diesel::connection::SimpleConnection;
    use diesel::sqlite::SqliteConnection;
    use diesel::{Connection, QueryResult};
    use diesel_async::AsyncConnection;
    use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    use diesel_idempotent::telemetry::metrics;
    use diesel_idempotent::telemetry::{
        CallOutcome, DURATION_SECONDS, PURGED_TOTAL, REQUESTS_TOTAL, describe_metrics,
    };
    use diesel_idempotent::{Error, ManualClock, idempotent};
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use metrics_util::{CompositeKey, MetricKind};
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Level, Subscriber};
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
    use tracing_subscriber::registry::LookupSpan;

    // ---- the database and the functions under test ----

    struct Db {
        _dir: tempfile::TempDir,
        url: String,
    }

    impl Db {
        fn new() -> Db {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = dir.path().join("telemetry.sqlite3").display().to_string();
            let mut conn = SqliteConnection::establish(&url).expect("open SQLite");
            diesel_idempotent::migrate(&mut conn).expect("migrations");
            conn.batch_execute(
                "CREATE TABLE effects (id INTEGER PRIMARY KEY AUTOINCREMENT, amount BIGINT NOT NULL)",
            )
            .expect("effects table");
            Db { _dir: dir, url }
        }

        fn connect(&self) -> SqliteConnection {
            let mut conn = SqliteConnection::establish(&self.url).expect("open SQLite");
            conn.batch_execute("PRAGMA busy_timeout = 10000")
                .expect("busy timeout");
            conn
        }

        async fn connect_async(&self) -> SyncConnectionWrapper<SqliteConnection> {
            let mut conn = SyncConnectionWrapper::<SqliteConnection>::establish(&self.url)
                .await
                .expect("open SQLite");
            diesel_async::SimpleAsyncConnection::batch_execute(
                &mut conn,
                "PRAGMA busy_timeout = 10000",
            )
            .await
            .expect("busy timeout");
            conn
        }
    }

    fn insert_effect(conn: &mut SqliteConnection, amount: i64) -> QueryResult<i64> {
        diesel::sql_query("INSERT INTO effects (amount) VALUES (?)")
            .bind::<diesel::sql_types::BigInt, _>(amount)
            .execute(conn)
            .map(|_| amount)
    }

    use diesel::RunQueryDsl;

    /// A charge under a client's key; a negative amount fails in the body.
    #[idempotent(key = key, ttl = "1h", wait_for = "1ms", name = "telemetry.charge")]
    fn charge(conn: &mut SqliteConnection, key: &str, amount: i64) -> Result<i64, AppError> {
        if amount < 0 {
            return Err(AppError::Declined);
        }
        Ok(insert_effect(conn, amount)?)
    }

    /// The same function, scoped to a tenant.
    #[idempotent(key = key, scope = tenant, ttl = "1h", name = "telemetry.scoped")]
    fn scoped(
        conn: &mut SqliteConnection,
        tenant: &str,
        key: &str,
        amount: i64,
    ) -> Result<i64, AppError> {
        Ok(insert_effect(conn, amount)?)
    }

    /// A call held open: it says when its body runs, then waits for the
    /// release.
    #[idempotent(key = key, ttl = "1h", name = "telemetry.charge", skip(entered, release))]
    fn held_charge(
        conn: &mut SqliteConnection,
        key: &str,
        amount: i64,
        entered: &mpsc::Sender<()>,
        release: &Mutex<mpsc::Receiver<()>>,
    ) -> Result<i64, AppError> {
        let out = insert_effect(conn, amount)?;
        entered.send(()).expect("test alive");
        release
            .lock()
            .expect("release lock")
            .recv()
            .expect("released");
        Ok(out)
    }

    /// A redelivered event: the arguments are the key.
    #[idempotent(hash, ttl = "1h", name = "telemetry.event")]
    fn record_event(conn: &mut SqliteConnection, event_id: &str) -> Result<i64, AppError> {
        let _ = event_id;
        Ok(insert_effect(conn, 1)?)
    }

    #[derive(Debug, diesel::QueryableByName)]
    struct Effect {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        amount: i64,
    }

    fn find_effect(conn: &mut SqliteConnection, amount: i64) -> QueryResult<Option<i64>> {
        use diesel::OptionalExtension;
        diesel::sql_query("SELECT amount FROM effects WHERE amount = ?")
            .bind::<diesel::sql_types::BigInt, _>(amount)
            .get_result::<Effect>(conn)
            .optional()
            .map(|found| found.map(|effect| effect.amount))
    }

    /// The entity by its natural key, created once.
    #[idempotent(get_or_create = find_effect(conn, amount), name = "telemetry.entity")]
    fn entity(conn: &mut SqliteConnection, amount: i64) -> QueryResult<i64> {
        insert_effect(conn, amount)
    }

    /// The async charge: its body yields, so that calls interleave.
    #[idempotent(key = key, ttl = "1h", name = "telemetry.async_charge", skip(seen))]
    async fn async_charge(
        conn: &mut SyncConnectionWrapper<SqliteConnection>,
        key: &str,
        amount: i64,
        seen: &Mutex<Vec<(Option<Id>, Option<Id>)>>,
    ) -> Result<i64, AppError> {
        let before = tracing::Span::current().id();
        tokio::task::yield_now().await;
        let after = tracing::Span::current().id();
        seen.lock().expect("seen lock").push((before, after));
        diesel_async::RunQueryDsl::execute(
            diesel::sql_query("INSERT INTO effects (amount) VALUES (?)")
                .bind::<diesel::sql_types::BigInt, _>(amount),
            conn,
        )
        .await?;
        Ok(amount)
    }

    #[derive(Debug, thiserror::Error)]
    enum AppError {
        #[error("declined")]
        Declined,
        #[error(transparent)]
        Idempotency(#[from] Error),
        #[error(transparent)]
        Db(#[from] diesel::result::Error),
    }

    impl AppError {
        fn idempotency(&self) -> Option<&Error> {
            match self {
                AppError::Idempotency(e) => Some(e),
                _ => None,
            }
        }
    }

    /// Holds `key` of `telemetry.charge` in another thread until the
    /// returned closure is called; the holder's own telemetry goes to that
    /// thread's (absent) subscriber and recorder.
    fn hold(db: &Db, key: &'static str) -> impl FnOnce() {
        let mut holder = db.connect();
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            held_charge(&mut holder, key, 1, &entered_tx, &Mutex::new(release_rx)).map(|_| ())
        });
        entered_rx.recv().expect("the holder's body runs");
        move || {
            release_tx.send(()).expect("holder alive");
            thread
                .join()
                .expect("holder thread")
                .expect("holder's call");
        }
    }

    // ---- capturing spans and events ----

    #[derive(Debug, Clone, Default)]
    struct SpanData {
        name: &'static str,
        fields: BTreeMap<String, String>,
        closed: bool,
    }

    #[derive(Debug, Clone)]
    struct EventData {
        level: Level,
        span: Option<u64>,
        fields: BTreeMap<String, String>,
    }

    #[derive(Default)]
    struct Captured {
        spans: Vec<(u64, SpanData)>,
        events: Vec<EventData>,
    }

    impl Captured {
        /// The latest span with this id (ids are reused after a close).
        fn span_mut(&mut self, id: &Id) -> Option<&mut (u64, SpanData)> {
            self.spans
                .iter_mut()
                .rev()
                .find(|(span, _)| *span == id.into_u64())
        }

        fn idempotent_spans(&self) -> Vec<SpanData> {
            self.spans
                .iter()
                .filter(|(_, span)| span.name == "idempotent")
                .map(|(_, span)| span.clone())
                .collect()
        }
    }

    struct Fields<'a>(&'a mut BTreeMap<String, String>);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }

        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }
    }

    thread_local! {
        /// What this thread's calls reported while [`capturing`] runs.
        static CAPTURED: RefCell<Option<Captured>> = const { RefCell::new(None) };
    }

    /// Keeps the spans and events of each thread that is [`capturing`].
    /// Installed once, as the global subscriber: tests that run at the same
    /// time then share one dispatcher, and no test's callsite interest is
    /// decided by another's.
    struct Capture;

    fn with_captured(f: impl FnOnce(&mut Captured)) {
        CAPTURED.with(|captured| {
            if let Some(captured) = captured.borrow_mut().as_mut() {
                f(captured);
            }
        });
    }

    impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
            with_captured(|captured| {
                let mut data = SpanData {
                    name: attrs.metadata().name(),
                    ..SpanData::default()
                };
                attrs.record(&mut Fields(&mut data.fields));
                captured.spans.push((id.into_u64(), data));
            });
        }

        fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
            with_captured(|captured| {
                if let Some((_, span)) = captured.span_mut(id) {
                    values.record(&mut Fields(&mut span.fields));
                }
            });
        }

        fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
            let span = ctx.event_span(event).map(|span| span.id().into_u64());
            with_captured(|captured| {
                let mut fields = BTreeMap::new();
                event.record(&mut Fields(&mut fields));
                captured.events.push(EventData {
                    level: *event.metadata().level(),
                    span,
                    fields,
                });
            });
        }

        fn on_close(&self, id: Id, _: Context<'_, S>) {
            with_captured(|captured| {
                if let Some((_, span)) = captured.span_mut(&id) {
                    span.closed = true;
                }
            });
        }
    }

    /// Runs `f` with every span and event of this thread captured.
    fn capturing<R>(f: impl FnOnce() -> R) -> (R, Captured) {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture))
                .expect("the only global subscriber");
        });
        CAPTURED.with(|captured| *captured.borrow_mut() = Some(Captured::default()));
        let out = f();
        let captured = CAPTURED.with(|captured| captured.borrow_mut().take());
        (out, captured.unwrap_or_default())
    }

    fn field<'a>(span: &'a SpanData, name: &str) -> Option<&'a str> {
        span.fields.get(name).map(String::as_str)
    }

    // ---- spans ----

    /// The fields of a first call, a replay, a mismatch and an in-flight
    /// answer, each set when it is known.
    #[test]
    fn span_fields_of_first_call_replay_mismatch_and_in_flight() {
        let db = Db::new();
        let mut conn = db.connect();
        let key = "order-4711-secret";
        let (results, captured) = capturing(|| {
            let first = charge(&mut conn, key, 10).map_err(|e| e.to_string());
            let replay = charge(&mut conn, key, 10).map_err(|e| e.to_string());
            let mismatch = charge(&mut conn, key, 11).map_err(|e| e.to_string());
            let release = hold(&db, "held-key-0001");
            let in_flight = charge(&mut conn, "held-key-0001", 1).map_err(|e| e.to_string());
            release();
            (first, replay, mismatch, in_flight)
        });
        assert_eq!(results.0, Ok(10));
        assert_eq!(results.1, Ok(10));
        assert!(results.2.is_err(), "mismatch: {:?}", results.2);
        assert!(results.3.is_err(), "in flight: {:?}", results.3);

        let spans = captured.idempotent_spans();
        assert_eq!(spans.len(), 4, "one span per call: {spans:#?}");
        for span in &spans {
            assert!(span.closed, "each span closes with its call: {span:?}");
            assert_eq!(
                field(span, "otel.name"),
                Some("idempotent telemetry.charge")
            );
            assert_eq!(field(span, "namespace"), Some("telemetry.charge"));
            assert_eq!(field(span, "pattern"), Some("key"));
            assert_eq!(field(span, "db.system.name"), Some("sqlite"));
            let hash = field(span, "key.hash").expect("key.hash");
            assert_eq!(hash.len(), 16, "a short hash: {hash}");
            assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{hash}");
        }
        let [first, replay, mismatch, in_flight] = &spans[..] else {
            unreachable!()
        };
        assert_eq!(field(first, "key.hash"), field(replay, "key.hash"));
        assert_ne!(field(first, "key.hash"), field(in_flight, "key.hash"));

        assert_eq!(field(first, "outcome"), Some("executed"));
        assert_eq!(field(first, "replayed"), Some("false"));
        assert_eq!(field(first, "error.type"), None);
        assert_eq!(field(first, "otel.status_code"), None);

        assert_eq!(field(replay, "outcome"), Some("replayed"));
        assert_eq!(field(replay, "replayed"), Some("true"));
        assert_eq!(field(replay, "error.type"), None);

        assert_eq!(field(mismatch, "outcome"), Some("mismatch"));
        assert_eq!(field(mismatch, "replayed"), Some("false"));
        assert_eq!(field(mismatch, "error.type"), Some("payload_mismatch"));
        assert_eq!(field(mismatch, "otel.status_code"), Some("ERROR"));

        assert_eq!(field(in_flight, "outcome"), Some("in_flight"));
        assert_eq!(field(in_flight, "error.type"), Some("in_flight"));
        assert_eq!(field(in_flight, "otel.status_code"), Some("ERROR"));
    }

    /// The raw key and scope appear in no span field and in no event at
    /// INFO or above; one TRACE event inside the call's span carries them.
    #[test]
    fn raw_key_only_at_trace() {
        let db = Db::new();
        let mut conn = db.connect();
        let key = "raw-key-c0ffee-9001";
        let tenant = "tenant-acme-77";
        let (result, captured) = capturing(|| {
            scoped(&mut conn, tenant, key, 5).expect("first call");
            scoped(&mut conn, tenant, key, 6).map_err(|e| e.to_string())
        });
        assert!(result.is_err(), "mismatch: {result:?}");
        let leaks = |value: &String| value.contains(key) || value.contains(tenant);
        for (_, span) in &captured.spans {
            assert!(
                !span.fields.values().any(leaks),
                "a span field holds the raw key or scope: {span:?}"
            );
        }
        for event in captured.events.iter().filter(|e| e.level <= Level::INFO) {
            assert!(
                !event.fields.values().any(leaks),
                "an event at {} holds the raw key or scope: {event:?}",
                event.level
            );
        }
        let spans: Vec<u64> = captured
            .spans
            .iter()
            .filter(|(_, span)| span.name == "idempotent")
            .map(|(id, _)| *id)
            .collect();
        let traced: Vec<&EventData> = captured
            .events
            .iter()
            .filter(|e| {
                e.level == Level::TRACE && e.fields.get("key").map(String::as_str) == Some(key)
            })
            .collect();
        assert_eq!(traced.len(), 2, "one TRACE event per call: {traced:#?}");
        for event in traced {
            assert_eq!(event.fields.get("scope").map(String::as_str), Some(tenant));
            assert!(
                event.span.is_some_and(|span| spans.contains(&span)),
                "inside the call's span: {event:?}"
            );
        }
    }

    /// `hash` and `get_or_create` name their pattern; getOrCreate's found
    /// entity is a replay.
    #[test]
    fn span_pattern_of_hash_and_get_or_create() {
        let db = Db::new();
        let mut conn = db.connect();
        let (_, captured) = capturing(|| {
            record_event(&mut conn, "evt-1").expect("event");
            record_event(&mut conn, "evt-1").expect("redelivered event");
            entity(&mut conn, 77).expect("created");
            entity(&mut conn, 77).expect("found");
        });
        let spans = captured.idempotent_spans();
        let summary: Vec<(Option<&str>, Option<&str>, Option<&str>)> = spans
            .iter()
            .map(|s| {
                (
                    field(s, "namespace"),
                    field(s, "pattern"),
                    field(s, "outcome"),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (Some("telemetry.event"), Some("hash"), Some("executed")),
                (Some("telemetry.event"), Some("hash"), Some("replayed")),
                (
                    Some("telemetry.entity"),
                    Some("get_or_create"),
                    Some("executed")
                ),
                (
                    Some("telemetry.entity"),
                    Some("get_or_create"),
                    Some("replayed")
                ),
            ]
        );
    }

    /// An async call's span is attached to its future: a body that yields
    /// sees its own span before and after, also while another call's
    /// future runs on the same thread in between.
    #[test]
    fn async_span_follows_its_future() {
        let db = Db::new();
        let seen = Mutex::new(Vec::new());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let (results, captured) = capturing(|| {
            rt.block_on(async {
                let mut a = db.connect_async().await;
                let mut b = db.connect_async().await;
                let first = tokio::join!(
                    async_charge(&mut a, "async-a", 1, &seen),
                    async_charge(&mut b, "async-b", 2, &seen),
                );
                let replay = async_charge(&mut a, "async-a", 1, &seen).await;
                (first, replay)
            })
        });
        let ((a, b), replay) = results;
        assert_eq!((a.expect("a"), b.expect("b")), (1, 2));
        assert_eq!(replay.expect("replay"), 1);

        let seen = seen.into_inner().expect("seen");
        assert_eq!(seen.len(), 2, "the replay's body does not run");
        for (before, after) in &seen {
            assert!(before.is_some(), "the body runs inside a span");
            assert_eq!(before, after, "the same span after the body yielded");
        }
        assert_ne!(seen[0].0, seen[1].0, "each call in its own span");

        let spans = captured.idempotent_spans();
        let outcomes: Vec<Option<&str>> = spans.iter().map(|s| field(s, "outcome")).collect();
        assert_eq!(
            outcomes,
            [Some("executed"), Some("executed"), Some("replayed")]
        );
        assert!(
            spans
                .iter()
                .all(|s| field(s, "db.system.name") == Some("sqlite"))
        );
        assert!(spans.iter().all(|s| s.closed));
    }

    // ---- metrics ----

    /// A recorded value: a counter's count, or a histogram's values.
    #[derive(Debug, Clone, PartialEq)]
    enum Value {
        Counter(u64),
        Histogram(Vec<f64>),
    }

    type Snapshot = Vec<(
        CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )>;

    /// The value of each series named `name` whose labels include
    /// `function = namespace`, by the value of `by` (a label).
    fn series(
        snapshot: &Snapshot,
        name: &str,
        namespace: Option<&str>,
        by: &str,
    ) -> BTreeMap<String, Value> {
        let mut found = BTreeMap::new();
        for (key, _, _, value) in snapshot {
            let key = key.key();
            if key.name() != name {
                continue;
            }
            let labels: BTreeMap<&str, &str> = key.labels().map(|l| (l.key(), l.value())).collect();
            if namespace.is_some_and(|ns| labels.get("function") != Some(&ns)) {
                continue;
            }
            let label = labels.get(by).copied().unwrap_or_default().to_owned();
            let value = match value {
                DebugValue::Counter(n) => Value::Counter(*n),
                DebugValue::Histogram(values) => {
                    Value::Histogram(values.iter().map(|v| v.0).collect())
                }
                DebugValue::Gauge(g) => panic!("no gauge is recorded: {g:?}"),
            };
            found.insert(label, value);
        }
        found
    }

    /// After 1 first call, 2 replays, 1 mismatch, 1 in-flight answer and 1
    /// body error: exactly those counts, described with units, and no label
    /// but function, backend and outcome or phase.
    #[test]
    fn counts_of_a_scripted_sequence() {
        let db = Db::new();
        let mut conn = db.connect();
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let answers = metrics::with_local_recorder(&recorder, || {
            describe_metrics();
            let mut answers = vec![
                charge(&mut conn, "k-1", 10).map_err(|e| e.to_string()),
                charge(&mut conn, "k-1", 10).map_err(|e| e.to_string()),
                charge(&mut conn, "k-1", 10).map_err(|e| e.to_string()),
                charge(&mut conn, "k-1", 12).map_err(|e| e.to_string()),
            ];
            let release = hold(&db, "held-key-0002");
            answers.push(charge(&mut conn, "held-key-0002", 1).map_err(|e| e.to_string()));
            release();
            answers.push(charge(&mut conn, "k-2", -1).map_err(|e| e.to_string()));
            answers
        });
        assert_eq!(answers[0..3], [Ok(10), Ok(10), Ok(10)]);
        assert!(answers[3..].iter().all(Result::is_err), "{answers:?}");

        let snapshot = snapshotter.snapshot().into_vec();
        let counts = series(
            &snapshot,
            REQUESTS_TOTAL,
            Some("telemetry.charge"),
            "outcome",
        );
        let expected: BTreeMap<String, Value> = [
            ("body_error", 1),
            ("executed", 1),
            ("in_flight", 1),
            ("mismatch", 1),
            ("replayed", 2),
        ]
        .into_iter()
        .map(|(outcome, n)| (outcome.to_owned(), Value::Counter(n)))
        .collect();
        assert_eq!(counts, expected);
        let backends = series(
            &snapshot,
            REQUESTS_TOTAL,
            Some("telemetry.charge"),
            "backend",
        );
        assert_eq!(backends.keys().collect::<Vec<_>>(), ["sqlite"]);

        for (key, unit, description, _) in &snapshot {
            let labels: Vec<&str> = key.key().labels().map(|l| l.key()).collect();
            match key.key().name() {
                REQUESTS_TOTAL => {
                    assert_eq!(key.kind(), MetricKind::Counter);
                    assert_eq!(labels, ["function", "backend", "outcome"]);
                    assert_eq!(*unit, Some(metrics::Unit::Count));
                }
                DURATION_SECONDS => {
                    assert_eq!(key.kind(), MetricKind::Histogram);
                    assert_eq!(labels, ["function", "backend", "phase"]);
                    assert_eq!(*unit, Some(metrics::Unit::Seconds));
                }
                other => panic!("unexpected metric {other}"),
            }
            assert!(description.is_some(), "described: {key:?}");
            for label in key.key().labels() {
                assert!(
                    !label.value().contains("k-") && !label.value().contains("held-key"),
                    "a key in a label: {key:?}"
                );
            }
        }
    }

    /// One value per phase: the first call's claim, body and complete, and
    /// each replay's.
    #[test]
    fn phases_of_an_executed_call_and_its_replays() {
        let db = Db::new();
        let mut conn = db.connect();
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            charge(&mut conn, "phases-1", 3).expect("first");
            charge(&mut conn, "phases-1", 3).expect("replay");
            charge(&mut conn, "phases-1", 3).expect("replay");
        });
        let snapshot = snapshotter.snapshot().into_vec();
        let phases = series(
            &snapshot,
            DURATION_SECONDS,
            Some("telemetry.charge"),
            "phase",
        );
        let observed: BTreeMap<&str, usize> = phases
            .iter()
            .map(|(phase, value)| match value {
                Value::Histogram(values) => {
                    assert!(
                        values.iter().all(|v| (0.0..60.0).contains(v)),
                        "seconds: {values:?}"
                    );
                    (phase.as_str(), values.len())
                }
                other => panic!("a histogram: {other:?}"),
            })
            .collect();
        assert_eq!(
            observed,
            BTreeMap::from([("body", 1), ("claim", 1), ("complete", 1), ("replay", 2)])
        );
    }

    /// A panic in a body, or in `get_or_create`'s lookup, is a
    /// `body_error` whose `error.type` is `panic`, counted once.
    #[test]
    fn panics_are_body_errors() {
        let db = Db::new();
        let mut conn = db.connect();
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let (panicked, captured) = capturing(|| {
            metrics::with_local_recorder(&recorder, || {
                let body = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    diesel_idempotent::Call::new("telemetry.panics", "p-1")
                        .run(&mut conn, |_| -> Result<(), Error> {
                            panic!("the body panics")
                        })
                }));
                let lookup = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    diesel_idempotent::get_or_create(
                        &mut conn,
                        |_| -> QueryResult<Option<i64>> { panic!("the lookup panics") },
                        |_| -> QueryResult<i64> { Ok(1) },
                    )
                }));
                (body.is_err(), lookup.is_err())
            })
        });
        assert_eq!(panicked, (true, true));
        let snapshot = snapshotter.snapshot().into_vec();
        for function in ["telemetry.panics", "get_or_create"] {
            assert_eq!(
                series(&snapshot, REQUESTS_TOTAL, Some(function), "outcome"),
                BTreeMap::from([("body_error".to_owned(), Value::Counter(1))]),
                "{function}"
            );
        }
        let spans = captured.idempotent_spans();
        assert_eq!(spans.len(), 2, "{spans:#?}");
        for span in &spans {
            assert_eq!(field(span, "outcome"), Some("body_error"));
            assert_eq!(field(span, "error.type"), Some("panic"));
            assert_eq!(field(span, "otel.status_code"), Some("ERROR"));
        }
    }

    /// Every outcome has a name; the labels are bounded by them.
    #[test]
    fn outcome_names() {
        let names: Vec<&str> = CallOutcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            names,
            [
                "executed",
                "replayed",
                "in_flight",
                "mismatch",
                "invalid_key",
                "body_error",
                "error"
            ]
        );
    }

    /// An empty key is an `invalid_key` outcome.
    #[test]
    fn invalid_key_outcome() {
        let db = Db::new();
        let mut conn = db.connect();
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let (answer, captured) =
            capturing(|| metrics::with_local_recorder(&recorder, || charge(&mut conn, "", 1)));
        assert!(
            answer
                .as_ref()
                .err()
                .and_then(AppError::idempotency)
                .is_some_and(|e| matches!(e, Error::InvalidKey { .. })),
            "{answer:?}"
        );
        let snapshot = snapshotter.snapshot().into_vec();
        let counts = series(
            &snapshot,
            REQUESTS_TOTAL,
            Some("telemetry.charge"),
            "outcome",
        );
        assert_eq!(
            counts,
            BTreeMap::from([("invalid_key".to_owned(), Value::Counter(1))])
        );
        let spans = captured.idempotent_spans();
        assert_eq!(field(&spans[0], "outcome"), Some("invalid_key"));
        assert_eq!(field(&spans[0], "error.type"), Some("invalid_key"));
    }

    /// A purge counts the records it deleted, by backend.
    #[test]
    fn purge_counts_deleted_records() {
        let db = Db::new();
        let mut conn = db.connect();
        let clock = ManualClock::new(chrono::Utc::now());
        let runs = AtomicUsize::new(0);
        for i in 0..5 {
            diesel_idempotent::Call::new("telemetry.purge", &format!("p-{i}"))
                .ttl(diesel_idempotent::Ttl::from_secs(60))
                .clock(&clock)
                .run(&mut conn, |_| -> Result<(), Error> {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
                .expect("call");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 5);
        clock.advance(Duration::from_secs(61));
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let purged = metrics::with_local_recorder(&recorder, || {
            diesel_idempotent::purge_expired_with_clock(&mut conn, 2, &clock)
        })
        .expect("purge");
        assert_eq!(purged, 5);
        let snapshot = snapshotter.snapshot().into_vec();
        let counts = series(&snapshot, PURGED_TOTAL, None, "backend");
        assert_eq!(
            counts,
            BTreeMap::from([("sqlite".to_owned(), Value::Counter(5))])
        );
    }

    // ---- what else reports a call ----

    /// A result too large to store: the call fails with a server-side
    /// error that names its key.
    #[cfg(feature = "axum")]
    #[idempotent(key = key, ttl = "1h", name = "telemetry.report", max_response_bytes = 16)]
    fn report(conn: &mut SqliteConnection, key: &str) -> Result<String, AppError> {
        let _ = conn;
        Ok("x".repeat(64))
    }

    /// The answer to a library error that is a 500 logs the error at ERROR:
    /// that event holds neither the raw key nor the scope, as no event at
    /// INFO or above does.
    #[cfg(feature = "axum")]
    #[test]
    fn raw_key_not_in_the_log_of_a_500_answer() {
        use axum::response::IntoResponse;

        let db = Db::new();
        let mut conn = db.connect();
        let key = "raw-key-5xx-feedbeef";
        let (status, captured) = capturing(|| {
            let error = match report(&mut conn, key) {
                Err(AppError::Idempotency(error)) => error,
                other => panic!("a library error: {other:?}"),
            };
            assert!(matches!(error, Error::ResponseTooLarge { .. }), "{error:?}");
            error.into_response().status()
        });
        assert_eq!(status, axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        let logged: Vec<&EventData> = captured
            .events
            .iter()
            .filter(|e| e.level <= Level::INFO)
            .collect();
        assert!(!logged.is_empty(), "the 500 is logged");
        for event in logged {
            assert!(
                !event.fields.values().any(|value| value.contains(key)),
                "an event at {} holds the raw key: {event:?}",
                event.level
            );
        }
    }

    /// An entity whose insert takes 300 ms at commit (a deferred constraint
    /// trigger that sleeps), in a temporary table of the session.
    #[cfg(feature = "postgres")]
    mod slow_commit {
        use diesel::connection::SimpleConnection;
        use diesel::pg::PgConnection;
        use diesel::{OptionalExtension, QueryResult, RunQueryDsl};
        use diesel_idempotent::idempotent;

        pub fn prepare(conn: &mut PgConnection) {
            conn.batch_execute(
                "CREATE TEMPORARY TABLE slow_entities (id BIGINT PRIMARY KEY);
                 CREATE FUNCTION pg_temp.sleep_at_commit() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$;
                 CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON slow_entities
                   DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
                   EXECUTE FUNCTION pg_temp.sleep_at_commit();",
            )
            .expect("the slow table");
        }

        #[derive(diesel::QueryableByName)]
        struct Id {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            id: i64,
        }

        fn find(conn: &mut PgConnection, id: i64) -> QueryResult<Option<i64>> {
            diesel::sql_query("SELECT id FROM slow_entities WHERE id = $1")
                .bind::<diesel::sql_types::BigInt, _>(id)
                .get_result::<Id>(conn)
                .optional()
                .map(|found| found.map(|row| row.id))
        }

        #[idempotent(get_or_create = find(conn, id), name = "telemetry.slow_entity")]
        pub fn slow_entity(conn: &mut PgConnection, id: i64) -> QueryResult<i64> {
            diesel::sql_query("INSERT INTO slow_entities (id) VALUES ($1)")
                .bind::<diesel::sql_types::BigInt, _>(id)
                .execute(conn)
                .map(|_| id)
        }
    }

    /// `get_or_create`'s `complete` phase is its commit: a commit that
    /// takes 300 ms is measured there, not in `body`.
    #[cfg(feature = "postgres")]
    #[test]
    fn get_or_create_complete_phase_holds_the_commit() {
        let url = std::env::var("DIESEL_IDEMPOTENT_PG_URL")
            .expect("DIESEL_IDEMPOTENT_PG_URL names a PostgreSQL server");
        let mut conn = diesel::pg::PgConnection::establish(&url).expect("connect to PostgreSQL");
        slow_commit::prepare(&mut conn);
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            slow_commit::slow_entity(&mut conn, 7).expect("created");
        });
        let snapshot = snapshotter.snapshot().into_vec();
        let phases = series(
            &snapshot,
            DURATION_SECONDS,
            Some("telemetry.slow_entity"),
            "phase",
        );
        let seconds = |phase: &str| match phases.get(phase) {
            Some(Value::Histogram(values)) if values.len() == 1 => values[0],
            other => panic!("one {phase} value: {other:?} in {phases:?}"),
        };
        assert!(
            seconds("complete") >= 0.25,
            "the commit's 300 ms belong to complete: body {} s, complete {} s",
            seconds("body"),
            seconds("complete")
        );
        assert!(seconds("body") < 0.25, "body {} s", seconds("body"));
    }
}
