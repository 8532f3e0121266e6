//! The key policy applied on a moved clock (`ManualClock`), on a real
//! SQLite file: keys unused past the flag are listed, past the revocation
//! revoked (actor `policy`, reason `unused`), a dry run changes nothing, and
//! a key used again is neither.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]

use keyward_app::env::{Clock as _, ManualClock, OsRng};
use keyward_app::{Actor, App, AuditQuery, CreateKey};
use keyward_core::policy::PolicyText;
use keyward_core::{Catalog, Digester, GrantRequest};
use keyward_store::{SqliteStore, Store};
use std::sync::Arc;

const DAY: i64 = 86_400_000;

/// An app on a fresh SQLite file with a manual clock at `t0`, its operator
/// and default organization.
async fn app_at(
    dir: &tempfile::TempDir,
    t0: i64,
) -> (App<SqliteStore>, Arc<ManualClock>, Actor, keyward_app::Org) {
    let url = format!("sqlite://{}", dir.path().join("p.db").display());
    let catalog = Arc::new(Catalog::fleet().unwrap());
    let store = SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let clock = Arc::new(ManualClock::new(t0));
    let app = App::new(
        store,
        catalog.clone(),
        Digester::sha256(),
        clock.clone(),
        Arc::new(OsRng),
    );
    let actor = Actor::operator("cli:test", &catalog);
    let (org, _) = app.bootstrap(&actor).await.unwrap();
    (app, clock, actor, org)
}

#[tokio::test]
async fn unused_keys_are_flagged_then_revoked_by_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (app, clock, actor, org) = app_at(&dir, 1_700_000_000_000).await;
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

/// Notices are told once each, on a moved clock: `key.expiring` per
/// threshold crossed, `key.expired`, `key.unused` per flag (cleared by use,
/// told again when the key idles again); a dry run tells nothing; each is
/// queued for the webhook subscribed to it, in the order it happened.
#[tokio::test]
async fn notices_are_told_once_each_and_queued_for_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = 1_700_000_000_000;
    let (app, clock, actor, org) = app_at(&dir, t0).await;
    let hook = app
        .create_webhook(
            &actor,
            &org,
            keyward_app::webhooks::NewWebhook {
                url: "http://127.0.0.1:9/hooks".into(),
                events: vec![
                    "key.unused".into(),
                    "key.expiring".into(),
                    "key.expired".into(),
                ],
                description: String::new(),
            },
            true,
        )
        .await
        .unwrap();
    let events = || async {
        let page = app
            .webhook_deliveries(&org, &hook.webhook.id, None, 50)
            .await
            .unwrap();
        page.deliveries
            .into_iter()
            .rev()
            .map(|d| d.event)
            .collect::<Vec<_>>()
    };
    let create = |name: &str, expires_at: Option<i64>| CreateKey {
        name: name.into(),
        grants: GrantRequest {
            scopes: vec!["vehicles:read".into()],
            ..GrantRequest::default()
        },
        expires_at,
        ..CreateKey::default()
    };
    let short = app
        .create_key(&actor, &org, create("short", Some(t0 + 20 * DAY)))
        .await
        .unwrap();
    let idle = app
        .create_key(&actor, &org, create("idle", None))
        .await
        .unwrap();
    let policy = PolicyText {
        flag_unused_after: Some("30d".into()),
        expiry_warning: vec!["1d".into(), "14d".into()],
        ..PolicyText::default()
    };
    app.set_policy(&actor, &org, policy).await.unwrap();
    let ids = |v: &[keyward_app::policy::PolicyAction]| -> Vec<String> {
        v.iter().map(|a| a.key_id.clone()).collect()
    };
    let run = app.run_policy(&org, false).await.unwrap();
    assert!(run.expiring.is_empty() && run.expired.is_empty() && run.flagged.is_empty());

    // 13 days left: the 14-day warning, once; a dry run before it tells
    // nothing.
    clock.advance(7 * DAY);
    let dry = app.run_policy(&org, true).await.unwrap();
    assert_eq!(ids(&dry.expiring), [short.record.id.as_str()]);
    assert!(events().await.is_empty(), "a dry run tells nothing");
    let run = app.run_policy(&org, false).await.unwrap();
    assert_eq!(ids(&run.expiring), [short.record.id.as_str()]);
    assert!(
        app.run_policy(&org, false)
            .await
            .unwrap()
            .expiring
            .is_empty()
    );
    assert_eq!(events().await, ["key.expiring"]);

    // 23 hours left: the one-day warning; then the expiry, once.
    clock.advance(12 * DAY + 3_600_000);
    let run = app.run_policy(&org, false).await.unwrap();
    assert_eq!(ids(&run.expiring), [short.record.id.as_str()]);
    clock.advance(2 * DAY);
    let run = app.run_policy(&org, false).await.unwrap();
    assert_eq!(ids(&run.expired), [short.record.id.as_str()]);
    assert!(run.expiring.is_empty());
    assert!(
        app.run_policy(&org, false)
            .await
            .unwrap()
            .expired
            .is_empty()
    );

    // Unused for 30 days: flagged, told once, shown in the key.
    clock.advance(10 * DAY);
    let run = app.run_policy(&org, false).await.unwrap();
    assert_eq!(ids(&run.flagged), [idle.record.id.as_str()]);
    assert_eq!(ids(&run.newly_flagged), [idle.record.id.as_str()]);
    let again = app.run_policy(&org, false).await.unwrap();
    assert_eq!(ids(&again.flagged), [idle.record.id.as_str()]);
    assert!(again.newly_flagged.is_empty(), "told once");
    let shown = app.show_key(&org, &idle.record.id).await.unwrap();
    assert_eq!(shown.flags, ["unused"]);
    assert_eq!(
        events().await,
        ["key.expiring", "key.expiring", "key.expired", "key.unused"]
    );

    // Used again: the flag goes; idle 30 days more: flagged and told again.
    clock.advance(3_600_000);
    app.flush_uses(&[(idle.record.id.clone(), clock.now_ms())])
        .await
        .unwrap();
    let run = app.run_policy(&org, false).await.unwrap();
    assert!(run.flagged.is_empty());
    assert!(
        app.show_key(&org, &idle.record.id)
            .await
            .unwrap()
            .flags
            .is_empty()
    );
    clock.advance(31 * DAY);
    app.run_policy(&org, false).await.unwrap();
    assert_eq!(
        app.show_key(&org, &idle.record.id).await.unwrap().flags,
        ["unused"]
    );
    assert_eq!(
        events().await,
        [
            "key.expiring",
            "key.expiring",
            "key.expired",
            "key.unused",
            "key.unused"
        ]
    );
    let (audit, _) = app
        .query_audit(
            &org,
            &AuditQuery {
                action: Some("key.expiring".into()),
                limit: 10,
                ..AuditQuery::default()
            },
        )
        .await
        .unwrap();
    let thresholds: Vec<&str> = audit
        .iter()
        .map(|r| r.details["threshold"].as_str().unwrap())
        .collect();
    assert_eq!(thresholds, ["1d", "14d"]);
    assert!(audit.iter().all(|r| r.actor == "policy"));
}

