//! Terminal errors (`Settled::Terminal`): the key's final answer, stored
//! and replayed like a value, while the body's effects roll back; every
//! other error stays transient.
//!
//! Written once, as async code over diesel-async connections, in
//! [`nonblocking`]; `#[dual::blocking]` derives [`blocking`].

use serde::{Deserialize, Serialize};

/// A declined card: a business outcome, not a failure to retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declined {
    pub reason: String,
}

/// What the card network answers in [`nonblocking::charge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    Approves,
    Declines,
    /// Times out: a transient error, the retry must run.
    TimesOut,
    /// The body panics after its insert.
    Panics,
}

#[dual::blocking]
pub mod nonblocking {
    use diesel_idempotent::{ManualClock, Outcome, Settled, idempotent};

    use super::{Declined, Network};
    use crate::common::rt::nonblocking as rt;
    use crate::common::{AppError, AsyncSuiteBackend, AsyncTestConn, NewPayment, Payment, clock};

    /// The body of [`charge`] and [`charge_optimistic`]: writes the
    /// charge, then asks the network.
    async fn write_charge<C: AsyncTestConn>(
        conn: &mut C,
        req: &NewPayment,
        network: Network,
    ) -> Result<Outcome<Settled<Payment, Declined>>, AppError> {
        let id = conn.insert_payment(req.amount).await?;
        match network {
            Network::Approves => Ok(Settled::Ok(Payment {
                id,
                amount: req.amount,
            })
            .into()),
            Network::Declines => Ok(Settled::Terminal(Declined {
                reason: format!("insufficient funds for charge {id}"),
            })
            .into()),
            Network::TimesOut => Err(AppError::Declined),
            Network::Panics => panic!("injected panic after the charge insert"),
        }
    }

