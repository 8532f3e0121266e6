//! The in-memory snapshot follows writes made through another connection
//! pool on the same SQLite file (as the CLI does beside a running server).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]

use keyward_app::env::{ManualClock, OsRng};
use keyward_app::snapshot::Snapshot;
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
    let org = server.bootstrap(&actor).await.unwrap();
    let digest = |key: &str| Digester::sha256().digest(key);

    let first = cli
        .create_key(&actor, &org, create("first", "vehicles:read"))
        .await
        .unwrap();
    let snapshot = Snapshot::load(server.store(), &catalog).await.unwrap();
    assert_eq!(snapshot.len(), 1);
    let entry = snapshot.get(&digest(&first.key)).unwrap();
    assert_eq!(
        (entry.key_id.as_str(), entry.org_id.as_str()),
        (first.record.id.as_str(), org.id.as_str())
    );
    assert_eq!(
        catalog.names(entry.access.effective),
        ["vehicles:read", "vehicle-fields:read"]
    );
    assert!(entry.access.revoked_at.is_none());
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
            .access
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
            .access
            .revoked_at
            .is_some()
    );
    assert_eq!(
        snapshot
            .get(&digest(&second.key))
            .unwrap()
            .access
            .expires_at,
        Some(1_000 + 60_000)
    );
    assert!(snapshot.get(&digest(&rolled.key)).is_some());
    assert_eq!(snapshot.len(), 3);

    // A key created after the last sync is found by the guarded lookup.
    let third = cli
        .create_key(&actor, &org, create("third", "inspections:read"))
        .await
        .unwrap();
    let found = snapshot
        .fetch_missing(server.store(), &catalog, &digest(&third.key))
        .await
        .unwrap();
    assert_eq!(found.unwrap().key_id, third.record.id);
    assert!(snapshot.get(&digest(&third.key)).is_some());
    // An unknown digest is not cached.
    let unknown = snapshot
        .fetch_missing(server.store(), &catalog, &digest("insp_live_nope"))
        .await
        .unwrap();
    assert!(unknown.is_none());
    assert_eq!(snapshot.len(), 4);
}
