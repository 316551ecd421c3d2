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
/// else the [`fingerprint`] of the parsed body (`v2:` and 64 hex digits).
///
/// The body is fingerprinted in its canonical form, so a redelivery is
/// recognised even when the provider serialized it again with other
/// whitespace or another member order; the raw bytes would differ. Parse
/// the body first (a body that does not parse is not a delivery to
/// process); for a body in another format, fingerprint the parsed value
/// with [`fingerprint`] instead.
///
/// ```
/// # extern crate idempotent_core as diesel_idempotent;
/// let first: serde_json::Value = serde_json::from_str(r#"{"type":"paid","amount":1200}"#)?;
/// let again: serde_json::Value = serde_json::from_str(r#"{ "amount": 1200, "type": "paid" }"#)?;
/// assert_eq!(
///     diesel_idempotent::id_or_body_hash(None, &first),
///     diesel_idempotent::id_or_body_hash(None, &again),
/// );
/// assert_eq!(diesel_idempotent::id_or_body_hash(Some("evt_1"), &first), "evt_1");
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn id_or_body_hash(id: Option<&str>, body: &serde_json::Value) -> String {
    match id {
        Some(id) if validate_key(id).is_ok() => id.to_owned(),
        _ => match Fingerprint::of(body) {
            Ok(fingerprint) => fingerprint.as_str().to_owned(),
            // Under serde_json's `arbitrary_precision` a body may hold a
            // number beyond the double range (`1e400`), which RFC 8785
            // cannot write: the key comes from a canonical form that keeps
            // its text, still independent of member order.
            Err(_) => sha256_key(&crate::fingerprint::canonical_json_lenient(body)),
        },
    }
}

/// A name for a type that never changes: what tells two types apart in a
/// request's fingerprint when their values serialize alike.
///
/// `Created { id: 5 }` and `Deleted { id: 5 }` both serialize as
/// `{"id":5}`. Passed to one generic function, such as
/// `#[idempotent(hash)] fn apply<E: Serialize>(conn, event: &E)`, they
/// would share one key: the second call would replay the first, and its
/// effects would never happen. So whenever the type of a fingerprinted
/// value mentions a type parameter of the function (under `key`, `hash` and
/// `hash(..)` alike), and whenever the stored type (`T` of `Result<T, E>`)
/// does or no argument and no result mentions it (a turbofish-only
/// parameter), `#[idempotent]` adds that parameter's `STABLE_NAME` to the
/// fingerprint and requires the bound `E: StableName`. Type parameters that
/// appear only in the connection, the key, skipped arguments or the error
/// type need none; lifetime parameters never do; a const parameter joins by
/// its value.
///
/// The names are added after the arguments, one per type parameter in the
/// order of the generics, then the const values: the key `hash` derives for
/// `apply(conn, &event)` is
/// `Fingerprint::builder().arg(&event).arg(E::STABLE_NAME).finish()`.
///
/// The name is stored in every key and fingerprint it helps derive, so it
/// must not change while records written with it live (their TTL): a new
/// name makes a repeat unrecognisable. Choose it like a wire name
/// (`"order.created"`) and give no two types the same one. The type's
/// Rust path is not used: `std::any::type_name` may change between
/// compiler versions and moves with every refactoring.
///
/// ```
/// # extern crate idempotent_core as diesel_idempotent;
/// use diesel_idempotent::StableName;
///
/// #[derive(serde::Serialize)]
/// struct Created {
///     id: u64,
/// }
///
/// impl StableName for Created {
///     const STABLE_NAME: &'static str = "order.created";
/// }
///
/// // #[idempotent(hash, name = "orders.apply")]
/// // fn apply<E: Serialize + StableName>(conn: &mut PgConnection, event: &E)
/// //     -> Result<(), AppError>
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no `StableName`: a fingerprinted generic argument must name its type",
    label = "values of this type are fingerprinted, so the type needs a stable name",
    note = "two types that serialize alike, such as `Created {{ id: 5 }}` and \
            `Deleted {{ id: 5 }}`, would otherwise share one key, and the second call would \
            replay the first",
    note = "implement it for each type passed, e.g. `impl diesel_idempotent::StableName for \
            Created {{ const STABLE_NAME: &'static str = \"created\"; }}`, and bound the type \
            parameter: `E: Serialize + StableName`; or leave the argument out with `skip(..)`"
)]
pub trait StableName {
    /// The type's name in fingerprints; never change it while records live.
    const STABLE_NAME: &'static str;
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

    fn json(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn webhook_key_prefers_a_valid_id() {
        assert_eq!(id_or_body_hash(Some("evt_123"), &json("{}")), "evt_123");
        let by_body = id_or_body_hash(None, &json(r#"{"a":1}"#));
        assert!(validate_key(&by_body).is_ok(), "{by_body}");
        assert_eq!(by_body, id_or_body_hash(Some(""), &json(r#"{"a":1}"#)));
        let too_long = "x".repeat(MAX_KEY_LEN + 1);
        assert_eq!(
            by_body,
            id_or_body_hash(Some(&too_long), &json(r#"{"a":1}"#))
        );
    }

    #[test]
    fn webhook_key_of_a_reserialized_body_is_the_same() {
        let first = json(r#"{"type":"payment.succeeded","data":{"amount":1200,"currency":"eur"}}"#);
        let again = json(
            "{\n  \"data\": { \"currency\": \"eur\", \"amount\": 1200 },\n  \"type\": \"payment.succeeded\"\n}",
        );
        let key = id_or_body_hash(None, &first);
        assert_eq!(key, id_or_body_hash(None, &again));
        assert_eq!(key, fingerprint(&first).unwrap().as_str());
        let other = json(r#"{"type":"payment.succeeded","data":{"amount":1201,"currency":"eur"}}"#);
        assert_ne!(key, id_or_body_hash(None, &other));
    }
}
