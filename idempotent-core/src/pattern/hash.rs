//! The call-history pattern: the key is derived from the call itself.
//!
//! `#[idempotent(hash)]` uses the [`Fingerprint`] of the arguments as the
//! key; `#[idempotent(hash(a, b.c))]` the fingerprint of the named values.
//! The helpers here derive the same keys outside the attribute.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::Error;
use crate::fingerprint::Fingerprint;
use crate::pattern::key::{MAX_KEY_LEN, validate_key};

/// The deterministic id of `value`: the key `#[idempotent(hash)]` derives
/// for a function whose only fingerprinted argument is `value` (and the key
/// `hash(value)` derives). A producer can stamp it on an event so that the
/// consumer, and anyone else, agrees on the event's identity.
///
/// For several values, `Fingerprint::builder().arg(&a).arg(&b).finish()`
/// gives the key of `hash(a, b)`.
pub fn fingerprint<T: Serialize + ?Sized>(value: &T) -> Result<Fingerprint, Error> {
    Fingerprint::of(value)
}

/// The key of item `index` of a batch sent under `key`: `"{key}:item:{index}"`.
///
/// Process each item of a batch in its own idempotent call under its sub-key:
/// a retried batch whose first attempt stopped at item k replays items
/// before k and runs only the rest. When the result would exceed 255 bytes,
/// the sub-key is `"sha256:"` and the hex digest of that text instead, so
/// every valid key has valid sub-keys.
pub fn sub_key(key: &str, index: usize) -> String {
    let sub = format!("{key}:item:{index}");
    if sub.len() <= MAX_KEY_LEN {
        sub
    } else {
        sha256_key(sub.as_bytes())
    }
}

/// A webhook's key: the provider's delivery id when it sent a valid one,
/// else `"sha256:"` and the hex SHA-256 of the raw request body (so a
/// redelivered body is recognised even without an id).
pub fn id_or_body_hash(id: Option<&str>, raw_body: &[u8]) -> String {
    match id {
        Some(id) if validate_key(id).is_ok() => id.to_owned(),
        _ => sha256_key(raw_body),
    }
}

fn sha256_key(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_keys_are_valid_keys() {
        assert_eq!(sub_key("batch-7", 3), "batch-7:item:3");
        let long = "k".repeat(255);
        let sub = sub_key(&long, 12);
        assert!(
            sub.starts_with("sha256:") && validate_key(&sub).is_ok(),
            "{sub}"
        );
        assert_ne!(sub, sub_key(&long, 13));
    }

    #[test]
    fn webhook_key_prefers_a_valid_id() {
        assert_eq!(id_or_body_hash(Some("evt_123"), b"{}"), "evt_123");
        let by_body = id_or_body_hash(None, b"{\"a\":1}");
        assert!(by_body.starts_with("sha256:"));
        assert_eq!(by_body, id_or_body_hash(Some(""), b"{\"a\":1}"));
        assert_ne!(by_body, id_or_body_hash(None, b"{\"a\":2}"));
    }
}
