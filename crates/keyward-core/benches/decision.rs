//! The pure decision a gateway makes per request: parse + checksum + digest +
//! snapshot lookup + route match + scope check. Target: ≤ 1 µs median.
//!
//! `cargo bench -p keyward-core --bench decision`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use keyward_core::key::{self, Environment, RANDOM_BYTES};
use keyward_core::{Catalog, Digester, KeyAccess, KeyDigest, path};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::hint::black_box;

/// Digests are uniform: their first 8 bytes are the hash.
#[derive(Default)]
struct DigestHasher(u64);
impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

fn random(seed: u64) -> Vec<u8> {
    // splitmix64: deterministic bench input, not key material.
    let mut x = seed;
    (0..RANDOM_BYTES)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) % 248) as u8
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let catalog = Catalog::fleet().unwrap();
    let digester = Digester::hmac(b"bench-server-secret");
    let grant = catalog
        .permission_set("inspections:write")
        .unwrap()
        .scope_set();
    let access = KeyAccess::new(&catalog, grant);
    let mut snapshot: HashMap<KeyDigest, KeyAccess, BuildHasherDefault<DigestHasher>> =
        HashMap::default();
    let mut keys = Vec::new();
    for i in 0..10_000u64 {
        let k = key::generate("insp", Environment::Live, &random(i)).unwrap();
        snapshot.insert(digester.digest(k.expose()), access);
        keys.push(k);
    }
    let probe = keys[4242].expose().to_owned();
    let full_path = "/api/third-party/v1/inspections/42";

    let decide = |key_text: &str, method: &str, full: &str| {
        let parsed = key::parse(key_text).is_ok();
        let path = path::strip_gateway_prefix(catalog.gateway_prefix(), full).unwrap_or(full);
        let normal = path::check_normal(path).is_ok();
        let found = snapshot.get(&digester.digest(key_text));
        let key = match (parsed && normal, found) {
            (true, Some(k)) => Ok(k),
            _ => Err(keyward_core::AuthFailure::Unknown),
        };
        catalog.authorize(key, 1, method, path)
    };
    assert!(decide(&probe, "PATCH", full_path).is_allowed());
    assert!(!decide(&probe, "DELETE", "/api/third-party/v1/vehicles/1").is_allowed());

    let mut g = c.benchmark_group("decision");
    g.bench_function("allowed PATCH /inspections/42 (10k keys, hmac)", |b| {
        b.iter(|| decide(black_box(&probe), black_box("PATCH"), black_box(full_path)))
    });
    g.bench_function("denied DELETE /vehicles/1", |b| {
        b.iter(|| {
            decide(
                black_box(&probe),
                black_box("DELETE"),
                black_box("/api/third-party/v1/vehicles/1"),
            )
        })
    });
    g.bench_function("parts: parse+checksum", |b| {
        b.iter(|| key::parse(black_box(&probe)).is_ok())
    });
    g.bench_function("parts: hmac digest", |b| {
        b.iter(|| digester.digest(black_box(&probe)))
    });
    g.bench_function("parts: route match", |b| {
        b.iter(|| catalog.match_route(black_box("PATCH"), black_box("/inspections/42")))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
