//! Fingerprints seen from a downstream crate whose build enables
//! `serde_json/preserve_order` (as some other crate in a real tree may).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The v2 fingerprint of `canonical` (the RFC 8785 form of the argument
/// array), computed independently of the library.
fn v2(canonical: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(canonical.as_bytes());
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("v2:{hex}")
}

#[test]
fn preserve_order_does_not_change_fingerprints() {
    let value: serde_json::Value =
        serde_json::from_str(r#"{"b":1,"a":{"d":[2,"x"],"c":3.5}}"#).unwrap();
    let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["b", "a"], "preserve_order is enabled in this build");
    let expected = v2(r#"[{"a":{"c":3.5,"d":[2,"x"]},"b":1}]"#);
    assert_eq!(
        diesel_idempotent::fingerprint(&value).unwrap().as_str(),
        expected
    );

    #[derive(Serialize)]
    struct Inner {
        d: (u8, &'static str),
        c: f64,
    }
    #[derive(Serialize)]
    struct Outer {
        b: u8,
        a: Inner,
    }
    let typed = Outer {
        b: 1,
        a: Inner {
            d: (2, "x"),
            c: 3.5,
        },
    };
    assert_eq!(
        diesel_idempotent::fingerprint(&typed).unwrap().as_str(),
        expected
    );
}

#[test]
fn map_types_and_insertion_order_do_not_matter() {
    let pairs = [("zeta", 1), ("alpha", 2), ("mu", 3), ("Ω", 4), ("a", 5)];
    let mut forward: HashMap<&str, i32> = HashMap::new();
    let mut backward: HashMap<&str, i32> = HashMap::with_capacity(64);
    for (k, v) in pairs {
        forward.insert(k, v);
    }
    for (k, v) in pairs.iter().rev() {
        backward.insert(k, *v);
    }
    let sorted: BTreeMap<&str, i32> = pairs.into_iter().collect();
    let mut json = serde_json::Map::new();
    for (k, v) in pairs {
        json.insert(k.to_owned(), v.into());
    }
    let expected = v2(r#"[{"a":5,"alpha":2,"mu":3,"zeta":1,"Ω":4}]"#);
    for fp in [
        diesel_idempotent::fingerprint(&forward),
        diesel_idempotent::fingerprint(&backward),
        diesel_idempotent::fingerprint(&sorted),
        diesel_idempotent::fingerprint(&json),
    ] {
        assert_eq!(fp.unwrap().as_str(), expected);
    }
}

#[test]
fn several_arguments_form_an_array() {
    let fp = diesel_idempotent::Fingerprint::builder()
        .arg(&42u64)
        .arg("https://sho.rt/x")
        .arg(&u64::MAX)
        .finish()
        .unwrap();
    assert_eq!(
        fp.as_str(),
        v2(r#"[42,"https://sho.rt/x",18446744073709551615]"#)
    );
}

#[test]
fn float_text_is_ecmascript_whatever_serde_json_writes() {
    // serde_json writes 1e16 as `1e16` or `1e+16` depending on its version;
    // the fingerprint hashes ECMAScript's form either way.
    assert_eq!(
        diesel_idempotent::fingerprint(&serde_json::json!(1e16))
            .unwrap()
            .as_str(),
        v2("[10000000000000000]")
    );
    assert_eq!(
        diesel_idempotent::fingerprint(&serde_json::json!([1e21, 1e-7, -0.0, 1.0]))
            .unwrap()
            .as_str(),
        v2("[[1e+21,1e-7,0,1]]")
    );
}

#[test]
fn keys_sort_by_utf16_with_preserve_order() {
    let value: serde_json::Value =
        serde_json::from_str("{\"\u{FFFD}\":1,\"\u{1F600}\":2,\"\u{E000}\":3,\"z\":4}").unwrap();
    assert_eq!(
        diesel_idempotent::fingerprint(&value).unwrap().as_str(),
        v2("[{\"z\":4,\"\u{1F600}\":2,\"\u{E000}\":3,\"\u{FFFD}\":1}]")
    );
}

#[test]
fn non_finite_floats_are_errors_not_null() {
    let err = diesel_idempotent::Fingerprint::builder()
        .named_arg("price", &Some(f64::INFINITY))
        .finish()
        .unwrap_err();
    assert!(
        matches!(err, diesel_idempotent::Error::Serialization { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("`price`"), "{err}");
}
