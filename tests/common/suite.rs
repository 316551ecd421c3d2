//! The behaviour tests, each generic over the backend.
//!
//! Written once, as async code over diesel-async connections, in
//! [`nonblocking`]; `#[dual::blocking]` derives [`blocking`], the same tests
//! over Diesel's blocking connections, threads for tasks. The tests of the
//! APIs only a blocking connection has follow the module: purge,
//! migrations and `unique_index_covers`.

use std::time::Duration;

use diesel_idempotent::Error;

use super::*;

/// A click event, delivered for the `delivery`th time.
fn click(occurred_at: i64, delivery: u32) -> ClickEvent {
    ClickEvent {
        user_id: 7,
        url: "https://sho.rt/abc".to_owned(),
        occurred_at,
        delivery,
    }
}

#[dual::blocking]
pub mod nonblocking {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use chrono::{DateTime, Utc};
    use diesel_idempotent::{Call, Clock, Error, IdempotencyRecord, ManualClock, Outcome, Ttl};

    use super::click;
    use crate::common::functions::nonblocking::*;
    use crate::common::rt::nonblocking as rt;
    use crate::common::{
        Account, AppError, AsyncSuiteBackend, AsyncTestConn, NewPayment, Payment, Then, clock,
    };

    async fn record<C: AsyncTestConn>(
        conn: &mut C,
        namespace: &str,
        key: &str,
    ) -> IdempotencyRecord {
        conn.load_record(namespace, key).await.expect("the record")
    }

    fn naive(at: DateTime<Utc>) -> chrono::NaiveDateTime {
        at.naive_utc()
    }

