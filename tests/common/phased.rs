//! Phased calls (`diesel_idempotent::phased`) against the real databases
//! and a real HTTP processor ([`super::processor`]): a payment in three
//! phases (claim and insert the payment; charge it at the processor and
//! store the charge; write the receipt and finish), crashed at every phase
//! boundary, failed by the processor, raced by concurrent callers and
//! retries, and stalled past its lease while another call takes it over.
//!
//! The flow and the tests every flavour runs are written once, as async
//! code, in [`nonblocking`]; `#[dual::blocking]` derives [`blocking`]. The
//! tests with threads are blocking only, below.

use std::sync::Mutex;
use std::time::Duration;

use diesel::QueryResult;
use serde::{Deserialize, Serialize};

use super::processor::ProcessorError;

/// The payment flow's namespace.
pub const NAMESPACE: &str = "phased.pay";

/// The lease of every test call.
pub const LEASE: Duration = Duration::from_secs(60);

/// Past the lease: what the clock moves by to let a lease run out.
pub const PAST_LEASE: Duration = Duration::from_secs(61);

/// The recovery points of the payment flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Point {
    /// The payment row is written.
    Started { payment: String },
    /// The processor charged it, and the charge is stored.
    Charged { payment: String, charge: String },
}

/// The flow's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub payment: String,
    pub charge: String,
    pub receipt: String,
}

/// The flow's error.
#[derive(Debug, thiserror::Error)]
pub enum PayError {
    #[error(transparent)]
    Idempotency(#[from] diesel_idempotent::Error),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    #[error(transparent)]
    Processor(#[from] ProcessorError),
}

impl PayError {
    pub fn idempotency(&self) -> Option<&diesel_idempotent::Error> {
        match self {
            PayError::Idempotency(e) => Some(e),
            _ => None,
        }
    }
}

/// Where the flow panics, as a process that dies there would stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    Never,
    /// Phase 1, after its writes, before its commit.
    BeforeStartCommit,
    /// Phase 1 committed; phase 2 has done nothing yet.
    AfterStartCommit,
    /// Phase 2, right after the processor charged, before any write.
    AfterCharge,
    /// Phase 2, after its writes, before its commit.
    BeforeChargeCommit,
    /// Phase 2 committed; phase 3 has done nothing yet.
    AfterChargeCommit,
    /// Phase 3, after its writes, before its commit.
    BeforeFinishCommit,
    /// The last phase committed; the answer never reached the caller.
    AfterFinishCommit,
}

impl Crash {
    /// Every boundary, in the flow's order.
    pub const ALL: [Crash; 7] = [
        Crash::BeforeStartCommit,
        Crash::AfterStartCommit,
        Crash::AfterCharge,
        Crash::BeforeChargeCommit,
        Crash::AfterChargeCommit,
        Crash::BeforeFinishCommit,
        Crash::AfterFinishCommit,
    ];

    /// Panics if this is the crash at `here`.
    pub fn at(self, here: Crash) {
        if self == here {
            panic!("injected crash at {here:?}");
        }
    }

    /// The phase a retry starts with after this crash and the lease's end
    /// (`None`: it replays).
    pub fn resumes_at(self) -> Option<&'static str> {
        match self {
            Crash::Never | Crash::AfterFinishCommit => None,
            Crash::BeforeStartCommit => Some("start"),
            Crash::AfterStartCommit | Crash::AfterCharge | Crash::BeforeChargeCommit => {
                Some("charge")
            }
            Crash::AfterChargeCommit | Crash::BeforeFinishCommit => Some("receipt"),
        }
    }
}

