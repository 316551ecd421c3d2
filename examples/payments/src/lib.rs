//! The package of the HTTP examples, `payments_server` and
//! `payments_client` (`examples/payments_server.rs`,
//! `examples/payments_client.rs`). It holds no code of its own: it exists
//! so that `cargo run --example payments_server` from the repository root
//! builds them with the features they need.