    pub async fn first_call_runs_body_and_stores_result<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let payment = create_payment(
            &mut conn,
            &clock,
            "k-1",
            &NewPayment::eur(1200),
            Then::Succeed,
        )
        .await
        .expect("first call");
        assert_eq!(payment.amount, 1200);
        assert_eq!(conn.count_payments().await.unwrap(), 1);
        let rec = record(&mut conn, "tests.create_payment", "k-1").await;
        assert_eq!(rec.scope, "");
        assert!(rec.fingerprint.starts_with("v2:"), "{}", rec.fingerprint);
        let stored: Payment =
            serde_json::from_str(rec.response.as_deref().expect("a response")).unwrap();
        assert_eq!(stored, payment);
        assert_eq!(rec.created_at, naive(clock.now()));
        assert_eq!(
            rec.expires_at,
            naive(clock.now()) + chrono::Duration::hours(1)
        );
    }

    pub async fn replay_returns_stored_result_without_running_body<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let req = NewPayment::eur(500);
        let first = create_payment(&mut conn, &clock, "k-2", &req, Then::Succeed)
            .await
            .unwrap();
        clock.advance(Duration::from_secs(59 * 60));
        // A retry whose body would fail still gets the stored success.
        let again = create_payment(&mut conn, &clock, "k-2", &req, Then::Fail)
            .await
            .unwrap();
        let mut other = db.connect_async().await;
        let third = create_payment(&mut other, &clock, "k-2", &req, Then::Panic)
            .await
            .unwrap();
        assert_eq!(first, again);
        assert_eq!(first, third);
        assert_eq!(conn.count_payments().await.unwrap(), 1, "the body ran once");
        assert_eq!(conn.count_records().await.unwrap(), 1);
    }

    /// A first call holds the key in an open transaction; a duplicate on
    /// another connection waits for it, then replays its result (or, when
    /// it rolls back, runs the body).
    pub async fn duplicate_waits_for_first_and_replays<B: AsyncSuiteBackend>() {
        held_first_call::<B>(true).await;
    }

    /// As above, but the first call rolls back: the duplicate runs the body.
    pub async fn duplicate_runs_body_when_first_rolls_back<B: AsyncSuiteBackend>() {
        held_first_call::<B>(false).await;
    }

    async fn held_first_call<B: AsyncSuiteBackend>(commit: bool) {
        let db = Arc::new(B::fresh());
        let clock = Arc::new(clock());
        let req = NewPayment::eur(77);
        let (claimed_tx, claimed_rx) = rt::channel();
        let (finish_tx, finish_rx) = rt::channel::<()>();
        let first = rt::spawn({
            let (db, clock, req) = (Arc::clone(&db), Arc::clone(&clock), req.clone());
            move || async move {
                let mut conn = db.connect_async().await;
                rt::transaction(&mut conn, async |conn| {
                    let p = create_payment(conn, &clock, "held", &req, Then::Succeed).await?;
                    claimed_tx.send(()).unwrap();
                    finish_rx.recv().await.unwrap();
                    if commit {
                        Ok(p)
                    } else {
                        Err(AppError::Declined)
                    }
                })
                .await
            }
        });
        claimed_rx
            .recv_timeout(rt::DEADLINE)
            .await
            .expect("the first call holds the key");
        let second = rt::spawn({
            let (db, clock, req) = (Arc::clone(&db), Arc::clone(&clock), req.clone());
            move || async move {
                let mut conn = db.connect_async().await;
                create_payment(&mut conn, &clock, "held", &req, Then::Succeed).await
            }
        });
        db.wait_for_lock_waiters_async(1).await;
        finish_tx.send(()).unwrap();
        let first = rt::join(first).await;
        let second = rt::join(second).await.expect("the duplicate succeeds");
        if commit {
            assert_eq!(
                first.unwrap(),
                second,
                "the duplicate replayed the first result"
            );
        } else {
            assert!(matches!(first, Err(AppError::Declined)));
        }
        let mut conn = db.connect_async().await;
        assert_eq!(
            conn.count_payments().await.unwrap(),
            1,
            "exactly one execution"
        );
        assert_eq!(conn.count_records().await.unwrap(), 1);
    }

    pub async fn outcome_tells_replays_apart<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let req = NewPayment::eur(7);
        let first = create_payment_outcome(&mut conn, &clock, "k-o", &req)
            .await
            .unwrap();
        let second = create_payment_outcome(&mut conn, &clock, "k-o", &req)
            .await
            .unwrap();
        assert!(!first.is_replayed());
        assert!(second.is_replayed());
        assert_eq!(first.value(), second.value());
        assert_eq!(conn.count_payments().await.unwrap(), 1);
    }

    pub async fn different_payload_is_a_mismatch<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        create_payment(
            &mut conn,
            &clock,
            "k-3",
            &NewPayment::eur(100),
            Then::Succeed,
        )
        .await
        .unwrap();
        let before = record(&mut conn, "tests.create_payment", "k-3").await;
        for other in [
            NewPayment::eur(101),
            NewPayment {
                amount: 100,
                currency: "USD".into(),
            },
        ] {
            let err = create_payment(&mut conn, &clock, "k-3", &other, Then::Succeed)
                .await
                .unwrap_err();
            assert!(
                matches!(err.idempotency(), Some(Error::PayloadMismatch { key, .. }) if key == "k-3"),
                "{err:?}"
            );
        }
        assert_eq!(conn.count_payments().await.unwrap(), 1, "nothing changed");
        assert_eq!(
            record(&mut conn, "tests.create_payment", "k-3").await,
            before
        );
    }

    /// A record written before fingerprints were RFC 8785 carries a `v1:`
    /// fingerprint: until it expires it replays for its key, whatever the
    /// request, and its body never runs again; after that the key is free and
    /// the new record is `v2:`.
    pub async fn records_of_the_v1_scheme_answer_by_key_until_they_expire<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let first = create_payment(
            &mut conn,
            &clock,
            "k-v1",
            &NewPayment::eur(7),
            Then::Succeed,
        )
        .await
        .unwrap();
        let v1 = format!("v1:{}", "0123456789abcdef".repeat(4));
        assert_eq!(
            conn.set_record_fingerprint("tests.create_payment", "k-v1", &v1)
                .await
                .unwrap(),
            1
        );
        let before = record(&mut conn, "tests.create_payment", "k-v1").await;
        for request in [NewPayment::eur(7), NewPayment::eur(8)] {
            let again = create_payment(&mut conn, &clock, "k-v1", &request, Then::Succeed)
                .await
                .unwrap();
            assert_eq!(again, first, "replayed from the v1 record");
        }
        assert_eq!(conn.count_payments().await.unwrap(), 1, "the body ran once");
        assert_eq!(
            record(&mut conn, "tests.create_payment", "k-v1").await,
            before
        );

        clock.advance(Duration::from_secs(3600));
        let renewed = create_payment(
            &mut conn,
            &clock,
            "k-v1",
            &NewPayment::eur(9),
            Then::Succeed,
        )
        .await
        .unwrap();
        assert_eq!(renewed.amount, 9);
        assert_eq!(conn.count_payments().await.unwrap(), 2);
        let rec = record(&mut conn, "tests.create_payment", "k-v1").await;
        assert!(rec.fingerprint.starts_with("v2:"), "{}", rec.fingerprint);
        // The renewed record is compared again.
        let err = create_payment(
            &mut conn,
            &clock,
            "k-v1",
            &NewPayment::eur(7),
            Then::Succeed,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err.idempotency(), Some(Error::PayloadMismatch { .. })),
            "{err:?}"
        );
    }

    pub async fn invalid_keys_are_rejected_before_the_body<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let long = "k".repeat(256);
        for key in [
            "",
            "has space",
            "line\nbreak",
            "tab\t",
            "naïve",
            long.as_str(),
        ] {
            let err = create_payment(&mut conn, &clock, key, &NewPayment::eur(1), Then::Succeed)
                .await
                .unwrap_err();
            assert!(
                matches!(err.idempotency(), Some(Error::InvalidKey { .. })),
                "{key:?}: {err:?}"
            );
        }
        let max = "k".repeat(255);
        create_payment(&mut conn, &clock, &max, &NewPayment::eur(1), Then::Succeed)
            .await
            .unwrap();
        assert_eq!(
            conn.count_payments().await.unwrap(),
            1,
            "only the valid key ran the body"
        );
        assert_eq!(conn.count_records().await.unwrap(), 1);
    }

    pub async fn body_error_leaves_no_record<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let req = NewPayment::eur(42);
        let err = create_payment(&mut conn, &clock, "k-4", &req, Then::Fail)
            .await
            .unwrap_err();
        assert!(
            matches!(err, AppError::Declined),
            "the body's own error: {err:?}"
        );
        assert_eq!(conn.count_records().await.unwrap(), 0);
        assert_eq!(
            conn.count_payments().await.unwrap(),
            0,
            "the body's insert rolled back"
        );
        // The retry runs the body again.
        create_payment(&mut conn, &clock, "k-4", &req, Then::Succeed)
            .await
            .unwrap();
        assert_eq!(conn.count_payments().await.unwrap(), 1);
        assert_eq!(conn.count_records().await.unwrap(), 1);
    }

    pub async fn body_panic_leaves_no_record<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let req = NewPayment::eur(42);
        let caught = rt::catch_panic(|| async {
            create_payment(&mut conn, &clock, "k-5", &req, Then::Panic).await
        })
        .await;
        let payload = caught.expect_err("the panic propagates to the caller");
        assert_eq!(
            payload.downcast_ref::<&str>().copied(),
            Some("injected panic after the payment insert")
        );
        // The same connection is usable and out of any transaction.
        assert_eq!(conn.count_records().await.unwrap(), 0);
        assert_eq!(conn.count_payments().await.unwrap(), 0);
        create_payment(&mut conn, &clock, "k-5", &req, Then::Succeed)
            .await
            .unwrap();
        assert_eq!(
            db.connect_async().await.count_payments().await.unwrap(),
            1,
            "committed for others to see"
        );
    }

    pub async fn caller_rollback_removes_record<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let req = NewPayment::eur(9);
        let result: Result<(), AppError> = rt::transaction(&mut conn, async |conn| {
            create_payment(conn, &clock, "k-6", &req, Then::Succeed).await?;
            assert_eq!(
                conn.count_records().await?,
                1,
                "visible inside the transaction"
            );
            Err(AppError::Declined)
        })
        .await;
        assert!(matches!(result, Err(AppError::Declined)));
        assert_eq!(
            conn.count_records().await.unwrap(),
            0,
            "the record rolled back with the caller"
        );
        assert_eq!(conn.count_payments().await.unwrap(), 0);
        let again = create_payment(&mut conn, &clock, "k-6", &req, Then::Succeed).await;
        assert!(again.is_ok(), "the retry runs the body: {again:?}");
        assert_eq!(conn.count_payments().await.unwrap(), 1);
    }

    pub async fn caller_commit_keeps_record<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let req = NewPayment::eur(9);
        let first = rt::transaction(&mut conn, async |conn| {
            let p = create_payment(conn, &clock, "k-7", &req, Then::Succeed).await?;
            // A replay inside the same transaction sees the uncommitted record.
            let again = create_payment(conn, &clock, "k-7", &req, Then::Succeed).await?;
            assert_eq!(p, again);
            Ok::<_, AppError>(p)
        })
        .await
        .unwrap();
        let mut other = db.connect_async().await;
        let replay = create_payment(&mut other, &clock, "k-7", &req, Then::Fail)
            .await
            .unwrap();
        assert_eq!(first, replay);
        assert_eq!(other.count_payments().await.unwrap(), 1);
    }

    pub async fn expired_record_is_treated_as_absent<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let first = create_payment(&mut conn, &clock, "k-8", &NewPayment::eur(1), Then::Succeed)
            .await
            .unwrap();
        clock.advance(Duration::from_secs(3600));
        // Expired (expires_at == now): a different payload is not a mismatch.
        let second = create_payment(&mut conn, &clock, "k-8", &NewPayment::eur(2), Then::Succeed)
            .await
            .unwrap();
        assert_ne!(first, second);
        assert_eq!(second.amount, 2);
        assert_eq!(conn.count_payments().await.unwrap(), 2);
        let rec = record(&mut conn, "tests.create_payment", "k-8").await;
        assert_eq!(rec.created_at, naive(clock.now()), "the record was renewed");
        assert_eq!(conn.count_records().await.unwrap(), 1);
        // And the renewed record replays.
        let third = create_payment(&mut conn, &clock, "k-8", &NewPayment::eur(2), Then::Succeed)
            .await
            .unwrap();
        assert_eq!(second, third);
        assert_eq!(conn.count_payments().await.unwrap(), 2);
    }

    pub async fn scopes_keep_tenants_apart<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let req = NewPayment::eur(3);
        let a = create_scoped(&mut conn, &clock, "tenant-a", "same-key", &req)
            .await
            .unwrap();
        let b = create_scoped(&mut conn, &clock, "tenant-b", "same-key", &req)
            .await
            .unwrap();
        assert_ne!(a.id, b.id);
        let a2 = create_scoped(&mut conn, &clock, "tenant-a", "same-key", &req)
            .await
            .unwrap();
        assert_eq!(a, a2);
        assert_eq!(conn.count_payments().await.unwrap(), 2);
        let scoped = record(&mut conn, "tests.create_scoped", "same-key").await;
        assert!(scoped.scope.starts_with("tenant-"));
    }

    pub async fn functions_have_separate_namespaces<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let req = NewPayment::eur(10);
        let pay = create_payment(&mut conn, &clock, "shared", &req, Then::Succeed)
            .await
            .unwrap();
        let refund = create_refund(&mut conn, &clock, "shared", &req)
            .await
            .unwrap();
        assert_eq!(pay.amount, 10);
        assert_eq!(refund.amount, -10);
        // The functions under test live in `common::functions::<this flavour>`.
        let namespace = format!(
            "{}::create_refund",
            module_path!().replace("::suite::", "::functions::")
        );
        let rec = record(&mut conn, &namespace, "shared").await;
        assert!(
            rec.response.is_some(),
            "default namespace is module path + fn name"
        );
    }

    pub async fn unreadable_stored_result_is_a_typed_error<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let req = NewPayment::eur(11);
        create_payment(&mut conn, &clock, "k-9", &req, Then::Succeed)
            .await
            .unwrap();
        let err = create_payment_v2(&mut conn, &clock, "k-9", &req, Then::Succeed)
            .await
            .unwrap_err();
        match err.idempotency() {
            Some(e @ Error::StoredResultUnreadable { key, .. }) => {
                assert_eq!(key, "k-9");
                assert!(e.to_string().contains("settled_at"), "{e}");
            }
            other => panic!("expected StoredResultUnreadable, got {other:?}"),
        }
        assert_eq!(conn.count_payments().await.unwrap(), 1);
    }

    pub async fn runtime_call_api<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let run = async |conn: &mut B::AsyncConn, amount: i64| {
            Call::new("tests.runtime", "rt-1")
                .scope("tenant-1")
                .ttl(Ttl::parse("10m").unwrap())
                .clock(&clock)
                .request(&amount)
                .run_async(
                    conn,
                    async |conn: &mut B::AsyncConn| -> Result<i64, AppError> {
                        Ok(conn.insert_payment(amount).await?)
                    },
                )
                .await
        };
        let first = run(&mut conn, 70).await.unwrap();
        let second = run(&mut conn, 70).await.unwrap();
        assert!(!first.is_replayed() && second.is_replayed());
        assert_eq!(first.into_value(), second.into_value());
        assert!(matches!(
            run(&mut conn, 71).await.unwrap_err().idempotency(),
            Some(Error::PayloadMismatch { .. })
        ));
        let rec = record(&mut conn, "tests.runtime", "rt-1").await;
        assert_eq!(rec.scope, "tenant-1");
        assert_eq!(
            rec.expires_at - rec.created_at,
            chrono::Duration::minutes(10)
        );
    }

    pub async fn hash_of_arguments_replays_repeats<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let event = click(1_000, 1);
        let first = consume(&mut conn, &clock, &event).await.unwrap();
        let again = consume(&mut conn, &clock, &event.clone()).await.unwrap();
        assert_eq!(first, again);
        assert_eq!(
            conn.count_payments().await.unwrap(),
            1,
            "a redelivery does not run the body"
        );
        // Another event, or another delivery of it (every argument counts), runs.
        consume(&mut conn, &clock, &click(1_001, 1)).await.unwrap();
        consume(&mut conn, &clock, &click(1_000, 2)).await.unwrap();
        assert_eq!(conn.count_payments().await.unwrap(), 3);
        // The key is the public fingerprint of the arguments.
        let key = diesel_idempotent::fingerprint(&event).unwrap();
        let rec = record(&mut conn, "tests.consume", key.as_str()).await;
        assert_eq!(rec.fingerprint, key.as_str());
        // The record expires like any other: after 7 days the call runs again.
        clock.advance(Duration::from_secs(7 * 24 * 3600));
        consume(&mut conn, &clock, &event).await.unwrap();
        assert_eq!(conn.count_payments().await.unwrap(), 4);
    }

    /// The fingerprint as the key of a `Call`, as `#[idempotent(hash)]`
    /// uses it: the attribute finds the record the runtime wrote.
    pub async fn hash_key_through_the_runtime<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let event = click(3_000, 1);
        let mut results = Vec::new();
        for _ in 0..2 {
            let fingerprint = diesel_idempotent::fingerprint(&event).unwrap();
            let result = Call::new("tests.consume", fingerprint.as_str())
                .ttl(Ttl::parse("7d").unwrap())
                .clock(&clock)
                .fingerprint(Ok(fingerprint.clone()))
                .run_async(&mut conn, async |conn| -> Result<i64, AppError> {
                    Ok(conn.insert_payment(event.occurred_at).await?)
                })
                .await
                .unwrap();
            results.push(result);
        }
        assert!(!results[0].is_replayed() && results[1].is_replayed());
        assert_eq!(results[0].value(), results[1].value());
        let through_attribute = consume(&mut conn, &clock, &event).await.unwrap();
        assert_eq!(&through_attribute, results[0].value());
        assert_eq!(conn.count_payments().await.unwrap(), 1);
    }

    pub async fn hash_of_named_values_ignores_other_fields<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let first = consume_fields(&mut conn, &clock, &click(2_000, 1))
            .await
            .unwrap();
        let redelivered = consume_fields(&mut conn, &clock, &click(2_000, 9))
            .await
            .unwrap();
        assert_eq!(
            first, redelivered,
            "only the named values identify the event"
        );
        assert_eq!(conn.count_payments().await.unwrap(), 1);
        consume_fields(&mut conn, &clock, &click(2_001, 1))
            .await
            .unwrap();
        assert_eq!(conn.count_payments().await.unwrap(), 2);
        let e = click(2_000, 1);
        let key = diesel_idempotent::Fingerprint::builder()
            .arg(&e.user_id)
            .arg(&e.url)
            .arg(&e.occurred_at)
            .finish()
            .unwrap();
        assert!(
            record(&mut conn, "tests.consume_fields", key.as_str())
                .await
                .response
                .is_some()
        );
    }

    pub async fn webhook_dedup_by_id_or_body<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let json = |text: &str| -> serde_json::Value { serde_json::from_str(text).unwrap() };
        let body = json(r#"{"type":"payment.succeeded","amount":1200}"#);
        let a = receive_webhook(&mut conn, &clock, Some("evt_1"), &body)
            .await
            .unwrap();
        let a2 = receive_webhook(&mut conn, &clock, Some("evt_1"), &body)
            .await
            .unwrap();
        assert_eq!(a, a2, "redelivered with the provider's id");
        let other = json(r#"{"type":"payment.refunded","amount":1200}"#);
        let b = receive_webhook(&mut conn, &clock, None, &other)
            .await
            .unwrap();
        let reserialized = json("{ \"amount\": 1200,\n  \"type\": \"payment.refunded\" }");
        let b2 = receive_webhook(&mut conn, &clock, None, &reserialized)
            .await
            .unwrap();
        assert_eq!(
            b, b2,
            "redelivered without an id, serialized again: recognised by its parsed body"
        );
        receive_webhook(&mut conn, &clock, None, &json("{}"))
            .await
            .unwrap();
        assert_eq!(conn.count_payments().await.unwrap(), 3);
        let by_body = diesel_idempotent::id_or_body_hash(None, &other);
        assert!(
            record(&mut conn, "tests.webhook", &by_body)
                .await
                .response
                .is_some()
        );
    }

    pub async fn retried_batch_reruns_only_missing_items<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let amounts = [10, 20, 30, 40, 50, 60];
        let k = 3;
        let err = process_batch(&mut conn, &clock, "batch-1", &amounts, Some(k))
            .await
            .unwrap_err();
        assert!(matches!(err, AppError::Declined));
        assert_eq!(
            conn.count_payments().await.unwrap(),
            k as i64,
            "items before k committed"
        );
        assert_eq!(
            conn.count_records().await.unwrap(),
            k as i64,
            "item k left no record"
        );
        let mut ids_before: Vec<i64> = Vec::with_capacity(k);
        for i in 0..k {
            let rec = record(
                &mut conn,
                "tests.batch_item",
                &diesel_idempotent::sub_key("batch-1", i),
            )
            .await;
            ids_before.push(serde_json::from_str(rec.response.as_deref().unwrap()).unwrap());
        }
        let retried = process_batch(&mut conn, &clock, "batch-1", &amounts, None)
            .await
            .unwrap();
        assert_eq!(&retried[..k], &ids_before[..], "items before k replayed");
        assert_eq!(
            conn.count_payments().await.unwrap(),
            amounts.len() as i64,
            "only the missing items ran"
        );
        let again = process_batch(&mut conn, &clock, "batch-1", &amounts, Some(0))
            .await
            .unwrap();
        assert_eq!(again, retried, "a third attempt replays everything");
        assert_eq!(conn.count_payments().await.unwrap(), amounts.len() as i64);
    }

    pub async fn get_or_create_returns_the_existing_row<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let first = open_account(&mut conn, 1, 10).await.unwrap();
        let again = open_account(&mut conn, 1, 10).await.unwrap();
        assert_eq!(first, again, "a double-click opens one account");
        let other_bank = open_account(&mut conn, 1, 11).await.unwrap();
        assert_ne!(first.id, other_bank.id);
        assert_eq!(conn.count_accounts().await.unwrap(), 2);
        // Inside a caller's transaction too, and with an application error type.
        let inside = rt::transaction(&mut conn, async |conn| {
            open_account_checked(conn, 1, 10).await
        })
        .await
        .unwrap();
        assert_eq!(inside, first);
        assert_eq!(
            conn.count_records().await.unwrap(),
            0,
            "no idempotency record is kept"
        );
    }

    pub async fn get_or_create_propagates_other_errors<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let err = open_account_checked(&mut conn, 2, -1).await.unwrap_err();
        assert!(matches!(err, AppError::Declined), "{err:?}");
        assert_eq!(conn.count_accounts().await.unwrap(), 0);
        // A unique violation that the lookup does not explain is returned as is:
        // here the lookup is by another key than the constraint that fired.
        open_account(&mut conn, 3, 30).await.unwrap();
        let err = diesel_idempotent::get_or_create_async(
            &mut conn,
            async |_: &mut B::AsyncConn| Ok(None::<Account>),
            async |conn: &mut B::AsyncConn| conn.insert_account(3, 30).await,
        )
        .await
        .unwrap_err();
        assert!(
            diesel_idempotent::UniqueViolation::is_unique_violation(&err),
            "{err:?}"
        );
        assert_eq!(conn.count_accounts().await.unwrap(), 1);
    }

    pub async fn oversized_result_is_refused_and_nothing_stored<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let err = big_result(&mut conn, &clock, "big", 4096)
            .await
            .unwrap_err();
        match err.idempotency() {
            Some(Error::ResponseTooLarge {
                key, size, limit, ..
            }) => {
                assert_eq!((key.as_str(), *size, *limit), ("big", 4098, 1024));
            }
            other => panic!("expected ResponseTooLarge, got {other:?}"),
        }
        assert_eq!(
            conn.count_records().await.unwrap(),
            0,
            "nothing half-stored"
        );
        assert_eq!(
            conn.count_payments().await.unwrap(),
            0,
            "the body's effects rolled back"
        );
        assert_eq!(
            big_result(&mut conn, &clock, "small", 100)
                .await
                .unwrap()
                .len(),
            100
        );
        assert_eq!(conn.count_records().await.unwrap(), 1);
    }

    /// Waits for every task, in order; a task's panic is this one's.
    async fn join_all<T>(tasks: Vec<rt::Task<T>>) -> Vec<T> {
        let mut values = Vec::with_capacity(tasks.len());
        for task in tasks {
            values.push(rt::join(task).await);
        }
        values
    }

    /// 16 threads on 16 connections call with one key at once, 50 rounds: the
    /// body runs exactly once per round and all 16 get equal results.
    pub async fn concurrent_duplicates_run_body_once<B: AsyncSuiteBackend>() {
        const THREADS: usize = 16;
        const ROUNDS: usize = 50;
        let db = Arc::new(B::fresh());
        let clock = Arc::new(clock());
        let barrier = Arc::new(rt::Barrier::new(THREADS));
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (db, clock, barrier) =
                    (Arc::clone(&db), Arc::clone(&clock), Arc::clone(&barrier));
                rt::spawn(move || async move {
                    let mut conn = db.connect_async().await;
                    let mut results = Vec::with_capacity(ROUNDS);
                    for round in 0..ROUNDS {
                        barrier.wait().await;
                        let req = NewPayment::eur(round as i64);
                        let payment = create_payment(
                            &mut conn,
                            &clock,
                            &format!("round-{round}"),
                            &req,
                            Then::Succeed,
                        )
                        .await
                        .unwrap_or_else(|e| panic!("round {round}: {e}"));
                        results.push(payment);
                    }
                    results
                })
            })
            .collect();
        let per_thread: Vec<Vec<Payment>> = join_all(workers).await;
        for round in 0..ROUNDS {
            let first = &per_thread[0][round];
            assert!(
                per_thread.iter().all(|results| &results[round] == first),
                "round {round} differs"
            );
        }
        let mut conn = db.connect_async().await;
        let executions = conn.count_payments().await.unwrap();
        println!(
            "[{}] {THREADS} threads x {ROUNDS} rounds: {executions} body executions, {} records",
            B::NAME,
            conn.count_records().await.unwrap()
        );
        assert_eq!(executions, ROUNDS as i64, "exactly one execution per key");
    }

    /// An expired record, then 16 threads racing to take its key over, 20
    /// rounds: exactly one of them runs the body, the others replay its result.
    pub async fn concurrent_takeover_of_expired_record_runs_body_once<B: AsyncSuiteBackend>() {
        const THREADS: usize = 16;
        const ROUNDS: usize = 20;
        let db = Arc::new(B::fresh());
        let clock = Arc::new(clock());
        let barrier = Arc::new(rt::Barrier::new(THREADS));
        let key = "expiring";
        let mut conn = db.connect_async().await;
        create_payment(&mut conn, &clock, key, &NewPayment::eur(-1), Then::Succeed)
            .await
            .unwrap();
        for round in 0..ROUNDS {
            clock.advance(Duration::from_secs(3600)); // the record just expired
            let req = NewPayment::eur(round as i64);
            let workers: Vec<_> = (0..THREADS)
                .map(|_| {
                    let (db, clock, barrier, req) = (
                        Arc::clone(&db),
                        Arc::clone(&clock),
                        Arc::clone(&barrier),
                        req.clone(),
                    );
                    rt::spawn(move || async move {
                        let mut conn = db.connect_async().await;
                        barrier.wait().await;
                        create_payment(&mut conn, &clock, key, &req, Then::Succeed)
                            .await
                            .unwrap_or_else(|e| panic!("round {round}: {e}"))
                    })
                })
                .collect();
            let results: Vec<Payment> = join_all(workers).await;
            assert!(
                results.iter().all(|p| p == &results[0]),
                "round {round} differs"
            );
            assert_eq!(
                results[0].amount, round as i64,
                "round {round} took the key over"
            );
            assert_eq!(
                conn.count_payments().await.unwrap(),
                round as i64 + 2,
                "round {round}"
            );
        }
        assert_eq!(conn.count_records().await.unwrap(), 1);
    }

    /// 16 consumers receive the same redelivered event at once, 30 rounds.
    pub async fn concurrent_redeliveries_run_hash_body_once<B: AsyncSuiteBackend>() {
        const THREADS: usize = 16;
        const ROUNDS: i64 = 30;
        let db = Arc::new(B::fresh());
        let clock = Arc::new(clock());
        let barrier = Arc::new(rt::Barrier::new(THREADS));
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (db, clock, barrier) =
                    (Arc::clone(&db), Arc::clone(&clock), Arc::clone(&barrier));
                rt::spawn(move || async move {
                    let mut conn = db.connect_async().await;
                    for round in 0..ROUNDS {
                        barrier.wait().await;
                        consume(&mut conn, &clock, &click(round, 1))
                            .await
                            .unwrap_or_else(|e| panic!("round {round}: {e}"));
                    }
                })
            })
            .collect();
        join_all(workers).await;
        assert_eq!(
            db.connect_async().await.count_payments().await.unwrap(),
            ROUNDS
        );
    }

    /// 16 creators of the same natural key at once, 20 rounds: one row each
    /// round, every caller gets it, no error surfaces.
    pub async fn concurrent_creators_get_one_row<B: AsyncSuiteBackend>() {
        const THREADS: usize = 16;
        const ROUNDS: i64 = 20;
        let db = Arc::new(B::fresh());
        let barrier = Arc::new(rt::Barrier::new(THREADS));
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (db, barrier) = (Arc::clone(&db), Arc::clone(&barrier));
                rt::spawn(move || async move {
                    let mut conn = db.connect_async().await;
                    let mut accounts = Vec::with_capacity(ROUNDS as usize);
                    for round in 0..ROUNDS {
                        barrier.wait().await;
                        let account = open_account_checked(&mut conn, 100 + round, 1)
                            .await
                            .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
                        accounts.push(account);
                    }
                    accounts
                })
            })
            .collect();
        let per_thread: Vec<Vec<Account>> = join_all(workers).await;
        for round in 0..ROUNDS as usize {
            assert!(
                per_thread.iter().all(|r| r[round] == per_thread[0][round]),
                "round {round}: callers got different accounts"
            );
        }
        assert_eq!(
            db.connect_async().await.count_accounts().await.unwrap(),
            ROUNDS
        );
    }

    /// A first call on its own connection, `create_payment` under `"held"`,
    /// that holds the key in an open transaction until `finish` is sent,
    /// then commits; returned once it holds the key.
    async fn hold_payment<B: AsyncSuiteBackend>(
        db: &Arc<B>,
        clock: &Arc<ManualClock>,
        req: &NewPayment,
    ) -> (rt::Sender<()>, rt::Task<Result<Payment, AppError>>) {
        let (claimed_tx, claimed_rx) = rt::channel();
        let (finish_tx, finish_rx) = rt::channel::<()>();
        let first = rt::spawn({
            let (db, clock, req) = (Arc::clone(db), Arc::clone(clock), req.clone());
            move || async move {
                let mut conn = db.connect_async().await;
                rt::transaction(&mut conn, async |conn| {
                    let p = create_payment(conn, &clock, "held", &req, Then::Succeed).await?;
                    claimed_tx.send(()).unwrap();
                    finish_rx.recv().await.unwrap();
                    Ok::<_, AppError>(p)
                })
                .await
            }
        });
        claimed_rx
            .recv_timeout(rt::DEADLINE)
            .await
            .expect("the first call holds the key");
        (finish_tx, first)
    }

    /// A first call holds the key in an open transaction; a duplicate with
    /// `on_conflict = "reject"` gets `InFlight` at once (where the backend can
    /// tell), and replays once the first committed.
    pub async fn on_conflict_reject_answers_in_flight<B: AsyncSuiteBackend>() {
        let db = Arc::new(B::fresh());
        let clock = Arc::new(clock());
        let req = NewPayment::eur(5);
        let (answer_tx, answer_rx) = rt::channel();
        let (finish_tx, first) = hold_payment(&db, &clock, &req).await;
        let second = rt::spawn({
            let (db, clock, req) = (Arc::clone(&db), Arc::clone(&clock), req.clone());
            move || async move {
                let mut conn = db.connect_async().await;
                let answer =
                    create_payment_or_reject(&mut conn, &clock, "held", &req, Then::Succeed).await;
                let _ = answer_tx.send(answer);
            }
        });
        if B::REJECTS_AT_ONCE {
            // A generous bound that only a blocked call would reach.
            let answer = answer_rx
                .recv_timeout(rt::DEADLINE)
                .await
                .expect("reject answers while the key is held");
            assert!(
                matches!(answer.as_ref().unwrap_err().idempotency(), Some(Error::InFlight { key, .. }) if key == "held"),
                "{answer:?}"
            );
            finish_tx.send(()).unwrap();
            let first = rt::join(first).await.unwrap();
            let mut conn = db.connect_async().await;
            let replay =
                create_payment_or_reject(&mut conn, &clock, "held", &req, Then::Succeed).await;
            assert_eq!(replay.unwrap(), first, "after the commit it replays");
        } else {
            finish_tx.send(()).unwrap();
            let first = rt::join(first).await.unwrap();
            assert_eq!(
                answer_rx.recv().await.unwrap().unwrap(),
                first,
                "it waited, then replayed"
            );
        }
        rt::join(second).await;
        assert_eq!(db.connect_async().await.count_payments().await.unwrap(), 1);
    }

    /// How long [`create_payment_waiting_briefly`] waits on `B`: its
    /// `wait_for = "300ms"`, which MySQL rounds up to whole seconds.
    fn brief_wait<B: AsyncSuiteBackend>() -> Duration {
        if B::NAME == "mysql" {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(300)
        }
    }

    /// A first call holds the key in an open transaction, its body blocked
    /// until the test releases it; a duplicate with `wait_for = "300ms"`
    /// (the attribute) waits that long (MySQL: 1 s), then gets `InFlight`,
    /// while the first still holds the key. The first then commits, and a
    /// later call replays its result: one execution, one record.
    pub async fn bounded_wait_answers_in_flight_after_its_limit<B: AsyncSuiteBackend>() {
        let db = Arc::new(B::fresh());
        let clock = Arc::new(clock());
        let req = NewPayment::eur(6);
        let (finish_tx, first) = hold_payment(&db, &clock, &req).await;
        let mut conn = db.connect_async().await;
        let started = Instant::now();
        let answer =
            create_payment_waiting_briefly(&mut conn, &clock, "held", &req, Then::Succeed).await;
        let waited = started.elapsed();
        println!(
            "[{}] a duplicate with wait_for = 300ms answered after {waited:?}: {answer:?}",
            B::NAME
        );
        // The first call is still blocked in its body: it finishes only
        // when told to, below.
        assert!(
            matches!(
                answer.as_ref().err().and_then(AppError::idempotency),
                Some(Error::InFlight { key, .. }) if key == "held"
            ),
            "InFlight while the key is held, never a database error: {answer:?}"
        );
        assert!(
            waited >= brief_wait::<B>(),
            "it waited its limit, {:?}, before answering: {waited:?}",
            brief_wait::<B>()
        );
        finish_tx.send(()).unwrap();
        let first = rt::join(first).await.expect("the first call commits");
        let replay =
            create_payment_waiting_briefly(&mut conn, &clock, "held", &req, Then::Fail).await;
        assert_eq!(replay.unwrap(), first, "after the commit it replays");
        assert_eq!(conn.count_payments().await.unwrap(), 1, "the body ran once");
        assert_eq!(conn.count_records().await.unwrap(), 1, "one record");
    }

    /// A payment under `key` through the runtime API (`Call::wait_for`,
    /// or the default wait without a limit), in its own namespace.
    async fn pay_waiting<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        key: &str,
        req: &NewPayment,
        limit: Option<Duration>,
    ) -> Result<Outcome<Payment>, AppError> {
        let call = Call::new("tests.bounded_wait", key)
            .clock(clock)
            .request(req);
        let call = match limit {
            Some(limit) => call.wait_for(limit),
            None => call,
        };
        call.run_async(conn, async |conn: &mut C| -> Result<Payment, AppError> {
            Ok(Payment {
                id: conn.insert_payment(req.amount).await?,
                amount: req.amount,
            })
        })
        .await
    }

    /// A first call on its own connection that holds `key` in an open
    /// transaction until `finish` is sent; `claimed` says it holds it.
    fn hold_key<B: AsyncSuiteBackend>(
        db: &Arc<B>,
        clock: &Arc<ManualClock>,
        key: &'static str,
        req: &NewPayment,
    ) -> (rt::Receiver<()>, rt::Sender<()>, rt::Task<Outcome<Payment>>) {
        let (claimed_tx, claimed_rx) = rt::channel();
        let (finish_tx, finish_rx) = rt::channel::<()>();
        let task = rt::spawn({
            let (db, clock, req) = (Arc::clone(db), Arc::clone(clock), req.clone());
            move || async move {
                let mut conn = db.connect_async().await;
                rt::transaction(&mut conn, async |conn| {
                    let paid = pay_waiting(conn, &clock, key, &req, None).await?;
                    claimed_tx.send(()).unwrap();
                    finish_rx.recv().await.unwrap();
                    Ok::<_, AppError>(paid)
                })
                .await
                .expect("the holder commits")
            }
        });
        (claimed_rx, finish_tx, task)
    }

    /// After a bounded wait answered `InFlight`, the connection's own lock
    /// waits are as they were (PostgreSQL's `lock_timeout`, MySQL's
    /// `innodb_lock_wait_timeout`, SQLite's busy timeout): a later call on
    /// it without a limit outlasts the bound, waiting for a holder that
    /// commits after 2.5 s, and replays it. Outside a transaction, and (where
    /// the claim is bounded there) inside the caller's, whose transaction
    /// goes on after a bounded call that claimed its key and one that got
    /// `InFlight`.
    pub async fn bounded_wait_leaves_lock_waits_as_they_were<B: AsyncSuiteBackend>() {
        let db = Arc::new(B::fresh());
        let clock = Arc::new(clock());
        let req = NewPayment::eur(8);
        let limit = Some(Duration::from_millis(300));
        let release_after = Duration::from_millis(2500);
        let release = |finish: rt::Sender<()>| {
            rt::spawn(move || async move {
                rt::sleep(release_after).await;
                finish.send(()).unwrap();
            })
        };
        let in_flight = |answer: &Result<Outcome<Payment>, AppError>| {
            matches!(
                answer.as_ref().err().and_then(AppError::idempotency),
                Some(Error::InFlight { .. })
            )
        };

        let (claimed, finish, holder) = hold_key(&db, &clock, "w-1", &req);
        claimed.recv_timeout(rt::DEADLINE).await.expect("held");
        let mut conn = db.connect_async().await;
        let bounded = pay_waiting(&mut conn, &clock, "w-1", &req, limit).await;
        assert!(in_flight(&bounded), "{bounded:?}");
        let releaser = release(finish);
        let started = Instant::now();
        let unbounded = pay_waiting(&mut conn, &clock, "w-1", &req, None).await;
        let waited = started.elapsed();
        assert!(
            unbounded.as_ref().is_ok_and(Outcome::is_replayed),
            "[{}] after {waited:?}, the call without a limit still waited with the bounded \
             call's: {unbounded:?}",
            B::NAME
        );
        rt::join(releaser).await;
        rt::join(holder).await;

        if !B::REJECTS_AT_ONCE {
            return;
        }
        let (claimed, finish, holder) = hold_key(&db, &clock, "w-2", &req);
        claimed.recv_timeout(rt::DEADLINE).await.expect("held");
        let mut releaser = None;
        let answers = rt::transaction(&mut conn, async |conn| {
            // A bounded call that claims a free key, then one that gives up.
            pay_waiting(conn, &clock, "w-free", &req, limit).await?;
            let bounded = pay_waiting(conn, &clock, "w-2", &req, limit).await;
            releaser = Some(release(finish));
            let unbounded = pay_waiting(conn, &clock, "w-2", &req, None).await;
            Ok::<_, AppError>((bounded, unbounded))
        })
        .await
        .expect("the caller's transaction commits");
        if let Some(releaser) = releaser {
            rt::join(releaser).await;
        }
        rt::join(holder).await;
        assert!(in_flight(&answers.0), "{:?}", answers.0);
        assert!(
            answers.1.as_ref().is_ok_and(Outcome::is_replayed),
            "[{}] in the caller's transaction, the call without a limit still waited with the \
             bounded call's: {:?}",
            B::NAME,
            answers.1
        );
    }

    /// A duplicate with a generous bounded wait (`Call::wait_for`, 30 s)
    /// whose holder finishes within it (released by the test once the
    /// duplicate waits) replays the holder's result; its body never runs.
    pub async fn bounded_wait_replays_a_holder_that_finishes<B: AsyncSuiteBackend>() {
        let db = Arc::new(B::fresh());
        let clock = Arc::new(clock());
        let req = NewPayment::eur(7);
        let (claimed, finish_tx, first) = hold_key(&db, &clock, "held", &req);
        claimed
            .recv_timeout(rt::DEADLINE)
            .await
            .expect("the first call holds the key");
        let second = rt::spawn({
            let (db, clock, req) = (Arc::clone(&db), Arc::clone(&clock), req.clone());
            move || async move {
                let mut conn = db.connect_async().await;
                pay_waiting(
                    &mut conn,
                    &clock,
                    "held",
                    &req,
                    Some(Duration::from_secs(30)),
                )
                .await
            }
        });
        db.wait_for_lock_waiters_async(1).await;
        finish_tx.send(()).unwrap();
        let first = rt::join(first).await;
        let second = rt::join(second).await.expect("the duplicate replays");
        assert!(!first.is_replayed());
        assert!(second.is_replayed(), "the duplicate's body did not run");
        assert_eq!(second.value(), first.value());
        let mut conn = db.connect_async().await;
        assert_eq!(conn.count_payments().await.unwrap(), 1, "one execution");
        assert_eq!(conn.count_records().await.unwrap(), 1);
    }

    /// At each isolation level the backend offers, 16 callers race for one key
    /// inside their own transactions (which read first, so their snapshot
    /// predates the winner): each replays or gets an error that is retryable,
    /// and `retry` converges to exactly one execution.
    pub async fn isolation_levels_replay_or_retry<B: AsyncSuiteBackend>() {
        const THREADS: usize = 16;
        const ROUNDS: usize = 10;
        let db = Arc::new(B::fresh());
        let clock = Arc::new(clock());
        let barrier = Arc::new(rt::Barrier::new(THREADS));
        // Backoff with full jitter is what breaks repeated deadlocks between
        // the same callers (MySQL SERIALIZABLE turns reads into locking reads).
        let policy = Arc::new(
            diesel_idempotent::RetryPolicy::new()
                .max_attempts(50)
                .base_delay(Duration::from_millis(2))
                .max_delay(Duration::from_millis(100)),
        );
        for (l, &level) in B::ISOLATION_LEVELS.iter().enumerate() {
            let retries = Arc::new(AtomicUsize::new(0));
            // Workers never panic mid-round (that would strand the others at
            // the barrier): they collect results, asserted afterwards.
            let workers: Vec<_> = (0..THREADS)
                .map(|_| {
                    let (db, clock, barrier, policy, retries) = (
                        Arc::clone(&db),
                        Arc::clone(&clock),
                        Arc::clone(&barrier),
                        Arc::clone(&policy),
                        Arc::clone(&retries),
                    );
                    rt::spawn(move || async move {
                        // Each attempt takes the caller's connection and puts
                        // it back: what an attempt returns may not borrow from
                        // the retried closure.
                        let slot = Mutex::new(Some(db.connect_async().await));
                        let mut results: Vec<Result<Payment, String>> = Vec::with_capacity(ROUNDS);
                        for round in 0..ROUNDS {
                            let key = format!("iso-{l}-{round}");
                            let req = NewPayment::eur(round as i64);
                            barrier.wait().await;
                            let mut attempts = 0;
                            let (slot, clock, key, req) = (&slot, &clock, &key, &req);
                            let result = diesel_idempotent::retry_async(&policy, || {
                                attempts += 1;
                                async move {
                                    let mut conn = slot
                                        .lock()
                                        .unwrap()
                                        .take()
                                        .expect("the caller's connection");
                                    let result = rt::transaction_at(&mut conn, level, async |c| {
                                        c.count_payments().await?;
                                        create_payment(c, clock, key, req, Then::Succeed).await
                                    })
                                    .await;
                                    *slot.lock().unwrap() = Some(conn);
                                    result
                                }
                            })
                            .await;
                            retries.fetch_add(attempts - 1, Ordering::SeqCst);
                            results.push(
                                result.map_err(|e| format!("{level:?} round {round}: {e:?}")),
                            );
                        }
                        results
                    })
                })
                .collect();
            let results: Vec<Vec<Result<Payment, String>>> = join_all(workers).await;
            for round in 0..ROUNDS {
                let first = results[0][round].as_ref().unwrap_or_else(|e| panic!("{e}"));
                for r in &results {
                    let got = r[round].as_ref().unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(got, first, "{level:?} round {round}: callers disagree");
                }
            }
            println!(
                "[{}] {level:?}: {THREADS} x {ROUNDS} racing calls, {} retryable errors retried",
                B::NAME,
                retries.load(Ordering::SeqCst)
            );
        }
        let executions = db.connect_async().await.count_payments().await.unwrap();
        assert_eq!(
            executions,
            (ROUNDS * B::ISOLATION_LEVELS.len()) as i64,
            "exactly one execution per key at every level"
        );
    }

    /// The statements `conn` sends for one call of `payer`, inside a
    /// transaction of the caller's when `in_tx`, and the call's answer.
    async fn measure<C: AsyncTestConn>(
        conn: &mut C,
        payer: &crate::common::modes::nonblocking::Payer<'_>,
        key: &str,
        with: &NewPayment,
        then: Then,
        in_tx: bool,
    ) -> (
        Vec<String>,
        Result<diesel_idempotent::Outcome<Payment>, AppError>,
    ) {
        rt::statements(conn, async |c| {
            if in_tx {
                rt::transaction(c, async |c| payer.pay(c, key, with, then).await).await
            } else {
                payer.pay(c, key, with, then).await
            }
        })
        .await
    }

    /// The statements the library sends on each path of a call, outside and
    /// inside a caller's transaction: printed as a table (the README and
    /// BENCHMARKS.md take theirs from it) and pinned.
    pub async fn statements_added_per_call<B: AsyncSuiteBackend>() {
        use super::{Answer, Before};
        use crate::common::modes::nonblocking::Payer;
        use crate::common::modes::{Shape, TTL};
        use Answer::*;
        use Before::*;
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let mut holder = db.connect_async().await;
        let clock = clock();
        let req = NewPayment::eur(1);
        let other = NewPayment::eur(2);
        let claim_first = Payer::new(Shape::CLAIM_FIRST, &clock);
        let reject = Payer::new(Shape::CLAIM_FIRST, &clock).rejecting();
        let wait_for =
            Payer::new(Shape::CLAIM_FIRST, &clock).waiting_at_most(Duration::from_secs(2));
        let read_first = Payer::new(Shape::READ_FIRST, &clock);
        let optimistic = Payer::new(Shape::OPTIMISTIC, &clock);
        let both = Payer::new(Shape::OPTIMISTIC_READ_FIRST, &clock);
        #[rustfmt::skip]
        let paths: &[(&str, &Payer<'_>, Before, &NewPayment, Answer)] = &[
            ("claim-first, first call", &claim_first, Nothing, &req, Fresh),
            ("claim-first, replay", &claim_first, Record, &req, Replayed),
            ("claim-first, mismatch", &claim_first, Record, &other, Mismatch),
            ("claim-first, take-over", &claim_first, Expired, &req, Fresh),
            ("claim-first, in flight (reject)", &reject, Held, &req, InFlight),
            ("reject, first call", &reject, Nothing, &req, Fresh),
            ("reject, replay", &reject, Record, &req, Replayed),
            ("wait_for, first call", &wait_for, Nothing, &req, Fresh),
            ("wait_for, replay", &wait_for, Record, &req, Replayed),
            ("read-first, first call", &read_first, Nothing, &req, Fresh),
            ("read-first, replay", &read_first, Record, &req, Replayed),
            ("read-first, mismatch", &read_first, Record, &other, Mismatch),
            ("read-first, take-over", &read_first, Expired, &req, Fresh),
            ("optimistic, first call", &optimistic, Nothing, &req, Fresh),
            ("optimistic, replay", &optimistic, Record, &req, Replayed),
            ("optimistic, mismatch", &optimistic, Record, &other, Mismatch),
            ("optimistic, take-over", &optimistic, Expired, &req, Fresh),
            ("optimistic, body error", &optimistic, Nothing, &req, Declined),
            ("optimistic + read-first, first call", &both, Nothing, &req, Fresh),
            ("optimistic + read-first, replay", &both, Record, &req, Replayed),
        ];
        /// One path: the statements added outside and inside a caller's
        /// transaction (`None`: not measured), and the statements themselves.
        struct Row<'l> {
            label: &'l str,
            counts: [Option<usize>; 2],
            shapes: [String; 2],
        }
        let mut rows: Vec<Row<'_>> = Vec::new();
        for (n, &(label, payer, before, with, answer)) in paths.iter().enumerate() {
            let mut row = Row {
                label,
                counts: [None, None],
                shapes: [String::new(), String::new()],
            };
            for (position, in_tx) in [false, true].into_iter().enumerate() {
                if before == Held && !B::REJECTS_AT_ONCE {
                    // SQLite: the duplicate would wait for the database lock.
                    continue;
                }
                let key = format!("s-{n}-{position}");
                if matches!(before, Record | Expired) {
                    claim_first
                        .pay(&mut conn, &key, &req, Then::Succeed)
                        .await
                        .unwrap();
                }
                if before == Expired {
                    clock.advance(TTL);
                }
                let then = if answer == Declined {
                    Then::Fail
                } else {
                    Then::Succeed
                };
                let (log, result) = if before == Held {
                    let mut measured = None;
                    let held: Result<(), AppError> = rt::transaction(&mut holder, async |h| {
                        claim_first.pay(h, &key, &req, Then::Succeed).await?;
                        measured = Some(measure(&mut conn, payer, &key, with, then, in_tx).await);
                        Err(AppError::Declined)
                    })
                    .await;
                    assert!(matches!(held, Err(AppError::Declined)), "{held:?}");
                    measured.unwrap()
                } else {
                    measure(&mut conn, payer, &key, with, then, in_tx).await
                };
                let what = format!("{label} (in a caller's transaction: {in_tx})");
                super::check_answer(&what, answer, &result);
                // The caller's own BEGIN and COMMIT (or ROLLBACK) and the body's
                // insert are not the library's.
                let body = log
                    .iter()
                    .filter(|q| q.contains("INSERT INTO payments") || q.contains("LAST_INSERT_ID"))
                    .count();
                let caller = usize::from(in_tx) * 2;
                row.counts[position] = Some(log.len() - body - caller);
                let shapes: Vec<String> =
                    log.iter().map(|q| q.chars().take(32).collect()).collect();
                row.shapes[position] = shapes.join(" | ");
            }
            rows.push(row);
        }
        let cell = |count: Option<usize>| count.map_or_else(|| "-".to_owned(), |n| n.to_string());
        let mut report = vec![
            "| path | outside a transaction | in the caller's transaction |".to_owned(),
            "|---|---|---|".to_owned(),
        ];
        for Row { label, counts, .. } in &rows {
            report.push(format!(
                "| {label} | {} | {} |",
                cell(counts[0]),
                cell(counts[1])
            ));
        }
        for Row {
            label,
            counts,
            shapes,
        } in &rows
        {
            for (position, where_) in ["outside", "in the caller's transaction"]
                .iter()
                .enumerate()
            {
                if counts[position].is_some() {
                    report.push(format!("{label}, {where_}: {}", shapes[position]));
                }
            }
        }
        println!(
            "[{}] statements added by the library per call (not counting the body's nor the \
             caller's BEGIN and COMMIT):\n  {}",
            B::NAME,
            report.join("\n  ")
        );

        // Pinned (README "Cost", BENCHMARKS.md). A change here is a change of
        // the library's cost: update the docs. Each count is the same outside a
        // transaction (BEGIN .. COMMIT or ROLLBACK) and inside the caller's
        // (SAVEPOINT .. RELEASE or ROLLBACK TO SAVEPOINT).
        //
        // PostgreSQL claims a key and, when it is taken, reads the record that
        // holds it in one statement; elsewhere the claim is followed by a load.
        let claim = if B::NAME == "postgres" { 1 } else { 2 };
        // `on_conflict = "reject"` disables lock waits before the claim and
        // restores the setting after it (PostgreSQL, MySQL).
        let lock_settings = if B::REJECTS_AT_ONCE { 2 } else { 0 };
        // `wait_for` bounds the lock waits of the claim (PostgreSQL, MySQL)
        // or SQLite's wait for the database lock at its `BEGIN IMMEDIATE`.
        let bounded = if B::REJECTS_AT_ONCE { 2 } else { 3 };
        #[rustfmt::skip]
        let expected: &[(&str, usize)] = &[
            // BEGIN, the claim (an insert), the result (UPDATE), COMMIT.
            ("claim-first, first call", 4),
            // BEGIN, the claim finding the record, ROLLBACK: nothing written.
            ("claim-first, replay", 2 + claim),
            ("claim-first, mismatch", 2 + claim),
            // BEGIN, the claim finding the expired record, the take-over
            // (UPDATE), the result (UPDATE), COMMIT.
            ("claim-first, take-over", 2 + claim + 2),
            // BEGIN, lock waits off, the claim timing out at once, ROLLBACK
            // (MySQL also restores the setting: a timeout there ends the
            // statement only; PostgreSQL's rollback restores it).
            ("claim-first, in flight (reject)", if B::NAME == "postgres" { 4 } else { 5 }),
            ("reject, first call", 4 + lock_settings),
            ("reject, replay", 2 + claim + lock_settings),
            // PostgreSQL and MySQL: the lock-wait limit set before the claim
            // and restored after it, as with `reject`. SQLite: the busy
            // timeout read, set to the limit and restored around its `BEGIN
            // IMMEDIATE` (outside a caller's transaction only, see below).
            ("wait_for, first call", 4 + bounded),
            ("wait_for, replay", 2 + claim + bounded),
            // One read that misses, then the claim-first path.
            ("read-first, first call", 1 + 4),
            // One read: a finished, unexpired record of the same request.
            ("read-first, replay", 1),
            ("read-first, mismatch", 1 + 2 + claim),
            ("read-first, take-over", 1 + 2 + claim + 2),
            // BEGIN, the record inserted with its result, COMMIT.
            ("optimistic, first call", 3),
            // BEGIN, the insert finding the record, ROLLBACK (the body's
            // effects with it).
            ("optimistic, replay", 2 + claim),
            ("optimistic, mismatch", 2 + claim),
            // BEGIN, the insert finding the expired record, the take-over
            // with the result (UPDATE), COMMIT.
            ("optimistic, take-over", 2 + claim + 1),
            // BEGIN, (the body fails), ROLLBACK, then one read for a first
            // call's record that the failure may have come from (outside a
            // caller's transaction only; inside it 2, see below).
            ("optimistic, body error", 3),
            ("optimistic + read-first, first call", 1 + 3),
            ("optimistic + read-first, replay", 1),
        ];
        assert_eq!(expected.len(), rows.len());
        let mut wrong = Vec::new();
        for (
            Row {
                label,
                counts,
                shapes,
            },
            (expected_label, expected),
        ) in rows.iter().zip(expected)
        {
            assert_eq!(label, expected_label);
            for (position, count) in counts.iter().enumerate() {
                // Inside a caller's transaction a failed optimistic body is
                // answered without the read (it would see the caller's
                // snapshot): BEGIN and ROLLBACK only.
                let expected = if *label == "optimistic, body error" && position == 1 {
                    &2
                } else if label.starts_with("wait_for") && position == 1 && !B::REJECTS_AT_ONCE {
                    // SQLite inside a caller's transaction: the library's
                    // level is a savepoint, which waits for nothing.
                    &(expected - bounded)
                } else {
                    expected
                };
                if let Some(count) = count
                    && count != expected
                {
                    wrong.push(format!(
                        "{label} ({}): {count}, expected {expected}: {}",
                        ["outside", "in the caller's transaction"][position],
                        shapes[position]
                    ));
                }
            }
        }
        assert!(wrong.is_empty(), "[{}] {}", B::NAME, wrong.join("\n"));
    }

    /// PostgreSQL at REPEATABLE READ: a creator whose snapshot predates the
    /// winner's row cannot see it, so it gets the unique violation (retry the
    /// transaction) or the row, never a spurious "not found"; a retry converges.
    pub async fn get_or_create_under_repeatable_read<B: AsyncSuiteBackend>() {
        use crate::common::Isolation;
        use diesel::result::{DatabaseErrorKind, Error as DieselError};
        const THREADS: usize = 8;
        const ROUNDS: i64 = 10;
        assert_eq!(B::NAME, "postgres", "a PostgreSQL scenario");
        /// One creator's transaction at REPEATABLE READ, its snapshot taken
        /// before the race.
        async fn attempt<C: AsyncTestConn>(
            conn: &mut C,
            customer: i64,
        ) -> Result<Account, AppError> {
            rt::transaction_at(conn, Isolation::RepeatableRead, async |conn| {
                conn.count_accounts().await?;
                Ok(open_account(conn, customer, 7).await?)
            })
            .await
        }
        let db = Arc::new(B::fresh());
        let barrier = Arc::new(rt::Barrier::new(THREADS));
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (db, barrier) = (Arc::clone(&db), Arc::clone(&barrier));
                rt::spawn(move || async move {
                    let mut conn = db.connect_async().await;
                    let mut outcomes = Vec::new();
                    for round in 0..ROUNDS {
                        barrier.wait().await;
                        let first = attempt(&mut conn, 900 + round).await;
                        // The documented reaction: retry the transaction.
                        let mut settled = None;
                        for _ in 0..5 {
                            if let Ok(account) = attempt(&mut conn, 900 + round).await {
                                settled = Some(account);
                                break;
                            }
                        }
                        outcomes.push((first, settled.expect("a retry converges")));
                    }
                    outcomes
                })
            })
            .collect();
        let outcomes = join_all(workers).await;
        let (mut ok, mut retryable) = (0usize, 0usize);
        for round in 0..ROUNDS as usize {
            let winner = &outcomes[0][round].1;
            for thread in &outcomes {
                let (first, settled) = &thread[round];
                assert_eq!(
                    settled, winner,
                    "round {round}: retries converge on one row"
                );
                match first {
                    Ok(account) => {
                        assert_eq!(account, winner);
                        ok += 1;
                    }
                    Err(AppError::Db(DieselError::DatabaseError(
                        DatabaseErrorKind::UniqueViolation
                        | DatabaseErrorKind::SerializationFailure,
                        _,
                    ))) => retryable += 1,
                    Err(other) => panic!("round {round}: unexpected {other:?}"),
                }
            }
        }
        println!(
            "[postgres] REPEATABLE READ, {THREADS} creators x {ROUNDS} rounds: {ok} got the row, \
             {retryable} got a retryable unique violation / serialization failure"
        );
        assert!(ok >= ROUNDS as usize, "every round has a winner");
        let mut conn = db.connect_async().await;
        assert_eq!(conn.count_accounts().await.unwrap(), ROUNDS);
    }
}

