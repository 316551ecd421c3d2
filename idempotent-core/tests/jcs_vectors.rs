//! Golden vectors for `v2` fingerprints from an independent RFC 8785
//! implementation.
//!
//! `tests/jcs/vectors.json` (at the workspace root) is written by
//! `tests/jcs/generate.py`, which takes the canonical bytes from the Python
//! package `rfc8785` (version pinned in `tests/jcs/requirements.txt`) and the
//! digests from `hashlib`. To regenerate it:
//!
//! ```text
//! python3 -m venv /tmp/jcs && /tmp/jcs/bin/pip install -r tests/jcs/requirements.txt
//! /tmp/jcs/bin/python tests/jcs/generate.py
//! ```
//!
//! The vectors hold no integer beyond ±2^53, which RFC 8785 cannot write;
//! this crate's exact digits there are checked by hand at the end.

use idempotent_core::{Error, Fingerprint, canonical_json, fingerprint};
use serde::Deserialize;
use serde_json::Value;

const VECTORS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/jcs/vectors.json"
));

#[derive(Deserialize)]
struct Vectors {
    values: Vec<ValueVector>,
    calls: Vec<CallVector>,
    numbers: Vec<NumberVector>,
    non_finite: Vec<NonFinite>,
}

/// One JSON text: its canonical bytes and the fingerprint of `[value]`.
#[derive(Deserialize)]
struct ValueVector {
    name: String,
    input: String,
    canonical: String,
    fingerprint: String,
}

/// The arguments of one call, as JSON texts, and its fingerprint.
#[derive(Deserialize)]
struct CallVector {
    name: String,
    args: Vec<String>,
    canonical: String,
    fingerprint: String,
}

/// A double by its bits (hex), with the decimal text it was parsed from
/// for some, and the fingerprint of `[x]` for some.
#[derive(Deserialize)]
struct NumberVector {
    name: String,
    bits: String,
    text: Option<String>,
    canonical: String,
    fingerprint: Option<String>,
}

#[derive(Deserialize)]
struct NonFinite {
    name: String,
    bits: String,
}

fn vectors() -> Vectors {
    serde_json::from_str(VECTORS).expect("tests/jcs/vectors.json does not parse")
}

fn parse(name: &str, text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("vector `{name}`: input {text:?}: {e}"))
}

fn double(name: &str, bits: &str) -> f64 {
    let bits = u64::from_str_radix(bits, 16).unwrap_or_else(|e| panic!("vector `{name}`: {e}"));
    f64::from_bits(bits)
}

fn text<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, Error> {
    canonical_json(value).map(|bytes| String::from_utf8(bytes).expect("canonical JSON is UTF-8"))
}

/// Mismatches, each naming its vector, reported together at the end.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, name: &str, what: &str, got: Result<String, Error>, want: &str) {
        match got {
            Ok(got) if got == want => {}
            Ok(got) => self.0.push(format!(
                "vector `{name}`: {what}\n  want {want:?}\n  got  {got:?}"
            )),
            Err(e) => self.0.push(format!(
                "vector `{name}`: {what}\n  want {want:?}\n  got error {e}"
            )),
        }
    }

    fn assert_none(self, checked: usize, at_least: usize) {
        let failed = self.0.len();
        assert!(
            failed == 0,
            "{failed} of {checked} vectors failed:\n{}",
            self.0.join("\n")
        );
        assert!(
            checked >= at_least,
            "only {checked} vectors checked, expected at least {at_least}"
        );
    }
}

fn fp(result: Result<Fingerprint, Error>) -> Result<String, Error> {
    result.map(|f| f.as_str().to_owned())
}

#[test]
fn values() {
    let vectors = vectors().values;
    let mut failures = Failures::default();
    for v in &vectors {
        let value = parse(&v.name, &v.input);
        failures.check(&v.name, "canonical_json", text(&value), &v.canonical);
        failures.check(
            &v.name,
            "Fingerprint::of",
            fp(Fingerprint::of(&value)),
            &v.fingerprint,
        );
        failures.check(
            &v.name,
            "fingerprint",
            fp(fingerprint(&value)),
            &v.fingerprint,
        );
        let built = Fingerprint::builder().arg(&value).finish();
        failures.check(&v.name, "builder", fp(built), &v.fingerprint);
    }
    failures.assert_none(vectors.len(), 50);
}

