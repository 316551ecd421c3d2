//! The patterns' runtime. Each pattern is a small decision procedure over the
//! statements of [`crate::store::IdempotentConnection`].

pub mod get_or_create;
pub mod hash;
pub mod key;
