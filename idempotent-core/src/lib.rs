//! Runtime of `diesel-idempotent`: the record table, one store per SQL
//! dialect, request fingerprints, TTLs, the injectable clock and the
//! migrations. Depend on `diesel-idempotent`, which re-exports all of it
//! together with the `#[idempotent]` attribute.
#![warn(missing_docs)]
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod admin;
pub mod clock;
mod derived;
mod error;
mod fingerprint;
#[cfg(feature = "axum")]
pub mod http;
pub mod migrations;
pub mod outbox;
pub mod pattern;
pub mod phased;
mod record;
pub mod retry;
mod store;
pub mod telemetry;
pub mod ttl;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::Error;
pub use fingerprint::{Fingerprint, FingerprintBuilder, canonical_json};
#[cfg(feature = "async")]
pub use pattern::get_or_create::get_or_create_async;
pub use pattern::get_or_create::{UniqueViolation, get_or_create, unique_index_covers};
pub use pattern::hash::{StableName, fingerprint, id_or_body_hash, sub_key};
pub use pattern::key::{
    Call, IdempotentResult, Mode, OnConflict, Outcome, Replay, Response, Settled,
};
pub use record::{IdempotencyRecord, idempotency_records};
#[cfg(feature = "async")]
pub use retry::retry_async;
pub use retry::{RetryPolicy, Retryable, retry};
pub use store::IdempotentConnection;
#[cfg(feature = "async")]
pub use store::nonblocking::AsyncIdempotentConnection;
pub use ttl::Ttl;

/// Creates the record table on `conn` by running the embedded migrations
/// (a no-op when they ran before, by this call or by the Diesel CLI with the
/// generated folders). Returns how many migrations were applied.
///
/// Coexists with your own migrations: only this library's are run.
pub fn migrate<C: IdempotentConnection>(conn: &mut C) -> Result<usize, Error> {
    conn.migrate()
}

/// Deletes expired records in batches of `batch_size` until none is left,
/// using the index on `expires_at`; returns how many were deleted.
///
/// Each batch is its own statement, so locks are held briefly. Run it from a
/// periodic job; records are treated as absent once expired whether or not
/// they were purged.
pub fn purge_expired<C: IdempotentConnection>(
    conn: &mut C,
    batch_size: usize,
) -> Result<usize, Error> {
    purge_expired_with_clock(conn, batch_size, &SystemClock)
}

/// [`purge_expired`] with the time taken from `clock`, once: a record that
/// expires while the purge runs is left for the next one.
///
/// Each batch is [`admin::purge_batch`].
pub fn purge_expired_with_clock<C: IdempotentConnection>(
    conn: &mut C,
    batch_size: usize,
    clock: &dyn Clock,
) -> Result<usize, Error> {
    let now = clock.now();
    let mut total = 0usize;
    loop {
        let deleted = admin::purge_batch(conn, now, batch_size)?;
        total = total.saturating_add(deleted);
        if deleted < batch_size {
            return Ok(total);
        }
    }
}

#[doc(hidden)]
pub mod __private {
    //! What `#[idempotent]` expands to. Not a public API.
    pub use crate::__require_async as require_async;
    pub use crate::clock::{Clock, SystemClock};
    pub use crate::fingerprint::Fingerprint;
    pub use crate::pattern::get_or_create::get_or_create_named;
    #[cfg(feature = "async")]
    pub use crate::pattern::get_or_create::get_or_create_named_async;
    pub use crate::pattern::key::{Call, IdempotentResult, Mode, OnConflict, Replay, Response};
    #[cfg(feature = "async")]
    pub use crate::store::nonblocking::AsyncIdempotentConnection;
    pub use crate::telemetry::Pattern;
    pub use crate::ttl::Ttl;
    pub use crate::{Error, IdempotentConnection};

    pub use crate::pattern::key::KeySource;

