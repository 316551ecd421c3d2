//! axum 0.8 (feature `axum`): the `Idempotency-Key` extractor, problem
//! details for the library's errors and for axum's own rejections, and
//! [`Reply`], the response that replays with its status.
//!
//! ```no_run
//! # mod diesel_idempotent {
//! #     pub use idempotent_core::*;
//! #     pub mod axum { pub use idempotent_core::http::axum::*; }
//! # }
//! # #[cfg(all(feature = "async", feature = "postgres"))]
//! # mod demo {
//! # use crate::diesel_idempotent;
//! use axum::extract::State;
//! use diesel_async::AsyncPgConnection;
//! use diesel_idempotent::axum::{IdempotencyKey, Json, Problem, Reply};
//! # use diesel_idempotent::Call;
//! # #[derive(serde::Serialize, serde::Deserialize)] pub struct Payment { id: i64 }
//! # #[derive(serde::Serialize, serde::Deserialize)] pub struct NewPayment { amount_cents: i64 }
//! # pub enum ApiError { Idempotency(diesel_idempotent::Error) }
//! # impl From<diesel_idempotent::Error> for ApiError { fn from(e: diesel_idempotent::Error) -> Self { Self::Idempotency(e) } }
//! # impl axum::response::IntoResponse for ApiError { fn into_response(self) -> axum::response::Response { match self { Self::Idempotency(e) => e.into_response() } } }
//! # async fn conn() -> AsyncPgConnection { unimplemented!() }
//! async fn create_payment(
//!     key: IdempotencyKey,
//!     Json(request): Json<NewPayment>,
//! ) -> Result<Reply<Payment>, ApiError> {
//!     let mut conn = conn().await;
//!     // The key's method and matched route join the request's fingerprint.
//!     Call::new("payments.create", key.as_str())
//!         .request(&(key.method().as_str(), key.route(), &request))
//!         .run_response_async(&mut conn, async |conn: &mut AsyncPgConnection| {
//!             // ... insert the payment ...
//!             Ok(Reply::created(Payment { id: 1 }))
//!         })
//!         .await
//! }
//! # }
//! # fn main() {}
//! ```
//!
//! With `#[idempotent(key = key, ..)]` on a function that takes the
//! `IdempotencyKey`, the method and route join the fingerprint by
//! themselves.

use ::axum::extract::rejection::{JsonRejection, PathRejection};
use ::axum::extract::{
    FromRequest, FromRequestParts, MatchedPath, OptionalFromRequestParts, Request,
};
use ::axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use ::axum::http::request::Parts;
use ::axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use ::axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::header::parse_key;
pub use super::{KeyRejection, Problem, Reply, problem_types};
use crate::Error;
use crate::pattern::key::KeySource;

/// `Idempotency-Key`, the request header.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// `Idempotent-Replayed`, the response header of a replay (`true`).
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// The request's `Idempotency-Key`, with the method and matched route it
/// came with.
///
/// Read from the header in both forms clients send: a bare token
/// (`Idempotency-Key: 8e03978e-40d5-43e8-bc93-6894a57f9324`) or an RFC 8941
/// sf-string (`Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"`).
/// A request without the header, with an empty or over-long key (over 255
/// bytes), with characters outside visible ASCII, with the header twice
/// or a list in it, is rejected with a 400 problem
/// ([`problem_types::INVALID_KEY`]). Take `Option<IdempotencyKey>` to
/// accept requests without a key (and run them without deduplication); a
/// key that is present but invalid is still a 400.
///
/// Handlers that do not take it are untouched: only those that use the
/// extractor participate.
///
/// As the key of `#[idempotent(key = key, ..)]`, its method and matched
/// route (`MatchedPath`, or the URI's path outside a `Router`) join the
/// request's fingerprint: the same key sent to another route or with
/// another method is another request (a 422 when the function is the
/// same; with different functions the records are apart anyway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    key: String,
    method: Method,
    route: String,
}

impl IdempotencyKey {
    /// The key.
    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// The request's method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The request's matched route (`/payments/{id}`), or its path when no
    /// route was matched.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The key, consuming the extractor.
    pub fn into_string(self) -> String {
        self.key
    }

