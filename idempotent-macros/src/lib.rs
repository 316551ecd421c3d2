//! The `#[idempotent]` attribute. Depend on `diesel-idempotent`, which
//! re-exports it and documents it; this crate only parses, validates and
//! emits calls into the runtime.
#![warn(missing_docs)]
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proc_macro::TokenStream;

mod attr;
mod expand;

/// Makes a Diesel function idempotent. See the `diesel_idempotent` crate.
#[proc_macro_attribute]
pub fn idempotent(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(attr.into(), item.into()).into()
}

#[cfg(test)]
mod snapshots;
