//! Identifiers derived from an idempotency record, for what happens outside
//! the database: the id of an outbox effect, the key of an external call.
//! A receiver deduplicates by them, so they must be the same every time the
//! record's call reaches the same point.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// The longest derived identifier written out in full: the length of a key
/// the library accepts, and of the `Idempotency-Key` header it reads.
pub(crate) const MAX_PLAIN_LEN: usize = 255;

/// `{namespace}/{scope}/{key}/{suffix}` as it is when it is at most 255
/// bytes of visible ASCII (what an `Idempotency-Key` header, a Redis key or
/// the record table's key column all take); otherwise `sha256:` and the 64
/// lowercase hex digits of that text's SHA-256.
pub(crate) fn derived_id(namespace: &str, scope: &str, key: &str, suffix: &str) -> String {
    let full = format!("{namespace}/{scope}/{key}/{suffix}");
    if full.len() <= MAX_PLAIN_LEN && full.bytes().all(|b| b.is_ascii_graphic()) {
        return full;
    }
    let digest = Sha256::digest(full.as_bytes());
    let mut hashed = String::with_capacity(7 + 64);
    hashed.push_str("sha256:");
    for byte in digest {
        // Writing into a `String` cannot fail.
        let _ = write!(hashed, "{byte:02x}");
    }
    hashed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_visible_ascii_is_written_in_full() {
        assert_eq!(
            derived_id("payments.create", "", "k-1", "effect/1"),
            "payments.create//k-1/effect/1"
        );
        assert_eq!(
            derived_id("n", "tenant-7", "k", "charge"),
            "n/tenant-7/k/charge"
        );
    }

    #[test]
    fn long_or_non_ascii_text_is_hashed_to_a_fixed_length() {
        let long = "k".repeat(255);
        let id = derived_id("n", "", &long, "effect/1");
        assert!(id.starts_with("sha256:"), "{id}");
        assert_eq!(id.len(), 7 + 64);
        assert_eq!(id, derived_id("n", "", &long, "effect/1"), "stable");
        assert_ne!(id, derived_id("n", "", &long, "effect/2"));
        let spaced = derived_id("n", "a tenant", "k", "effect/1");
        assert!(spaced.starts_with("sha256:"), "{spaced}");
        let accented = derived_id("n", "", "k", "é");
        assert_eq!(accented.len(), 71);
    }

    #[test]
    fn the_hashed_form_is_the_sha256_of_the_full_text() {
        let long = "x".repeat(300);
        let full = format!("n//{long}/effect/1");
        let expected: String = Sha256::digest(full.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            derived_id("n", "", &long, "effect/1"),
            format!("sha256:{expected}")
        );
    }
}