pub fn purge_expired_deletes_in_batches<B: Backend>() {
    let db = B::fresh();
    let mut conn = db.connect();
    let clock = clock();
    for i in 0..5 {
        create_payment(
            &mut conn,
            &clock,
            &format!("old-{i}"),
            &NewPayment::eur(i),
            Then::Succeed,
        )
        .unwrap();
    }
    clock.advance(Duration::from_secs(30 * 60));
    for i in 0..3 {
        create_payment(
            &mut conn,
            &clock,
            &format!("new-{i}"),
            &NewPayment::eur(i),
            Then::Succeed,
        )
        .unwrap();
    }
    assert!(matches!(
        diesel_idempotent::purge_expired_with_clock(&mut conn, 0, &clock),
        Err(Error::InvalidBatchSize)
    ));
    assert_eq!(
        diesel_idempotent::purge_expired_with_clock(&mut conn, 2, &clock).unwrap(),
        0
    );
    clock.advance(Duration::from_secs(31 * 60)); // the old ones are past their hour
    assert_eq!(
        diesel_idempotent::purge_expired_with_clock(&mut conn, 2, &clock).unwrap(),
        5
    );
    assert_eq!(conn.count_records().unwrap(), 3);
    let left = conn.record_keys().unwrap();
    assert_eq!(left, ["new-0", "new-1", "new-2"]);
    // With the system clock (years after the test clock) everything is expired.
    assert_eq!(
        diesel_idempotent::purge_expired(&mut conn, 1000).unwrap(),
        3
    );
}