#[test]
fn calls() {
    let vectors = vectors().calls;
    let mut failures = Failures::default();
    for v in &vectors {
        let args: Vec<Value> = v.args.iter().map(|a| parse(&v.name, a)).collect();
        let built = args
            .iter()
            .fold(Fingerprint::builder(), |b, a| b.arg(a))
            .finish();
        failures.check(&v.name, "builder", fp(built), &v.fingerprint);
        let joined: Result<Vec<String>, Error> = args.iter().map(text).collect();
        let array = joined.map(|parts| format!("[{}]", parts.join(",")));
        failures.check(&v.name, "[canonical_json(arg),...]", array, &v.canonical);
    }
    assert!(
        vectors.iter().any(|v| v.args.len() >= 2),
        "no multi-argument vector"
    );
    failures.assert_none(vectors.len(), 5);
}

#[test]
fn numbers() {
    let vectors = vectors().numbers;
    let mut failures = Failures::default();
    for v in &vectors {
        let x = double(&v.name, &v.bits);
        failures.check(&v.name, "canonical_json(&f64)", text(&x), &v.canonical);
        if let Some(want) = &v.fingerprint {
            failures.check(
                &v.name,
                "Fingerprint::of(&f64)",
                fp(Fingerprint::of(&x)),
                want,
            );
        }
        if let Some(input) = &v.text {
            let parsed: f64 = serde_json::from_str(input).expect("decimal text parses");
            let got = format!("{:016x}", parsed.to_bits());
            failures.check(&v.name, "serde_json's f64 for the text", Ok(got), &v.bits);
            let value = parse(&v.name, input);
            failures.check(
                &v.name,
                "canonical_json(&Value)",
                text(&value),
                &v.canonical,
            );
        }
    }
    let appendix_b = vectors
        .iter()
        .filter(|v| v.name.starts_with("rfc8785 appendix B"))
        .count();
    assert_eq!(appendix_b, 24, "RFC 8785 Appendix B has 24 finite samples");
    failures.assert_none(vectors.len(), 1000);
}

#[test]
fn non_finite_numbers_are_errors() {
    let vectors = vectors().non_finite;
    for v in &vectors {
        let x = double(&v.name, &v.bits);
        assert!(!x.is_finite(), "vector `{}` is finite", v.name);
        let bytes = canonical_json(&x);
        assert!(
            matches!(bytes, Err(Error::Serialization { .. })),
            "vector `{}`: canonical_json gave {bytes:?}",
            v.name
        );
        let result = Fingerprint::of(&x);
        assert!(
            matches!(result, Err(Error::Serialization { .. })),
            "vector `{}`: Fingerprint::of gave {result:?}",
            v.name
        );
    }
    assert!(
        vectors.len() >= 3,
        "only {} non-finite vectors",
        vectors.len()
    );
}

/// Beyond ±2^53 this crate writes integers as exact digits, where RFC 8785
/// has no form; inside it, the same bytes as the double.
#[test]
fn integers_beyond_two_to_the_53_are_exact_digits() {
    let two_53 = 1u64 << 53;
    assert_eq!(text(&(two_53 + 1)).unwrap(), "9007199254740993");
    assert_eq!(text(&u64::MAX).unwrap(), "18446744073709551615");
    assert_eq!(text(&i64::MIN).unwrap(), "-9223372036854775808");
    assert_eq!(
        text(&u128::MAX).unwrap(),
        "340282366920938463463374607431768211455"
    );
    assert_eq!(
        text(&i128::MIN).unwrap(),
        "-170141183460469231731687303715884105728"
    );
    assert_ne!(
        Fingerprint::of(&two_53).unwrap(),
        Fingerprint::of(&(two_53 + 1)).unwrap()
    );
    let value = parse(
        "2^53 + 1",
        "[9007199254740993, 18446744073709551615, -9223372036854775808]",
    );
    assert_eq!(
        text(&value).unwrap(),
        "[9007199254740993,18446744073709551615,-9223372036854775808]"
    );

    // ±2^53 as integers fingerprint like Appendix B's doubles 0x4340… and 0xc340….
    let numbers = vectors().numbers;
    let appendix = |bits: &str| {
        let v = numbers
            .iter()
            .find(|v| v.bits == bits)
            .expect("Appendix B vector");
        v.fingerprint
            .clone()
            .expect("Appendix B vectors carry a fingerprint")
    };
    assert_eq!(
        Fingerprint::of(&two_53).unwrap().as_str(),
        appendix("4340000000000000")
    );
    assert_eq!(
        Fingerprint::of(&-(1i64 << 53)).unwrap().as_str(),
        appendix("c340000000000000")
    );
}
