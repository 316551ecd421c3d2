//! Faults, each a test. The process is SIGKILLed in the middle of the body
//! (every backend), the connection is dropped in the middle of the body
//! (PostgreSQL, MySQL), the database restarts between two calls
//! (PostgreSQL), the SQLite file is read-only or full. Each ends in a typed
//! error or a clean retry; none leaves an orphan record or a half-stored
//! call.
//!
//! The SIGKILL tests run this test binary again as a child process that runs
//! only [`sigkill_child_entry_point`], told by environment variables which
//! database to use. The child says on stdout when it is inside the body,
//! and the parent kills it there.
//!
//! Every test locks [`SERIAL`] first: the PostgreSQL restart drops every
//! connection to the server, so no other test of this binary may run at the
//! same time.
#![cfg(unix)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel_idempotent::{Error, idempotent};

use common::{AppError, Backend, NewPayment, Payment, TestConn};

/// Taken by every test: see the module documentation.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    // A failed test poisons the lock; the others still run, one at a time.
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long a test waits for something it polls before it fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// What the body does between its insert and its return.
type Fault<'a, C> = &'a mut dyn FnMut(&mut C) -> Result<(), AppError>;

/// The function under test: one payment per key, and a fault injected after
/// the payment's insert.
#[idempotent(key = key, name = "faults.pay", skip(fault))]
fn pay<C: TestConn>(
    conn: &mut C,
    key: &str,
    req: &NewPayment,
    fault: Fault<'_, C>,
) -> Result<Payment, AppError> {
    let id = conn.insert_payment(req.amount)?;
    fault(conn)?;
    Ok(Payment {
        id,
        amount: req.amount,
    })
}

/// `pay` without a fault.
fn pay_ok<C: TestConn>(conn: &mut C, key: &str, amount: i64) -> Result<Payment, AppError> {
    pay(conn, key, &NewPayment::eur(amount), &mut |_| Ok(()))
}

/// `pay` whose body, if it ran, would fail: only a replay succeeds.
fn replay_only<C: TestConn>(conn: &mut C, key: &str, amount: i64) -> Result<Payment, AppError> {
    pay(conn, key, &NewPayment::eur(amount), &mut |_| {
        Err(AppError::Declined)
    })
}

/// A payment and a receipt stored with it (and replayed).
#[cfg(feature = "sqlite")]
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Receipt {
    payment: Payment,
    text: String,
}

/// A payment whose stored result is `receipt_len` bytes of text.
#[cfg(feature = "sqlite")]
#[idempotent(key = key, name = "faults.pay_with_receipt")]
fn pay_with_receipt<C: TestConn>(
    conn: &mut C,
    key: &str,
    req: &NewPayment,
    receipt_len: usize,
) -> Result<Receipt, AppError> {
    let id = conn.insert_payment(req.amount)?;
    Ok(Receipt {
        payment: Payment {
            id,
            amount: req.amount,
        },
        text: "r".repeat(receipt_len),
    })
}

/// Everything a fault must leave as it was.
#[cfg(feature = "sqlite")]
#[derive(Debug, PartialEq)]
struct Contents {
    records: Vec<diesel_idempotent::IdempotencyRecord>,
    payments: i64,
}

#[cfg(feature = "sqlite")]
fn contents(conn: &mut SqliteConnection) -> Contents {
    use diesel_idempotent::idempotency_records as r;
    Contents {
        records: r::table
            .select(diesel_idempotent::IdempotencyRecord::as_select())
            .order((r::namespace, r::scope, r::key))
            .load(conn)
            .expect("the records"),
        payments: conn.count_payments().expect("count payments"),
    }
}

