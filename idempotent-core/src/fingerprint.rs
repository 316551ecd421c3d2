//! Request fingerprints: canonical bytes, then SHA-256.
//!
//! # Scheme `v1`
//!
//! Each fingerprinted argument is turned into a JSON value with
//! `serde_json::to_value` and written in a canonical form; the arguments, in
//! declaration order, form a JSON array. Its bytes are hashed with SHA-256
//! behind the domain prefix `diesel-idempotent/fingerprint/v1` and a NUL
//! byte, and the stored fingerprint is `v1:` followed by the lowercase hex
//! digest. The canonical form is compact JSON (no whitespace) in which:
//!
//! - object members are sorted by the UTF-8 bytes of their keys, so the
//!   order in which a map was filled never matters (`HashMap`, `BTreeMap`,
//!   or `serde_json` with `preserve_order` enabled anywhere in the build);
//! - integers from `i64::MIN` to `u64::MAX` are written exactly in decimal
//!   (`u64::MAX` stays `18446744073709551615`; RFC 8785, whose numbers are doubles,
//!   would merge 2^53 and 2^53 + 1, so its number form is not used);
//!   `i128`/`u128` values outside that range fail with
//!   [`Error::Serialization`], as `serde_json::to_value` does;
//! - floats are written in serde_json's shortest round-trip form (`1.5`,
//!   `1.0`, `1e+300`), so `1` and `1.0` differ; NaN and infinities become
//!   `null`, as serde_json writes them;
//! - strings are UTF-8 with JSON's minimal escaping (as serde_json and
//!   RFC 8785 write them); Unicode is not normalized.
//!
//! So equal values always give equal fingerprints, and any change to a value
//! gives another one. A future change of the form would be `v2:`.

use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::Error;

const DOMAIN_V1: &[u8] = b"diesel-idempotent/fingerprint/v1\0";

/// The fingerprint of a request: which arguments a key was first used with.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// Starts a fingerprint over arguments added one by one.
    pub fn builder() -> FingerprintBuilder {
        FingerprintBuilder {
            canonical: b"[".to_vec(),
            count: 0,
            error: None,
        }
    }

    /// The fingerprint of one value (an array of one argument).
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<Fingerprint, Error> {
        Fingerprint::builder().arg(value).finish()
    }

    /// The stored form: `v1:` and 64 lowercase hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.0)
    }
}

/// Builds a [`Fingerprint`] from arguments in order; the first serialization
/// error is kept and returned by [`FingerprintBuilder::finish`].
#[derive(Debug)]
pub struct FingerprintBuilder {
    canonical: Vec<u8>,
    count: usize,
    error: Option<serde_json::Error>,
}