    fn from_parts(parts: &Parts) -> Result<Option<Self>, KeyRejection> {
        let key = match parse_key(
            parts
                .headers
                .get_all(&IDEMPOTENCY_KEY)
                .iter()
                .map(HeaderValue::as_bytes),
        ) {
            Ok(key) => key,
            Err(KeyRejection::Missing) => return Ok(None),
            Err(rejection) => return Err(rejection),
        };
        let route = match parts.extensions.get::<MatchedPath>() {
            Some(matched) => matched.as_str().to_owned(),
            None => parts.uri.path().to_owned(),
        };
        Ok(Some(IdempotencyKey {
            key,
            method: parts.method.clone(),
            route,
        }))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Problem> {
        match IdempotencyKey::from_parts(parts) {
            Ok(Some(key)) => Ok(key),
            Ok(None) => Err(Problem::from(KeyRejection::Missing)),
            Err(rejection) => Err(Problem::from(rejection)),
        }
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, Problem> {
        IdempotencyKey::from_parts(parts).map_err(Problem::from)
    }
}

// The error for a key that is not text says what a key may be; a list of
// these impls would only add noise to it.
#[diagnostic::do_not_recommend]
impl KeySource for IdempotencyKey {
    fn key_text(&self) -> &str {
        &self.key
    }

    fn request_line(&self) -> Option<(&str, &str)> {
        Some((self.method.as_str(), &self.route))
    }
}

#[diagnostic::do_not_recommend]
impl KeySource for &IdempotencyKey {
    fn key_text(&self) -> &str {
        IdempotencyKey::key_text(self)
    }

    fn request_line(&self) -> Option<(&str, &str)> {
        IdempotencyKey::request_line(self)
    }
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let retry_after = self.retry_after;
        let mut response = match serde_json::to_vec(&self) {
            Ok(body) => (status, [(CONTENT_TYPE, PROBLEM_JSON)], body).into_response(),
            // Only an extension member's own `Serialize` can fail here.
            Err(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(CONTENT_TYPE, PROBLEM_JSON)],
                serde_json::to_vec(&Problem::internal()).unwrap_or_default(),
            )
                .into_response(),
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl IntoResponse for KeyRejection {
    fn into_response(self) -> Response {
        Problem::from(self).into_response()
    }
}

/// The library's error as a problem: 400 for an invalid key, 422 for a key
/// reused with another request, 409 (with `Retry-After`) for a request in
/// flight, 500 with no detail for everything else, which is logged
/// (`tracing`, at error level, with the error's text, its key replaced by
/// the key's hash: [`Error::redacted`]). Forward to it
/// from your own error type:
///
/// ```ignore
/// impl IntoResponse for AppError {
///     fn into_response(self) -> Response {
///         match self {
///             AppError::Idempotency(e) => e.into_response(),
///             // ...
///         }
///     }
/// }
/// ```
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let problem = Problem::from(&self);
        if problem.status_code().is_server_error() {
            // The key is a client's token: the log names its hash, as the
            // call's span does, never the key itself.
            tracing::error!(
                error.type = self.kind(),
                "idempotent request failed: {}",
                self.redacted()
            );
        }
        problem.into_response()
    }
}

impl<T: Serialize> IntoResponse for Reply<T> {
    fn into_response(self) -> Response {
        let body = match self.body_json() {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "could not serialize a reply's body");
                return Problem::internal().into_response();
            }
        };
        let content_type = if self.is_terminal() {
            PROBLEM_JSON
        } else {
            JSON
        };
        let mut response = (self.status(), [(CONTENT_TYPE, content_type)], body).into_response();
        if self.is_replayed() {
            response.headers_mut().insert(
                IDEMPOTENT_REPLAYED.clone(),
                HeaderValue::from_static("true"),
            );
        }
        response
    }
}

/// axum's `Json` extractor, rejecting with a problem
/// ([`problem_types::INVALID_REQUEST`], with axum's status: 400 for
/// malformed JSON, 422 for a missing field or a wrong type, 415 without a
/// JSON content type, 413 for a body over the limit).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        match ::axum::Json::<T>::from_request(request, state).await {
            Ok(::axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(Problem::from(rejection)),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        ::axum::Json(self.0).into_response()
    }
}

impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Self {
        Problem::invalid_request(rejection.status(), rejection.body_text())
    }
}

impl From<PathRejection> for Problem {
    fn from(rejection: PathRejection) -> Self {
        Problem::invalid_request(rejection.status(), rejection.body_text())
    }
}
