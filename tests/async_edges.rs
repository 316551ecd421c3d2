//! Edges of the cancellation and `abandon_after` promises (README.md,
//! "Async" and "Cancellation"): calls dropped inside a caller's transaction
//! or inside another call, nested `abandon_after` calls, every path's
//! restore of MySQL's `wait_timeout`, calls ended by the server, and SQLite
//! connections after a drop on a current-thread runtime or during a panic.
#![cfg(feature = "async")]

mod common;

use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::pin;
/// Awaits `future`, returning a panic inside it as `Err` (message).
async fn catch_panic<F: Future>(future: F) -> Result<F::Output, String> {
    let mut future = pin!(future);
    poll_fn(
        |cx| match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Err(payload) => std::task::Poll::Ready(Err(payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned()))),
        },
    )
    .await
}

/// Blocking helpers for the monitor connection.
mod monitor {
    use diesel::sql_types::BigInt;
    use diesel::{Connection, QueryableByName, RunQueryDsl};

    #[derive(QueryableByName)]
    pub struct N {
        #[diesel(sql_type = BigInt)]
        pub n: i64,
    }

    /// Committed payments of `amount`.
    pub fn payments_of<C>(conn: &mut C, amount: i64) -> i64
    where
        C: Connection,
        diesel::query_builder::SqlQuery: diesel::query_dsl::methods::LoadQuery<'static, C, N>,
    {
        diesel::sql_query(format!(
            "SELECT COUNT(*) AS n FROM payments WHERE amount = {amount}"
        ))
        .get_result::<N>(conn)
        .expect("count payments")
        .n
    }

    /// Records of one key.
    pub fn records_of<C>(conn: &mut C, key: &str) -> i64
    where
        C: Connection,
        diesel::query_builder::SqlQuery: diesel::query_dsl::methods::LoadQuery<'static, C, N>,
    {
        diesel::sql_query(format!(
            "SELECT COUNT(*) AS n FROM idempotency_records WHERE {} = '{key}'",
            if std::any::type_name::<C>().contains("Mysql") {
                "`key`"
            } else {
                "\"key\""
            }
        ))
        .get_result::<N>(conn)
        .expect("count records")
        .n
    }
}

/// diesel-async helpers, one pair per connection type.
macro_rules! exec_helpers {
    ($conn:ty) => {
        #[derive(diesel::QueryableByName)]
        struct ScalarRow {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }

        mod exec {
            use diesel_async::RunQueryDsl;

            pub async fn run(conn: &mut $conn, sql: &str) -> diesel::QueryResult<usize> {
                diesel::sql_query(sql).execute(conn).await
            }

            #[allow(dead_code)]
            pub async fn scalar(conn: &mut $conn, sql: &str) -> diesel::QueryResult<i64> {
                diesel::sql_query(sql)
                    .get_result::<super::ScalarRow>(conn)
                    .await
                    .map(|row| row.n)
            }
        }
    };
}

// ---------------------------------------------------------------------------
// MySQL: a plain connection reused after a dropped call.
// ---------------------------------------------------------------------------

#[cfg(feature = "mysql")]
mod mysql {
    use std::time::{Duration, Instant};

    use diesel_async::AsyncMysqlConnection;
    use diesel_idempotent::{Call, Error};
    use tokio::sync::oneshot;

    use super::common::async_backends::AsyncBackend;
    use super::common::{AppError, Backend, Mysql};

    exec_helpers!(diesel_async::AsyncMysqlConnection);

    /// `SELECT @@session.wait_timeout`.
    async fn wait_timeout(conn: &mut AsyncMysqlConnection) -> i64 {
        exec::scalar(conn, "SELECT CAST(@@session.wait_timeout AS SIGNED) AS n")
            .await
            .expect("wait_timeout")
    }