/// The phases a run entered: (phase, whether the run had resumed).
#[derive(Debug, Default)]
pub struct Trace(Mutex<Vec<(&'static str, bool)>>);

impl Trace {
    pub fn enter(&self, point: Option<&Point>, resumed: bool) {
        let phase = match point {
            None => "start",
            Some(Point::Started { .. }) => "charge",
            Some(Point::Charged { .. }) => "receipt",
        };
        self.0.lock().unwrap().push((phase, resumed));
    }

    pub fn take(&self) -> Vec<(&'static str, bool)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// The key the processor must see for the payment under `key`.
pub fn external_key(key: &str) -> String {
    format!("{NAMESPACE}//{key}/charge")
}

diesel::table! {
    phased_payments (payment_key) {
        payment_key -> Text,
        amount -> BigInt,
        charge_id -> Nullable<Text>,
        receipt -> Nullable<Text>,
    }
}

diesel::table! {
    /// One row per committed phase of a payment: a phase that committed
    /// twice shows as two rows.
    phased_writes (payment_key, phase) {
        payment_key -> Text,
        phase -> Text,
    }
}

const CREATE_PAYMENTS: &str = "CREATE TABLE phased_payments (payment_key VARCHAR(255) NOT NULL \
     PRIMARY KEY, amount BIGINT NOT NULL, charge_id VARCHAR(255), receipt VARCHAR(255))";
const CREATE_WRITES: &str =
    "CREATE TABLE phased_writes (payment_key VARCHAR(255) NOT NULL, phase VARCHAR(32) NOT NULL)";

/// A payment row: amount, charge, receipt.
pub type PaymentRow = (i64, Option<String>, Option<String>);

/// The flow's statements on a blocking connection, and the checks'.
pub trait PhasedTestConn: diesel_idempotent::IdempotentConnection + Send {
    fn create_phased_tables(&mut self) -> QueryResult<()>;
    fn insert_payment_row(&mut self, key: &str, amount: i64) -> QueryResult<()>;
    fn set_charge(&mut self, key: &str, charge: &str) -> QueryResult<()>;
    fn set_receipt(&mut self, key: &str, receipt: &str) -> QueryResult<()>;
    fn log_write(&mut self, key: &str, phase: &str) -> QueryResult<()>;
    fn count_writes(&mut self, key: &str) -> QueryResult<i64>;
    fn payment_row(&mut self, key: &str) -> QueryResult<Option<PaymentRow>>;
    /// How many sessions of this database wait on a lock held by another
    /// (PostgreSQL), or run a phased call's claim `INSERT` (MySQL: one
    /// that is still running waits on another's row); `None` on SQLite,
    /// which cannot tell.
    fn phased_lock_waiters(&mut self) -> QueryResult<Option<i64>>;
}

/// The flow's statements on a diesel-async connection.
#[cfg(feature = "async")]
pub trait AsyncPhasedTestConn: diesel_idempotent::AsyncIdempotentConnection + 'static {
    fn insert_payment_row(
        &mut self,
        key: &str,
        amount: i64,
    ) -> impl Future<Output = QueryResult<()>> + Send;
    fn set_charge(
        &mut self,
        key: &str,
        charge: &str,
    ) -> impl Future<Output = QueryResult<()>> + Send;
    fn set_receipt(
        &mut self,
        key: &str,
        receipt: &str,
    ) -> impl Future<Output = QueryResult<()>> + Send;
    fn log_write(&mut self, key: &str, phase: &str)
    -> impl Future<Output = QueryResult<()>> + Send;
}

/// The flow's writes, once for both kinds of connection.
macro_rules! flow_statements {
    ([$($async:ident)?] [$($await:tt)*] [$($dsl:tt)*]) => {
        $($async)? fn insert_payment_row(&mut self, key: &str, amount: i64) -> QueryResult<()> {
            use $($dsl)* as _;
            use diesel::ExpressionMethods as _;
            diesel::insert_into(phased_payments::table)
                .values((
                    phased_payments::payment_key.eq(key),
                    phased_payments::amount.eq(amount),
                ))
                .execute(self)
                $($await)*
                .map(drop)
        }

        $($async)? fn set_charge(&mut self, key: &str, charge: &str) -> QueryResult<()> {
            use $($dsl)* as _;
            use diesel::{ExpressionMethods as _, QueryDsl as _};
            diesel::update(phased_payments::table.filter(phased_payments::payment_key.eq(key)))
                .set(phased_payments::charge_id.eq(charge))
                .execute(self)
                $($await)*
                .map(drop)
        }

        $($async)? fn set_receipt(&mut self, key: &str, receipt: &str) -> QueryResult<()> {
            use $($dsl)* as _;
            use diesel::{ExpressionMethods as _, QueryDsl as _};
            diesel::update(phased_payments::table.filter(phased_payments::payment_key.eq(key)))
                .set(phased_payments::receipt.eq(receipt))
                .execute(self)
                $($await)*
                .map(drop)
        }

        $($async)? fn log_write(&mut self, key: &str, phase: &str) -> QueryResult<()> {
            use $($dsl)* as _;
            use diesel::ExpressionMethods as _;
            diesel::insert_into(phased_writes::table)
                .values((phased_writes::payment_key.eq(key), phased_writes::phase.eq(phase)))
                .execute(self)
                $($await)*
                .map(drop)
        }
    };
}

/// The checks' statements (blocking).
macro_rules! check_statements {
    () => {
        fn create_phased_tables(&mut self) -> QueryResult<()> {
            use diesel::RunQueryDsl as _;
            diesel::sql_query(CREATE_PAYMENTS).execute(self)?;
            diesel::sql_query(CREATE_WRITES).execute(self)?;
            Ok(())
        }

        fn count_writes(&mut self, key: &str) -> QueryResult<i64> {
            use diesel::prelude::*;
            phased_writes::table
                .filter(phased_writes::payment_key.eq(key))
                .count()
                .get_result(self)
        }

        fn payment_row(&mut self, key: &str) -> QueryResult<Option<PaymentRow>> {
            use diesel::prelude::*;
            phased_payments::table
                .filter(phased_payments::payment_key.eq(key))
                .select((
                    phased_payments::amount,
                    phased_payments::charge_id,
                    phased_payments::receipt,
                ))
                .get_result(self)
                .optional()
        }
    };
}

/// The lock waiters' count, by the query `$sql` (a `COUNT(*)`).
macro_rules! lock_waiters {
    ($sql:literal) => {
        fn phased_lock_waiters(&mut self) -> QueryResult<Option<i64>> {
            use diesel::RunQueryDsl as _;
            diesel::dsl::sql::<diesel::sql_types::BigInt>($sql)
                .get_result(self)
                .map(Some)
        }
    };
}

#[cfg(feature = "sqlite")]
impl PhasedTestConn for diesel::SqliteConnection {
    flow_statements!([] [] [diesel::RunQueryDsl]);
    check_statements!();

    fn phased_lock_waiters(&mut self) -> QueryResult<Option<i64>> {
        Ok(None)
    }
}

#[cfg(feature = "postgres")]
impl PhasedTestConn for diesel::PgConnection {
    flow_statements!([] [] [diesel::RunQueryDsl]);
    check_statements!();
    lock_waiters!(
        "SELECT COUNT(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'"
    );
}

#[cfg(feature = "mysql")]
impl PhasedTestConn for diesel::MysqlConnection {
    flow_statements!([] [] [diesel::RunQueryDsl]);
    check_statements!();
    lock_waiters!(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
         WHERE DB = DATABASE() AND INFO LIKE 'INSERT IGNORE INTO `idempotency_phased_calls`%'"
    );
}

#[cfg(all(feature = "async", feature = "sqlite"))]
impl AsyncPhasedTestConn for super::async_backends::AsyncSqlite {
    flow_statements!([async] [.await] [diesel_async::RunQueryDsl]);
}

#[cfg(all(feature = "async", feature = "postgres"))]
impl AsyncPhasedTestConn for diesel_async::AsyncPgConnection {
    flow_statements!([async] [.await] [diesel_async::RunQueryDsl]);
}

#[cfg(all(feature = "async", feature = "mysql"))]
impl AsyncPhasedTestConn for diesel_async::AsyncMysqlConnection {
    flow_statements!([async] [.await] [diesel_async::RunQueryDsl]);
}

#[dual::blocking(rename(AsyncPhasedTestConn = PhasedTestConn, charge_async = charge))]
pub mod nonblocking {
    use diesel_idempotent::phased::{self, Phase, PhasedCall, Step};
    use diesel_idempotent::{Clock, Error, ManualClock, Outcome};

    use super::{
        AsyncPhasedTestConn, Crash, LEASE, NAMESPACE, PAST_LEASE, PayError, Point, Receipt, Trace,
        external_key,
    };
    // The checks' statements on a blocking connection, in both flavours.
    #[allow(unused_imports)]
    use super::PhasedTestConn as _;
    use crate::common::processor::Processor;
    use crate::common::rt::nonblocking as rt;
    use crate::common::{AsyncSuiteBackend, clock};

    /// The payment of `amount` under `key`, in three phases, crashing at
    /// `crash`.
    pub async fn pay<C: AsyncPhasedTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        processor: &Processor,
        key: &str,
        amount: i64,
        crash: Crash,
        trace: &Trace,
    ) -> Result<Outcome<Receipt>, PayError> {
        let answer = PhasedCall::new(NAMESPACE, key)
            .request(&amount)
            .clock(clock)
            .lease(LEASE)
            .run_async(
                conn,
                async |phase: &mut Phase<'_, C, Point>| -> Result<Step<Point, Receipt>, PayError> {
                    trace.enter(phase.point(), phase.resumed());
                    match phase.point().cloned() {
                        None => {
                            phase.conn().insert_payment_row(key, amount).await?;
                            phase.conn().log_write(key, "start").await?;
                            crash.at(Crash::BeforeStartCommit);
                            Ok(Step::Next(Point::Started {
                                payment: key.to_owned(),
                            }))
                        }
                        Some(Point::Started { payment }) => {
                            crash.at(Crash::AfterStartCommit);
                            let charge = processor
                                .charge_async(&phase.external_key("charge"), amount)
                                .await?;
                            crash.at(Crash::AfterCharge);
                            phase.conn().set_charge(&payment, &charge).await?;
                            phase.conn().log_write(&payment, "charge").await?;
                            crash.at(Crash::BeforeChargeCommit);
                            Ok(Step::Next(Point::Charged { payment, charge }))
                        }
                        Some(Point::Charged { payment, charge }) => {
                            crash.at(Crash::AfterChargeCommit);
                            let receipt = format!("receipt of {payment} for {charge}");
                            phase.conn().set_receipt(&payment, &receipt).await?;
                            phase.conn().log_write(&payment, "receipt").await?;
                            crash.at(Crash::BeforeFinishCommit);
                            Ok(Step::Finish(Receipt {
                                payment,
                                charge,
                                receipt,
                            }))
                        }
                    }
                },
            )
            .await?;
        crash.at(Crash::AfterFinishCommit);
        Ok(answer)
    }

    /// A crash at each boundary: a retry while the lease is live is
    /// `InFlight`; after it, a retry resumes where the crash left the call
    /// and finishes; every later call replays the same answer. One charge
    /// per payment at the processor, always under the same derived key;
    /// each phase's rows committed once.
    pub async fn phased_crash_at_every_boundary_charges_once<B: AsyncSuiteBackend>()
    where
        B::AsyncConn: AsyncPhasedTestConn,
        B::Conn: super::PhasedTestConn,
    {
        let db = B::fresh();
        let mut check = db.connect();
        check.create_phased_tables().unwrap();
        let processor = Processor::start();
        let clock = clock();
        for (n, crash) in Crash::ALL.into_iter().enumerate() {
            let key = format!("pay-{n}");
            let amount = 100 + i64::try_from(n).unwrap();
            let keys_before = processor.keys_received().len();
            let trace = Trace::default();

            let mut conn = db.connect_async().await;
            let crashed = rt::catch_panic(|| async {
                pay(&mut conn, &clock, &processor, &key, amount, crash, &trace).await
            })
            .await;
            assert!(crashed.is_err(), "{crash:?}: the crash happened");
            drop(conn);
            trace.take();

            let record = phased::find(&mut check, NAMESPACE, "", &key).unwrap();
            match crash {
                Crash::AfterFinishCommit => {
                    let record = record.expect("the finished call");
                    assert!(record.is_finished(), "{record:?}");
                }
                _ => {
                    let record = record.expect("the committed recovery point");
                    if crash == Crash::BeforeStartCommit {
                        // The claim committed on its own; phase 1 did not.
                        assert_eq!(
                            (
                                record.recovery_point.as_str(),
                                record.point_state.as_deref(),
                                record.phases
                            ),
                            ("started", None, 0),
                            "{crash:?}: the claim stands, nothing of phase 1"
                        );
                        assert_eq!(check.count_writes(&key).unwrap(), 0);
                    }
                    assert!(
                        record.is_leased_at(clock.now()),
                        "{crash:?}: the crashed run's lease is left held: {record:?}"
                    );
                    let mut early = db.connect_async().await;
                    let refused = pay(
                        &mut early,
                        &clock,
                        &processor,
                        &key,
                        amount,
                        Crash::Never,
                        &trace,
                    )
                    .await;
                    assert!(
                        matches!(
                            refused.as_ref().map_err(PayError::idempotency),
                            Err(Some(Error::InFlight { .. }))
                        ),
                        "{crash:?}: a retry before the lease ends: {refused:?}"
                    );
                    assert_eq!(trace.take(), [], "{crash:?}: the refused retry ran nothing");
                    clock.advance(PAST_LEASE);
                }
            }

            let mut retry = db.connect_async().await;
            let done = pay(
                &mut retry,
                &clock,
                &processor,
                &key,
                amount,
                Crash::Never,
                &trace,
            )
            .await
            .unwrap_or_else(|e| panic!("{crash:?}: the retry finishes: {e:?}"));
            let ran = trace.take();
            match crash.resumes_at() {
                None => {
                    assert!(done.is_replayed(), "{crash:?}");
                    assert_eq!(ran, [], "{crash:?}: a replay runs no phase");
                }
                Some(first) => {
                    assert!(!done.is_replayed(), "{crash:?}");
                    // Every retry after a crash takes the call over, phase 1
                    // included: the crashed run's claim stands.
                    assert_eq!(
                        ran.first(),
                        Some(&(first, true)),
                        "{crash:?}: the retry starts at the last recovery point: {ran:?}"
                    );
                }
            }
            let again = pay(
                &mut retry,
                &clock,
                &processor,
                &key,
                amount,
                Crash::Never,
                &trace,
            )
            .await
            .unwrap();
            assert!(again.is_replayed());
            assert_eq!(again.value(), done.value(), "{crash:?}: the same answer");
            assert_eq!(trace.take(), []);

            let charge = &done.value().charge;
            assert_eq!(
                processor.charge_for(&external_key(&key)).as_ref(),
                Some(charge),
                "{crash:?}: the answer's charge is the processor's"
            );
            assert_eq!(
                processor.charges(),
                n + 1,
                "{crash:?}: one charge per payment"
            );
            let keys = processor.keys_received().split_off(keys_before);
            assert!(!keys.is_empty(), "{crash:?}");
            assert!(
                keys.iter().all(|k| *k == external_key(&key)),
                "{crash:?}: every attempt sent the same derived key: {keys:?}"
            );
            assert_eq!(
                check.count_writes(&key).unwrap(),
                3,
                "{crash:?}: each phase committed once"
            );
            assert_eq!(
                check.payment_row(&key).unwrap(),
                Some((
                    amount,
                    Some(charge.clone()),
                    Some(done.value().receipt.clone())
                ))
            );
        }
    }

    /// A processor failure (503) in phase 2: the phase is rolled back and
    /// the lease released, so an immediate retry resumes at phase 2 and
    /// charges once.
    pub async fn phased_processor_failure_resumes_at_once<B: AsyncSuiteBackend>()
    where
        B::AsyncConn: AsyncPhasedTestConn,
        B::Conn: super::PhasedTestConn,
    {
        let db = B::fresh();
        let mut check = db.connect();
        check.create_phased_tables().unwrap();
        let processor = Processor::start();
        let clock = clock();
        let trace = Trace::default();
        let mut conn = db.connect_async().await;

        processor.fail_next(1);
        let failed = pay(
            &mut conn,
            &clock,
            &processor,
            "p-1",
            500,
            Crash::Never,
            &trace,
        )
        .await;
        assert!(
            matches!(&failed, Err(PayError::Processor(e)) if e.status == 503),
            "{failed:?}"
        );
        assert_eq!(trace.take(), [("start", false), ("charge", false)]);
        let record = phased::find(&mut check, NAMESPACE, "", "p-1")
            .unwrap()
            .expect("phase 1 committed");
        assert_eq!(record.recovery_point, "Started");
        assert_eq!(record.phases, 1);
        assert_eq!(record.locked_until, None, "the lease was released");
        assert!(!record.is_leased_at(clock.now()));
        assert_eq!(check.count_writes("p-1").unwrap(), 1);
        assert_eq!(processor.charges(), 0);

        // No time passes: the released lease lets the retry in at once.
        let done = pay(
            &mut conn,
            &clock,
            &processor,
            "p-1",
            500,
            Crash::Never,
            &trace,
        )
        .await
        .expect("the retry resumes");
        assert!(!done.is_replayed());
        assert_eq!(trace.take(), [("charge", true), ("receipt", true)]);
        assert_eq!(processor.charges(), 1);
        assert_eq!(
            processor.keys_received(),
            [external_key("p-1"), external_key("p-1")]
        );
        assert_eq!(check.count_writes("p-1").unwrap(), 3);
        let record = phased::find(&mut check, NAMESPACE, "", "p-1")
            .unwrap()
            .unwrap();
        assert_eq!(
            (record.recovery_point.as_str(), record.phases),
            ("finished", 3)
        );
    }

    /// The same key with another request is refused; the same request
    /// replays; a call inside a transaction is refused before anything
    /// runs, and the caller's transaction goes on.
    pub async fn phased_mismatch_replay_and_transaction_rules<B: AsyncSuiteBackend>()
    where
        B::AsyncConn: AsyncPhasedTestConn,
        B::Conn: super::PhasedTestConn,
    {
        let db = B::fresh();
        let mut check = db.connect();
        check.create_phased_tables().unwrap();
        let processor = Processor::start();
        let clock = clock();
        let trace = Trace::default();
        let mut conn = db.connect_async().await;

        let first = pay(
            &mut conn,
            &clock,
            &processor,
            "m-1",
            100,
            Crash::Never,
            &trace,
        )
        .await
        .unwrap();
        assert!(!first.is_replayed());
        trace.take();

        let other = pay(
            &mut conn,
            &clock,
            &processor,
            "m-1",
            200,
            Crash::Never,
            &trace,
        )
        .await;
        assert!(
            matches!(
                other.as_ref().map_err(PayError::idempotency),
                Err(Some(Error::PayloadMismatch { .. }))
            ),
            "{other:?}"
        );
        let same = pay(
            &mut conn,
            &clock,
            &processor,
            "m-1",
            100,
            Crash::Never,
            &trace,
        )
        .await
        .unwrap();
        assert!(same.is_replayed());
        assert_eq!(same.value(), first.value());
        assert_eq!(trace.take(), [], "neither ran a phase");

        let inside = rt::transaction(&mut conn, async |conn: &mut B::AsyncConn| {
            let refused = pay(conn, &clock, &processor, "m-2", 100, Crash::Never, &trace).await;
            assert!(
                matches!(
                    refused.as_ref().map_err(PayError::idempotency),
                    Err(Some(Error::PhasedCallInTransaction { .. }))
                ),
                "{refused:?}"
            );
            conn.insert_payment_row("callers-own", 1).await?;
            Ok::<_, PayError>(())
        })
        .await;
        inside.expect("the caller's transaction commits");
        assert_eq!(trace.take(), [], "no phase ran");
        assert_eq!(
            phased::find(&mut check, NAMESPACE, "", "m-2").unwrap(),
            None
        );
        assert!(check.payment_row("callers-own").unwrap().is_some());
        assert_eq!(processor.charges(), 1);
    }
}

/// N threads on N connections call one new key at once: one runs the
/// phases, every other gets `InFlight` or the replay; one charge.
pub fn phased_concurrent_first_calls_charge_once<B: super::Backend>()
where
    B::Conn: PhasedTestConn,
{
    use diesel_idempotent::Error;
    const THREADS: usize = 6;
    let db = B::fresh();
    let mut check = db.connect();
    check.create_phased_tables().unwrap();
    let processor = super::processor::Processor::start();
    let clock = super::clock();
    let trace = Trace::default();
    let barrier = std::sync::Barrier::new(THREADS);
    let results: Vec<_> = std::thread::scope(|s| {
        let tasks: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    let mut conn = db.connect();
                    barrier.wait();
                    blocking::pay(
                        &mut conn,
                        &clock,
                        &processor,
                        "c-1",
                        100,
                        Crash::Never,
                        &trace,
                    )
                })
            })
            .collect();
        tasks.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let fresh: Vec<_> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().filter(|o| !o.is_replayed()))
        .collect();
    assert_eq!(fresh.len(), 1, "one call ran the phases: {results:?}");
    for result in &results {
        match result {
            Ok(outcome) => assert_eq!(outcome.value(), fresh[0].value()),
            Err(e) => assert!(
                matches!(e.idempotency(), Some(Error::InFlight { .. })),
                "{e:?}"
            ),
        }
    }
    assert_eq!(
        trace
            .take()
            .iter()
            .filter(|(phase, _)| *phase == "start")
            .count(),
        1,
        "only the call whose claim won entered phase 1"
    );
    assert_eq!(processor.charges(), 1);
    assert_eq!(check.count_writes("c-1").unwrap(), 3);
}

