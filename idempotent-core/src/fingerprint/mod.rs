//! Request fingerprints: RFC 8785 bytes, streamed into SHA-256. The scheme
//! is documented on [`Fingerprint`].

use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::Error;

mod jcs;

use jcs::Jcs;
#[cfg(test)]
use jcs::utf16_cmp;

/// The prefix of every fingerprint this version writes.
pub(crate) const SCHEME: &str = "v2";

/// The fingerprint of a request: which arguments a key was first used with.
///
/// # Scheme `v2`
///
/// The fingerprint of a call is `v2:` followed by the lowercase hex SHA-256
/// of the RFC 8785 (JSON Canonicalization Scheme, JCS) form of the JSON
/// array of its fingerprinted arguments, in parameter order:
///
/// ```text
/// fingerprint(a, b) = "v2:" + hex(sha256(jcs([a, b])))
/// fingerprint(&v)   = "v2:" + hex(sha256(jcs([v])))
/// ```
///
/// No other bytes go into the hash, so any RFC 8785 implementation, in any
/// language, reproduces it from the arguments' JSON. Each argument's JSON is
/// what serde writes for it (serde_json's data model: structs and maps are
/// objects, sequences and tuples arrays, `None` and `()` null, unit variants
/// strings, other variants `{"Variant": ...}`), canonicalized as RFC 8785
/// says:
///
/// - object members sorted by the UTF-16 code units of their keys, so the
///   order in which a map was filled never matters (`HashMap`, `BTreeMap`,
///   `serde_json` with `preserve_order`); a key that appears twice is an
///   error;
/// - numbers as ECMAScript's `Number.prototype.toString` writes the double
///   (`1e16` is `10000000000000000`, `1e21` is `1e+21`, `1.0` is `1`, `-0.0`
///   is `0`); an `f32` is the double nearest its shortest decimal form
///   (`0.1f32` is `0.1`, as serde_json writes it);
/// - strings with RFC 8785's minimal escaping (`\b \t \n \f \r \" \\`,
///   other control characters as `\u00xx`); Unicode is not normalized.
///
/// One deliberate extension: **integers** (`i8` to `i128`, `u8` to `u128`)
/// are written as their exact decimal digits. Inside ±2^53 that is exactly
/// what RFC 8785 writes; outside it, where a double cannot hold every
/// integer, two distinct integers still never share a fingerprint
/// (`2^53 + 1` stays `9007199254740993`).
///
/// NaN and the infinities have no JSON form: fingerprinting one fails with
/// [`Error::Serialization`]. So do maps whose keys are not strings,
/// integers, bools, chars or unit variants (a float key's string would be
/// serde_json's formatting choice, so it is refused too).
///
/// The integer extension is about Rust integer types. A float is always a
/// double in ECMAScript form, so a float beyond 2^53 may print as the
/// digits of a nearby integer (`2^60 as f64` is `1152921504606847000`). A
/// `serde_json::Value` or `RawValue` parsed from text holds what serde_json
/// parsed: an integer beyond the 64-bit range is a double there, unless
/// serde_json's `arbitrary_precision` is on, when it stays exact; so for
/// such values, and only those, that feature changes the fingerprint.
///
/// The bytes come from this crate alone: the float digits from an
/// implementation of the ECMAScript algorithm (`ryu-js`), never from
/// serde_json's formatting, so no dependency update changes a fingerprint.
/// Values of serde_json's own types (`Value`, `Number` also with
/// `arbitrary_precision`, `RawValue`) are fingerprinted as the JSON they
/// hold.
///
/// Records stored by scheme `v1` (this crate's earlier, non-RFC 8785 form)
/// carry a `v1:` fingerprint; until they expire they replay for their key
/// without the request being compared.
///
/// ```
/// # extern crate idempotent_core as diesel_idempotent;
/// use diesel_idempotent::Fingerprint;
/// use sha2::{Digest, Sha256};
///
/// let fp = Fingerprint::builder().arg(&42).arg("x").finish()?;
/// let digest = Sha256::digest(br#"[42,"x"]"#);
/// let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
/// assert_eq!(fp.as_str(), format!("v2:{hex}"));
/// # Ok::<(), diesel_idempotent::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// Starts a fingerprint over arguments added one by one.
    pub fn builder() -> FingerprintBuilder {
        let mut jcs = Jcs::new(Sha256::new());
        jcs.raw(b"[");
        FingerprintBuilder {
            jcs,
            count: 0,
            error: None,
        }
    }

    /// The fingerprint of one value (an array of one argument).
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<Fingerprint, Error> {
        Fingerprint::builder().arg(value).finish()
    }

    /// The stored form: `v2:` and 64 lowercase hex digits.
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

