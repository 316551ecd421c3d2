//! The conformance suite on SQLite (a temporary file, WAL, busy timeout).
#![cfg(feature = "sqlite")]

mod common;

conformance!(common::Sqlite);