/// After a crash past the external call and the lease's end, N retries
/// race: exactly one takes the call over and finishes it; the processor
/// charged once.
pub fn phased_takeover_race_has_one_winner<B: super::Backend>()
where
    B::Conn: PhasedTestConn,
{
    use diesel_idempotent::Error;
    const THREADS: usize = 6;
    let db = B::fresh();
    let mut check = db.connect();
    check.create_phased_tables().unwrap();
    let processor = super::processor::Processor::start();
    let clock = super::clock();
    let trace = Trace::default();
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut conn = db.connect();
        blocking::pay(
            &mut conn,
            &clock,
            &processor,
            "r-1",
            100,
            Crash::AfterCharge,
            &trace,
        )
    }));
    assert!(crashed.is_err());
    assert_eq!(processor.charges(), 1, "the crashed run charged");
    trace.take();
    clock.advance(PAST_LEASE);

    let barrier = std::sync::Barrier::new(THREADS);
    let results: Vec<_> = std::thread::scope(|s| {
        let tasks: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    let mut conn = db.connect();
                    barrier.wait();
                    blocking::pay(
                        &mut conn,
                        &clock,
                        &processor,
                        "r-1",
                        100,
                        Crash::Never,
                        &trace,
                    )
                })
            })
            .collect();
        tasks.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let winners = results
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|o| !o.is_replayed()))
        .count();
    assert_eq!(winners, 1, "{results:?}");
    for result in &results {
        if let Err(e) = result {
            assert!(
                matches!(e.idempotency(), Some(Error::InFlight { .. })),
                "{e:?}"
            );
        }
    }
    let ran = trace.take();
    assert_eq!(
        ran,
        [("charge", true), ("receipt", true)],
        "one run took over and ran the rest"
    );
    assert_eq!(processor.charges(), 1, "the repeat was deduplicated");
    assert_eq!(check.count_writes("r-1").unwrap(), 3);
}

