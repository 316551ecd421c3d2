//! The futures of the async API can be spawned: `tokio::spawn` needs them
//! `Send + 'static`, which a closure called twice through `AsyncFnMut`
//! would break (rustc cannot prove such a future `Send`). This file
//! compiles only if they are; the test runs nothing.
#![cfg(all(feature = "async", feature = "postgres"))]

use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_idempotent::{Call, Error, RetryPolicy, Retryable, get_or_create_async, retry_async};

/// A service's error: the pool's or the call's.
#[derive(Debug)]
enum AppError {
    Pool,
    Idempotency(Error),
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError::Idempotency(e)
    }
}

impl Retryable for AppError {
    fn is_retryable(&self) -> bool {
        match self {
            AppError::Pool => true,
            AppError::Idempotency(e) => e.is_retryable(),
        }
    }
}

/// Spawns each kind of call on a pooled connection (never run).
#[allow(dead_code)]
fn every_call_spawns(pool: Pool<AsyncPgConnection>) {
    let p = pool.clone();
    tokio::spawn(async move {
        let mut conn = p.get().await.map_err(|e| e.to_string())?;
        let amount = 5_i64;
        let borrowed = &amount;
        Call::new("payments.create", "k")
            .request(borrowed)
            .run_async(
                &mut *conn,
                async |_: &mut AsyncPgConnection| -> Result<i64, Error> { Ok(*borrowed) },
            )
            .await
            .map(|out| *out)
            .map_err(|e| e.to_string())
    });
    let p = pool.clone();
    tokio::spawn(async move {
        let mut conn = p.get().await.map_err(|e| e.to_string())?;
        let (customer, bank) = (1_i64, 2_i64);
        get_or_create_async(
            &mut *conn,
            async |_: &mut AsyncPgConnection| -> diesel::QueryResult<Option<i64>> {
                Ok(Some(customer + bank))
            },
            async |_: &mut AsyncPgConnection| -> diesel::QueryResult<i64> { Ok(customer) },
        )
        .await
        .map_err(|e| e.to_string())
    });
    tokio::spawn(async move {
        retry_async(&RetryPolicy::new(), || {
            let pool = pool.clone();
            async move {
                let mut conn = pool.get().await.map_err(|_| AppError::Pool)?;
                Call::new("payments.create", "k")
                    .run_async(
                        &mut *conn,
                        async |_: &mut AsyncPgConnection| -> Result<i64, AppError> { Ok(1) },
                    )
                    .await
                    .map(|out| *out)
            }
        })
        .await
    });
}

#[test]
fn the_async_api_compiles_into_spawned_tasks() {
    let spawns: fn(Pool<AsyncPgConnection>) = every_call_spawns;
    let _ = spawns;
}