/// Builds a [`Fingerprint`] from arguments in order, streaming their
/// canonical bytes into SHA-256; the first argument that fails is reported
/// by [`FingerprintBuilder::finish`].
pub struct FingerprintBuilder {
    jcs: Jcs<Sha256>,
    count: usize,
    error: Option<serde_json::Error>,
}

impl fmt::Debug for FingerprintBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FingerprintBuilder")
            .field("count", &self.count)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl FingerprintBuilder {
    /// Adds the next argument.
    pub fn arg<T: Serialize + ?Sized>(self, value: &T) -> Self {
        self.add(None, value)
    }

    /// Adds the next argument, naming it in the error should it fail
    /// (what `#[idempotent]` calls with the parameter's name). The name is
    /// not part of the fingerprint.
    pub fn named_arg<T: Serialize + ?Sized>(self, name: &str, value: &T) -> Self {
        self.add(Some(name), value)
    }

    fn add<T: Serialize + ?Sized>(mut self, name: Option<&str>, value: &T) -> Self {
        if self.error.is_some() {
            return self;
        }
        if self.count > 0 {
            self.jcs.raw(b",");
        }
        self.count += 1;
        match value
            .serialize(&mut self.jcs)
            .and_then(|()| self.jcs.check_closed())
        {
            Ok(()) => self.jcs.maybe_flush(),
            Err(e) => {
                self.jcs.abandon();
                let position = self.count;
                self.error = Some(serde::ser::Error::custom(match name {
                    Some(name) => format!("argument `{name}`: {e}"),
                    None => format!("argument {position}: {e}"),
                }));
            }
        }
        self
    }

    /// The fingerprint, or the first failing argument's error.
    pub fn finish(mut self) -> Result<Fingerprint, Error> {
        if let Some(source) = self.error {
            return Err(Error::Serialization {
                what: "an argument for the request fingerprint",
                source,
            });
        }
        self.jcs.raw(b"]");
        let digest = self.jcs.into_sink().finalize();
        let mut out = String::with_capacity(SCHEME.len() + 1 + 64);
        out.push_str(SCHEME);
        out.push(':');
        for byte in digest {
            out.push(hex_digit(byte >> 4));
            out.push(hex_digit(byte & 0x0f));
        }
        Ok(Fingerprint(out))
    }
}

/// The RFC 8785 bytes of `value`, with the integer extension described on
/// [`Fingerprint`]: what a fingerprint hashes, for one value
/// (the fingerprint of `v` hashes `[` + `canonical_json(&v)` + `]`).
pub fn canonical_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    let mut jcs = Jcs::new(Vec::new());
    match value.serialize(&mut jcs).and_then(|()| jcs.check_closed()) {
        Ok(()) => Ok(jcs.into_sink()),
        Err(source) => {
            jcs.abandon();
            Err(Error::Serialization {
                what: "a value",
                source,
            })
        }
    }
}

