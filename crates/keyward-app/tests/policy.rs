//! The key policy applied on a moved clock (`ManualClock`), on a real
//! SQLite file: keys unused past the flag are listed, past the revocation
//! revoked (actor `policy`, reason `unused`), a dry run changes nothing, and
//! a key used again is neither.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]

use keyward_app::env::{ManualClock, OsRng};
use keyward_app::{Actor, App, AuditQuery, CreateKey};
use keyward_core::policy::PolicyText;
use keyward_core::{Catalog, Digester, GrantRequest};
use keyward_store::{SqliteStore, Store};
use std::sync::Arc;

const DAY: i64 = 86_400_000;

#[tokio::test]
async fn unused_keys_are_flagged_then_revoked_by_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("p.db").display());
    let catalog = Arc::new(Catalog::fleet().unwrap());
    let store = SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let app = App::new(
        store,
        catalog.clone(),
        Digester::sha256(),
        clock.clone(),
        Arc::new(OsRng),
    );
    let actor = Actor::operator("cli:test", &catalog);
    let (org, _) = app.bootstrap(&actor).await.unwrap();
    let create = |name: &str| CreateKey {
        name: name.into(),
        grants: GrantRequest {
            scopes: vec!["vehicles:read".into()],
            ..GrantRequest::default()
        },
        ..CreateKey::default()
    };
    let idle = app.create_key(&actor, &org, create("idle")).await.unwrap();
    let busy = app.create_key(&actor, &org, create("busy")).await.unwrap();
    // No policy: a run does nothing.
    let run = app.run_policy(&org, false).await.unwrap();
    assert!(run.flagged.is_empty() && run.revoked.is_empty());
    let policy = PolicyText {
        flag_unused_after: Some("90d".into()),
        revoke_unused_after: Some("180d".into()),
        ..PolicyText::default()
    };
    app.set_policy(&actor, &org, policy).await.unwrap();

    // 100 days on, `busy` used on day 50: only `idle` is flagged.
    clock.advance(50 * DAY);
    app.flush_uses(&[(busy.record.id.clone(), 1_700_000_000_000 + 50 * DAY)])
        .await
        .unwrap();
    clock.advance(50 * DAY);
    let run = app.run_policy(&org, false).await.unwrap();
    let ids = |v: &[keyward_app::policy::PolicyAction]| -> Vec<String> {
        v.iter().map(|a| a.key_id.clone()).collect()
    };
    assert_eq!(ids(&run.flagged), [idle.record.id.as_str()]);
    assert!(run.revoked.is_empty());

    // 190 days on: `idle` is past the revocation, `busy` past the flag.
    clock.advance(90 * DAY);
    let dry = app.run_policy(&org, true).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!(ids(&dry.revoked), [idle.record.id.as_str()]);
    assert_eq!(ids(&dry.flagged), [busy.record.id.as_str()]);
    let shown = app.show_key(&org, &idle.record.id).await.unwrap();
    assert!(shown.revoked_at.is_none(), "a dry run changes nothing");

    let run = app.run_policy(&org, false).await.unwrap();
    assert_eq!(ids(&run.revoked), [idle.record.id.as_str()]);
    let shown = app.show_key(&org, &idle.record.id).await.unwrap();
    assert!(shown.revoked_at.is_some());
    let (audit, _) = app
        .query_audit(
            &org,
            &AuditQuery {
                action: Some("key.revoked".into()),
                limit: 10,
                ..AuditQuery::default()
            },
        )
        .await
        .unwrap();
    let record = audit.first().unwrap();
    assert_eq!(record.actor, "policy");
    assert_eq!(record.details["reason"], "unused", "{}", record.details);
    // Revoked keys are not flagged again.
    let again = app.run_policy(&org, false).await.unwrap();
    assert!(again.revoked.is_empty());
    assert_eq!(ids(&again.flagged), [busy.record.id.as_str()]);
}
