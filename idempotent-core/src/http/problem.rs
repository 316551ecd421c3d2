//! RFC 9457 problem details: the body of every error answer.

use ::axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::KeyRejection;
use crate::Error;

/// The `type` URIs of the problems this library answers with. Stable: a
/// client may match on them. Each names a section of `docs/problems.md` in
/// the repository, which says what the client should do.
pub mod problem_types {
    /// 400: the `Idempotency-Key` header is missing, sent twice or as a
    /// list, or breaks the key rules (1 to 255 visible ASCII characters).
    pub const INVALID_KEY: &str = "https://github.com/diesel-idempotent/diesel-idempotent/blob/main/docs/problems.md#invalid-idempotency-key";
    /// 422: the key was used before with another request (another body,
    /// method or route). Send a new key for a new request.
    pub const KEY_REUSED: &str = "https://github.com/diesel-idempotent/diesel-idempotent/blob/main/docs/problems.md#idempotency-key-reused";
    /// 409: the first request with this key is still being processed.
    /// Retry after `Retry-After` seconds, with the same key.
    pub const IN_FLIGHT: &str = "https://github.com/diesel-idempotent/diesel-idempotent/blob/main/docs/problems.md#request-in-flight";
    /// 400, 413, 415 or 422: the request itself is invalid (malformed
    /// JSON, a missing field, a wrong content type). Distinct from
    /// [`KEY_REUSED`] even when both are 422. Fix the request; retrying it
    /// unchanged will fail the same way.
    pub const INVALID_REQUEST: &str = "https://github.com/diesel-idempotent/diesel-idempotent/blob/main/docs/problems.md#invalid-request";
    /// 500: the server failed. Retry with the same key, never a new one:
    /// work that was stored answers from its record.
    pub const INTERNAL: &str = "https://github.com/diesel-idempotent/diesel-idempotent/blob/main/docs/problems.md#internal-error";
}

/// How long a client should wait before it retries a request that is in
/// flight (`Retry-After`, in seconds).
pub(crate) const IN_FLIGHT_RETRY_AFTER_SECS: u64 = 1;

/// An RFC 9457 problem details object, answered as
/// `application/problem+json`.
///
/// The library's errors convert into one (`Problem::from(&error)`), and so
/// do the rejections of this module's extractors. A handler's own
/// problems (a terminal error such as a declined card) are built with
/// [`Problem::new`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// A URI that identifies the problem type.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What happened, for this occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Extension members, serialized beside the standard ones.
    #[serde(flatten)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
    /// `Retry-After`, in seconds, sent as a header when this problem is
    /// answered by itself. Not part of the body: a terminal
    /// [`Reply`](super::Reply) stores and replays the body only.
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    /// A problem of `type_uri` with this status and title.
    pub fn new(status: StatusCode, type_uri: impl Into<String>, title: impl Into<String>) -> Self {
        Problem {
            type_uri: type_uri.into(),
            title: title.into(),
            status: status.as_u16(),
            detail: None,
            extensions: serde_json::Map::new(),
            retry_after: None,
        }
    }

    /// With a `detail` for this occurrence.
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// With an extension member.
    #[must_use]
    pub fn with_extension(mut self, name: impl Into<String>, value: serde_json::Value) -> Self {
        self.extensions.insert(name.into(), value);
        self
    }

    /// An invalid request ([`problem_types::INVALID_REQUEST`]) with this
    /// status (400, 413, 415 or 422) and detail.
    pub fn invalid_request(status: StatusCode, detail: impl Into<String>) -> Self {
        let title = match status {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "Unsupported media type",
            StatusCode::PAYLOAD_TOO_LARGE => "Request body too large",
            StatusCode::UNPROCESSABLE_ENTITY => "Invalid request body",
            _ => "Malformed request",
        };
        Problem::new(status, problem_types::INVALID_REQUEST, title).with_detail(detail)
    }

    /// The 500 answer: no detail, nothing internal.
    pub fn internal() -> Self {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            problem_types::INTERNAL,
            "Internal server error",
        )
        .with_detail("the request failed; retry it with the same key, never with a new one")
    }

    /// The status, as a `StatusCode` (500 if `status` is not one).
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<&KeyRejection> for Problem {
    fn from(rejection: &KeyRejection) -> Self {
        Problem::new(
            StatusCode::BAD_REQUEST,
            problem_types::INVALID_KEY,
            "Invalid Idempotency-Key header",
        )
        .with_detail(rejection.to_string())
    }
}

impl From<KeyRejection> for Problem {
    fn from(rejection: KeyRejection) -> Self {
        Problem::from(&rejection)
    }
}

/// The answer for each of the library's errors. Only what the client
/// caused is described (the key, its reuse, a request in flight); every
/// other error is a 500 with no detail (see [`Error`]: log it, with
/// `{:?}`).
impl From<&Error> for Problem {
    fn from(error: &Error) -> Self {
        match error {
            Error::InvalidKey { .. } => Problem::new(
                StatusCode::BAD_REQUEST,
                problem_types::INVALID_KEY,
                "Invalid Idempotency-Key header",
            )
            .with_detail(error.to_string()),
            Error::PayloadMismatch { .. } => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                problem_types::KEY_REUSED,
                "Idempotency key reused with another request",
            )
            .with_detail(error.to_string()),
            Error::InFlight { .. } => {
                let mut problem = Problem::new(
                    StatusCode::CONFLICT,
                    problem_types::IN_FLIGHT,
                    "Request in flight",
                )
                .with_detail(error.to_string());
                problem.retry_after = Some(IN_FLIGHT_RETRY_AFTER_SECS);
                problem
            }
            // Another run took the call over: its answer comes to a retry.
            Error::LeaseLost { .. } => {
                let mut problem = Problem::new(
                    StatusCode::CONFLICT,
                    problem_types::IN_FLIGHT,
                    "Request in flight",
                )
                .with_detail(error.to_string());
                problem.retry_after = Some(IN_FLIGHT_RETRY_AFTER_SECS);
                problem
            }
            _ => Problem::internal(),
        }
    }
}

impl From<Error> for Problem {
    fn from(error: Error) -> Self {
        Problem::from(&error)
    }
}