/// Whether `err` is the library's or the body's database error: what a call
/// that lost its database must return.
fn is_database_error(err: &AppError) -> bool {
    matches!(
        err,
        AppError::Idempotency(Error::Database(_)) | AppError::Db(_)
    )
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
fn env_var(var: &str) -> String {
    std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set: run ./scripts/test.sh, which sets it"))
}

/// A backend whose test database another process can open.
trait Reachable: Backend {
    /// Where the database of `conn` is, in a form [`Reachable::reach`] takes.
    fn locate(conn: &mut Self::Conn) -> String;
    /// A connection to the database at `location`.
    fn reach(location: &str) -> Self::Conn;
    /// Makes a lock left behind by a dead client an error on `conn` instead
    /// of a wait.
    fn fail_fast_on_locks(conn: &mut Self::Conn);
}

/// A backend on which one connection can end another's session.
#[cfg(any(feature = "postgres", feature = "mysql"))]
trait Killable: Reachable {
    /// Ends the session `id` from `admin` and returns once it is gone.
    fn kill_session(admin: &mut Self::Conn, id: i64) -> QueryResult<()>;
}

/// Polls `sessions_left` until it reports none.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn wait_until_gone(
    what: &str,
    mut sessions_left: impl FnMut() -> QueryResult<i64>,
) -> QueryResult<()> {
    let deadline = Instant::now() + PATIENCE;
    while sessions_left()? > 0 {
        assert!(Instant::now() < deadline, "{what} is still there");
        std::thread::yield_now();
    }
    Ok(())
}

#[cfg(feature = "sqlite")]
impl Reachable for common::Sqlite {
    fn locate(conn: &mut SqliteConnection) -> String {
        diesel::sql_query("SELECT file AS name FROM pragma_database_list WHERE name = 'main'")
            .get_result::<Name>(conn)
            .expect("the database file")
            .name
    }

    fn reach(location: &str) -> SqliteConnection {
        let mut conn = SqliteConnection::establish(location).expect("open SQLite");
        diesel::sql_query("PRAGMA busy_timeout = 60000")
            .execute(&mut conn)
            .expect("busy timeout");
        conn
    }

    fn fail_fast_on_locks(conn: &mut SqliteConnection) {
        diesel::sql_query("PRAGMA busy_timeout = 0")
            .execute(conn)
            .expect("no busy timeout");
    }
}

#[cfg(feature = "postgres")]
impl Reachable for common::Postgres {
    fn locate(conn: &mut PgConnection) -> String {
        let name = diesel::sql_query("SELECT current_database() AS name")
            .get_result::<Name>(conn)
            .expect("current_database()")
            .name;
        common::database_url(&env_var(common::PG_URL_VAR), &name)
    }

    fn reach(location: &str) -> PgConnection {
        PgConnection::establish(location).expect("connect to the test database")
    }

    fn fail_fast_on_locks(conn: &mut PgConnection) {
        diesel::sql_query("SET lock_timeout = '5s'")
            .execute(conn)
            .expect("lock_timeout");
    }
}

#[cfg(feature = "postgres")]
impl Killable for common::Postgres {
    fn kill_session(admin: &mut PgConnection, id: i64) -> QueryResult<()> {
        diesel::sql_query("SELECT COUNT(pg_terminate_backend($1::int))::bigint AS n")
            .bind::<BigInt, _>(id)
            .execute(admin)?;
        wait_until_gone("the terminated backend", || {
            diesel::sql_query("SELECT COUNT(*)::bigint AS n FROM pg_stat_activity WHERE pid = $1")
                .bind::<BigInt, _>(id)
                .get_result::<Count>(admin)
                .map(|row| row.n)
        })
    }
}

#[cfg(feature = "mysql")]
impl Reachable for common::Mysql {
    fn locate(conn: &mut MysqlConnection) -> String {
        let name = diesel::sql_query("SELECT DATABASE() AS name")
            .get_result::<Name>(conn)
            .expect("DATABASE()")
            .name;
        common::database_url(&env_var(common::MYSQL_URL_VAR), &name)
    }

    fn reach(location: &str) -> MysqlConnection {
        MysqlConnection::establish(location).expect("connect to the test database")
    }

    fn fail_fast_on_locks(conn: &mut MysqlConnection) {
        diesel::sql_query("SET SESSION innodb_lock_wait_timeout = 5")
            .execute(conn)
            .expect("innodb_lock_wait_timeout");
    }
}

#[cfg(feature = "mysql")]
impl Killable for common::Mysql {
    fn kill_session(admin: &mut MysqlConnection, id: i64) -> QueryResult<()> {
        diesel::sql_query(format!("KILL CONNECTION {id}")).execute(admin)?;
        wait_until_gone("the killed session", || {
            diesel::sql_query(
                "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST WHERE ID = ?",
            )
            .bind::<BigInt, _>(id)
            .get_result::<Count>(admin)
            .map(|row| row.n)
        })
    }
}