/// A holder stalls in its external call past its lease; another call
/// takes over, charges (the processor answers with the stalled holder's
/// charge: same key), commits phase 2 and crashes, so that its own lease is
/// live when the stalled holder wakes up. The holder's phase end then finds
/// its lease lost: its phase is rolled back and it gets `LeaseLost`. Once
/// the second lease ends, a retry finishes from the second call's recovery
/// point.
///
/// SQLite serializes writers, and a phase holds the database's write lock
/// from its start: there, nothing can take over while the holder runs, and
/// the other call fails fast with the database's busy error instead.
pub fn phased_zombie_holder_loses_its_lease<B: super::Backend>()
where
    B::Conn: PhasedTestConn,
{
    use super::TestConn as _;
    use diesel_idempotent::Error;
    let db = B::fresh();
    let mut check = db.connect();
    check.create_phased_tables().unwrap();
    let processor = super::processor::Processor::start();
    let clock = super::clock();
    let (trace_a, trace_b) = (Trace::default(), Trace::default());
    let mut hold = processor.hold_next();
    std::thread::scope(|s| {
        let a = s.spawn(|| {
            let mut conn = db.connect();
            blocking::pay(
                &mut conn,
                &clock,
                &processor,
                "z-1",
                100,
                Crash::Never,
                &trace_a,
            )
        });
        hold.wait_entered();
        assert_eq!(
            processor.charges(),
            1,
            "A's charge is made, its answer held"
        );
        clock.advance(PAST_LEASE);

        let mut conn = db.connect();
        conn.short_lock_waits().unwrap();
        if B::NAME == "sqlite" {
            let b = blocking::pay(
                &mut conn,
                &clock,
                &processor,
                "z-1",
                100,
                Crash::Never,
                &trace_b,
            );
            let e = b.expect_err("A holds the write lock");
            assert!(
                matches!(e.idempotency(), Some(e @ Error::Database(_)) if e.is_retryable()),
                "{e:?}"
            );
            hold.release();
            let a = a.join().unwrap().expect("A finishes: nobody took over");
            assert!(!a.is_replayed());
            assert_eq!(trace_a.take().len(), 3);
            return;
        }
        let b = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            blocking::pay(
                &mut conn,
                &clock,
                &processor,
                "z-1",
                100,
                Crash::AfterChargeCommit,
                &trace_b,
            )
        }));
        assert!(b.is_err(), "B crashed after its phase 2: {b:?}");
        assert_eq!(trace_b.take(), [("charge", true), ("receipt", true)]);
        let record = diesel_idempotent::phased::find(&mut check, NAMESPACE, "", "z-1")
            .unwrap()
            .unwrap();
        assert_eq!(record.recovery_point, "Charged");
        assert!(record.is_leased_at(diesel_idempotent::Clock::now(&clock)));

        hold.release();
        let a = a.join().unwrap();
        assert!(
            matches!(
                a.as_ref().map_err(PayError::idempotency),
                Err(Some(Error::LeaseLost { .. }))
            ),
            "{a:?}"
        );
        assert_eq!(trace_a.take(), [("start", false), ("charge", false)]);
        assert_eq!(
            check.count_writes("z-1").unwrap(),
            2,
            "A's phase 2 was rolled back; B's was kept"
        );

        clock.advance(PAST_LEASE);
        let done = blocking::pay(
            &mut conn,
            &clock,
            &processor,
            "z-1",
            100,
            Crash::Never,
            &trace_b,
        )
        .expect("a retry finishes from B's recovery point");
        assert!(!done.is_replayed());
        assert_eq!(trace_b.take(), [("receipt", true)]);
        let replay = blocking::pay(
            &mut conn,
            &clock,
            &processor,
            "z-1",
            100,
            Crash::Never,
            &trace_b,
        )
        .unwrap();
        assert!(replay.is_replayed());
        assert_eq!(replay.value(), done.value());
    });
    assert_eq!(processor.charges(), 1, "one charge in all");
    assert_eq!(
        processor
            .keys_received()
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        1
    );
    assert_eq!(
        check.count_writes("z-1").unwrap(),
        3,
        "each phase committed once"
    );
}

