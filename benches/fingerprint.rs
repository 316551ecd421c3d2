//! Request fingerprints: the canonical JSON encoding plus SHA-256 that
//! `#[idempotent]` computes per call, against raw `sha2` over the same JSON
//! bytes (serialized once, outside the timed loop), for 1 KiB and 64 KiB
//! payloads.
//!
//! ```text
//! cargo bench --bench fingerprint
//! ```
//!
//! Target, reported in BENCHMARKS.md, not asserted: a fingerprint's
//! throughput at least half of raw SHA-256's.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use diesel_idempotent::Fingerprint;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// A JSON object of string fields, at least `bytes` long once serialized;
/// the same for every run.
fn payload(bytes: usize) -> Value {
    let mut object = Map::new();
    let mut size = 2; // the braces
    let mut i = 0u32;
    while size < bytes {
        let key = format!("field_{i:05}");
        let value = format!(
            "value {i} of a request: customer {}, item {}",
            i * 7919 % 10_007,
            i % 97
        );
        size += key.len() + value.len() + 6; // quotes, colon, comma
        object.insert(key, Value::String(value));
        i += 1;
    }
    Value::Object(object)
}

fn fingerprints(c: &mut Criterion) {
    for (label, target) in [("1KiB", 1024), ("64KiB", 64 * 1024)] {
        let payload = payload(target);
        let json = serde_json::to_vec(&payload).expect("a JSON value serializes");
        let mut group = c.benchmark_group(format!("fingerprint/{label}"));
        group.throughput(Throughput::Bytes(json.len() as u64));
        group.bench_function("fingerprint_of", |b| {
            b.iter(|| Fingerprint::of(black_box(&payload)).expect("fingerprint"));
        });
        group.bench_function("raw_sha256", |b| {
            b.iter(|| Sha256::digest(black_box(&json)));
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = fingerprints
}
criterion_main!(benches);
