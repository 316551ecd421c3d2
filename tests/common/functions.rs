//! The functions under test, written once as `async fn`s over
//! [`AsyncTestConn`](super::async_backends::AsyncTestConn); `blocking` holds
//! the same functions as `fn`s over [`TestConn`](super::TestConn).

#[dual::blocking]
pub mod nonblocking {
    use diesel::QueryResult;
    use diesel_idempotent::{ManualClock, Outcome, idempotent};

    use crate::common::{
        Account, AppError, AsyncTestConn, ClickEvent, NewPayment, Payment, PaymentV2, Then,
    };

    /// The function under test: a payment, once per key.
    #[idempotent(key = key, ttl = "1h", name = "tests.create_payment", clock = clock, skip(then))]
    pub async fn create_payment<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        key: &str,
        req: &NewPayment,
        then: Then,
    ) -> Result<Payment, AppError> {
        let id = conn.insert_payment(req.amount).await?;
        match then {
            Then::Succeed => Ok(Payment {
                id,
                amount: req.amount,
            }),
            Then::Fail => Err(AppError::Declined),
            Then::Panic => panic!("injected panic after the payment insert"),
        }
    }

    /// Tells replays apart.
    #[idempotent(key = key, name = "tests.create_payment_outcome", clock = clock)]
    pub async fn create_payment_outcome<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        key: &str,
        req: &NewPayment,
    ) -> Result<Outcome<Payment>, AppError> {
        let id = conn.insert_payment(req.amount).await?;
        Ok(Payment {
            id,
            amount: req.amount,
        }
        .into())
    }

    /// The same records read back as a newer, incompatible result type.
    #[idempotent(key = key, ttl = "1h", name = "tests.create_payment", clock = clock, skip(then))]
    pub async fn create_payment_v2<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        key: &str,
        req: &NewPayment,
        then: Then,
    ) -> Result<PaymentV2, AppError> {
        let id = conn.insert_payment(req.amount).await?;
        let _ = then;
        Ok(PaymentV2 {
            id,
            amount: req.amount,
            settled_at: "now".to_owned(),
        })
    }

    /// Another function (default namespace) with the same keys.
    #[idempotent(key = key, clock = clock)]
    pub async fn create_refund<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        key: &str,
        req: &NewPayment,
    ) -> Result<Payment, AppError> {
        let id = conn.insert_payment(-req.amount).await?;
        Ok(Payment {
            id,
            amount: -req.amount,
        })
    }

    /// Per-tenant keys.
    #[idempotent(key = key, scope = tenant, ttl = "1h", name = "tests.create_scoped", clock = clock)]
    pub async fn create_scoped<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        tenant: &str,
        key: &str,
        req: &NewPayment,
    ) -> Result<Payment, AppError> {
        let id = conn.insert_payment(req.amount).await?;
        Ok(Payment {
            id,
            amount: req.amount,
        })
    }

    /// `create_payment`'s records, but a held key is an error at once.
    #[idempotent(
        key = key,
        ttl = "1h",
        name = "tests.create_payment",
        clock = clock,
        skip(then),
        on_conflict = "reject"
    )]
    pub async fn create_payment_or_reject<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        key: &str,
        req: &NewPayment,
        then: Then,
    ) -> Result<Payment, AppError> {
        let _ = then;
        Ok(Payment {
            id: conn.insert_payment(req.amount).await?,
            amount: req.amount,
        })
    }

    /// `create_payment`'s records, but a duplicate waits at most 300 ms for
    /// the call holding its key (MySQL rounds it up to 1 s), then gets
    /// `InFlight`.
    #[idempotent(
        key = key,
        ttl = "1h",
        name = "tests.create_payment",
        clock = clock,
        skip(then),
        wait_for = "300ms"
    )]
    pub async fn create_payment_waiting_briefly<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        key: &str,
        req: &NewPayment,
        then: Then,
    ) -> Result<Payment, AppError> {
        let id = conn.insert_payment(req.amount).await?;
        match then {
            Then::Succeed => Ok(Payment {
                id,
                amount: req.amount,
            }),
            Then::Fail => Err(AppError::Declined),
            Then::Panic => panic!("injected panic after the payment insert"),
        }
    }

    /// The key is the hash of every argument (here: the event).
    #[idempotent(hash, ttl = "7d", name = "tests.consume", clock = clock)]
    pub async fn consume<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        event: &ClickEvent,
    ) -> Result<i64, AppError> {
        Ok(conn.insert_payment(event.occurred_at).await?)
    }

    /// The key is the hash of the event's identifying fields only.
    #[idempotent(
        hash(event.user_id, event.url, event.occurred_at),
        ttl = "7d",
        name = "tests.consume_fields",
        clock = clock
    )]
    pub async fn consume_fields<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        event: &ClickEvent,
    ) -> Result<i64, AppError> {
        Ok(conn.insert_payment(event.occurred_at).await?)
    }

    /// getOrCreate with an application error type and a validation.
    #[idempotent(get_or_create = conn.find_account(customer_id, bank_id))]
    pub async fn open_account_checked<C: AsyncTestConn>(
        conn: &mut C,
        customer_id: i64,
        bank_id: i64,
    ) -> Result<Account, AppError> {
        if bank_id < 0 {
            return Err(AppError::Declined);
        }
        Ok(conn.insert_account(customer_id, bank_id).await?)
    }

    /// A webhook receiver: the provider's id when present, else the parsed
    /// body's fingerprint.
    #[idempotent(
        key = diesel_idempotent::id_or_body_hash(webhook_id, body),
        name = "tests.webhook",
        clock = clock
    )]
    pub async fn receive_webhook<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        webhook_id: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<i64, AppError> {
        Ok(conn
            .insert_payment(body["amount"].as_i64().unwrap_or(0))
            .await?)
    }

    /// One item of a batch, under its own sub-key.
    #[idempotent(key = item_key, name = "tests.batch_item", clock = clock, skip(fail))]
    pub async fn process_item<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        item_key: &str,
        amount: i64,
        fail: bool,
    ) -> Result<i64, AppError> {
        let id = conn.insert_payment(amount).await?;
        if fail {
            return Err(AppError::Declined);
        }
        Ok(id)
    }

    /// A batch under one client key; item `fail_at` fails (once injected).
    pub async fn process_batch<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        batch_key: &str,
        amounts: &[i64],
        fail_at: Option<usize>,
    ) -> Result<Vec<i64>, AppError> {
        let mut ids = Vec::with_capacity(amounts.len());
        for (i, amount) in amounts.iter().enumerate() {
            let key = diesel_idempotent::sub_key(batch_key, i);
            ids.push(process_item(conn, clock, &key, *amount, fail_at == Some(i)).await?);
        }
        Ok(ids)
    }

    /// A result that may exceed the size cap.
    #[idempotent(key = key, name = "tests.big", clock = clock, max_response_bytes = 1024)]
    pub async fn big_result<C: AsyncTestConn>(
        conn: &mut C,
        clock: &ManualClock,
        key: &str,
        size: usize,
    ) -> Result<String, AppError> {
        conn.insert_payment(1).await?;
        Ok("x".repeat(size))
    }

    /// getOrCreate with a `QueryResult` body.
    #[idempotent(get_or_create = conn.find_account(customer_id, bank_id))]
    pub async fn open_account<C: AsyncTestConn>(
        conn: &mut C,
        customer_id: i64,
        bank_id: i64,
    ) -> QueryResult<Account> {
        conn.insert_account(customer_id, bank_id).await
    }
}