pub fn migrate_is_idempotent<B: Backend>() {
    let db = B::fresh();
    let mut conn = db.connect();
    assert_eq!(diesel_idempotent::migrate(&mut conn).unwrap(), 0);
    assert_eq!(conn.count_records().unwrap(), 0);
}

pub fn generated_cli_migrations_apply<B: Backend>() {
    let db = B::empty();
    let mut conn = db.connect();
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_diesel-idempotent"))
        .args(["migrations", "--backend", B::MIGRATIONS.name(), "--dir"])
        .arg(dir.path())
        .status()
        .expect("run diesel-idempotent");
    assert!(status.success());
    assert_eq!(
        conn.run_file_migrations(dir.path()),
        B::MIGRATIONS.migrations().len(),
        "the record, outbox and phased-call tables, one folder each"
    );
    // The embedded migrations have the same versions: nothing left to apply.
    assert_eq!(diesel_idempotent::migrate(&mut conn).unwrap(), 0);
    conn.create_side_tables().unwrap();
    let clock = clock();
    let req = NewPayment::eur(5);
    let a = create_payment(&mut conn, &clock, "cli", &req, Then::Succeed).unwrap();
    let b = create_payment(&mut conn, &clock, "cli", &req, Then::Succeed).unwrap();
    assert_eq!(a, b);
    assert_eq!(conn.count_payments().unwrap(), 1);
}

