//! What each call reports about itself: one `tracing` span (feature
//! `tracing`) and three metrics through the `metrics` facade (feature
//! `metrics`).
//!
//! The span, named `idempotent`, is opened where a call starts and carries
//! OpenTelemetry's field names:
//!
//! | field | when | value |
//! |---|---|---|
//! | `otel.name` | at creation | `idempotent {namespace}` |
//! | `namespace` | at creation | the function's stable name |
//! | `pattern` | at creation | `key`, `hash` or `get_or_create` |
//! | `db.system.name` | at creation | `postgresql`, `mysql` or `sqlite` |
//! | `key.hash` | at creation | the first 16 hex digits of the SHA-256 of the key (empty for `get_or_create`) |
//! | `outcome` | at the end | a [`CallOutcome`] |
//! | `replayed` | at the end | `true` when the answer came from the record |
//! | `error.type` | on failure | an [`Error::kind`] (`in_flight`, `payload_mismatch`, `database`, ..), or the body's error type's name |
//! | `otel.status_code` | on failure | `ERROR` |
//!
//! The span is at INFO. The raw key and scope never appear at INFO or
//! above: one TRACE event inside the span carries them (`key`, `scope`),
//! for a developer who turns TRACE on for `idempotent_core`. A DEBUG event
//! closes each call with its outcome.
//!
//! The async path attaches the span with `Instrument` (the one procedure
//! both drivers run is instrumented as a whole); the span is never entered
//! across an `.await`.
//!
//! The metrics (described with units by [`describe_metrics`]):
//!
//! | name | kind | labels |
//! |---|---|---|
//! | [`REQUESTS_TOTAL`] | counter | `function`, `backend`, `outcome` |
//! | [`DURATION_SECONDS`] | histogram, seconds | `function`, `backend`, `phase` |
//! | [`PURGED_TOTAL`] | counter | `backend` |
//!
//! `function` is the namespace (the function's stable name), `backend` the
//! `db.system.name`, `outcome` a [`CallOutcome`], `phase` one of [`PHASES`].
//! No key, scope or tenant is ever a label, so the number of series is
//! bounded by the number of functions. The library installs no exporter:
//! with no recorder installed, `metrics` hands each metric to its no-op
//! recorder.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::Error;

/// The counter of calls: `idempotency_requests_total{function, backend,
/// outcome}`.
pub const REQUESTS_TOTAL: &str = "idempotency_requests_total";

/// The histogram of each phase's duration, in seconds:
/// `idempotency_duration_seconds{function, backend, phase}`.
pub const DURATION_SECONDS: &str = "idempotency_duration_seconds";

/// The counter of expired records deleted by a purge:
/// `idempotency_purged_total{backend}`.
pub const PURGED_TOTAL: &str = "idempotency_purged_total";

/// The phases of [`DURATION_SECONDS`]:
/// - `claim`: writing or finding the call's record, from the start of the
///   library's transaction (or, with `mode = "optimistic"`, from the end of
///   the body) to the database's answer;
/// - `body`: the function's body;
/// - `complete`: from the end of the body (optimistic: of the claim) to the
///   end of the call: storing the result and committing;
/// - `replay`: a call answered from the record, from its start to its end.
///
/// `claim`, `body` and `complete` are observed for each call that ran its
/// body and stored the result; `replay` for each replay. `get_or_create`
/// observes `body` (the create) and `complete` (its commit) when it
/// created the entity, `replay` when it found it.
pub const PHASES: [&str; 4] = ["claim", "body", "complete", "replay"];

#[cfg(feature = "metrics")]
pub use metrics;

/// Which pattern a call follows: the span's `pattern` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// `#[idempotent(key = ..)]` or [`crate::Call`].
    Key,
    /// `#[idempotent(hash ..)]`: the key is the arguments' fingerprint.
    Hash,
    /// `#[idempotent(get_or_create = ..)]`.
    GetOrCreate,
}

impl Pattern {
    /// `key`, `hash` or `get_or_create`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Pattern::Key => "key",
            Pattern::Hash => "hash",
            Pattern::GetOrCreate => "get_or_create",
        }
    }
}

