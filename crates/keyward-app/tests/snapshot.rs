//! The in-memory snapshot follows writes made through another connection
//! pool on the same SQLite file (as the CLI does beside a running server).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]

use keyward_app::env::{ManualClock, OsRng};
use keyward_app::{Actor, App, CreateKey};
use keyward_core::{Catalog, Digester, GrantRequest};
use keyward_store::SqliteStore;
use std::sync::Arc;

async fn app(url: &str, catalog: &Arc<Catalog>) -> App<SqliteStore> {
    let store = SqliteStore::connect(url).await.unwrap();
    App::new(
        store,
        catalog.clone(),
        Digester::sha256(),
        Arc::new(ManualClock::new(1_000)),
        Arc::new(OsRng),
    )
}

fn create(name: &str, scope: &str) -> CreateKey {
    CreateKey {
        name: name.into(),
        grants: GrantRequest {
            scopes: vec![scope.into()],
            ..GrantRequest::default()
        },
        ..CreateKey::default()
    }
}

#[tokio::test]
async fn snapshot_follows_the_change_log() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let catalog = Arc::new(Catalog::fleet().unwrap());
    let server = app(&url, &catalog).await;
    let cli = app(&url, &catalog).await;
    let actor = Actor::operator("cli:test", &catalog);
    let (org, _) = server.bootstrap(&actor).await.unwrap();
    let digest = |key: &str| Digester::sha256().digest(key);

    let first = cli
        .create_key(&actor, &org, create("first", "vehicles:read"))
        .await
        .unwrap();
    let snapshot = server.load_snapshot(&mut |_| {}).await.unwrap();
    assert_eq!(snapshot.len(), 1);
    let entry = snapshot.get(&digest(&first.key)).unwrap();
    assert_eq!(
        (&*entry.key_id, &*entry.org_id),
        (first.record.id.as_str(), org.id.as_str())
    );
    assert_eq!(
        catalog.names(entry.access().effective),
        ["vehicles:read", "vehicle-fields:read"]
    );
    assert_eq!(
        &entry.grants.effective_text[..],
        b"vehicles:read vehicle-fields:read"
    );
    assert!(entry.access().revoked_at.is_none());
    assert_eq!(snapshot.sync(server.store(), &catalog).await.unwrap(), 0);

    // Written elsewhere: a new key, a revocation, a roll.
    let second = cli
        .create_key(&actor, &org, create("second", "damages:write"))
        .await
        .unwrap();
    cli.revoke_key(&actor, &org, &first.record.id)
        .await
        .unwrap();
    let rolled = cli
        .roll_key(&actor, &org, &second.record.id, 60_000)
        .await
        .unwrap();
    assert!(
        snapshot.get(&digest(&second.key)).is_none(),
        "not synced yet"
    );
    assert!(
        snapshot
            .get(&digest(&first.key))
            .unwrap()
            .access()
            .revoked_at
            .is_none(),
        "not synced yet"
    );

    let applied = snapshot.sync(server.store(), &catalog).await.unwrap();
    assert_eq!(applied, 4, "created, revoked, rolled, created");
    assert!(
        snapshot
            .get(&digest(&first.key))
            .unwrap()
            .access()
            .revoked_at
            .is_some()
    );
    assert_eq!(
        snapshot
            .get(&digest(&second.key))
            .unwrap()
            .access()
            .expires_at,
        Some(1_000 + 60_000)
    );
    assert!(snapshot.get(&digest(&rolled.key)).is_some());
    assert_eq!(snapshot.len(), 3);

    // A key created after the last sync is found by catching up.
    let third = cli
        .create_key(&actor, &org, create("third", "inspections:read"))
        .await
        .unwrap();
    server.catch_up_snapshot(&snapshot).await.unwrap();
    assert_eq!(
        &*snapshot.get(&digest(&third.key)).unwrap().key_id,
        third.record.id
    );
    // An unknown digest is not cached.
    server.catch_up_snapshot(&snapshot).await.unwrap();
    assert!(snapshot.get(&digest("insp_live_nope")).is_none());
    assert_eq!(snapshot.len(), 4);
}

#[tokio::test]
async fn keys_with_equal_grants_share_them_and_uses_are_flushed_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let catalog = Arc::new(Catalog::fleet().unwrap());
    let app = app(&url, &catalog).await;
    let actor = Actor::operator("cli:test", &catalog);
    let (org, _) = app.bootstrap(&actor).await.unwrap();
    let mut keys = Vec::new();
    for i in 0..25 {
        let scope = if i % 2 == 0 {
            "vehicles:read"
        } else {
            "damages:write"
        };
        keys.push(
            app.create_key(&actor, &org, create(&format!("k{i}"), scope))
                .await
                .unwrap(),
        );
    }
    let mut seen = Vec::new();
    let snapshot = app.load_snapshot(&mut |n| seen.push(n)).await.unwrap();
    assert_eq!(seen.last(), Some(&25));
    let entry = |i: usize| {
        snapshot
            .get(&Digester::sha256().digest(&keys[i].key))
            .unwrap()
    };
    assert!(Arc::ptr_eq(&entry(0).grants, &entry(2).grants));
    assert!(Arc::ptr_eq(&entry(1).grants, &entry(3).grants));
    assert!(!Arc::ptr_eq(&entry(0).grants, &entry(1).grants));
    assert!(Arc::ptr_eq(&entry(0).org_id, &entry(1).org_id));

    // Many uses of one key within a second queue it once; the latest wins.
    snapshot.record_use(&entry(0), 5_000);
    snapshot.record_use(&entry(0), 5_500);
    snapshot.record_use(&entry(0), 6_200);
    snapshot.record_use(&entry(1), 5_000);
    let mut uses = snapshot.take_uses();
    uses.sort();
    let mut want = vec![
        (keys[0].record.id.clone(), 6_200),
        (keys[1].record.id.clone(), 5_000),
    ];
    want.sort();
    assert_eq!(uses, want);
    assert!(snapshot.take_uses().is_empty());
    app.flush_uses(&uses).await.unwrap();
    let shown = app.show_key(&org, &keys[0].record.id).await.unwrap();
    assert_eq!(shown.last_used_at, Some(6_200));
}
