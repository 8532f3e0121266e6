//! Usage counting (issue 18): what the hot path pays per request, what a
//! counter cell costs in memory, and what the flush costs with 10 000
//! active keys over a table already holding a million keys' counts.
//!
//! `cargo bench -p keyward-app --bench usage` (SQLite in a temporary file;
//! with `KEYWARD_TEST_POSTGRES_URL` set, also PostgreSQL, in a scratch
//! database created and dropped with `psql`).
//!
//! Idle keys cost nothing here: a node holds cells only for the keys,
//! routes and outcomes it saw since its last flush, so the million keys
//! matter to the flush only as rows already in `key_usage`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::cast_precision_loss,
    reason = "bench code: a panic is a failed run, and it measures real time"
)]
#![allow(missing_docs)]

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use keyward_app::env::{OsRng, SystemClock};
use keyward_app::usage::{HOUR_MS, Usage, UsageOutcome, usage_id};
use keyward_app::{App, UsageRow};
use keyward_core::{Catalog, Digester};
use keyward_store::{AnyStore, Store};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Keys with counts in the table before the measured flushes.
const HISTORY_KEYS: usize = 1_000_000;
/// Keys used since the last flush.
const ACTIVE: usize = 10_000;
/// Cells per active key: a few routes, and a refusal.
const CELLS_PER_KEY: usize = 3;
const NOW: i64 = 1_764_633_600_000;

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

fn key_ids(n: usize, tag: &str) -> Vec<(u64, String)> {
    (0..n)
        .map(|i| {
            let id = format!("key_{tag}{i:015}");
            (usage_id(&id), id)
        })
        .collect()
}

/// Counts `CELLS_PER_KEY` cells for each key.
fn count_active(usage: &Usage, keys: &[(u64, String)], now: i64) {
    for (u, id) in keys {
        usage.count(*u, id, Some(0), "GET", UsageOutcome::Allowed, now);
        usage.count(*u, id, Some(1), "GET", UsageOutcome::Allowed, now);
        usage.count(*u, id, Some(2), "POST", UsageOutcome::Forbidden, now);
    }
}

fn memory_per_cell() {
    let usage = Usage::default();
    let keys = key_ids(100_000, "m");
    let routes = 10;
    let before = rss_kib();
    for (u, id) in &keys {
        for r in 0..routes {
            for outcome in [UsageOutcome::Allowed, UsageOutcome::Forbidden] {
                usage.count(*u, id, Some(r), "GET", outcome, NOW);
            }
        }
    }
    let cells = usage.len();
    let bytes = rss_kib().saturating_sub(before) * 1024;
    println!(
        "memory: {cells} cells (100 000 keys x {routes} routes x 2 outcomes) added {:.1} MiB of RSS: {} bytes per cell",
        bytes as f64 / 1_048_576.0,
        bytes / cells as u64
    );
}

fn rows_for(keys: &[(u64, String)], hour: i64) -> Vec<UsageRow> {
    keys.iter()
        .map(|(_, id)| UsageRow {
            key_id: id.clone(),
            hour,
            method: "GET".into(),
            route: "/vehicles".into(),
            outcome: "allowed".into(),
            count: 1,
            last_seen: hour,
        })
        .collect()
}

/// Fills `key_usage` with a million keys' counts of an earlier hour, then
/// times flushes of the active keys' cells (the first inserts the rows,
/// the next ones add to them).
async fn flush_cost(label: &str, url: &str, catalog: &Arc<Catalog>) {
    let store = keyward_store::open_as(url, "usage bench").await.unwrap();
    store.migrate().await.unwrap();
    let app: App<AnyStore> = App::new(
        store,
        catalog.clone(),
        Digester::sha256(),
        Arc::new(SystemClock),
        Arc::new(OsRng),
    );
    let started = Instant::now();
    let history = key_ids(HISTORY_KEYS, "h");
    for chunk in history.chunks(50_000) {
        app.flush_usage(&mut rows_for(chunk, NOW - 24 * HOUR_MS))
            .await
            .unwrap();
    }
    println!(
        "{label}: {HISTORY_KEYS} keys' counts written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let active = key_ids(ACTIVE, "a");
    let usage = Usage::default();
    let mut times = Vec::new();
    for round in 0..5 {
        count_active(&usage, &active, NOW);
        let took = Instant::now();
        let mut rows = usage.take(catalog, NOW);
        let written = rows.len();
        let taken = took.elapsed();
        app.flush_usage(&mut rows).await.unwrap();
        let total = took.elapsed();
        println!(
            "{label}: flush {round}: {} rows, take {:.1} ms, take + write {:.1} ms",
            written,
            taken.as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3
        );
        times.push(total);
    }
    times.sort();
    println!(
        "{label}: flush of {ACTIVE} active keys ({} cells), median {:.1} ms",
        ACTIVE * CELLS_PER_KEY,
        times[times.len() / 2].as_secs_f64() * 1e3
    );
}

fn psql(admin: &str, sql: &str) {
    let ok = std::process::Command::new("psql")
        .args(["-q", admin, "-c", sql])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "psql: {sql}");
}

fn bench(c: &mut Criterion) {
    let catalog = Arc::new(Catalog::fleet().unwrap());
    memory_per_cell();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("usage.db").display());
    rt.block_on(flush_cost("sqlite", &sqlite, &catalog));
    if let Ok(base) = std::env::var("KEYWARD_TEST_POSTGRES_URL") {
        let admin = format!("{}/postgres", base.rsplit_once('/').unwrap().0);
        let db = format!("kw_bench_usage_{}", std::process::id());
        psql(&admin, &format!("CREATE DATABASE {db}"));
        let url = format!("{}/{db}", base.rsplit_once('/').unwrap().0);
        rt.block_on(flush_cost("postgres", &url, &catalog));
        psql(&admin, &format!("DROP DATABASE {db} WITH (FORCE)"));
    } else {
        println!("postgres: skipped (KEYWARD_TEST_POSTGRES_URL is not set)");
    }

    // The hot path: a request of a key whose cell exists (the common
    // case), and one spread over 10 000 keys' cells (cache misses).
    let usage = Usage::default();
    let active = key_ids(ACTIVE, "c");
    count_active(&usage, &active, NOW);
    let (u, id) = &active[0];
    c.bench_function("count: existing cell", |b| {
        b.iter(|| {
            usage.count(
                black_box(*u),
                id,
                Some(0),
                "GET",
                UsageOutcome::Allowed,
                NOW,
            );
        });
    });
    let mut i = 0;
    c.bench_function("count: 10 000 keys' cells in turn", |b| {
        b.iter(|| {
            let (u, id) = &active[i % ACTIVE];
            i = i.wrapping_add(7919);
            usage.count(*u, id, Some(1), "GET", UsageOutcome::Allowed, NOW);
        });
    });
    c.bench_function("take: 10 000 active keys", |b| {
        b.iter_batched(
            || count_active(&usage, &active, NOW),
            |()| black_box(usage.take(&catalog, NOW)),
            BatchSize::PerIteration,
        );
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
