//! Retrying a whole transaction after a transient failure.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use diesel::result::Error as DieselError;

/// An error that can say whether the same call may succeed if retried.
///
/// Implemented for [`crate::Error`] (see [`crate::Error::is_retryable`]) and
/// for `diesel::result::Error`. Implement it for your error type by
/// forwarding to the error it wraps.
///
/// A `diesel::result::Error` is retryable when it is:
///
/// | failure | PostgreSQL | MySQL / MariaDB | SQLite | recognised by |
/// |---|---|---|---|---|
/// | serialization failure | 40001 | 1213 (deadlock) | | Diesel's `SerializationFailure` kind |
/// | deadlock | 40P01 | 1213 on diesel-async | | messages `deadlock detected`, `Deadlock found when trying to get lock` |
/// | lock wait timed out | 55P03 (`lock_timeout`, `NOWAIT`) | 1205 | | messages `canceling statement due to lock timeout`, `could not obtain lock on`, `Lock wait timeout exceeded` |
/// | busy database | | | `SQLITE_BUSY`, `SQLITE_LOCKED` | messages `database is locked`, `database table is locked` |
/// | lost connection | connection errors | 2006, 2013; socket errors on diesel-async | | Diesel's `ClosedConnection` kind; diesel-async's `UnableToSendCommand` with `connection closed` or `error communicating with the server`; messages `server has gone away`, `Lost connection to`, `Input/output error`, `Connection to the server is closed` |
///
/// Diesel reports the SQLSTATE or error number only for the kinds it
/// names; every other case reaches it as `DatabaseErrorKind::Unknown` with
/// the server's message, so the message text is matched (each one is
/// tested). PostgreSQL translates its messages when `lc_messages` is not
/// English: keep it at `C` or `en_US` on servers this library talks to.
///
/// `BrokenTransactionManager` is **not** retryable: Diesel could not roll a
/// transaction back on that connection and no longer knows its state. Drop
/// the connection (r2d2 and deadpool discard one whose transaction manager
/// is broken) and retry on a fresh one.
pub trait Retryable {
    /// `true` when retrying the whole transaction may succeed.
    fn is_retryable(&self) -> bool;
}

impl Retryable for crate::Error {
    fn is_retryable(&self) -> bool {
        crate::Error::is_retryable(self)
    }
}

impl Retryable for DieselError {
    fn is_retryable(&self) -> bool {
        crate::error::is_transient(self)
    }
}

/// How [`retry`] retries: bounded attempts, exponential backoff with full
/// jitter (each delay is uniformly random between zero and
/// `min(max_delay, base_delay * 2^attempt)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 10 ms base delay, at most 1 s between attempts.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The default policy.
    pub fn new() -> Self {
        RetryPolicy::default()
    }

    /// The number of calls in all, the first included (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The backoff's starting delay; zero retries at once.
    pub fn base_delay(mut self, delay: Duration) -> Self {
        self.base_delay = delay;
        self
    }

    /// The longest delay between two attempts.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// The delay before attempt `attempt + 1` (full jitter).
    fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        let cap = self
            .base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(attempt);
        Duration::from_nanos(hasher.finish() % (nanos + 1))
    }
}

/// Calls `f` until it succeeds, fails with an error that is not
/// [`Retryable`], or the policy's attempts are spent; sleeps between
/// attempts as the policy says. `f` should run a whole transaction
/// (`conn.transaction(|conn| create_payment(conn, ..))`): a serialization
/// failure aborts the transaction, not just the statement.
///
/// With `#[idempotent]` functions inside, retries converge to exactly one
/// execution of each body: a retry either runs the body (no earlier attempt
/// committed) or replays the committed result.
pub fn retry<T, E, F>(policy: &RetryPolicy, mut f: F) -> Result<T, E>
where
    E: Retryable,
    F: FnMut() -> Result<T, E>,
{
    crate::store::driver::block_on(attempts(
        policy,
        || std::future::ready(f()),
        |delay| {
            std::thread::sleep(delay);
            std::future::ready(())
        },
    ))
}

/// [`retry`] for `async` code (feature `async`): the same policy, the same
/// errors retried, the back-off awaited with `tokio::time::sleep` (tokio's
/// timer, which every diesel-async connection runs on). `f` makes a new
/// future for each attempt; the returned future is `Send` when those are,
/// so it can run in a spawned task or an axum handler. Check out the
/// connection inside the attempt: a connection whose transaction failed
/// to roll back is broken, and the next attempt needs another.
///
/// ```no_run
/// # extern crate idempotent_core as diesel_idempotent;
/// # async fn transfer(_: u32) -> Result<u32, diesel_idempotent::Error> { Ok(1) }
/// # async fn f() -> Result<u32, diesel_idempotent::Error> {
/// use diesel_idempotent::{RetryPolicy, retry_async};
/// let receipt = retry_async(&RetryPolicy::new(), || transfer(42)).await?;
/// # Ok(receipt) }
/// ```
#[cfg(feature = "async")]
pub async fn retry_async<T, E, F, Fut>(policy: &RetryPolicy, f: F) -> Result<T, E>
where
    E: Retryable,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    attempts(policy, f, tokio::time::sleep).await
}

/// The retry loop, once for both: `sleep` waits out a back-off.
async fn attempts<T, E, F, Fut, S, Slept>(
    policy: &RetryPolicy,
    mut f: F,
    mut sleep: S,
) -> Result<T, E>
where
    E: Retryable,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    S: FnMut(Duration) -> Slept,
    Slept: std::future::Future<Output = ()>,
{
    let mut attempt = 1;
    loop {
        match f().await {
            Err(e) if e.is_retryable() && attempt < policy.max_attempts => {
                let delay = policy.delay(attempt);
                if !delay.is_zero() {
                    sleep(delay).await;
                }
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Transient(bool);

    impl Retryable for Transient {
        fn is_retryable(&self) -> bool {
            self.0
        }
    }

    #[test]
    fn retries_only_retryable_errors_within_bounds() {
        let policy = RetryPolicy::new()
            .max_attempts(4)
            .base_delay(Duration::ZERO);
        let mut calls = 0;
        let result: Result<(), _> = retry(&policy, || {
            calls += 1;
            Err(Transient(true))
        });
        assert_eq!((result, calls), (Err(Transient(true)), 4));
        calls = 0;
        let result: Result<(), _> = retry(&policy, || {
            calls += 1;
            Err(Transient(false))
        });
        assert_eq!((result, calls), (Err(Transient(false)), 1));
        calls = 0;
        let result = retry(&policy, || {
            calls += 1;
            if calls < 3 {
                Err(Transient(true))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(result, Ok(3));
    }

    #[test]
    fn full_jitter_stays_under_the_cap() {
        let policy = RetryPolicy::new()
            .base_delay(Duration::from_millis(10))
            .max_delay(Duration::from_millis(50));
        for attempt in 1..40 {
            let cap = Duration::from_millis(10)
                .checked_mul(1 << attempt.min(20))
                .unwrap()
                .min(Duration::from_millis(50));
            assert!(policy.delay(attempt) <= cap);
        }
        assert_eq!(
            RetryPolicy::new().base_delay(Duration::ZERO).delay(3),
            Duration::ZERO
        );
    }
}