/// An endpoint failing for 24 hours is disabled, audited as
/// `webhook.disabled`; its events stay queued, and no new ones are queued
/// for it. Driven by a moved clock, through the same calls a server makes.
#[tokio::test]
async fn an_endpoint_failing_for_a_day_is_disabled_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let (app, clock, actor, org) = app_at(&dir, 1_700_000_000_000).await;
    let hook = app
        .create_webhook(
            &actor,
            &org,
            keyward_app::webhooks::NewWebhook {
                url: "http://127.0.0.1:9/hooks".into(),
                events: vec!["key.created".into()],
                description: String::new(),
            },
            true,
        )
        .await
        .unwrap()
        .webhook;
    let create = |name: &str| CreateKey {
        name: name.into(),
        grants: GrantRequest {
            scopes: vec!["vehicles:read".into()],
            ..GrantRequest::default()
        },
        ..CreateKey::default()
    };
    app.create_key(&actor, &org, create("first")).await.unwrap();
    let hour = 3_600_000;
    let mut attempts = 0;
    let mut delays = Vec::new();
    let mut last = clock.now_ms();
    // Fail every attempt, each as soon as the back-off allows.
    let disabled = loop {
        let mut held = app
            .claim_webhook("node-a", 30_000)
            .await
            .unwrap()
            .expect("due once its back-off has passed");
        let event = app.pending_events(&held.id, 1).await.unwrap().remove(0);
        let now = clock.now_ms();
        delays.push(now - last);
        last = now;
        attempts += 1;
        let failed = keyward_app::Attempt {
            audit_seq: event.audit_seq,
            at: now,
            status: Some(503),
            error: Some("answered 503".into()),
            duration_ms: 1,
            delivered: false,
        };
        assert!(
            app.record_attempt("node-a", &mut held, &failed, 30_000)
                .await
                .unwrap()
        );
        app.release_webhook("node-a", &held.id).await.unwrap();
        if held.disabled_at.is_some() {
            break app.list_webhooks(&org).await.unwrap().remove(0);
        }
        // Not due a moment before the back-off ends; due at its end.
        clock.advance(held.next_attempt_at - now - 1);
        assert!(app.claim_webhook("node-a", 30_000).await.unwrap().is_none());
        clock.advance(1);
        assert!(attempts < 100, "never disabled");
    };
    assert_eq!(disabled.id, hook.id);
    assert_eq!(disabled.status, "disabled");
    assert_eq!(disabled.pending, 1, "its event stays queued");
    // Backed off exponentially: 5 s, 10 s, 20 s, … then hourly.
    assert_eq!(&delays[1..4], [5_000, 10_000, 20_000], "{delays:?}");
    assert!(
        delays.iter().rev().take(3).all(|d| *d >= hour),
        "{delays:?}"
    );
    assert!((25..40).contains(&attempts), "{attempts}");
    let (audit, _) = app
        .query_audit(
            &org,
            &AuditQuery {
                action: Some("webhook.disabled".into()),
                limit: 10,
                ..AuditQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].details["webhook_id"], hook.id.as_str());
    assert!(audit[0].actor.starts_with("node:"), "{}", audit[0].actor);
    // Disabled: nothing new is queued, nothing is leased.
    app.create_key(&actor, &org, create("second"))
        .await
        .unwrap();
    clock.advance(10 * hour);
    assert!(app.claim_webhook("node-a", 30_000).await.unwrap().is_none());
    assert_eq!(app.list_webhooks(&org).await.unwrap()[0].pending, 1);
}
