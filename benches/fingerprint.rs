//! Request fingerprints: the RFC 8785 bytes streamed into SHA-256, as
//! `#[idempotent]` computes them per call, against raw `sha2` over the
//! payload's JSON bytes (serialized once, outside the timed loop), for
//! 1 KiB and 64 KiB payloads of two kinds: a `serde_json::Value` object of
//! string fields, and typed order lines (integers, floats, strings, a
//! nested array, fields declared out of key order).
//!
//! ```text
//! cargo bench --bench fingerprint
//! ```
//!
//! Target, reported in BENCHMARKS.md, not asserted: a fingerprint's
//! throughput at least 0.35 of raw SHA-256's (stretch: 0.5).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use diesel_idempotent::Fingerprint;
use serde::Serialize;
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

/// One line of an order, fields declared out of key order on purpose (the
/// canonical form sorts them).
#[derive(Serialize)]
struct Line {
    sku: String,
    quantity: u32,
    unit_price: f64,
    discount_percent: f32,
    tags: Vec<&'static str>,
    customer_id: u64,
    amount_cents: i64,
    note: Option<String>,
}

/// Order lines, at least `bytes` of JSON; the same for every run.
fn lines(bytes: usize) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut size = 2;
    let mut i = 0u32;
    while size < bytes {
        let line = Line {
            sku: format!("SKU-{:06}", i * 7919 % 1_000_003),
            quantity: 1 + i % 12,
            unit_price: f64::from(i % 997) * 1.25 + 0.99,
            discount_percent: (i % 7) as f32 * 2.5,
            tags: ["gift", "express", "fragile"][..(i % 4) as usize].to_vec(),
            customer_id: 1_000_000 + u64::from(i % 331),
            amount_cents: -i64::from(i % 5) * 100 + 25_000,
            note: i
                .is_multiple_of(3)
                .then(|| format!("deliver after {} pm", i % 12)),
        };
        size += serde_json::to_vec(&line).expect("a line serializes").len() + 1;
        lines.push(line);
        i += 1;
    }
    lines
}

fn compare<T: Serialize>(c: &mut Criterion, name: &str, payload: &T) {
    let json = serde_json::to_vec(payload).expect("the payload serializes");
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(json.len() as u64));
    group.bench_function("fingerprint_of", |b| {
        b.iter(|| Fingerprint::of(black_box(payload)).expect("fingerprint"));
    });
    group.bench_function("raw_sha256", |b| {
        b.iter(|| Sha256::digest(black_box(&json)));
    });
    // The floor for any serializer: serde_json's own (non-canonical) bytes,
    // then SHA-256.
    group.bench_function("to_vec_sha256", |b| {
        b.iter(|| Sha256::digest(serde_json::to_vec(black_box(payload)).expect("serializes")));
    });
    group.finish();
}

fn fingerprints(c: &mut Criterion) {
    for (label, target) in [("1KiB", 1024), ("64KiB", 64 * 1024)] {
        compare(c, &format!("fingerprint/{label}"), &payload(target));
        compare(c, &format!("fingerprint/typed/{label}"), &lines(target));
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