impl FingerprintBuilder {
    /// Adds the next argument.
    pub fn arg<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        if self.error.is_some() {
            return self;
        }
        match serde_json::to_value(value) {
            Ok(value) => {
                if self.count > 0 {
                    self.canonical.push(b',');
                }
                write_canonical(&mut self.canonical, &value);
                self.count += 1;
            }
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// The fingerprint, or the first argument's serialization error.
    pub fn finish(mut self) -> Result<Fingerprint, Error> {
        if let Some(source) = self.error {
            return Err(Error::Serialization {
                what: "an argument for the request fingerprint",
                source,
            });
        }
        self.canonical.push(b']');
        let mut hasher = Sha256::new();
        hasher.update(DOMAIN_V1);
        hasher.update(&self.canonical);
        let digest = hasher.finalize();
        let mut out = String::with_capacity(3 + 64);
        out.push_str("v1:");
        for byte in digest {
            out.push(hex_digit(byte >> 4));
            out.push(hex_digit(byte & 0x0f));
        }
        Ok(Fingerprint(out))
    }
}

/// The canonical JSON bytes of `value` (see the module documentation).
pub fn canonical_json(value: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(&mut out, value);
    out
}

fn write_canonical(out: &mut Vec<u8>, value: &serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // A `Number` displays exactly: integers in full, floats shortest.
        Value::Number(n) => {
            use std::io::Write as _;
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, item);
            }
            out.push(b']');
        }
        Value::Object(members) => {
            let mut members: Vec<(&String, &Value)> = members.iter().collect();
            members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, key);
                out.push(b':');
                write_canonical(out, item);
            }
            out.push(b'}');
        }
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    // Copy runs that need no escaping in one go; only `"`, `\` and control
    // characters (all ASCII) are escaped, so byte positions stay on char
    // boundaries.
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escaped.is_empty() {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.extend_from_slice(escaped);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(nibble & 0x0f)])
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;

    #[test]
    fn map_order_does_not_matter() {
        let a: HashMap<&str, i32> = [("b", 2), ("a", 1), ("c", 3)].into_iter().collect();
        let b: BTreeMap<&str, i32> = [("c", 3), ("a", 1), ("b", 2)].into_iter().collect();
        assert_eq!(Fingerprint::of(&a).unwrap(), Fingerprint::of(&b).unwrap());
        let j1: serde_json::Value = serde_json::from_str(r#"{"x":1,"y":[1,2]}"#).unwrap();
        let j2: serde_json::Value = serde_json::from_str(r#"{"y":[1,2],"x":1}"#).unwrap();
        assert_eq!(Fingerprint::of(&j1).unwrap(), Fingerprint::of(&j2).unwrap());
    }

    #[test]
    fn values_and_positions_matter() {
        let f = |a: i64, b: &str| Fingerprint::builder().arg(&a).arg(b).finish().unwrap();
        assert_ne!(f(1, "x"), f(2, "x"));
        assert_ne!(f(1, "x"), f(1, "y"));
        let swapped = Fingerprint::builder().arg("x").arg(&1).finish().unwrap();
        assert_ne!(f(1, "x"), swapped);
        // Argument boundaries are part of the encoding.
        let one = Fingerprint::builder().arg("a,b").finish().unwrap();
        let two = Fingerprint::builder().arg("a").arg("b").finish().unwrap();
        assert_ne!(one, two);
    }

    #[test]
    fn stable_v1_form() {
        let fp = Fingerprint::builder().finish().unwrap();
        assert!(fp.as_str().starts_with("v1:"));
        assert_eq!(fp.as_str().len(), 67);
        // Pinned: changing the scheme must change the version prefix.
        let digest = Sha256::digest(b"diesel-idempotent/fingerprint/v1\0[1,\"a\"]");
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let fp = Fingerprint::builder().arg(&1).arg("a").finish().unwrap();
        assert_eq!(fp.as_str(), format!("v1:{hex}"));
    }

    #[test]
    fn canonical_form() {
        let value = serde_json::json!({
            "b": [1, 1.5, -0.0, 1e300, null, true],
            "a": {"z": "tab\tquote\"é\u{1}", "y": u64::MAX, "x": i64::MIN},
        });
        let text = String::from_utf8(canonical_json(&value)).unwrap();
        assert_eq!(
            text,
            r#"{"a":{"x":-9223372036854775808,"y":18446744073709551615,"z":"tab\tquote\"é\u0001"},"b":[1,1.5,-0.0,1e+300,null,true]}"#
        );
        // What serde_json would write for the same string.
        let s = "tab\tquote\"é\u{1}\u{7f}\\/";
        assert_eq!(
            canonical_json(&serde_json::Value::String(s.into())),
            serde_json::to_vec(s).unwrap()
        );
    }

    #[test]
    fn large_integers_stay_exact() {
        let big = 1u64 << 53;
        assert_ne!(
            Fingerprint::of(&big).unwrap(),
            Fingerprint::of(&(big + 1)).unwrap()
        );
        assert_ne!(
            Fingerprint::of(&u64::MAX).unwrap(),
            Fingerprint::of(&(u64::MAX - 1)).unwrap()
        );
    }

    #[test]
    fn unserializable_is_a_typed_error() {
        let mut map = BTreeMap::new();
        map.insert((1, 2), "tuple keys are not JSON");
        let err = Fingerprint::of(&map).unwrap_err();
        assert!(matches!(err, Error::Serialization { .. }), "{err}");
    }
}
