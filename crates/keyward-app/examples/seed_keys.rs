//! Fills a database with many keys for load tests (`bench/million.sh`):
//! ordinary scoped keys with a realistic mix of grants, written in batches
//! straight through the store (creating them one by one through the CLI
//! would take hours). Writes a sample of the full keys to a file so a load
//! generator can use them.
//!
//! `cargo run --release -p keyward-app --example seed_keys -- sqlite://big.db 1000000 sample.txt`
//!
//! Digests are SHA-256, or HMAC-SHA-256 when `KEYWARD_DIGEST_SECRET` is set,
//! exactly as `keyward serve` computes them.

#![allow(clippy::expect_used, reason = "a bench tool: failing loudly is right")]

use keyward_app::env::{OsRng, Rng, SystemClock};
use keyward_app::{Actor, App};
use keyward_core::key::{self, Environment, RANDOM_BYTES};
use keyward_core::{Catalog, Digester};
use keyward_store::{KeyRecord, Store};
use std::io::Write;
use std::sync::Arc;

const BATCH: usize = 10_000;
/// One sampled key per this many keys granted `vehicles:read` alone (the
/// grant shape at index 0), so every sampled key may `GET /vehicles`.
const SAMPLE_EVERY: u64 = 150;
/// (scopes, permission sets): shapes of the fleet presets and typical picks.
const GRANTS: &[(&[&str], &[&str])] = &[
    (&["vehicles:read"], &[]),
    (&["vehicles:read"], &["inspections:write"]),
    (
        &[
            "inspection-templates:read",
            "inspections:write",
            "vehicles:read",
        ],
        &[],
    ),
    (&["damages:read", "damages:write"], &[]),
    (&["driver-assignments:read"], &[]),
    (&[], &["vehicles:write"]),
    (&["keyward-api-keys:verify"], &[]),
];

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .expect("usage: seed_keys DATABASE_URL COUNT SAMPLE_FILE");
    let count: u64 = args.next().and_then(|n| n.parse().ok()).expect("COUNT");
    let sample_path = args.next().expect("SAMPLE_FILE");
    let digester = match std::env::var("KEYWARD_DIGEST_SECRET") {
        Ok(s) => Digester::hmac(s.as_bytes()),
        Err(_) => Digester::sha256(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let store = keyward_store::open(&url).await.expect("open database");
        let catalog = Arc::new(Catalog::fleet().expect("fleet catalog"));
        let app = App::new(
            store.clone(),
            catalog.clone(),
            digester.clone(),
            Arc::new(SystemClock),
            Arc::new(OsRng),
        );
        let (org, _) = app
            .bootstrap(&Actor::operator("cli:seed", &catalog))
            .await
            .expect("bootstrap");
        let mut sample = std::fs::File::create(&sample_path).expect("sample file");
        let now = app.now();
        let mut done = 0u64;
        while done < count {
            let n = (count - done).min(BATCH as u64);
            let mut batch = Vec::with_capacity(BATCH);
            for i in done..done + n {
                let secret = loop {
                    let mut bytes = [0u8; RANDOM_BYTES];
                    OsRng.fill(&mut bytes).expect("randomness");
                    if let Ok(k) = key::generate("insp", Environment::Live, &bytes) {
                        break k;
                    }
                };
                let (scopes, sets) = GRANTS[(i % GRANTS.len() as u64) as usize];
                if i % (SAMPLE_EVERY * GRANTS.len() as u64) == 0 {
                    writeln!(sample, "{}", secret.expose()).expect("write sample");
                }
                batch.push(KeyRecord {
                    id: format!("key_seed{i:012}"),
                    org_id: org.id.clone(),
                    name: format!("seeded {i}"),
                    description: String::new(),
                    environment: "live".into(),
                    digest: digester.digest(secret.expose()),
                    display_prefix: secret.display_prefix(),
                    legacy: false,
                    created_at: now,
                    created_by: "cli:seed".into(),
                    expires_at: None,
                    revoked_at: None,
                    rolled_to: None,
                    last_used_at: None,
                    flagged_unused_at: None,
                    leaked_at: None,
                    scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                    permission_sets: sets.iter().map(|s| (*s).to_owned()).collect(),
                    limits: Vec::new(),
                    allowed_cidrs: Vec::new(),
                });
            }
            store
                .insert_keys(&org.id, &batch, &[], true)
                .await
                .expect("insert batch");
            done += n;
            eprint!("\rseeded {done}/{count}");
        }
        eprintln!();
    });
}