// ---------------------------------------------------------------------------
// The process is SIGKILLed in the middle of the body.

const CHILD_ENTRY_POINT: &str = "sigkill_child_entry_point";
const CHILD_BACKEND: &str = "DIESEL_IDEMPOTENT_FAULTS_CHILD_BACKEND";
const CHILD_DATABASE: &str = "DIESEL_IDEMPOTENT_FAULTS_CHILD_DATABASE";
const CHILD_KEY: &str = "DIESEL_IDEMPOTENT_FAULTS_CHILD_KEY";
/// The line the child prints once the body's insert is done.
const IN_BODY: &str = "faults child: inside the body, the payment is inserted";
const SIGKILL: i32 = 9;

/// The child process of the SIGKILL tests. Run by itself (without the
/// environment variables they set) it does nothing.
#[test]
#[ignore = "the SIGKILL tests run it in a child process (--ignored --exact); it does nothing by itself"]
fn sigkill_child_entry_point() {
    let Ok(backend) = std::env::var(CHILD_BACKEND) else {
        println!("not started by a SIGKILL test ({CHILD_BACKEND} is unset): nothing to do");
        return;
    };
    let location = std::env::var(CHILD_DATABASE).expect("the child's database");
    let key = std::env::var(CHILD_KEY).expect("the child's key");
    match backend.as_str() {
        #[cfg(feature = "sqlite")]
        "sqlite" => hang_in_body::<common::Sqlite>(&location, &key),
        #[cfg(feature = "postgres")]
        "postgres" => hang_in_body::<common::Postgres>(&location, &key),
        #[cfg(feature = "mysql")]
        "mysql" => hang_in_body::<common::Mysql>(&location, &key),
        other => panic!("{CHILD_BACKEND}={other:?} names no backend built into this binary"),
    }
}

/// The child: calls `pay`, whose body announces itself and waits to be killed.
fn hang_in_body<B: Reachable>(location: &str, key: &str) {
    let mut conn = B::reach(location);
    let result = pay(&mut conn, key, &NewPayment::eur(700), &mut |_| {
        // Straight to the process's stdout: the test harness captures
        // `println!`, and the line may follow the harness's own output.
        let mut out = std::io::stdout().lock();
        writeln!(out, "\n{IN_BODY}").expect("write to stdout");
        out.flush().expect("flush stdout");
        // Blocks until the parent kills this process. End of input means
        // the parent went away first: fail, so that nothing commits.
        let mut rest = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut rest);
        Err(AppError::Declined)
    });
    panic!(
        "the parent should have killed this process inside the body; the call ended: {result:?}"
    );
}

/// A running child; killed when dropped, so a failing test leaves none.
struct Child {
    process: std::process::Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Child {
    fn spawn(backend: &str, location: &str, key: &str) -> Child {
        let exe = std::env::current_exe().expect("the test binary");
        let mut process = Command::new(exe)
            .args([
                CHILD_ENTRY_POINT,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_BACKEND, backend)
            .env(CHILD_DATABASE, location)
            .env(CHILD_KEY, key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the child test process");
        let stdout = process.stdout.take().expect("the child's stdout");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Child {
            process,
            lines,
            seen: Vec::new(),
        }
    }

    /// Returns once the child printed `line`; fails with its output if it
    /// ends or takes longer than [`PATIENCE`].
    fn wait_for_line(&mut self, line: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(got) if got == line => return,
                Ok(got) => self.seen.push(got),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.fail(&format!("did not print {line:?} within {PATIENCE:?}"))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.fail(&format!("ended without printing {line:?}"))
                }
            }
        }
    }

    /// Sends SIGKILL and reaps the child.
    fn kill(&mut self) -> ExitStatus {
        self.process.kill().expect("SIGKILL the child");
        self.process.wait().expect("reap the child")
    }