/// How a call ended: the span's `outcome` field and the `outcome` label of
/// [`REQUESTS_TOTAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallOutcome {
    /// The body ran and its result was stored (a terminal error's too);
    /// `get_or_create`: the entity was created.
    Executed,
    /// The answer is an earlier call's stored result; `get_or_create`: the
    /// entity was found.
    Replayed,
    /// Another call holds the key ([`Error::InFlight`]).
    InFlight,
    /// The key was used with another request ([`Error::PayloadMismatch`]).
    Mismatch,
    /// The key or scope is not acceptable ([`Error::InvalidKey`],
    /// [`Error::InvalidScope`]).
    InvalidKey,
    /// The body (or `get_or_create`'s lookup or create) returned its error;
    /// nothing was stored.
    BodyError,
    /// Any other error of the library or the database.
    Error,
}

impl CallOutcome {
    /// Every outcome, in the order above.
    pub const ALL: [CallOutcome; 7] = [
        CallOutcome::Executed,
        CallOutcome::Replayed,
        CallOutcome::InFlight,
        CallOutcome::Mismatch,
        CallOutcome::InvalidKey,
        CallOutcome::BodyError,
        CallOutcome::Error,
    ];

    /// `executed`, `replayed`, `in_flight`, `mismatch`, `invalid_key`,
    /// `body_error` or `error`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Executed => "executed",
            CallOutcome::Replayed => "replayed",
            CallOutcome::InFlight => "in_flight",
            CallOutcome::Mismatch => "mismatch",
            CallOutcome::InvalidKey => "invalid_key",
            CallOutcome::BodyError => "body_error",
            CallOutcome::Error => "error",
        }
    }

    /// The outcome of a call that failed with the library's `error`.
    pub(crate) fn of_error(error: &Error) -> Self {
        match error {
            Error::InFlight { .. } => CallOutcome::InFlight,
            Error::PayloadMismatch { .. } => CallOutcome::Mismatch,
            Error::InvalidKey { .. } | Error::InvalidScope { .. } => CallOutcome::InvalidKey,
            _ => CallOutcome::Error,
        }
    }
}

/// How a call ended, with what its span records on failure.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) struct Ending {
    pub(crate) outcome: CallOutcome,
    /// `error.type`: the library error's kind or the body's error type.
    pub(crate) error_type: Option<&'static str>,
}

impl Ending {
    pub(crate) const EXECUTED: Ending = Ending {
        outcome: CallOutcome::Executed,
        error_type: None,
    };
    pub(crate) const REPLAYED: Ending = Ending {
        outcome: CallOutcome::Replayed,
        error_type: None,
    };
    /// A call whose body panicked (the panic goes on to the caller).
    pub(crate) const PANICKED: Ending = Ending {
        outcome: CallOutcome::BodyError,
        error_type: Some("panic"),
    };

    /// A call that failed with the library's `error`.
    pub(crate) fn failed(error: &Error) -> Ending {
        Ending {
            outcome: CallOutcome::of_error(error),
            error_type: Some(error.kind()),
        }
    }

    /// A call whose body (or lookup) returned an error of type `E`.
    pub(crate) fn body_failed<E>() -> Ending {
        Ending {
            outcome: CallOutcome::BodyError,
            error_type: Some(std::any::type_name::<E>()),
        }
    }
}

/// The instants of a call that its phases are measured between.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mark {
    ClaimStart = 0,
    ClaimEnd = 1,
    BodyStart = 2,
    BodyEnd = 3,
}

/// One call's span and measurements. Every method is a no-op for a
/// feature that is off.
pub(crate) struct Telemetry<'a> {
    #[cfg(feature = "tracing")]
    span: tracing::Span,
    #[cfg(feature = "metrics")]
    timings: timings::Timings<'a>,
    namespace: PhantomData<&'a str>,
    /// Set by [`Telemetry::finish`]: a call dropped while its thread
    /// panics without it (a panic in a lookup, in the library) is recorded
    /// as a panic when it is dropped.
    finished: AtomicBool,
}

