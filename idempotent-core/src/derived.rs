//! Identifiers derived from an idempotency record, for what happens outside
//! the database: the id of an outbox effect, the key of an external call.
//! A receiver deduplicates by them, so they must be the same every time the
//! record's call reaches the same point, and differ between any two calls
//! or points.

use std::borrow::Cow;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// The longest derived identifier written out in full: the length of a key
/// the library accepts, and of the `Idempotency-Key` header it reads.
pub(crate) const MAX_PLAIN_LEN: usize = 255;

/// One part of a derived identifier, with `%` written `%25` and `/` written
/// `%2F`, so that the `/` between parts is the only one left: two different
/// lists of parts never join into the same text (scope `a/b` with key `c`,
/// and scope `a` with key `b/c`, stay apart).
fn escaped(part: &str) -> Cow<'_, str> {
    if !part.contains(['%', '/']) {
        return Cow::Borrowed(part);
    }
    Cow::Owned(part.replace('%', "%25").replace('/', "%2F"))
}

/// The parts `namespace`, `scope`, `key` and then `tail`, each escaped
/// (`%` as `%25`, `/` as `%2F`) and joined by `/`, as they are when that is
/// at most 255 bytes of visible ASCII (what an `Idempotency-Key` header, a
/// Redis key or the record table's key column all take); otherwise
/// `sha256:` and the 64 lowercase hex digits of that text's SHA-256.
pub(crate) fn derived_id(namespace: &str, scope: &str, key: &str, tail: &[&str]) -> String {
    let mut full = String::new();
    for (i, part) in [namespace, scope, key].iter().chain(tail).enumerate() {
        if i > 0 {
            full.push('/');
        }
        full.push_str(&escaped(part));
    }
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
            derived_id("payments.create", "", "k-1", &["effect", "1"]),
            "payments.create//k-1/effect/1"
        );
        assert_eq!(
            derived_id("n", "tenant-7", "k", &["charge"]),
            "n/tenant-7/k/charge"
        );
    }

    #[test]
    fn slashes_and_percent_signs_in_a_part_never_make_two_ids_one() {
        let pairs = [
            (("n", "a/b", "c"), ("n", "a", "b/c")),
            (("n/x", "", "k"), ("n", "x", "k")),
            (("n", "", "k/effect/1"), ("n", "", "k")),
            (("n", "%2F", "k"), ("n", "/", "k")),
        ];
        for ((n1, s1, k1), (n2, s2, k2)) in pairs {
            assert_ne!(
                derived_id(n1, s1, k1, &["effect", "1"]),
                derived_id(n2, s2, k2, &["effect", "1"]),
                "{n1:?} {s1:?} {k1:?} against {n2:?} {s2:?} {k2:?}"
            );
        }
        assert_eq!(derived_id("n", "a/b", "c%", &["x"]), "n/a%2Fb/c%25/x");
        // A name given for an external call cannot pose as an effect's
        // `effect/{n}`.
        assert_ne!(
            derived_id("n", "", "k", &["effect/1"]),
            derived_id("n", "", "k", &["effect", "1"])
        );
        // Nor can a long key whose text would hash alike.
        let long = "k".repeat(300);
        assert_ne!(
            derived_id("n", "a/b", &long, &["x"]),
            derived_id("n", "a", &format!("b/{long}"), &["x"])
        );
    }

    #[test]
    fn long_or_non_ascii_text_is_hashed_to_a_fixed_length() {
        let long = "k".repeat(255);
        let id = derived_id("n", "", &long, &["effect", "1"]);
        assert!(id.starts_with("sha256:"), "{id}");
        assert_eq!(id.len(), 7 + 64);
        assert_eq!(id, derived_id("n", "", &long, &["effect", "1"]), "stable");
        assert_ne!(id, derived_id("n", "", &long, &["effect", "2"]));
        let spaced = derived_id("n", "a tenant", "k", &["effect", "1"]);
        assert!(spaced.starts_with("sha256:"), "{spaced}");
        assert_eq!(derived_id("n", "", "k", &["é"]).len(), 71);
    }

    #[test]
    fn the_hashed_form_is_the_sha256_of_the_escaped_text() {
        let long = "x".repeat(300);
        let full = format!("n/a%2Fb/{long}/effect/1");
        let expected: String = Sha256::digest(full.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            derived_id("n", "a/b", &long, &["effect", "1"]),
            format!("sha256:{expected}")
        );
    }
}