    fn fail(&mut self, what: &str) -> ! {
        let status = self.kill();
        let mut stderr = String::new();
        if let Some(mut err) = self.process.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        panic!(
            "the child {what} ({status})\n--- stdout\n{}\n--- stderr\n{stderr}",
            self.seen.join("\n")
        );
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A process killed inside the body leaves no record and no effect, and the
/// retry of its key runs the body at once.
fn sigkill_mid_body<B: Reachable>() {
    let _serial = serial();
    let db = B::fresh();
    let location = B::locate(&mut db.connect());
    let key = "sigkill-1";

    let mut child = Child::spawn(B::NAME, &location, key);
    child.wait_for_line(IN_BODY);
    let status = child.kill();
    assert_eq!(
        status.signal(),
        Some(SIGKILL),
        "the child died of SIGKILL: {status}"
    );

    let mut conn = db.connect();
    B::fail_fast_on_locks(&mut conn);
    assert_eq!(conn.count_records().unwrap(), 0, "no orphan record");
    assert_eq!(
        conn.count_payments().unwrap(),
        0,
        "the killed body's insert rolled back"
    );
    let started = Instant::now();
    let payment = pay_ok(&mut conn, key, 700).expect("the retry runs the body at once");
    println!(
        "{}: retry after SIGKILL took {:?}",
        B::NAME,
        started.elapsed()
    );
    assert_eq!(payment.amount, 700);
    assert_eq!(conn.count_payments().unwrap(), 1, "the retry ran the body");
    assert_eq!(conn.count_records().unwrap(), 1);
    assert_eq!(replay_only(&mut conn, key, 700).unwrap(), payment);
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite_sigkill_mid_body_leaves_no_record_and_the_retry_runs() {
    sigkill_mid_body::<common::Sqlite>();
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_sigkill_mid_body_leaves_no_record_and_the_retry_runs() {
    sigkill_mid_body::<common::Postgres>();
}

#[cfg(feature = "mysql")]
#[test]
fn mysql_sigkill_mid_body_leaves_no_record_and_the_retry_runs() {
    sigkill_mid_body::<common::Mysql>();
}

// ---------------------------------------------------------------------------
// The connection is dropped in the middle of the body.

/// The faults a diesel-async connection meets as well, written once as async
/// code; `blocking_faults` is the same for Diesel's blocking connections.
#[cfg(any(feature = "postgres", feature = "mysql"))]
#[dual::blocking(mod = blocking_faults)]
mod async_faults {
    use super::{Killable, is_database_error};
    use crate::common::{AppError, AsyncSuiteBackend, AsyncTestConn, NewPayment, Payment};
    use diesel_idempotent::{Error, idempotent};

    /// What the body of [`pay`] does after its insert.
    pub enum Then<'a> {
        /// Returns the payment.
        Pay,
        /// Fails: only a replay succeeds.
        Decline,
        /// Hands its session's id to the closure (which ends the session
        /// from another connection), then returns the payment or, with
        /// `then_statement`, first sends one more statement.
        EndSession {
            end: &'a mut dyn FnMut(i64) -> diesel::QueryResult<()>,
            then_statement: bool,
        },
    }

    /// The function under test: one payment per key.
    #[idempotent(key = key, name = "faults.pay", skip(then))]
    pub async fn pay<C: AsyncTestConn>(
        conn: &mut C,
        key: &str,
        req: &NewPayment,
        then: Then<'_>,
    ) -> Result<Payment, AppError> {
        let id = conn.insert_payment(req.amount).await?;
        match then {
            Then::Pay => {}
            Then::Decline => return Err(AppError::Declined),
            Then::EndSession {
                end,
                then_statement,
            } => {
                end(conn.session_id().await?)?;
                if then_statement {
                    conn.insert_payment(req.amount + 1).await?;
                }
            }
        }
        Ok(Payment {
            id,
            amount: req.amount,
        })
    }

    /// A call whose session the server ended inside the body returns a
    /// typed error and stores nothing, whether the body returns `Ok` after
    /// that (the result cannot be stored) or runs another statement (which
    /// fails).
    #[allow(
        clippy::await_holding_lock,
        reason = "the lock keeps the tests of this binary apart for the whole test"
    )]
    pub async fn connection_dropped_mid_body<B: AsyncSuiteBackend + Killable>() {
        let _serial = super::serial();
        let db = B::fresh();
        let mut admin = db.connect();
        for (key, then_statement) in [("dropped-then-ok", false), ("dropped-then-insert", true)] {
            let mut conn = db.connect_async().await;
            let mut ended = None;
            let mut end = |id: i64| {
                ended = Some(id);
                B::kill_session(&mut admin, id)
            };
            let result = pay(
                &mut conn,
                key,
                &NewPayment::eur(300),
                Then::EndSession {
                    end: &mut end,
                    then_statement,
                },
            )
            .await;
            assert!(ended.is_some(), "{key}: the body ended its own session");
            let err = result.expect_err("a call whose connection died cannot succeed");
            println!(
                "{}: {key}: {err:?} (retryable: {:?})",
                B::NAME,
                err.idempotency().map(Error::is_retryable)
            );
            assert!(is_database_error(&err), "{key}: a typed error: {err:?}");
            let mut check = db.connect_async().await;
            assert_eq!(check.count_records().await.unwrap(), 0, "{key}: no record");
            assert_eq!(
                check.count_payments().await.unwrap(),
                0,
                "{key}: no payment"
            );
        }
        // Nothing lingers: the retries run their bodies at once (a lock left
        // behind would fail them).
        let mut conn = db.connect_async().await;
        conn.short_lock_waits().await.unwrap();
        for key in ["dropped-then-ok", "dropped-then-insert"] {
            pay(&mut conn, key, &NewPayment::eur(300), Then::Pay)
                .await
                .expect("retry");
        }
        assert_eq!(conn.count_payments().await.unwrap(), 2);
        assert_eq!(conn.count_records().await.unwrap(), 2);
    }

    /// A connection whose session the server ended between two calls (as
    /// an operator's `pg_terminate_backend` or `KILL` does): the call on it
    /// is a typed, retryable error that stores nothing; on a new
    /// connection the first call's record replays and the failed key runs.
    #[allow(
        clippy::await_holding_lock,
        reason = "the lock keeps the tests of this binary apart for the whole test"
    )]
    pub async fn session_ended_between_two_calls_is_a_typed_error_then_success<
        B: AsyncSuiteBackend + Killable,
    >() {
        let _serial = super::serial();
        let db = B::fresh();
        let mut admin = db.connect();
        let mut conn = db.connect_async().await;
        let first = pay(&mut conn, "before", &NewPayment::eur(100), Then::Pay)
            .await
            .expect("first call");
        let session = conn.session_id().await.expect("the session");
        B::kill_session(&mut admin, session).expect("end the session");

        let err = pay(&mut conn, "after", &NewPayment::eur(200), Then::Pay)
            .await
            .expect_err("the ended session takes no call");
        println!(
            "{}: call on the ended session: {err:?} (retryable: {:?})",
            B::NAME,
            err.idempotency().map(Error::is_retryable)
        );
        assert!(
            err.idempotency().is_some_and(Error::is_retryable),
            "a lost connection is a retryable typed error: {err:?}"
        );

        let mut conn = db.connect_async().await;
        let replayed = pay(&mut conn, "before", &NewPayment::eur(100), Then::Decline)
            .await
            .expect("the first call's record replays");
        assert_eq!(replayed, first);
        let second = pay(&mut conn, "after", &NewPayment::eur(200), Then::Pay)
            .await
            .expect("the failed key runs");
        assert_eq!(second.amount, 200);
        assert_eq!(conn.count_payments().await.unwrap(), 2);
        assert_eq!(conn.count_records().await.unwrap(), 2);
    }

    /// The call after a restart fails on the old connection with a typed,
    /// retryable error; on a new connection the first call's record
    /// (committed before the restart) replays and a new key runs.
    #[cfg(feature = "postgres")]
    #[allow(
        clippy::await_holding_lock,
        reason = "the lock keeps the tests of this binary apart for the whole test"
    )]
    pub async fn restart_between_two_calls_is_a_typed_error_then_success<B: AsyncSuiteBackend>() {
        let _serial = super::serial();
        let restart = std::env::var(super::PG_RESTART_VAR).unwrap_or_else(|_| {
            panic!(
                "{} is not set: this test restarts the PostgreSQL server and needs a shell \
                 command that does it and returns once the server accepts connections again; \
                 ./scripts/test.sh exports one for the server it starts",
                super::PG_RESTART_VAR
            )
        });
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let first = pay(
            &mut conn,
            "before-restart",
            &NewPayment::eur(100),
            Then::Pay,
        )
        .await
        .expect("first call");

        super::restart(&restart);

        let err = pay(&mut conn, "after-restart", &NewPayment::eur(200), Then::Pay)
            .await
            .expect_err("the old connection did not survive the restart");
        println!(
            "{}: call on the old connection: {err:?} (retryable: {:?})",
            B::NAME,
            err.idempotency().map(Error::is_retryable)
        );
        assert!(
            err.idempotency().is_some_and(Error::is_retryable),
            "a lost connection is a retryable typed error: {err:?}"
        );

        let mut conn = db.connect_async().await;
        let replayed = pay(
            &mut conn,
            "before-restart",
            &NewPayment::eur(100),
            Then::Decline,
        )
        .await
        .expect("the record survived the restart");
        assert_eq!(replayed, first);
        let second = pay(&mut conn, "after-restart", &NewPayment::eur(200), Then::Pay)
            .await
            .expect("a new key runs");
        assert_eq!(second.amount, 200);
        assert_eq!(conn.count_payments().await.unwrap(), 2);
        assert_eq!(conn.count_records().await.unwrap(), 2);
    }
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_connection_dropped_mid_body_is_a_typed_error_and_stores_nothing() {
    blocking_faults::connection_dropped_mid_body::<common::Postgres>();
}

