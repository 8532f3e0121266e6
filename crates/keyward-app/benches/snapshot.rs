//! The gateway's full in-memory decision with **1 million keys** in the
//! snapshot: bearer check, key parse + checksum, HMAC digest, snapshot lookup,
//! path check, prefix strip, route match, scope check. Target: ≤ 1 µs median.
//!
//! `cargo bench -p keyward-app --bench snapshot`
//!
//! Probes are spread uniformly over the million keys (every lookup a likely
//! cache miss: the worst case), plus one hot key and a well-formed unknown
//! key. Also prints the time to build the snapshot and the resident memory it
//! added; `bench/million.sh` measures the same on a real `keyward serve`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "bench code: a panic is a failed run, and it measures real time"
)]
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use keyward_app::Snapshot;
use keyward_core::key::{self, Environment, RANDOM_BYTES};
use keyward_core::{Catalog, Digester, path};
use keyward_store::SnapshotKey;
use std::hint::black_box;
use std::time::Instant;

const KEYS: u64 = 1_000_000;
const PROBES: u64 = 10_000;

/// Grants as the store renders them: a realistic mix of presets' shapes.
const GRANTS: &[&str] = &[
    "scope vehicles:read",
    "permission_set inspections:write\nscope vehicles:read",
    "scope inspection-templates:read\nscope inspections:write\nscope vehicles:read",
    "scope damages:read\nscope damages:write",
    "scope driver-assignments:read",
    "permission_set vehicles:write",
    "scope keyward-api-keys:verify",
];

fn random(seed: u64) -> [u8; RANDOM_BYTES] {
    // splitmix64: deterministic bench input, not key material.
    let mut x = seed;
    let mut out = [0u8; RANDOM_BYTES];
    for b in &mut out {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        *b = ((z ^ (z >> 31)) % 248) as u8;
    }
    out
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn bench(c: &mut Criterion) {
    let catalog = Catalog::fleet().unwrap();
    let digester = Digester::hmac(b"bench-server-secret");
    let mut probes = Vec::new();
    let before = rss_kib();
    let started = Instant::now();
    let snapshot = Snapshot::from_keys(
        &catalog,
        1,
        (0..KEYS).map(|i| {
            let k = key::generate("insp", Environment::Live, &random(i)).unwrap();
            if i % (KEYS / PROBES) == 0 {
                probes.push(k.expose().to_owned());
            }
            SnapshotKey {
                id: format!("key_{i:016}"),
                org_id: format!("org_{:012}", i % 7),
                digest: digester.digest(k.expose()),
                legacy: false,
                expires_at: None,
                revoked_at: None,
                last_used_at: None,
                grants: GRANTS[(i % GRANTS.len() as u64) as usize].to_owned(),
                limits: Vec::new(),
                allowed_cidrs: Vec::new(),
            }
        }),
    );
    eprintln!(
        "snapshot of {} keys built in {:?} (key generation and HMAC included); resident memory +{} MiB",
        snapshot.len(),
        started.elapsed(),
        rss_kib().saturating_sub(before) / 1024
    );
    let unknown = key::generate("insp", Environment::Live, &random(KEYS + 1))
        .unwrap()
        .expose()
        .to_owned();
    let full_path = "/api/third-party/v1/inspections/42";
    let now = 1_000;

    let decide = |token: &str| {
        let well_formed = key::parse(token).is_ok_and(|k| k.prefix() == catalog.key_prefix());
        let entry = snapshot.get(&digester.digest(token));
        let ok = path::check_normal(full_path).is_ok();
        let route_path = path::strip_gateway_prefix(catalog.gateway_prefix(), full_path).unwrap();
        let access = entry.as_ref().map(|e| e.access());
        let key = match (&access, well_formed && ok) {
            (Some(a), true) => Ok(a),
            _ => Err(keyward_core::AuthFailure::Unknown),
        };
        catalog.authorize(key, now, "PATCH", route_path)
    };

    let mut g = c.benchmark_group("decision_1m_keys");
    let mut i = 0;
    g.bench_function("uniform_probes", |b| {
        b.iter(|| {
            i = (i + 1) % probes.len();
            black_box(decide(black_box(&probes[i])))
        });
    });
    g.bench_function("one_hot_key", |b| {
        b.iter(|| black_box(decide(black_box(&probes[7]))))
    });
    g.bench_function("unknown_well_formed_key", |b| {
        b.iter(|| black_box(decide(black_box(&unknown))));
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
