//! The `#[idempotent]` attribute. Depend on `diesel-idempotent`, which
//! re-exports it and documents it; this crate only parses, validates and
//! emits calls into the runtime.
#![warn(missing_docs)]
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proc_macro::TokenStream;

mod attr;
mod expand;

/// Makes a Diesel function idempotent. See the `diesel_idempotent` crate
/// for the options and the guarantees.
///
/// # `async fn`
///
/// With the `async` feature of `diesel-idempotent`, the attribute also
/// applies to an `async fn` whose connection is `&mut` a diesel-async
/// connection (`AsyncPgConnection`, `AsyncMysqlConnection`,
/// `SyncConnectionWrapper<SqliteConnection>`, or a generic
/// `C: AsyncIdempotentConnection`). The signature stays as written, `async`
/// included; the body runs in an async closure over the connection and the
/// call is awaited, so `?`, early `return` and `.await` in the body behave as
/// without the attribute. Every option means what it means on a plain `fn`,
/// and:
///
/// - `abandon_after = "30s"`, only on an `async fn` (PostgreSQL and MySQL):
///   how long the call's transaction may sit idle (its future dropped, or its
///   body stalled) before the server ends the session and frees the key; a
///   humantime literal checked at compile time (more than zero, at most
///   24 hours, whole milliseconds). On a plain `fn` it is a compile error: a
///   blocking call cannot be dropped mid-way. With `get_or_create` it is one
///   too: no key is held.
/// - `get_or_create = LOOKUP`: the lookup is a future and the generated code
///   awaits it (up to twice, as on a plain `fn`), so write it without
///   `.await`, which is a compile error:
///   `get_or_create = find_user(conn, email)` with
///   `async fn find_user(conn: &mut AsyncPgConnection, email: &str)
///   -> QueryResult<Option<User>>`.
///
/// Without the `async` feature an `async fn` is a compile error at its
/// `async` token. A blocking connection (`SqliteConnection`) under an
/// `async fn`, or an async one (`AsyncPgConnection`) under a plain `fn`, is a
/// compile error at the connection parameter.
#[proc_macro_attribute]
pub fn idempotent(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(attr.into(), item.into()).into()
}

#[cfg(test)]
mod snapshots;