    /// README, Cancellation: the call "sets the session's `wait_timeout`
    /// ... before it begins and restores it after it ends". Two nested
    /// calls with `abandon_after` on one connection (an idempotent batch
    /// whose items are idempotent calls, as README's `sub_key` suggests)
    /// share the one user variable that holds the value to restore: the
    /// inner call overwrites it with the outer call's timeout, and the
    /// session keeps a 1-second `wait_timeout` after both succeeded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql_nested_abandon_after_calls_restore_wait_timeout() {
        let db = Mysql::fresh();
        let mut conn = db.connect_async().await;
        let before = wait_timeout(&mut conn).await;
        let out = Call::new("edges.batch", "batch-1")
            .abandon_after(Duration::from_secs(1))
            .run_async(
                &mut conn,
                async |c: &mut AsyncMysqlConnection| -> Result<i64, AppError> {
                    let item = Call::new("edges.item", "batch-1:item:0")
                        .abandon_after(Duration::from_secs(30))
                        .run_async(
                            c,
                            async |c: &mut AsyncMysqlConnection| -> Result<i64, AppError> {
                                exec::run(c, "INSERT INTO payments (amount) VALUES (5)").await?;
                                Ok(5)
                            },
                        )
                        .await?;
                    Ok(*item)
                },
            )
            .await
            .expect("the batch commits");
        assert_eq!(*out, 5);
        let after = wait_timeout(&mut conn).await;
        if after != before {
            tokio::time::sleep(Duration::from_millis(2_500)).await;
            let next = exec::run(&mut conn, "SELECT 1").await;
            panic!(
                "wait_timeout was {before} s before two nested abandon_after calls and is \
                 {after} s after both committed; a statement after 2.5 s idle: {next:?}"
            );
        }
    }

    /// `wait_timeout` is restored on every path of a call with
    /// `abandon_after` (single calls).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql_abandon_after_restores_wait_timeout_on_every_path() {
        let db = Mysql::fresh();
        let mut conn = db.connect_async().await;
        let mut holder = db.connect_async().await;
        let before = wait_timeout(&mut conn).await;
        let after = Duration::from_secs(2);
        let call = |key: &'static str, req: i64| {
            Call::new("edges.paths", key)
                .request(&req)
                .abandon_after(after)
        };
        let mut failures = Vec::new();
        macro_rules! check {
            ($what:expr) => {{
                let now = wait_timeout(&mut conn).await;
                if now != before {
                    failures.push(format!("{}: {now}", $what));
                }
            }};
        }
        // first call, replay, mismatch
        let _ = call("a", 1)
            .run_async(
                &mut conn,
                async |_: &mut AsyncMysqlConnection| -> Result<i64, Error> { Ok(1) },
            )
            .await;
        check!("first call");
        let _ = call("a", 1)
            .run_async(
                &mut conn,
                async |_: &mut AsyncMysqlConnection| -> Result<i64, Error> { Ok(1) },
            )
            .await;
        check!("replay");
        let _ = call("a", 2)
            .run_async(
                &mut conn,
                async |_: &mut AsyncMysqlConnection| -> Result<i64, Error> { Ok(1) },
            )
            .await;
        check!("mismatch");
        // body error
        let _ = call("b", 1)
            .run_async(
                &mut conn,
                async |_: &mut AsyncMysqlConnection| -> Result<i64, AppError> {
                    Err(AppError::Declined)
                },
            )
            .await;
        check!("body error");
        // body panic
        let panicked = super::catch_panic(call("c", 1).run_async(
            &mut conn,
            async |_: &mut AsyncMysqlConnection| -> Result<i64, Error> { panic!("in the body") },
        ))
        .await;
        assert!(panicked.is_err());
        check!("body panic");
        // optimistic + read_first, body error (the look after the error)
        let _ = call("d", 1)
            .mode(diesel_idempotent::Mode::Optimistic)
            .replay(diesel_idempotent::Replay::ReadFirst)
            .run_async(
                &mut conn,
                async |_: &mut AsyncMysqlConnection| -> Result<i64, AppError> {
                    Err(AppError::Declined)
                },
            )
            .await;
        check!("optimistic body error");
        // reject while another connection holds the key
        let (entered, has_entered) = oneshot::channel::<()>();
        let (release, released) = oneshot::channel::<()>();
        let holding = tokio::spawn(async move {
            Call::new("edges.paths", "e")
                .request(&1)
                .run_async(
                    &mut holder,
                    async move |_: &mut AsyncMysqlConnection| -> Result<i64, Error> {
                        let _ = entered.send(());
                        let _ = released.await;
                        Ok(1)
                    },
                )
                .await
                .map(|o| *o)
        });
        has_entered.await.unwrap();
        let rejected = call("e", 1)
            .on_conflict(diesel_idempotent::OnConflict::Reject)
            .run_async(
                &mut conn,
                async |_: &mut AsyncMysqlConnection| -> Result<i64, Error> { Ok(1) },
            )
            .await;
        check!(format!("reject ({:?})", rejected.map(|o| *o)));
        let _ = release.send(());
        holding.await.unwrap().unwrap();
        // inside the caller's transaction, committed and rolled back
        use diesel_async::AsyncConnection;
        let _ = conn
            .transaction(
                async |c: &mut AsyncMysqlConnection| -> Result<(), AppError> {
                    call("f", 1)
                        .run_async(
                            c,
                            async |_: &mut AsyncMysqlConnection| -> Result<i64, AppError> { Ok(1) },
                        )
                        .await?;
                    Err(AppError::Declined)
                },
            )
            .await;
        check!("inside a caller's transaction that rolls back");
        assert!(
            failures.is_empty(),
            "wait_timeout was {before} before; after these paths it was not restored: {failures:?}"
        );
    }

    /// README, Retrying: lost connections are transient and
    /// `is_retryable()` says so. A call that stalls past `abandon_after`
    /// loses its connection to the server's `wait_timeout`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql_call_ended_by_abandon_after_is_retryable() {
        let db = Mysql::fresh();
        let mut conn = db.connect_async().await;
        let started = Instant::now();
        let answer = Call::new("edges.stall", "stalled")
            .request(&1)
            .abandon_after(Duration::from_secs(1))
            .run_async(
                &mut conn,
                async |c: &mut AsyncMysqlConnection| -> Result<i64, Error> {
                    exec::run(c, "INSERT INTO payments (amount) VALUES (3)").await?;
                    tokio::time::sleep(Duration::from_millis(2_500)).await;
                    exec::run(c, "INSERT INTO payments (amount) VALUES (3)").await?;
                    Ok(3)
                },
            )
            .await;
        let e = answer.expect_err("the server closed the stalled call's connection");
        assert!(
            e.is_retryable(),
            "the error of a call whose connection the server closed after {:?} \
             (abandon_after = 1 s) is not retryable: {e:?} / {e}",
            started.elapsed()
        );
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL: a call dropped inside a caller's transaction, or inside
// another idempotent call.
// ---------------------------------------------------------------------------