/// A holder stalls in its first phase (in the external call that comes
/// before the phase's writes) past its lease. A retry must not wait for
/// that phase: it takes the call over at once and runs phase 1 from the
/// start; the holder's phase end then finds its lease lost and is rolled
/// back. The retry's answer is awaited with a deadline, a bound on how
/// long it may block, never what makes the test pass.
///
/// SQLite serializes writers and a phase holds the write lock from its
/// `BEGIN`: there the takeover cannot happen while the holder runs, and the
/// retry fails fast with the database's retryable busy error.
pub fn phased_stalled_first_phase_is_taken_over<B: super::Backend>()
where
    B::Conn: PhasedTestConn,
{
    use std::sync::mpsc;

    use diesel_idempotent::phased::{self, Phase, PhasedCall, Step};
    use diesel_idempotent::{Clock as _, Error};

    use super::TestConn as _;
    use super::rt::DEADLINE;

    let db = B::fresh();
    let mut check = db.connect();
    check.create_phased_tables().unwrap();
    let clock = super::clock();
    let (trace_a, trace_b) = (Trace::default(), Trace::default());
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let (answer_tx, answer_rx) = mpsc::channel();
    let run = |conn: &mut B::Conn,
               trace: &Trace,
               hold: Option<(&mpsc::Sender<()>, &Mutex<mpsc::Receiver<()>>)>,
               answer: &str| {
        PhasedCall::new(NAMESPACE, "s-1")
            .clock(&clock)
            .lease(LEASE)
            .run(
                conn,
                |phase: &mut Phase<'_, B::Conn, u32>| -> Result<Step<u32, String>, PayError> {
                    let resumed = phase.resumed();
                    match phase.point() {
                        None => {
                            trace.enter(None, resumed);
                            if let Some((entered, release)) = hold {
                                entered.send(()).unwrap();
                                release.lock().unwrap().recv_timeout(DEADLINE).unwrap();
                            }
                            phase.conn().log_write("s-1", "start")?;
                            Ok(Step::Next(1))
                        }
                        Some(_) => Ok(Step::Finish(answer.to_owned())),
                    }
                },
            )
    };
    let (holder, retry) = std::thread::scope(|s| {
        let holder = s.spawn(|| {
            let mut conn = db.connect();
            run(
                &mut conn,
                &trace_a,
                Some((&entered_tx, &release_rx)),
                "holder",
            )
        });
        entered_rx
            .recv_timeout(DEADLINE)
            .expect("the holder entered its first phase");
        clock.advance(PAST_LEASE);
        let retry = s.spawn(|| {
            let mut conn = db.connect();
            if B::NAME == "sqlite" {
                conn.short_lock_waits().unwrap();
            }
            let answer = run(&mut conn, &trace_b, None, "retry");
            answer_tx.send(()).unwrap();
            answer
        });
        // A bound on how long the retry may block: well past a statement,
        // far short of the held phase (which waits for `release`).
        let answered = answer_rx.recv_timeout(Duration::from_secs(10));
        release_tx.send(()).unwrap();
        assert!(
            answered.is_ok(),
            "the retry still waited for the stalled first phase 10 s after its lease ended"
        );
        (holder.join().unwrap(), retry.join().unwrap())
    });

    if B::NAME == "sqlite" {
        let e = retry.expect_err("the holder holds the write lock");
        assert!(
            matches!(e.idempotency(), Some(e @ Error::Database(_)) if e.is_retryable()),
            "{e:?}"
        );
        let holder = holder.expect("the holder finishes: nobody took over");
        assert_eq!(holder.value(), "holder");
        assert_eq!(trace_b.take(), [], "the retry ran no phase");
        assert_eq!(check.count_writes("s-1").unwrap(), 1);
        return;
    }
    let retry = retry.expect("the retry took over and finished");
    assert!(!retry.is_replayed());
    assert_eq!(retry.value(), "retry");
    assert_eq!(
        trace_b.take(),
        [("start", true)],
        "the retry ran phase 1 from the start, as a takeover"
    );
    assert!(
        matches!(
            holder.as_ref().map_err(PayError::idempotency),
            Err(Some(Error::LeaseLost { .. }))
        ),
        "{holder:?}"
    );
    assert_eq!(trace_a.take(), [("start", false)]);
    assert_eq!(
        check.count_writes("s-1").unwrap(),
        1,
        "the holder's phase 1 was rolled back; the retry's was kept"
    );
    let record = phased::find(&mut check, NAMESPACE, "", "s-1")
        .unwrap()
        .unwrap();
    assert!(record.is_finished() && !record.is_leased_at(clock.now()));
    assert_eq!(
        (record.recovery_point.as_str(), record.phases),
        ("finished", 2)
    );
}