/// A `serde_json::Value` in canonical form even where RFC 8785 has none (a
/// number out of the double range under serde_json's `arbitrary_precision`,
/// written as its text): members sorted as in JCS, so the bytes still do
/// not depend on member order. Only for keys derived from a body that
/// [`canonical_json`] refuses.
pub(crate) fn canonical_json_lenient(value: &serde_json::Value) -> Vec<u8> {
    let mut jcs = Jcs::lenient(Vec::new());
    match value.serialize(&mut jcs) {
        Ok(()) => jcs.into_sink(),
        // A `Value` has no duplicate keys, no NaN and no float keys; should
        // it fail anyway, its plain text stands in.
        Err(_) => {
            jcs.abandon();
            value.to_string().into_bytes()
        }
    }
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(nibble & 0x0f)])
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;

    fn text<T: Serialize + ?Sized>(value: &T) -> String {
        String::from_utf8(canonical_json(value).unwrap()).unwrap()
    }

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
    fn the_formula_is_sha256_of_the_jcs_array() {
        let fp = Fingerprint::builder().finish().unwrap();
        let hex = |bytes: &[u8]| -> String {
            Sha256::digest(bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        assert_eq!(fp.as_str(), format!("v2:{}", hex(b"[]")));
        let fp = Fingerprint::builder().arg(&1).arg("a").finish().unwrap();
        assert_eq!(fp.as_str(), format!("v2:{}", hex(b"[1,\"a\"]")));
        let fp = Fingerprint::of(&serde_json::json!({"b": 1.5, "a": [true, null]})).unwrap();
        assert_eq!(
            fp.as_str(),
            format!("v2:{}", hex(br#"[{"a":[true,null],"b":1.5}]"#))
        );
    }

    #[test]
    fn canonical_form() {
        let value = serde_json::json!({
            "b": [1, 1.5, -0.0, 1e300, 1e16, 1e21, 1e-7, null, true],
            "a": {"z": "tab\tquote\"é\u{1}\u{7f}/", "y": u64::MAX, "x": i64::MIN},
        });
        assert_eq!(
            text(&value),
            "{\"a\":{\"x\":-9223372036854775808,\"y\":18446744073709551615,\
             \"z\":\"tab\\tquote\\\"é\\u0001\u{7f}/\"},\
             \"b\":[1,1.5,0,1e+300,10000000000000000,1e+21,1e-7,null,true]}"
        );
    }

    #[test]
    fn keys_sort_by_utf16_code_units() {
        // U+FFFD sorts after U+1F600 in UTF-8 and code points, before it in
        // UTF-16 (0xFFFD > 0xD83D).
        let map: BTreeMap<&str, i32> = [("\u{1F600}", 1), ("\u{FFFD}", 2), ("a", 3)]
            .into_iter()
            .collect();
        assert_eq!(text(&map), "{\"a\":3,\"\u{1F600}\":1,\"\u{FFFD}\":2}");
        assert_eq!(
            utf16_cmp("\u{E000}", "\u{10000}"),
            std::cmp::Ordering::Greater
        );
        assert_eq!(utf16_cmp("ab", "abc"), std::cmp::Ordering::Less);
        assert_eq!(utf16_cmp("é", "e"), std::cmp::Ordering::Greater);
    }

    #[test]
    fn large_integers_stay_exact() {
        let big = 1u64 << 53;
        assert_eq!(text(&(big + 1)), "9007199254740993");
        assert_ne!(
            Fingerprint::of(&big).unwrap(),
            Fingerprint::of(&(big + 1)).unwrap()
        );
        assert_eq!(text(&u128::MAX), u128::MAX.to_string());
        assert_eq!(text(&i128::MIN), i128::MIN.to_string());
        assert_ne!(
            Fingerprint::of(&u128::MAX).unwrap(),
            Fingerprint::of(&(u128::MAX - 1)).unwrap()
        );
    }

    #[test]
    fn floats_are_ecmascript_numbers() {
        assert_eq!(text(&0.1f32), "0.1");
        assert_eq!(text(&1.0f64), "1");
        assert_eq!(text(&-0.0f64), "0");
        assert_eq!(text(&5e-324f64), "5e-324");
        assert_eq!(text(&f64::MAX), "1.7976931348623157e+308");
        // A float and an integer of the same value are one JSON number.
        assert_eq!(Fingerprint::of(&1.0).unwrap(), Fingerprint::of(&1).unwrap());
    }

    #[test]
    fn non_finite_floats_are_errors_naming_the_argument() {
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = Fingerprint::builder()
                .named_arg("amount", &1)
                .named_arg("price", &Some(value))
                .finish()
                .unwrap_err();
            assert!(matches!(err, Error::Serialization { .. }), "{err}");
            assert!(err.to_string().contains("`price`"), "{err}");
        }
        // Never `null`: `Some(inf)` does not fingerprint like `None`.
        assert!(Fingerprint::of(&Some(f64::INFINITY)).is_err());
        assert!(canonical_json(&f32::NAN).is_err());
    }

    #[test]
    fn duplicate_keys_are_errors() {
        #[derive(Serialize)]
        struct Inner {
            a: i32,
        }
        #[derive(Serialize)]
        struct Outer {
            a: i32,
            #[serde(flatten)]
            inner: Inner,
        }
        let err = canonical_json(&Outer {
            a: 1,
            inner: Inner { a: 2 },
        })
        .unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn serde_shapes() {
        #[derive(Serialize)]
        enum E {
            Unit,
            New(u8),
            Tuple(u8, u8),
            Struct { b: u8, a: u8 },
        }
        #[derive(Serialize)]
        struct Unit;
        assert_eq!(
            text(&(E::Unit, E::New(1), E::Tuple(1, 2), E::Struct { b: 2, a: 1 })),
            r#"["Unit",{"New":1},{"Tuple":[1,2]},{"Struct":{"a":1,"b":2}}]"#
        );
        assert_eq!(
            text(&(Unit, (), None::<u8>, 'x')),
            r#"[null,null,null,"x"]"#
        );
        let keys: BTreeMap<i64, bool> = [(10, true), (-2, false), (9, true)].into_iter().collect();
        assert_eq!(text(&keys), r#"{"-2":false,"10":true,"9":true}"#);
        let mut tuple_keys = BTreeMap::new();
        tuple_keys.insert((1, 2), "tuple keys are not JSON");
        let err = Fingerprint::of(&tuple_keys).unwrap_err();
        assert!(matches!(err, Error::Serialization { .. }), "{err}");
    }

    #[test]
    fn struct_field_orders_are_remembered_per_field_list() {
        #[derive(Serialize)]
        struct Line {
            sku: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            note: Option<&'static str>,
            amount: i64,
        }
        #[derive(Serialize)]
        struct Sorted {
            amount: i64,
            note: Option<&'static str>,
            sku: &'static str,
        }
        // Same names, another order: the same object.
        #[derive(Serialize)]
        struct Other {
            note: Option<&'static str>,
            amount: i64,
            sku: &'static str,
        }
        let with_note = Line {
            sku: "a",
            note: Some("n"),
            amount: 1,
        };
        let without = Line {
            sku: "a",
            note: None,
            amount: 1,
        };
        for _ in 0..3 {
            assert_eq!(text(&with_note), r#"{"amount":1,"note":"n","sku":"a"}"#);
            assert_eq!(text(&without), r#"{"amount":1,"sku":"a"}"#);
            assert_eq!(
                text(&Sorted {
                    amount: 1,
                    note: Some("n"),
                    sku: "a"
                }),
                r#"{"amount":1,"note":"n","sku":"a"}"#
            );
            assert_eq!(
                text(&Other {
                    note: None,
                    amount: 2,
                    sku: "b"
                }),
                r#"{"amount":2,"note":null,"sku":"b"}"#
            );
            assert_eq!(
                Fingerprint::of(&with_note).unwrap(),
                Fingerprint::of(&serde_json::json!({"sku": "a", "note": "n", "amount": 1}))
                    .unwrap()
            );
        }
    }

    /// Emits the given entries as one map, keys as they come.
    struct Entries(Vec<(&'static str, i64)>);

    impl Serialize for Entries {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut map = serializer.serialize_map(Some(self.0.len()))?;
            for (k, v) in &self.0 {
                map.serialize_entry(k, v)?;
            }
            map.end()
        }
    }

    #[test]
    fn keys_given_twice_are_errors_wherever_they_are() {
        for entries in [
            vec![("b", 1), ("a", 2), ("b", 3)],
            vec![("a", 1), ("c", 2), ("b", 3), ("a", 4)],
            vec![("x", 1), ("x", 1)],
        ] {
            let err = canonical_json(&Entries(entries.clone())).unwrap_err();
            assert!(err.to_string().contains("twice"), "{entries:?}: {err}");
            assert!(Fingerprint::of(&Entries(entries)).is_err());
        }
        assert_eq!(
            text(&Entries(vec![("b", 1), ("a", 2), ("c", 3)])),
            r#"{"a":2,"b":1,"c":3}"#
        );
    }

    #[test]
    fn float_map_keys_are_refused() {
        struct FloatKey(f64);
        impl Serialize for FloatKey {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry(&self.0, &1)?;
                map.end()
            }
        }
        for key in [1.0, -0.0, 1.5, f64::NAN] {
            let err = canonical_json(&FloatKey(key)).unwrap_err();
            assert!(err.to_string().contains("float map key"), "{err}");
        }
    }

    #[test]
    fn a_map_left_open_is_an_error_not_a_fingerprint() {
        /// Opens a map, writes a member, then fails without closing it.
        struct HalfMap;
        impl Serialize for HalfMap {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use serde::ser::{Error as _, SerializeMap};
                let mut map = serializer.serialize_map(None)?;
                map.serialize_entry("a", &1)?;
                Err(S::Error::custom("gave up half-way"))
            }
        }
        /// Swallows its element's error and returns `Ok`.
        struct Swallows;
        impl Serialize for Swallows {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                let mut seq = serializer.serialize_seq(None)?;
                let _ = seq.serialize_element(&HalfMap);
                seq.end()
            }
        }
        assert!(
            serde_json::to_vec(&Swallows).is_ok(),
            "serde_json writes it"
        );
        let err = canonical_json(&Swallows).unwrap_err();
        assert!(err.to_string().contains("still open"), "{err}");
        assert!(Fingerprint::builder().arg(&Swallows).finish().is_err());
        // The thread's buffers are clean for the next fingerprint.
        assert_eq!(
            text(&serde_json::json!({"b": 1, "a": 2})),
            r#"{"a":2,"b":1}"#
        );
    }

    #[test]
    fn every_escape_at_every_offset_matches_serde_json() {
        // serde_json and RFC 8785 escape strings alike; the writer scans
        // 32 and 8 bytes at a time, so try every position in and across
        // those blocks.
        let specials: Vec<char> = (0u8..0x20)
            .map(char::from)
            .chain(['"', '\\', '/', '\u{7f}', 'é', '\u{1F600}'])
            .collect();
        for special in specials {
            for offset in 0..70 {
                let mut s = "a".repeat(offset);
                s.push(special);
                s.push_str(&"b".repeat(70 - offset));
                assert_eq!(
                    canonical_json(&s).unwrap(),
                    serde_json::to_vec(&s).unwrap(),
                    "{special:?} at {offset}"
                );
            }
        }
    }

    #[test]
    fn a_large_object_out_of_order_is_held_until_it_closes() {
        // Far more than one flush's worth of members, in reverse order,
        // after an array long enough to have been flushed already.
        // Array values: an array is where the writer may flush.
        let members: Vec<(String, Vec<String>)> = (0..3000)
            .rev()
            .map(|i| (format!("key {i:05}"), vec![format!("value {i}")]))
            .collect();
        struct Reverse<'m>(&'m [(String, Vec<String>)]);
        impl Serialize for Reverse<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut map = serializer.serialize_map(Some(self.0.len()))?;
                for (k, v) in self.0 {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
        let sorted: BTreeMap<&str, &Vec<String>> =
            members.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let long: Vec<String> = (0..3000).map(|i| format!("item {i}")).collect();
        let value = (&long, Reverse(&members));
        let expected = format!(
            "[{},{}]",
            String::from_utf8(canonical_json(&long).unwrap()).unwrap(),
            serde_json::to_string(&sorted).unwrap()
        );
        assert_eq!(text(&value), expected);
        let digest: String = Sha256::digest(format!("[{expected}]"))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            Fingerprint::of(&value).unwrap().as_str(),
            format!("v2:{digest}")
        );
    }

    /// What serde_json's `RawValue` serializes as: its private struct.
    struct Raw(&'static str);

    impl Serialize for Raw {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeStruct;
            let mut s = serializer.serialize_struct("$serde_json::private::RawValue", 1)?;
            s.serialize_field("$serde_json::private::RawValue", self.0)?;
            s.end()
        }
    }

    #[test]
    fn raw_json_is_canonicalized_and_keeps_duplicates_to_refuse_them() {
        assert_eq!(
            text(&Raw(r#"{ "b": [1.0, 1e16], "a": "x" }"#)),
            r#"{"a":"x","b":[1,10000000000000000]}"#
        );
        let err = canonical_json(&Raw(r#"{"a":1,"a":2}"#)).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        let err = canonical_json(&Raw(r#"[{"z":{"a":1,"b":2,"a":3}}]"#)).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn fingerprint_body_keys_ignore_member_order_even_beyond_doubles() {
        // Only under serde_json's `arbitrary_precision` does a `Value` hold
        // 1e400; the key then comes from the lenient canonical form.
        let (Ok(a), Ok(b)) = (
            serde_json::from_str::<serde_json::Value>(r#"{"x":1e400,"y":1}"#),
            serde_json::from_str::<serde_json::Value>(r#"{"y":1,"x":1e400}"#),
        ) else {
            return;
        };
        assert!(canonical_json(&a).is_err());
        assert_eq!(
            crate::id_or_body_hash(None, &a),
            crate::id_or_body_hash(None, &b)
        );
        // The number keeps serde_json's text for it.
        let lenient = String::from_utf8(canonical_json_lenient(&a)).unwrap();
        assert!(
            lenient.starts_with(r#"{"x":1e"#) && lenient.ends_with(r#"400,"y":1}"#),
            "{lenient}"
        );
    }

    #[test]
    fn long_arrays_stream_in_pieces_with_the_same_digest() {
        let long: Vec<String> = (0..5000).map(|i| format!("item {i}")).collect();
        let mut expected = b"[".to_vec();
        expected.extend(canonical_json(&long).unwrap());
        expected.push(b']');
        let digest: String = Sha256::digest(&expected)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(expected.len() > 2 * 16 * 1024);
        assert_eq!(
            Fingerprint::of(&long).unwrap().as_str(),
            format!("v2:{digest}")
        );
    }
}
