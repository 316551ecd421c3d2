//! Where the library's "now" comes from.
//!
//! Record creation and expiry use a [`Clock`], never the database's clock, so
//! tests advance time with a [`ManualClock`] instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// The current instant, in UTC.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock; the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to, for tests.
///
/// It can live in a `static` (see [`ManualClock::at_unix_seconds`]) or behind
/// an `Arc`, and is safe to share between threads.
///
/// ```
/// # extern crate idempotent_core as diesel_idempotent;
/// use diesel_idempotent::{Clock, ManualClock};
/// use std::time::Duration;
///
/// static CLOCK: ManualClock = ManualClock::at_unix_seconds(1_700_000_000);
/// let before = CLOCK.now();
/// CLOCK.advance(Duration::from_secs(3600));
/// assert_eq!((CLOCK.now() - before).num_seconds(), 3600);
/// ```
#[derive(Debug)]
pub struct ManualClock {
    micros: AtomicI64,
}

impl ManualClock {
    /// A clock standing at `secs` seconds after the Unix epoch.
    pub const fn at_unix_seconds(secs: i64) -> Self {
        ManualClock {
            micros: AtomicI64::new(secs.saturating_mul(1_000_000)),
        }
    }

    /// A clock standing at `at`.
    pub fn new(at: DateTime<Utc>) -> Self {
        ManualClock {
            micros: AtomicI64::new(at.timestamp_micros()),
        }
    }

    /// Moves the clock forward by `by` (saturating at the far future).
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        let _ = self
            .micros
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |m| {
                Some(m.saturating_add(by))
            });
    }

    /// Sets the clock to `at`.
    pub fn set(&self, at: DateTime<Utc>) {
        self.micros.store(at.timestamp_micros(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.micros.load(Ordering::SeqCst))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> DateTime<Utc> {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> DateTime<Utc> {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for Box<C> {
    fn now(&self) -> DateTime<Utc> {
        (**self).now()
    }
}
