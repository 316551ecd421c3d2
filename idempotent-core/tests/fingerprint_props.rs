//! Properties of the canonical encoding: the order in which a map's entries
//! were produced never changes a fingerprint; any change to a key or a value
//! does.

use idempotent_core::Fingerprint;
use proptest::prelude::*;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

/// A map that serializes its entries in exactly the given order, whatever
/// the map types and serde_json features of the build.
#[derive(Debug, Clone)]
struct Ordered(Vec<(String, Value)>);

impl Serialize for Ordered {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Distinct keys with values, in a generated order.
fn entries() -> impl Strategy<Value = Vec<(String, Value)>> {
    prop::collection::btree_map("\\PC{1,8}", value(), 1..10)
        .prop_map(|m| m.into_iter().collect::<Vec<_>>())
        .prop_shuffle()
}

fn fp<T: Serialize>(v: &T) -> Fingerprint {
    Fingerprint::of(v).expect("serializable")
}

proptest! {
    #[test]
    fn permuting_entries_never_changes_the_fingerprint(
        (original, shuffled) in entries().prop_flat_map(|e| (Just(e.clone()), Just(e).prop_shuffle()))
    ) {
        prop_assert_eq!(fp(&Ordered(original)), fp(&Ordered(shuffled)));
    }

    #[test]
    fn changing_a_value_changes_the_fingerprint(
        entries in entries(),
        index in any::<prop::sample::Index>(),
        replacement in value(),
    ) {
        let i = index.index(entries.len());
        prop_assume!(entries[i].1 != replacement);
        let mut changed = entries.clone();
        changed[i].1 = replacement;
        prop_assert_ne!(fp(&Ordered(entries)), fp(&Ordered(changed)));
    }

    #[test]
    fn changing_a_key_changes_the_fingerprint(
        entries in entries(),
        index in any::<prop::sample::Index>(),
        suffix in "\\PC{1,3}",
    ) {
        let i = index.index(entries.len());
        let mut changed = entries.clone();
        changed[i].0.push_str(&suffix);
        prop_assume!(changed.iter().filter(|(k, _)| *k == changed[i].0).count() == 1);
        prop_assert_ne!(fp(&Ordered(entries)), fp(&Ordered(changed)));
    }

    #[test]
    fn integers_are_exact(a in any::<i64>(), b in any::<i64>()) {
        prop_assume!(a != b);
        prop_assert_ne!(fp(&a), fp(&b));
    }
}