#[cfg(feature = "mysql")]
#[test]
fn mysql_connection_dropped_mid_body_is_a_typed_error_and_stores_nothing() {
    blocking_faults::connection_dropped_mid_body::<common::Mysql>();
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_session_ended_between_two_calls_is_a_typed_error_then_success() {
    blocking_faults::session_ended_between_two_calls_is_a_typed_error_then_success::<
        common::Postgres,
    >();
}

#[cfg(feature = "mysql")]
#[test]
fn mysql_session_ended_between_two_calls_is_a_typed_error_then_success() {
    blocking_faults::session_ended_between_two_calls_is_a_typed_error_then_success::<common::Mysql>(
    );
}

// ---------------------------------------------------------------------------
// The database restarts between two calls.

/// A shell command that restarts the PostgreSQL server and returns once it
/// accepts connections again (`scripts/test.sh` exports it).
#[cfg(feature = "postgres")]
const PG_RESTART_VAR: &str = "DIESEL_IDEMPOTENT_PG_RESTART";

/// Runs the restart command; returns once the server accepts connections
/// again.
#[cfg(feature = "postgres")]
fn restart(command: &str) {
    let started = Instant::now();
    let status = Command::new("sh")
        .args(["-c", command])
        .stdout(Stdio::null())
        .status()
        .expect("run the restart command");
    assert!(status.success(), "{PG_RESTART_VAR} failed: {status}");
    println!("postgres: restart took {:?}", started.elapsed());
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_restart_between_two_calls_is_a_typed_error_then_success() {
    blocking_faults::restart_between_two_calls_is_a_typed_error_then_success::<common::Postgres>();
}

/// The same faults on diesel-async connections.
#[cfg(feature = "async")]
mod nonblocking {
    #[cfg(feature = "postgres")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_connection_dropped_mid_body_is_a_typed_error_and_stores_nothing() {
        super::async_faults::connection_dropped_mid_body::<crate::common::Postgres>().await;
    }

    #[cfg(feature = "mysql")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn mysql_connection_dropped_mid_body_is_a_typed_error_and_stores_nothing() {
        super::async_faults::connection_dropped_mid_body::<crate::common::Mysql>().await;
    }

    #[cfg(feature = "postgres")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_session_ended_between_two_calls_is_a_typed_error_then_success() {
        super::async_faults::session_ended_between_two_calls_is_a_typed_error_then_success::<
            crate::common::Postgres,
        >()
        .await;
    }

    #[cfg(feature = "mysql")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn mysql_session_ended_between_two_calls_is_a_typed_error_then_success() {
        super::async_faults::session_ended_between_two_calls_is_a_typed_error_then_success::<
            crate::common::Mysql,
        >()
        .await;
    }

    #[cfg(feature = "postgres")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_restart_between_two_calls_is_a_typed_error_then_success() {
        super::async_faults::restart_between_two_calls_is_a_typed_error_then_success::<
            crate::common::Postgres,
        >()
        .await;
    }
}

