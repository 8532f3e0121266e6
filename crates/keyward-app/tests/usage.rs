//! The usage flush on a real SQLite file: counts taken from memory are
//! written in chunks, repeated cells add up, and every key's counts arrive
//! whole, whichever chunk they fell in.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]

use keyward_app::App;
use keyward_app::env::{ManualClock, OsRng};
use keyward_app::usage::{FLUSH_CHUNK, HOUR_MS, Usage, UsageOutcome, usage_id};
use keyward_core::{Catalog, Digester};
use keyward_store::{SqliteStore, Store};
use std::sync::Arc;

const NOW: i64 = 1_764_633_600_000 + 30 * 60_000;

#[tokio::test]
async fn a_flush_larger_than_a_chunk_writes_every_count_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("u.db").display());
    let catalog = Arc::new(Catalog::fleet().unwrap());
    let store = SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let app = App::new(
        store,
        catalog.clone(),
        Digester::sha256(),
        Arc::new(ManualClock::new(NOW)),
        Arc::new(OsRng),
    );
    let usage = Usage::default();
    let keys: Vec<String> = (0..FLUSH_CHUNK * 2 + 17)
        .map(|i| format!("key_{i:06}"))
        .collect();
    for (i, id) in keys.iter().enumerate() {
        for _ in 0..=(i % 3) {
            usage.count(usage_id(id), id, Some(0), "GET", UsageOutcome::Allowed, NOW);
        }
    }
    usage.count(
        usage_id(&keys[0]),
        &keys[0],
        Some(1),
        "BREW",
        UsageOutcome::Forbidden,
        NOW,
    );
    let mut rows = usage.take(&catalog, NOW);
    assert_eq!(rows.len(), keys.len() + 1);
    assert!(usage.take(&catalog, NOW).is_empty(), "taken once");
    // A row repeated in the batch (kept from a failed flush) adds up.
    let again = rows.iter().find(|r| r.key_id == keys[1]).unwrap().clone();
    rows.push(again);
    app.flush_usage(&mut rows).await.unwrap();
    assert!(rows.is_empty(), "everything written: {}", rows.len());

    for (i, id) in keys.iter().enumerate() {
        let stored = app
            .store()
            .key_usage(id, NOW - HOUR_MS, NOW + HOUR_MS)
            .await
            .unwrap();
        let total: u64 = stored.iter().map(|r| r.count).sum();
        let expected = (i % 3 + 1) as u64 * if i == 1 { 2 } else { 1 } + u64::from(i == 0);
        assert_eq!(total, expected, "{id}: {stored:?}");
    }
    let first = app
        .store()
        .key_usage(&keys[0], NOW - HOUR_MS, NOW + HOUR_MS)
        .await
        .unwrap();
    assert!(
        first
            .iter()
            .any(|r| r.method == "OTHER" && r.outcome == "forbidden"),
        "a method outside the seven is OTHER: {first:?}"
    );
}