#[cfg(feature = "postgres")]
mod postgres {
    use super::monitor;
    use std::time::Duration;

    use diesel_async::{AsyncConnection, AsyncPgConnection};
    use diesel_idempotent::{Call, Error};
    use tokio::sync::oneshot;

    use super::common::async_backends::AsyncBackend;
    use super::common::{AppError, Backend, Postgres};

    exec_helpers!(diesel_async::AsyncPgConnection);

    /// README, Guarantees: "The caller's rollback removes the record with
    /// the effects"; Cancellation: "No silently lost write". A call dropped
    /// inside the caller's transaction (a `tokio::time::timeout` around it)
    /// sends `ROLLBACK` for the caller's whole transaction; the caller's
    /// next statements, which it believes are inside its transaction, run
    /// in autocommit and are committed although the caller then rolls back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg_writes_after_a_dropped_call_stay_inside_the_callers_transaction() {
        let db = Postgres::fresh();
        let mut watch = db.connect();
        let mut conn = db.connect_async().await;
        let result = conn
            .transaction(async |c: &mut AsyncPgConnection| -> Result<(), AppError> {
                exec::run(c, "INSERT INTO payments (amount) VALUES (10)").await?;
                let (_never, stall) = oneshot::channel::<()>();
                let dropped = tokio::time::timeout(
                    Duration::from_millis(200),
                    Call::new("edges.pg", "dropped").request(&1).run_async(
                        c,
                        async move |c: &mut AsyncPgConnection| -> Result<i64, AppError> {
                            exec::run(c, "INSERT INTO payments (amount) VALUES (11)").await?;
                            let _ = stall.await;
                            Ok(1)
                        },
                    ),
                )
                .await;
                assert!(dropped.is_err(), "the call is dropped mid-body");
                // Let the drop's cancel request land on nothing.
                tokio::time::sleep(Duration::from_millis(300)).await;
                // The caller goes on inside its transaction, then rolls back.
                exec::run(c, "INSERT INTO payments (amount) VALUES (12)").await?;
                Err(AppError::Declined)
            })
            .await;
        let escaped = monitor::payments_of(&mut watch, 12);
        assert_eq!(
            escaped, 0,
            "the caller rolled back its transaction ({result:?}), yet the write it made in it \
             after the dropped call is committed"
        );
    }

    /// README: "the body never runs twice" per key. An idempotent call
    /// (a batch) whose body drops an inner idempotent call (a per-item
    /// `tokio::time::timeout`) keeps running after the inner drop's
    /// `ROLLBACK`, so its later writes autocommit while its own record is
    /// gone; the batch fails, its retry runs the body again, and the write
    /// is committed twice for one key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg_outer_call_whose_body_drops_an_inner_call_commits_once() {
        let db = Postgres::fresh();
        let mut watch = db.connect();

        async fn batch(conn: &mut AsyncPgConnection, item_stalls: bool) -> Result<i64, AppError> {
            let out =
                Call::new("edges.batch", "batch-1")
                    .request(&"batch-1")
                    .run_async(
                        conn,
                        async move |c: &mut AsyncPgConnection| -> Result<i64, AppError> {
                            let (_never, stall) = oneshot::channel::<()>();
                            let item = tokio::time::timeout(
                        Duration::from_millis(200),
                        Call::new("edges.item", "batch-1:item:0").request(&0).run_async(
                            c,
                            async move |c: &mut AsyncPgConnection| -> Result<i64, AppError> {
                                exec::run(c, "INSERT INTO payments (amount) VALUES (20)").await?;
                                if item_stalls {
                                    let _ = stall.await;
                                }
                                Ok(20)
                            },
                        ),
                    )
                    .await;
                            // A timed-out item is skipped; the batch goes on.
                            let _ = item;
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            exec::run(c, "INSERT INTO payments (amount) VALUES (21)").await?;
                            Ok(21)
                        },
                    )
                    .await?;
            Ok(*out)
        }

        let mut first = db.connect_async().await;
        let first_answer = batch(&mut first, true).await;
        drop(first);
        let mut second = db.connect_async().await;
        let retry = batch(&mut second, false).await;
        let committed = monitor::payments_of(&mut watch, 21);
        assert_eq!(
            committed, 1,
            "the batch's write was committed {committed} times for one key (first attempt: \
             {first_answer:?}, retry: {retry:?})"
        );
    }

    /// README, Retrying: lost connections are transient. A call that stalls
    /// past `abandon_after` has its session ended by the server.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg_call_ended_by_abandon_after_is_retryable() {
        let db = Postgres::fresh();
        let mut conn = db.connect_async().await;
        let answer = Call::new("edges.stall", "stalled")
            .request(&1)
            .abandon_after(Duration::from_millis(300))
            .run_async(
                &mut conn,
                async |c: &mut AsyncPgConnection| -> Result<i64, Error> {
                    exec::run(c, "INSERT INTO payments (amount) VALUES (3)").await?;
                    tokio::time::sleep(Duration::from_millis(1_200)).await;
                    exec::run(c, "INSERT INTO payments (amount) VALUES (3)").await?;
                    Ok(3)
                },
            )
            .await;
        let e = answer.expect_err("the server ended the stalled call's session");
        assert!(
            e.is_retryable(),
            "the error of a call whose session the server ended (abandon_after) is not \
             retryable: {e:?} / {e}"
        );
    }
}