/// What holds a key when a measured call comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Before {
    /// Nothing: the key is free.
    Nothing,
    /// A finished record of the same request.
    Record,
    /// A finished record that has just expired.
    Expired,
    /// A first call that has not committed, on another connection.
    Held,
}

/// What a measured call must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Fresh,
    Replayed,
    Mismatch,
    InFlight,
    /// The body fails (and no earlier call holds the key).
    Declined,
}

/// Fails the test unless `result` is what `answer` says.
pub fn check_answer(
    what: &str,
    answer: Answer,
    result: &Result<diesel_idempotent::Outcome<Payment>, AppError>,
) {
    use Answer::*;
    match (answer, result) {
        (Fresh, Ok(o)) => assert!(!o.is_replayed(), "{what}"),
        (Replayed, Ok(o)) => assert!(o.is_replayed(), "{what}"),
        (Mismatch, Err(AppError::Idempotency(Error::PayloadMismatch { .. })))
        | (InFlight, Err(AppError::Idempotency(Error::InFlight { .. })))
        | (Declined, Err(AppError::Declined)) => {}
        _ => panic!("{what}: expected {answer:?}, got {result:?}"),
    }
}

/// `unique_index_covers` reads the catalog on a blocking connection only.
pub fn get_or_create_checks_unique_indexes<B: Backend>() {
    let db = B::fresh();
    let mut conn = db.connect();
    let covers = |conn: &mut B::Conn, table: &str, columns: &[&str]| {
        diesel_idempotent::unique_index_covers(conn, table, columns).unwrap()
    };
    assert!(covers(&mut conn, "accounts", &["customer_id", "bank_id"]));
    assert!(covers(
        &mut conn,
        "accounts",
        &["bank_id", "customer_id", "id"]
    ));
    assert!(
        !covers(&mut conn, "accounts", &["customer_id"]),
        "the classic silent bug"
    );
    assert!(!covers(&mut conn, "notes", &["customer_id"]));
    assert!(!covers(&mut conn, "no_such_table", &["id"]));
}