// ---------------------------------------------------------------------------
// The SQLite file is read-only or full.

/// On a read-only connection a call returns a typed error, never panics, and
/// the database stays as it was.
#[cfg(feature = "sqlite")]
#[test]
fn sqlite_read_only_database_is_a_typed_error() {
    let _serial = serial();
    let db = common::Sqlite::fresh();
    let mut rw = db.connect();
    let first = pay_ok(&mut rw, "before", 100).expect("first call");
    let before = contents(&mut rw);
    let path = <common::Sqlite as Reachable>::locate(&mut rw);

    let mut ro = SqliteConnection::establish(&format!("file:{path}?mode=ro"))
        .expect("open the database read-only");
    assert_eq!(ro.count_payments().unwrap(), 1, "it reads");
    for key in ["while-read-only", "before"] {
        let err = pay_ok(&mut ro, key, 100).expect_err("a read-only database takes no call");
        println!("sqlite read-only: {key}: {err}");
        assert!(
            matches!(err, AppError::Idempotency(Error::Database(_))),
            "{key}: a typed error: {err:?}"
        );
    }
    assert_eq!(contents(&mut rw), before, "nothing changed");
    assert_eq!(replay_only(&mut rw, "before", 100).unwrap(), first);
}

#[cfg(feature = "sqlite")]
fn page_count(conn: &mut SqliteConnection) -> i64 {
    diesel::sql_query("SELECT page_count AS n FROM pragma_page_count()")
        .get_result::<Count>(conn)
        .expect("page_count")
        .n
}