/// A first call's phase 1 stalls, then fails (the processor's 503), while
/// retries of the same key arrive (and, where a retry would wait on the
/// first call's claim, are seen waiting). Every retry gets an answer, the
/// call's or `InFlight`, never a database error (MariaDB answered
/// deadlocks to retries queued behind a claim that rolled back). After the
/// failure, a retry runs the call at once, without waiting for a lease;
/// phase 1's write is committed once.
pub fn phased_failed_first_phase_answers_its_retries<B: super::Backend>()
where
    B::Conn: PhasedTestConn,
{
    use std::sync::{Barrier, mpsc};
    use std::time::Instant;

    use diesel_idempotent::Error;
    use diesel_idempotent::phased::{Phase, PhasedCall, Step};

    use super::rt::DEADLINE;

    const RETRIES: usize = 3;
    const ROUNDS: usize = 4;
    let db = B::fresh();
    let mut check = db.connect();
    check.create_phased_tables().unwrap();
    let clock = super::clock();
    let call = |conn: &mut B::Conn, key: &str| {
        PhasedCall::new(NAMESPACE, key)
            .clock(&clock)
            .lease(LEASE)
            .run(
                conn,
                |phase: &mut Phase<'_, B::Conn, u32>| -> Result<Step<u32, String>, PayError> {
                    match phase.point() {
                        None => {
                            phase.conn().log_write(key, "start")?;
                            Ok(Step::Next(1))
                        }
                        Some(_) => Ok(Step::Finish(format!("done {key}"))),
                    }
                },
            )
    };
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        let key = format!("f-{round}");
        let key = key.as_str();
        let (entered_tx, entered_rx) = mpsc::channel::<()>();
        let (fail_tx, fail_rx) = mpsc::channel::<()>();
        let fail_rx = Mutex::new(fail_rx);
        let (answer_tx, answer_rx) = mpsc::channel();
        let barrier = Barrier::new(RETRIES + 1);
        let mut answers = Vec::new();
        std::thread::scope(|s| {
            let first = s.spawn(|| {
                let mut conn = db.connect();
                PhasedCall::new(NAMESPACE, key)
                    .clock(&clock)
                    .lease(LEASE)
                    .run(
                        &mut conn,
                        |_: &mut Phase<'_, B::Conn, u32>| -> Result<Step<u32, String>, PayError> {
                            entered_tx.send(()).unwrap();
                            fail_rx.lock().unwrap().recv_timeout(DEADLINE).unwrap();
                            Err(PayError::Processor(ProcessorError {
                                status: 503,
                                message: "unavailable".to_owned(),
                            }))
                        },
                    )
            });
            entered_rx
                .recv_timeout(DEADLINE)
                .expect("the first call entered phase 1");
            for _ in 0..RETRIES {
                let (db, call, barrier, answer_tx) = (&db, &call, &barrier, answer_tx.clone());
                s.spawn(move || {
                    let mut conn = db.connect();
                    barrier.wait();
                    answer_tx.send(call(&mut conn, key)).unwrap();
                });
            }
            barrier.wait();
            // Each retry has answered, or waits on the first call's claim.
            let deadline = Instant::now() + DEADLINE;
            loop {
                answers.extend(answer_rx.try_iter());
                let waiting = check.phased_lock_waiters().unwrap().unwrap_or(0);
                if answers.len() + usize::try_from(waiting).unwrap() >= RETRIES {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "round {round}: {} retries answered, {waiting} wait",
                    answers.len()
                );
                std::thread::yield_now();
            }
            fail_tx.send(()).unwrap();
            let first = first.join().unwrap();
            assert!(
                matches!(&first, Err(PayError::Processor(e)) if e.status == 503),
                "{first:?}"
            );
        });
        drop(answer_tx);
        answers.extend(answer_rx.try_iter());
        assert_eq!(answers.len(), RETRIES);
        for answer in &answers {
            match answer {
                Ok(outcome) => assert_eq!(outcome.value(), &format!("done {key}")),
                Err(e) if matches!(e.idempotency(), Some(Error::InFlight { .. })) => {}
                Err(e) => failures.push(format!("round {round}: {e:?}")),
            }
        }
        // No time passes: the failed phase released what it held.
        let mut conn = db.connect();
        let after = call(&mut conn, key).expect("a retry after the failure finishes at once");
        assert_eq!(after.value(), &format!("done {key}"));
        let fresh = answers
            .iter()
            .chain([&Ok(after)])
            .filter(|a| a.as_ref().is_ok_and(|o| !o.is_replayed()))
            .count();
        assert_eq!(fresh, 1, "round {round}: one run finished the call");
        assert_eq!(check.count_writes(key).unwrap(), 1, "round {round}");
    }
    assert!(failures.is_empty(), "retries failed: {failures:#?}");
}