/// Instantiates this file's tests for one backend in one flavour (see
/// `conformance!`).
#[macro_export]
macro_rules! suite_tests {
    (blocking $backend:ty) => {
        $crate::suite_tests!(@both blocking $backend);
        // Blocking-only: see the file's docs.
        $crate::conformance!(@plain $backend; suite;
            purge_expired_deletes_in_batches,
            migrate_is_idempotent,
            generated_cli_migrations_apply,
            get_or_create_checks_unique_indexes,
        );
    };
    (nonblocking $backend:ty) => {
        $crate::suite_tests!(@both nonblocking $backend);
    };
    (@both $flavour:ident $backend:ty) => {
        $crate::conformance!(@each $flavour $backend; suite;
            first_call_runs_body_and_stores_result,
            replay_returns_stored_result_without_running_body,
            statements_added_per_call,
            duplicate_waits_for_first_and_replays,
            duplicate_runs_body_when_first_rolls_back,
            outcome_tells_replays_apart,
            different_payload_is_a_mismatch,
            records_of_the_v1_scheme_answer_by_key_until_they_expire,
            invalid_keys_are_rejected_before_the_body,
            body_error_leaves_no_record,
            body_panic_leaves_no_record,
            caller_rollback_removes_record,
            caller_commit_keeps_record,
            expired_record_is_treated_as_absent,
            scopes_keep_tenants_apart,
            functions_have_separate_namespaces,
            unreadable_stored_result_is_a_typed_error,
            runtime_call_api,
            concurrent_duplicates_run_body_once,
            concurrent_takeover_of_expired_record_runs_body_once,
            hash_of_arguments_replays_repeats,
            hash_of_named_values_ignores_other_fields,
            hash_key_through_the_runtime,
            webhook_dedup_by_id_or_body,
            retried_batch_reruns_only_missing_items,
            concurrent_redeliveries_run_hash_body_once,
            get_or_create_returns_the_existing_row,
            get_or_create_propagates_other_errors,
            concurrent_creators_get_one_row,
            on_conflict_reject_answers_in_flight,
            bounded_wait_answers_in_flight_after_its_limit,
            bounded_wait_replays_a_holder_that_finishes,
            bounded_wait_leaves_lock_waits_as_they_were,
            oversized_result_is_refused_and_nothing_stored,
            isolation_levels_replay_or_retry,
        );
    };
}