impl Drop for Telemetry<'_> {
    fn drop(&mut self) {
        if !*self.finished.get_mut() && std::thread::panicking() {
            self.finish(Ending::PANICKED);
        }
    }
}

impl<'a> Telemetry<'a> {
    /// Opens the call's span and starts its clock.
    #[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
    pub(crate) fn start(
        pattern: Pattern,
        namespace: &'a str,
        scope: &str,
        key: &str,
        db_system: &'static str,
    ) -> Self {
        Telemetry {
            #[cfg(feature = "tracing")]
            span: spans::open(pattern, namespace, scope, key, db_system),
            #[cfg(feature = "metrics")]
            timings: timings::Timings::start(namespace, db_system),
            namespace: PhantomData,
            finished: AtomicBool::new(false),
        }
    }

    /// The call's span, to attach to the call's future.
    pub(crate) fn traced(&self) -> Traced {
        Traced {
            #[cfg(feature = "tracing")]
            span: self.span.clone(),
        }
    }

    /// Notes the instant `mark` for the phase durations.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn mark(&self, mark: Mark) {
        #[cfg(feature = "metrics")]
        self.timings.mark(mark);
    }

    /// Records how the call ended: on the span, and in the metrics.
    #[cfg_attr(
        not(any(feature = "tracing", feature = "metrics")),
        allow(unused_variables)
    )]
    pub(crate) fn finish(&self, ending: Ending) {
        let first = !self.finished.swap(true, Ordering::Relaxed);
        #[cfg(feature = "tracing")]
        if first {
            spans::finish(&self.span, ending);
        }
        #[cfg(feature = "metrics")]
        if first {
            self.timings.finish(ending.outcome);
        }
    }
}