// ---------------------------------------------------------------------------
// SQLite on a current-thread runtime.
// ---------------------------------------------------------------------------

#[cfg(feature = "sqlite")]
mod sqlite {
    use std::time::Duration;

    use diesel_idempotent::Call;
    use tokio::sync::oneshot;

    use super::common::async_backends::{AsyncBackend, AsyncSqlite};
    use super::common::{AppError, Backend, Sqlite};
    use super::{catch_panic, monitor};

    exec_helpers!(crate::common::async_backends::AsyncSqlite);

    /// README, Cancellation (SQLite): the drop rolls back "before it
    /// returns" and the connection is "usable, at the depth it had before
    /// the call"; the multi-threaded runtime is said to be needed "for any
    /// dropped future". A call dropped while its body awaits something that
    /// is not a statement (no wrapper future is pending) runs fine on a
    /// current-thread runtime (`#[tokio::main(flavor = "current_thread")]`,
    /// `#[tokio::test]`), but its rollback is left running in the
    /// background, and the connection's next call, made at once, fails.
    #[tokio::test]
    async fn sqlite_current_thread_connection_is_usable_after_a_dropped_call() {
        let db = Sqlite::fresh();
        let mut watch = db.connect();
        let mut conn: AsyncSqlite = db.connect_async().await;
        let mut failures = Vec::new();
        let rounds = 20;
        for round in 0..rounds {
            let key = format!("dropped-{round}");
            let (_never, stall) = oneshot::channel::<()>();
            let dropped = tokio::time::timeout(
                Duration::from_millis(20),
                Call::new("edges.sqlite", &key).request(&round).run_async(
                    &mut conn,
                    async move |c: &mut AsyncSqlite| -> Result<i64, AppError> {
                        exec::run(c, "INSERT INTO payments (amount) VALUES (1)").await?;
                        let _ = stall.await;
                        Ok(1)
                    },
                ),
            )
            .await;
            assert!(dropped.is_err(), "dropped mid-body");
            let next_key = format!("next-{round}");
            let next = catch_panic(
                Call::new("edges.sqlite", &next_key)
                    .request(&round)
                    .run_async(
                        &mut conn,
                        async |c: &mut AsyncSqlite| -> Result<i64, AppError> {
                            exec::run(c, "INSERT INTO payments (amount) VALUES (2)").await?;
                            Ok(2)
                        },
                    ),
            )
            .await;
            match next {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => failures.push(format!("round {round}: error {e:?}")),
                Err(panic) => {
                    failures.push(format!("round {round}: panic {panic:?}"));
                    break;
                }
            }
        }
        let committed = monitor::payments_of(&mut watch, 2);
        let records = monitor::records_of(&mut watch, "next-0");
        assert!(
            failures.is_empty(),
            "the next call on the connection of a dropped call (current-thread runtime) \
             failed: {failures:?} (committed next calls: {committed}, next-0 records: {records})"
        );
    }
}