/// When the database is full, a body whose write does not fit and a result
/// that does not fit are typed database errors; neither stores anything, and the connection works again once there is
/// room.
#[cfg(feature = "sqlite")]
#[test]
fn sqlite_full_database_is_a_typed_error_and_stores_nothing() {
    let _serial = serial();
    let db = common::Sqlite::fresh();
    let mut conn = db.connect();
    diesel::sql_query("CREATE TABLE attachments (body BLOB NOT NULL)")
        .execute(&mut conn)
        .expect("attachments table");
    pay_ok(&mut conn, "before", 100).expect("first call");
    let before = contents(&mut conn);

    // A few pages of room for the claim and the payment, not for 4 MB.
    let limit = page_count(&mut conn) + 8;
    diesel::sql_query(format!("PRAGMA max_page_count = {limit}"))
        .execute(&mut conn)
        .expect("max_page_count");

    let err = pay(&mut conn, "big-body", &NewPayment::eur(200), &mut |conn| {
        diesel::sql_query("INSERT INTO attachments (body) VALUES (randomblob(4000000))")
            .execute(conn)?;
        Ok(())
    })
    .expect_err("a body whose write does not fit fails");
    // SQLite may end the whole transaction on SQLITE_FULL; Diesel's ROLLBACK
    // then fails and its error ("no transaction is active") is returned in
    // place of the body's.
    println!("sqlite full, the body's write: {err:?}");
    assert!(is_database_error(&err), "a typed error: {err:?}");
    assert_eq!(contents(&mut conn), before, "nothing stored");

    let err = pay_with_receipt(&mut conn, "big-result", &NewPayment::eur(300), 4_000_000)
        .expect_err("a result that does not fit fails");
    println!("sqlite full, the stored result: {err:?}");
    assert!(
        matches!(&err, AppError::Idempotency(Error::Database(_))),
        "a typed error: {err:?}"
    );
    assert_eq!(contents(&mut conn), before, "nothing stored");

    // With room again, the same connection runs both calls.
    diesel::sql_query("PRAGMA max_page_count = 1073741823")
        .execute(&mut conn)
        .expect("max_page_count");
    pay_ok(&mut conn, "big-body", 200).expect("retry with room");
    let receipt = pay_with_receipt(&mut conn, "big-result", &NewPayment::eur(300), 4_000_000)
        .expect("retry with room");
    assert_eq!(receipt.text.len(), 4_000_000);
    assert_eq!(conn.count_payments().unwrap(), 3);
    assert_eq!(conn.count_records().unwrap(), 3);
}

// ---------------------------------------------------------------------------

#[cfg(not(feature = "postgres"))]
#[test]
fn postgres_faults_skipped_feature_disabled() {
    println!("SKIPPED: postgres faults (build with --features postgres or run ./scripts/test.sh)");
}

#[cfg(not(feature = "mysql"))]
#[test]
fn mysql_faults_skipped_feature_disabled() {
    println!("SKIPPED: mysql faults (build with --features mysql or run ./scripts/test.sh)");
}