/// `find` shows where a call stands; `purge_expired` deletes finished calls
/// whose TTL ran out, never an unfinished one.
pub fn phased_find_and_purge<B: super::Backend>()
where
    B::Conn: PhasedTestConn,
{
    use diesel_idempotent::phased;
    use diesel_idempotent::{Clock, Error};
    let db = B::fresh();
    let mut conn = db.connect();
    conn.create_phased_tables().unwrap();
    let processor = super::processor::Processor::start();
    let clock = super::clock();
    let trace = Trace::default();
    let started = clock.now().naive_utc();
    blocking::pay(
        &mut conn,
        &clock,
        &processor,
        "done",
        100,
        Crash::Never,
        &trace,
    )
    .unwrap();
    let stuck = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut conn = db.connect();
        blocking::pay(
            &mut conn,
            &clock,
            &processor,
            "stuck",
            100,
            Crash::AfterStartCommit,
            &trace,
        )
    }));
    assert!(stuck.is_err());

    let done = phased::find(&mut conn, NAMESPACE, "", "done")
        .unwrap()
        .unwrap();
    assert_eq!((done.recovery_point.as_str(), done.phases), ("finished", 3));
    assert!(done.is_finished() && done.lease_token.is_none() && done.locked_until.is_none());
    assert_eq!(done.expires_at - started, chrono::Duration::hours(24));
    let receipt: Receipt = serde_json::from_str(done.response.as_deref().unwrap()).unwrap();
    assert_eq!(receipt.payment, "done");

    let stuck = phased::find(&mut conn, NAMESPACE, "", "stuck")
        .unwrap()
        .unwrap();
    assert_eq!(
        (stuck.recovery_point.as_str(), stuck.phases),
        ("Started", 1)
    );
    let point: Point = serde_json::from_str(stuck.point_state.as_deref().unwrap()).unwrap();
    assert_eq!(
        point,
        Point::Started {
            payment: "stuck".to_owned()
        }
    );
    assert!(stuck.lease_token.is_some());
    assert_eq!(
        stuck.locked_until,
        Some(started + chrono::Duration::seconds(60))
    );
    assert_eq!(
        phased::find(&mut conn, NAMESPACE, "", "none").unwrap(),
        None
    );

    assert_eq!(
        phased::purge_expired(&mut conn, clock.now(), 10).unwrap(),
        0
    );
    let later = clock.now() + chrono::Duration::hours(25);
    assert!(matches!(
        phased::purge_expired(&mut conn, later, 0),
        Err(Error::InvalidBatchSize)
    ));
    assert_eq!(phased::purge_expired(&mut conn, later, 1).unwrap(), 1);
    assert_eq!(
        phased::find(&mut conn, NAMESPACE, "", "done").unwrap(),
        None
    );
    assert!(
        phased::find(&mut conn, NAMESPACE, "", "stuck")
            .unwrap()
            .is_some(),
        "an unfinished call never expires"
    );
}

