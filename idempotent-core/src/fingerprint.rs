//! Request fingerprints: canonical bytes, then SHA-256.
//!
//! # Scheme `v1`
//!
//! The fingerprinted arguments, in declaration order, form a JSON array; its
//! RFC 8785 (JSON Canonicalization Scheme) serialization is hashed with
//! SHA-256 behind the domain prefix `diesel-idempotent/fingerprint/v1` and a
//! NUL byte. The stored fingerprint is `v1:` followed by the lowercase hex
//! digest. Because JCS sorts object members, the order in which a map was
//! filled never changes a fingerprint; any change to a value does. Numbers
//! follow JCS (ECMAScript) formatting; non-finite floats cannot be
//! fingerprinted and give [`Error::Serialization`].

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
        match serde_jcs::to_vec(value) {
            Ok(bytes) => {
                if self.count > 0 {
                    self.canonical.push(b',');
                }
                self.canonical.extend_from_slice(&bytes);
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
    fn non_finite_float_is_a_typed_error() {
        let err = Fingerprint::of(&f64::NAN).unwrap_err();
        assert!(matches!(err, Error::Serialization { .. }), "{err}");
    }
}