    /// The key expression, owned (so the body may move its parameters),
    /// and the fingerprint with what the key says about the request (an
    /// HTTP key's method and route). One call, so the expression is
    /// evaluated once and a compile error about its type points at it.
    #[inline]
    pub fn key<K: KeySource + ?Sized>(
        builder: crate::FingerprintBuilder,
        key: &K,
    ) -> (crate::FingerprintBuilder, ::std::string::String) {
        (
            crate::pattern::key::add_request_line(builder, key.request_line()),
            ::std::borrow::ToOwned::to_owned(key.key_text()),
        )
    }

    /// What a fingerprinted argument must be: `Serialize`. A trait of its
    /// own so that the compile error for an argument that is not says what
    /// to do, at the argument.
    #[diagnostic::on_unimplemented(
        message = "the argument of type `{Self}` is fingerprinted but does not implement \
                   `Serialize`: implement `serde::Serialize` for it, or leave the argument out \
                   with `skip(..)`",
        label = "this argument identifies the request, so it must implement `Serialize`",
        note = "derive it (`#[derive(serde::Serialize)]`) if the argument tells requests apart; \
                `#[idempotent(.., skip(argument))]` if it does not (a pool, a logger, a handle)"
    )]
    pub trait FingerprintedArgument {
        /// Adds this value to the fingerprint; `name` names it in an error.
        fn add_to(
            &self,
            builder: crate::FingerprintBuilder,
            name: &str,
        ) -> crate::FingerprintBuilder;
    }

    // Reported against the message above for the argument's own type, also
    // when what fails is a type inside it (`Vec<Handle>`, `Option<&Handle>`).
    #[diagnostic::do_not_recommend]
    impl<T: ::serde::Serialize + ?Sized> FingerprintedArgument for T {
        #[inline]
        fn add_to(
            &self,
            builder: crate::FingerprintBuilder,
            name: &str,
        ) -> crate::FingerprintBuilder {
            builder.named_arg(name, self)
        }
    }

    /// Adds one argument, called `name` in the source, to the fingerprint.
    #[inline]
    pub fn fingerprint_argument<T: FingerprintedArgument + ?Sized>(
        builder: crate::FingerprintBuilder,
        name: &str,
        value: &T,
    ) -> crate::FingerprintBuilder {
        value.add_to(builder, name)
    }

    /// Adds the stable name of a type parameter that a fingerprinted value
    /// mentions, so values of two types that serialize alike differ.
    #[inline]
    pub fn type_name_for_generic_argument<T: crate::StableName + ?Sized>(
        builder: crate::FingerprintBuilder,
    ) -> crate::FingerprintBuilder {
        builder.arg(T::STABLE_NAME)
    }

    /// The key `hash` derives: the fingerprint's text (empty when the
    /// fingerprint failed; that error is reported instead).
    #[inline]
    pub fn hashed_key(
        fingerprint: &::core::result::Result<crate::Fingerprint, crate::Error>,
    ) -> ::std::string::String {
        match fingerprint {
            Ok(fingerprint) => ::std::borrow::ToOwned::to_owned(fingerprint.as_str()),
            Err(_) => ::std::string::String::new(),
        }
    }

    /// The scope expression, rendered.
    #[inline]
    pub fn scope<S: ::std::fmt::Display + ?Sized>(scope: &S) -> ::std::string::String {
        ::std::string::ToString::to_string(scope)
    }
}

/// The body `#[idempotent]` generates for an `async fn`: as it is when the
/// `async` feature is on.
#[cfg(feature = "async")]
#[doc(hidden)]
#[macro_export]
macro_rules! __require_async {
    ($($body:tt)*) => {
        $($body)*
    };
}

/// The body `#[idempotent]` generates for an `async fn`, without the
/// `async` feature: the error that says so, instead of the body.
#[cfg(not(feature = "async"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __require_async {
    ($($body:tt)*) => {
        ::core::compile_error!(
            "`#[idempotent]` on an `async fn` needs the `async` feature of diesel-idempotent: \
             `diesel-idempotent = { version = \"..\", features = [\"async\", \"postgres\"] }` \
             (with your backend's feature), and a diesel-async connection"
        );
        ::core::unreachable!()
    };
}