/// The first 16 hex digits of the key's SHA-256: enough to tell keys apart
/// in traces and logs and to find a known key's calls, without the key.
pub(crate) fn short_hash(key: &str) -> String {
    use sha2::Digest;
    use std::fmt::Write;
    let digest = sha2::Sha256::digest(key.as_bytes());
    let mut hex = String::with_capacity(16);
    for byte in &digest[..8] {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// A call's span, before it is attached to the call's future.
pub(crate) struct Traced {
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

impl Traced {
    /// `future`, inside the span each time it is polled (`Instrument`):
    /// never entered across an `.await`.
    ///
    /// The future is boxed first. `Instrumented` adds levels to the
    /// future's type, and a call made inside another call's body nests its
    /// whole future in the outer one's: the box (one allocation per call,
    /// with the `tracing` feature only) keeps the outer future's type as
    /// deep as it is without the feature, within rustc's recursion limit
    /// for computing a type's layout.
    pub(crate) fn wrap<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        #[cfg(feature = "tracing")]
        {
            tracing::Instrument::instrument(Box::pin(future), self.span)
        }
        #[cfg(not(feature = "tracing"))]
        {
            future
        }
    }
}

/// Counts `rows` expired records deleted by one purge batch.
#[inline]
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn purged(db_system: &'static str, rows: usize) {
    #[cfg(feature = "metrics")]
    if rows > 0 {
        timings::describe_once();
        metrics::counter!(PURGED_TOTAL, "backend" => db_system)
            .increment(u64::try_from(rows).unwrap_or(u64::MAX));
    }
}

/// Describes the three metrics (help text and unit) to the recorder
/// installed now. Called by the library before its first metric is
/// recorded; call it yourself after installing a recorder if calls ran
/// before it was installed.
#[cfg(feature = "metrics")]
pub fn describe_metrics() {
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        metrics::Unit::Count,
        "Calls of idempotent functions, by function, backend and outcome (executed, replayed, \
         in_flight, mismatch, invalid_key, body_error, error)."
    );
    metrics::describe_histogram!(
        DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time spent in each phase of an idempotent call (claim, body, complete, replay)."
    );
    metrics::describe_counter!(
        PURGED_TOTAL,
        metrics::Unit::Count,
        "Expired idempotency records deleted by purges."
    );
}

#[cfg(feature = "tracing")]
mod spans {
    use tracing::field::Empty;

    use super::{Ending, Pattern};

    pub(super) fn open(
        pattern: Pattern,
        namespace: &str,
        scope: &str,
        key: &str,
        db_system: &'static str,
    ) -> tracing::Span {
        let span = tracing::info_span!(
            "idempotent",
            otel.name = %format_args!("idempotent {namespace}"),
            namespace,
            pattern = pattern.as_str(),
            db.system.name = db_system,
            key.hash = Empty,
            outcome = Empty,
            replayed = Empty,
            error.type = Empty,
            otel.status_code = Empty,
        );
        if !span.is_disabled() && !key.is_empty() {
            span.record("key.hash", super::short_hash(key).as_str());
        }
        tracing::trace!(parent: &span, key, scope, "idempotency key");
        span
    }

    pub(super) fn finish(span: &tracing::Span, ending: Ending) {
        let outcome = ending.outcome.as_str();
        span.record("outcome", outcome);
        span.record("replayed", ending.outcome == super::CallOutcome::Replayed);
        if let Some(error_type) = ending.error_type {
            span.record("error.type", error_type);
            span.record("otel.status_code", "ERROR");
        }
        tracing::debug!(parent: span, outcome, "idempotent call finished");
    }
}

#[cfg(feature = "metrics")]
mod timings {
    use std::sync::Once;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use super::{CallOutcome, DURATION_SECONDS, Mark, REQUESTS_TOTAL};

    /// A call's labels, its start and its marks (nanoseconds after the
    /// start, plus one; 0 = not reached). Atomics, so that the procedure's
    /// future stays `Send` while it holds a shared reference.
    pub(super) struct Timings<'a> {
        function: &'a str,
        backend: &'static str,
        start: Instant,
        marks: [AtomicU64; 4],
    }

    impl<'a> Timings<'a> {
        pub(super) fn start(function: &'a str, backend: &'static str) -> Self {
            Timings {
                function,
                backend,
                start: Instant::now(),
                marks: Default::default(),
            }
        }

        pub(super) fn mark(&self, mark: Mark) {
            let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
            self.marks[mark as usize].store(nanos + 1, Ordering::Relaxed);
        }

        fn at(&self, mark: Mark) -> Option<Duration> {
            match self.marks[mark as usize].load(Ordering::Relaxed) {
                0 => None,
                nanos => Some(Duration::from_nanos(nanos - 1)),
            }
        }

        pub(super) fn finish(&self, outcome: CallOutcome) {
            describe_once();
            let end = self.start.elapsed();
            let function = self.function.to_owned();
            metrics::counter!(
                REQUESTS_TOTAL,
                "function" => function.clone(),
                "backend" => self.backend,
                "outcome" => outcome.as_str(),
            )
            .increment(1);
            let phase = |phase: &'static str, from: Duration, to: Duration| {
                metrics::histogram!(
                    DURATION_SECONDS,
                    "function" => function.clone(),
                    "backend" => self.backend,
                    "phase" => phase,
                )
                .record(to.saturating_sub(from).as_secs_f64());
            };
            match outcome {
                CallOutcome::Executed => {
                    let claim = self.at(Mark::ClaimStart).zip(self.at(Mark::ClaimEnd));
                    if let Some((from, to)) = claim {
                        phase("claim", from, to);
                    }
                    let body = self.at(Mark::BodyStart).zip(self.at(Mark::BodyEnd));
                    if let Some((from, to)) = body {
                        phase("body", from, to);
                    }
                    let last = [claim.map(|(_, to)| to), body.map(|(_, to)| to)]
                        .into_iter()
                        .flatten()
                        .max();
                    if let Some(from) = last {
                        phase("complete", from, end);
                    }
                }
                CallOutcome::Replayed => phase("replay", Duration::ZERO, end),
                _ => {}
            }
        }
    }

    /// [`super::describe_metrics`], once per process.
    pub(super) fn describe_once() {
        static DESCRIBED: Once = Once::new();
        DESCRIBED.call_once(super::describe_metrics);
    }
}