    /// Writes the charge, then asks the network.
    #[idempotent(key = key, ttl = "1h", name = "tests.charge", clock = clock, skip(network))]
    pub async fn charge<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        key: &str,
        req: &NewPayment,
        network: Network,
    ) -> Result<Outcome<Settled<Payment, Declined>>, AppError> {
        write_charge(conn, req, network).await
    }

    /// [`charge`], run body-first.
    #[idempotent(
        key = key,
        ttl = "1h",
        name = "tests.charge",
        clock = clock,
        skip(network),
        mode = "optimistic"
    )]
    pub async fn charge_optimistic<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        key: &str,
        req: &NewPayment,
        network: Network,
    ) -> Result<Outcome<Settled<Payment, Declined>>, AppError> {
        write_charge(conn, req, network).await
    }

    /// Opens an account once: an account the unique index already holds
    /// (the insert fails) is a terminal answer; the payment written before
    /// it is rolled back.
    #[idempotent(key = key, ttl = "1h", name = "tests.open_account", clock = clock)]
    pub async fn open_account<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        key: &str,
        customer_id: i64,
    ) -> Result<Settled<i64, Declined>, AppError> {
        conn.insert_payment(customer_id).await?;
        match conn.insert_account(customer_id, 1).await {
            Ok(account) => Ok(Settled::Ok(account.id)),
            Err(refused) => Ok(Settled::Terminal(Declined {
                reason: format!("the account exists: {refused}"),
            })),
        }
    }

    pub async fn terminal_answer_after_a_refused_statement<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        conn.insert_account(7, 1).await.unwrap();
        let first = open_account(&mut conn, &clock, "t-7", 7)
            .await
            .expect("the refused insert is a terminal answer");
        assert!(first.is_terminal(), "{first:?}");
        assert_eq!(conn.count_payments().await.unwrap(), 0, "rolled back");
        assert_eq!(conn.count_records().await.unwrap(), 1, "the answer is kept");
        let mut other = db.connect_async().await;
        let retry = open_account(&mut other, &clock, "t-7", 7).await.unwrap();
        assert_eq!(retry, first, "replayed");
        // The connection goes on: a new customer's account opens.
        let opened = open_account(&mut conn, &clock, "t-8", 8).await.unwrap();
        assert!(!opened.is_terminal(), "{opened:?}");
        assert_eq!(conn.count_payments().await.unwrap(), 1);
    }

    pub async fn optimistic_terminal_answer_in_callers_transaction<B: AsyncSuiteBackend>() {
        terminal_answer_in_callers_transaction::<B>(true).await;
    }

    pub async fn terminal_answer_is_replayed_and_its_effects_roll_back<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let req = NewPayment::eur(50);
        for optimistic in [false, true] {
            let key = if optimistic { "t-opt" } else { "t-claim" };
            let first = if optimistic {
                charge_optimistic(&mut conn, &clock, key, &req, Network::Declines).await
            } else {
                charge(&mut conn, &clock, key, &req, Network::Declines).await
            }
            .expect("a terminal error is an answer, not an `Err`");
            assert!(!first.is_replayed());
            assert!(first.is_terminal(), "declined: {first:?}");
            assert_eq!(
                conn.count_payments().await.unwrap(),
                0,
                "optimistic={optimistic}: the declined charge's row rolled back"
            );
            // The retry is answered from the record: declined again, and
            // the network, which would approve now, is never asked.
            let mut other = db.connect_async().await;
            let retry = charge(&mut other, &clock, key, &req, Network::Approves)
                .await
                .unwrap();
            assert!(retry.is_replayed(), "optimistic={optimistic}");
            assert_eq!(*retry, *first, "the same terminal answer");
            assert_eq!(other.count_payments().await.unwrap(), 0);
        }
        assert_eq!(conn.count_records().await.unwrap(), 2, "both answers kept");
    }

    pub async fn transient_error_stores_nothing_and_the_retry_runs<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let req = NewPayment::eur(51);
        let err = charge(&mut conn, &clock, "t-2", &req, Network::TimesOut)
            .await
            .unwrap_err();
        assert!(matches!(err, AppError::Declined), "{err:?}");
        assert_eq!(conn.count_records().await.unwrap(), 0);
        assert_eq!(conn.count_payments().await.unwrap(), 0);
        let retry = charge(&mut conn, &clock, "t-2", &req, Network::Approves)
            .await
            .unwrap();
        assert!(!retry.is_replayed(), "the retry ran the body");
        let Settled::Ok(payment) = retry.into_value() else {
            panic!("approved on the retry");
        };
        assert_eq!(conn.count_payments().await.unwrap(), 1);
        let replay = charge(&mut conn, &clock, "t-2", &req, Network::Declines)
            .await
            .unwrap();
        assert!(replay.is_replayed());
        assert_eq!(replay.into_value(), Settled::Ok(payment));
        assert_eq!(conn.count_payments().await.unwrap(), 1, "kept, once");
    }

    pub async fn terminal_answer_in_callers_transaction_keeps_the_callers_work<
        B: AsyncSuiteBackend,
    >() {
        terminal_answer_in_callers_transaction::<B>(false).await;
    }

    /// Inside the caller's transaction, which wrote a row of its own, a
    /// declined charge (claim-first or `optimistic`) rolls back only its
    /// own row; the caller's row and the answer commit, and a retry
    /// replays the terminal answer.
    async fn terminal_answer_in_callers_transaction<B: AsyncSuiteBackend>(optimistic: bool) {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let req = NewPayment::eur(52);
        let answer = rt::transaction(&mut conn, async |conn| {
            conn.insert_payment(1).await?;
            let answer = if optimistic {
                charge_optimistic(conn, &clock, "t-3", &req, Network::Declines).await?
            } else {
                charge(conn, &clock, "t-3", &req, Network::Declines).await?
            };
            assert_eq!(
                conn.count_payments().await?,
                1,
                "only the caller's own row is left in its transaction"
            );
            Ok::<_, AppError>(answer)
        })
        .await
        .unwrap();
        assert!(answer.is_terminal());
        assert_eq!(conn.count_payments().await.unwrap(), 1, "the caller's row");
        assert_eq!(conn.count_records().await.unwrap(), 1, "the answer");
        let retry = charge(&mut conn, &clock, "t-3", &req, Network::Approves)
            .await
            .unwrap();
        assert!(retry.is_replayed() && retry.is_terminal());
        assert_eq!(conn.count_payments().await.unwrap(), 1);
    }

    pub async fn terminal_results_cost_a_savepoint_around_the_body<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let savepoints = |log: &[String], verb: &str| {
            log.iter()
                .filter(|sql| sql.to_uppercase().starts_with(verb))
                .count()
        };
        let (approved, answer) = rt::statements(&mut conn, async |conn| {
            charge(conn, &clock, "t-5", &NewPayment::eur(54), Network::Approves).await
        })
        .await;
        assert!(!answer.unwrap().is_terminal());
        assert_eq!(savepoints(&approved, "SAVEPOINT"), 1, "{approved:#?}");
        assert_eq!(
            savepoints(&approved, "RELEASE SAVEPOINT"),
            1,
            "{approved:#?}"
        );
        let (declined, answer) = rt::statements(&mut conn, async |conn| {
            charge(conn, &clock, "t-6", &NewPayment::eur(55), Network::Declines).await
        })
        .await;
        assert!(answer.unwrap().is_terminal());
        assert_eq!(savepoints(&declined, "SAVEPOINT"), 1, "{declined:#?}");
        assert_eq!(
            savepoints(&declined, "ROLLBACK TO SAVEPOINT"),
            1,
            "{declined:#?}"
        );
        assert_eq!(
            approved.len(),
            declined.len(),
            "ROLLBACK TO takes RELEASE's place: {approved:#?} {declined:#?}"
        );
        // A replay never reaches the body, nor its savepoint.
        let (replay, answer) = rt::statements(&mut conn, async |conn| {
            charge(conn, &clock, "t-6", &NewPayment::eur(55), Network::Approves).await
        })
        .await;
        assert!(answer.unwrap().is_replayed());
        assert_eq!(savepoints(&replay, "SAVEPOINT"), 0, "{replay:#?}");
    }

    pub async fn terminal_body_panic_leaves_nothing<B: AsyncSuiteBackend>() {
        let db = B::fresh();
        let mut conn = db.connect_async().await;
        let clock = clock();
        let caught = rt::catch_panic(|| async {
            charge(
                &mut conn,
                &clock,
                "t-4",
                &NewPayment::eur(53),
                Network::Panics,
            )
            .await
        })
        .await;
        assert!(caught.is_err(), "the panic reaches the caller");
        assert_eq!(conn.count_records().await.unwrap(), 0);
        assert_eq!(conn.count_payments().await.unwrap(), 0);
        let again = charge(
            &mut conn,
            &clock,
            "t-4",
            &NewPayment::eur(53),
            Network::Approves,
        )
        .await
        .unwrap();
        assert!(!again.is_replayed());
    }
}

/// One test function per terminal test, for one backend and driver.
#[macro_export]
macro_rules! terminal_tests {
    ($flavour:ident $backend:ty) => {
        $crate::conformance!(@each $flavour $backend; terminal;
            terminal_answer_is_replayed_and_its_effects_roll_back,
            transient_error_stores_nothing_and_the_retry_runs,
            terminal_answer_in_callers_transaction_keeps_the_callers_work,
            terminal_body_panic_leaves_nothing,
            terminal_results_cost_a_savepoint_around_the_body,
            terminal_answer_after_a_refused_statement,
            optimistic_terminal_answer_in_callers_transaction,
        );
    };
}