/// What a phased call costs in statements, phases that write nothing
/// aside: a first run of three phases is one read and the claim's
/// `INSERT`, committed on its own before phase 1 begins, then each phase's
/// `BEGIN` and `COMMIT` around its end's `UPDATE`; a replay is the read
/// alone; a takeover adds its compare-and-set `UPDATE` to the read.
pub fn phased_statements_per_phase<B: super::Backend>()
where
    B::Conn: PhasedTestConn,
{
    use diesel_idempotent::phased::{Phase, PhasedCall, Step};
    use diesel_idempotent::{ManualClock, Outcome};

    fn count<C: PhasedTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        stop_after: usize,
    ) -> (Vec<String>, Result<Outcome<u32>, PayError>) {
        super::rt::blocking::statements(conn, |conn| {
            let mut ran = 0;
            PhasedCall::new("phased.count", "k").clock(clock).run(
                conn,
                |phase: &mut Phase<'_, C, u32>| {
                    ran += 1;
                    if ran > stop_after {
                        return Err(PayError::Processor(ProcessorError {
                            status: 503,
                            message: "stopped".to_owned(),
                        }));
                    }
                    Ok(match phase.point() {
                        None => Step::Next(1),
                        Some(1) => Step::Next(2),
                        Some(_) => Step::Finish(7),
                    })
                },
            )
        })
    }

    let db = B::fresh();
    let mut conn = db.connect();
    let clock = super::clock();
    // Two phases commit, the third fails: its lease is released.
    let (stopped, result) = count(&mut conn, &clock, 2);
    assert!(matches!(result, Err(PayError::Processor(_))), "{result:?}");
    assert_eq!(stopped.len(), 1 + 1 + 3 + 3 + 2 + 1, "{stopped:#?}");
    let (resumed, result) = count(&mut conn, &clock, 9);
    assert_eq!(*result.unwrap().value(), 7);
    assert_eq!(
        resumed.len(),
        2 + 3,
        "read, take over, one phase: {resumed:#?}"
    );
    let (replayed, result) = count(&mut conn, &clock, 9);
    assert!(result.unwrap().is_replayed());
    assert_eq!(replayed.len(), 1, "{replayed:#?}");

    let mut fresh = db.connect();
    let (first, result) = super::rt::blocking::statements(&mut fresh, |conn| {
        PhasedCall::new("phased.count", "k2").clock(&clock).run(
            conn,
            |phase: &mut Phase<'_, B::Conn, u32>| {
                Ok::<_, PayError>(match phase.point() {
                    None => Step::Next(1),
                    Some(1) => Step::Next(2),
                    Some(_) => Step::Finish(7),
                })
            },
        )
    });
    assert_eq!(*result.unwrap().value(), 7);
    assert_eq!(first.len(), 1 + 1 + 3 + 3 + 3, "{first:#?}");
    assert!(
        first[1].contains("INSERT") && first[2].contains("BEGIN"),
        "the claim commits before phase 1 begins: {first:#?}"
    );
}

/// Instantiates this file's tests for one backend (see `conformance!`).
#[macro_export]
macro_rules! phased_tests {
    (blocking $backend:ty) => {
        $crate::conformance!(@each blocking $backend; phased;
            phased_crash_at_every_boundary_charges_once,
            phased_processor_failure_resumes_at_once,
            phased_mismatch_replay_and_transaction_rules,
        );
        $crate::conformance!(@plain $backend; phased;
            phased_concurrent_first_calls_charge_once,
            phased_takeover_race_has_one_winner,
            phased_zombie_holder_loses_its_lease,
            phased_stalled_first_phase_is_taken_over,
            phased_failed_first_phase_answers_its_retries,
            phased_find_and_purge,
            phased_statements_per_phase,
        );
    };
    (nonblocking $backend:ty) => {
        $crate::conformance!(@each nonblocking $backend; phased;
            phased_crash_at_every_boundary_charges_once,
            phased_processor_failure_resumes_at_once,
            phased_mismatch_replay_and_transaction_rules,
        );
    };
}
