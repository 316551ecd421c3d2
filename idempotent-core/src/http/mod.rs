//! HTTP: the `Idempotency-Key` header, problem details (RFC 9457) for the
//! library's errors, and responses that replay with their status.
//!
//! The rules live here once; [`axum`] is the framework's edge (extractors,
//! `IntoResponse`).

pub mod axum;
mod header;
mod problem;
mod reply;

pub use header::KeyRejection;
pub use problem::{Problem, problem_types};
pub use reply::Reply;