#[cfg(feature = "sqlite")]
mod sqlite_unwinding {
    use std::time::Duration;

    use diesel_idempotent::Call;

    use super::common::async_backends::{AsyncBackend, AsyncSqlite};
    use super::common::{AppError, Backend, Sqlite};

    exec_helpers!(crate::common::async_backends::AsyncSqlite);

    /// README, Cancellation (SQLite): "the drop rolls the call's levels back
    /// before it returns ... the connection: usable". When the call is
    /// dropped during a panic (a sibling branch of a `select!` panics), the
    /// guard starts the rollback and does not wait for it. The pooled
    /// connection goes back to deadpool at once; the next checkout, made
    /// right away by another task, panics inside deadpool's recycle
    /// (`is_broken` -> diesel-async's `exclusive_connection`: "Cannot access
    /// shared transaction state") while the rollback still holds the
    /// wrapper's connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_deadpool_call_dropped_during_a_panic_leaves_a_usable_connection() {
        let db = Sqlite::fresh();
        let pool = db.deadpool(1);
        let mut failures = Vec::new();
        let rounds = 100;
        for round in 0..rounds {
            let p = pool.clone();
            let crashed = tokio::spawn(async move {
                let mut conn = p.get().await.expect("a connection");
                let key = format!("dropped-{round}");
                let call = Call::new("edges.unwind", &key).request(&round).run_async(
                    &mut *conn,
                    async |c: &mut AsyncSqlite| -> Result<i64, AppError> {
                        exec::run(c, "INSERT INTO payments (amount) VALUES (1)").await?;
                        std::future::pending::<()>().await;
                        Ok(1)
                    },
                );
                tokio::select! {
                    _ = call => {}
                    () = async {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        panic!("a sibling branch fails");
                    } => {}
                }
            })
            .await;
            assert!(crashed.unwrap_err().is_panic());
            let p = pool.clone();
            let next = tokio::spawn(async move {
                let mut conn = p.get().await.expect("a connection");
                let key = format!("next-{round}");
                Call::new("edges.unwind", &key)
                    .request(&round)
                    .run_async(
                        &mut *conn,
                        async |c: &mut AsyncSqlite| -> Result<i64, AppError> {
                            exec::run(c, "INSERT INTO payments (amount) VALUES (2)").await?;
                            Ok(2)
                        },
                    )
                    .await
                    .map(|o| *o)
            })
            .await;
            match next {
                Ok(Ok(2)) => {}
                Ok(other) => failures.push(format!("round {round}: {other:?}")),
                Err(e) => failures.push(format!("round {round}: panicked: {e:?}")),
            }
        }
        assert!(
            failures.is_empty(),
            "the next checkout after a call dropped during a panic: {failures:?}"
        );
    }
}
