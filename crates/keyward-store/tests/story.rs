//! The storage conformance story: one narrative every backend must pass.
//! `story()` takes any `Store`; each backend gets a test that opens a fresh
//! database and runs it (SQLite here; PostgreSQL joins with its backend).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]

use keyward_core::audit::{AuditEntry, GENESIS, chain_link};
use keyward_core::limits::{Limit, Network};
use keyward_core::{Digester, KeyDigest};
use keyward_store::{Attempt, EndpointState, KeyNotice, WebhookRecord};
use keyward_store::{
    AuditQuery, KeyFilter, KeyRecord, LeaseAnswer, LeaseAsk, Org, PgStore, Revoked, SessionRecord,
    SnapshotKey, SqliteStore, Store, StoreError, StoredPolicy, UsageRow, UserRecord,
};

fn org(id: &str, slug: &str, is_default: bool) -> Org {
    Org {
        id: id.into(),
        slug: slug.into(),
        name: slug.to_uppercase(),
        is_default,
        created_at: 1,
    }
}

fn audit(org_id: &str, action: &str, key_id: Option<&str>) -> AuditEntry {
    AuditEntry {
        at_ms: 10,
        org_id: org_id.into(),
        actor: "cli:test".into(),
        action: action.into(),
        key_id: key_id.map(Into::into),
        details: "{}".into(),
        ..AuditEntry::default()
    }
}

fn key(id: &str, org_id: &str, secret: &str, created_at: i64) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        org_id: org_id.into(),
        name: format!("key {id}"),
        description: String::new(),
        environment: "live".into(),
        digest: Digester::sha256().digest(secret),
        display_prefix: "insp_live_AbCd".into(),
        legacy: false,
        created_at,
        created_by: "cli:test".into(),
        expires_at: None,
        revoked_at: None,
        rolled_to: None,
        last_used_at: None,
        flagged_unused_at: None,
        leaked_at: None,
        scopes: vec!["vehicles:read".into()],
        permission_sets: vec!["inspections:write".into()],
        limits: Vec::new(),
        allowed_cidrs: Vec::new(),
    }
}

fn user(id: &str, org_id: &str, email: &str, groups: &[&str]) -> UserRecord {
    UserRecord {
        id: id.into(),
        org_id: org_id.into(),
        email: email.into(),
        name: email.to_uppercase(),
        password_hash: Some("$argon2id$stand-in".into()),
        must_change_password: true,
        created_at: 5,
        disabled_at: None,
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    }
}

/// Users, memberships and audit queries: the second half of the story.
async fn people(store: &impl Store) {
    // The owner created with the organization, in its group.
    let owner = store.get_user("org_a", "usr_owner").await.unwrap().unwrap();
    assert_eq!(owner.groups, ["administrators"]);
    assert!(owner.must_change_password);
    // Users are per organization: same email elsewhere is fine, twice is not.
    let alice = user(
        "usr_alice",
        "org_a",
        "alice@example.com",
        &["vehicles:read"],
    );
    let a1 = audit("org_a", "user.created", None);
    store.create_user(&alice, &a1).await.unwrap();
    let twin = user("usr_twin", "org_a", "alice@example.com", &[]);
    let dup = store.create_user(&twin, &a1).await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    let other = user("usr_b", "org_b", "alice@example.com", &[]);
    store
        .create_user(&other, &audit("org_b", "user.created", None))
        .await
        .unwrap();
    assert!(
        store
            .get_user("org_b", "usr_alice")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .user_by_email("org_a", "alice@example.com")
            .await
            .unwrap()
            .unwrap()
            .id,
        "usr_alice"
    );
    // Memberships: changes are reported and audited, repeats are not.
    let head = store.audit_head().await.unwrap().0;
    let add = audit("org_a", "group.member_added", None);
    assert!(
        store
            .set_membership("org_a", "inspections:write", "usr_alice", true, &add)
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_membership("org_a", "inspections:write", "usr_alice", true, &add)
            .await
            .unwrap()
    );
    let rm = audit("org_a", "group.member_removed", None);
    assert!(
        store
            .set_membership("org_a", "vehicles:read", "usr_alice", false, &rm)
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_membership("org_a", "vehicles:read", "usr_alice", false, &rm)
            .await
            .unwrap()
    );
    assert_eq!(store.audit_head().await.unwrap().0, head + 2);
    // Another organization's user is not found, and nothing is written.
    let cross = store
        .set_membership("org_a", "vehicles:read", "usr_b", true, &add)
        .await;
    assert!(matches!(cross, Err(StoreError::NotFound)), "{cross:?}");
    let members: Vec<String> = store
        .list_users("org_a", Some("inspections:write"))
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.id)
        .collect();
    assert_eq!(members, ["usr_alice"]);
    let all: Vec<(String, Vec<String>)> = store
        .list_users("org_a", None)
        .await
        .unwrap()
        .into_iter()
        .map(|u| (u.email, u.groups))
        .collect();
    assert_eq!(
        all,
        [
            (
                "alice@example.com".to_owned(),
                vec!["inspections:write".to_owned()]
            ),
            ("owner".to_owned(), vec!["administrators".to_owned()]),
        ]
    );
    // Passwords.
    store
        .set_password("org_a", "usr_alice", "$argon2id$new", false, None, None)
        .await
        .unwrap();
    let alice = store.get_user("org_a", "usr_alice").await.unwrap().unwrap();
    assert_eq!(alice.password_hash.as_deref(), Some("$argon2id$new"));
    assert!(!alice.must_change_password);
    let missing = store
        .set_password("org_b", "usr_alice", "x", false, None, None)
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");

    // Audit queries: one organization, filters, newest first, pages.
    let everything = AuditQuery {
        limit: 100,
        ..AuditQuery::default()
    };
    let a_all = store.query_audit("org_a", &everything).await.unwrap();
    assert!(a_all.iter().all(|r| r.entry.org_id == "org_a"));
    assert!(a_all.windows(2).all(|w| w[0].seq > w[1].seq));
    let by_action = AuditQuery {
        action: Some("group.member_added".into()),
        ..everything.clone()
    };
    assert_eq!(
        store.query_audit("org_a", &by_action).await.unwrap().len(),
        1
    );
    assert!(
        store
            .query_audit("org_b", &by_action)
            .await
            .unwrap()
            .is_empty()
    );
    let by_key = AuditQuery {
        key_id: Some("key_1".into()),
        ..everything.clone()
    };
    let actions: Vec<String> = store
        .query_audit("org_a", &by_key)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.entry.action)
        .collect();
    // Its requests too, which its trail (`audit_for_key`) leaves out.
    assert_eq!(actions, ["gateway.request", "key.revoked", "key.created"]);
    let mut page = AuditQuery {
        limit: 3,
        ..everything.clone()
    };
    let mut seen = Vec::new();
    loop {
        let got = store.query_audit("org_a", &page).await.unwrap();
        let Some(last) = got.last() else { break };
        page.before_seq = Some(last.seq);
        seen.extend(got.into_iter().map(|r| r.seq));
    }
    assert_eq!(seen, a_all.iter().map(|r| r.seq).collect::<Vec<_>>());
    let timed = AuditQuery {
        since: Some(10),
        until: Some(11),
        actor: Some("cli:test".into()),
        status: None,
        ..everything.clone()
    };
    assert_eq!(
        store.query_audit("org_a", &timed).await.unwrap().len(),
        a_all.len()
    );
    let later = AuditQuery {
        since: Some(11),
        ..everything
    };
    assert!(store.query_audit("org_a", &later).await.unwrap().is_empty());

    // Console sessions: stored by token hash, touched, ended once.
    let session = SessionRecord {
        token_hash: [7; 32],
        org_id: "org_a".into(),
        user_id: "usr_alice".into(),
        csrf: "csrf-token".into(),
        created_at: 100,
        last_seen_at: 100,
    };
    let stale = SessionRecord {
        token_hash: [8; 32],
        last_seen_at: 1,
        ..session.clone()
    };
    let signed_in = audit("org_a", "console.signed_in", None);
    store
        .create_session(&stale, 0, 0, &signed_in)
        .await
        .unwrap();
    store
        .create_session(&session, 50, 0, &signed_in)
        .await
        .unwrap();
    assert!(
        store.session(&[8; 32]).await.unwrap().is_none(),
        "idle sessions are dropped"
    );
    assert_eq!(store.session(&[7; 32]).await.unwrap().unwrap(), session);
    store.touch_session(&[7; 32], 200).await.unwrap();
    assert_eq!(
        store.session(&[7; 32]).await.unwrap().unwrap().last_seen_at,
        200
    );
    // Nonces: once, and only for their own session.
    store.create_nonce("n1", &[7; 32], 200).await.unwrap();
    assert!(!store.use_nonce("n1", &[9; 32], 201).await.unwrap());
    assert!(store.use_nonce("n1", &[7; 32], 201).await.unwrap());
    assert!(!store.use_nonce("n1", &[7; 32], 202).await.unwrap());
    assert!(!store.use_nonce("nope", &[7; 32], 202).await.unwrap());
    // Sign-in attempts count per email and per client address, as failures
    // until withdrawn; old ones are pruned.
    let mut counts = Vec::new();
    for (id, at, client) in [
        ("a1", 300, "10.0.0.1"),
        ("a2", 300, "10.0.0.1"),
        ("a3", 302, "10.0.0.2"),
    ] {
        counts.push(
            store
                .begin_sign_in(id, "org_a", "alice@example.com", client, at, 0)
                .await
                .unwrap(),
        );
    }
    assert_eq!(counts, [(0, 0), (1, 1), (2, 0)]);
    // Withdrawn by id: the other attempt of the same millisecond stays.
    store.clear_sign_in_attempt("a2").await.unwrap();
    assert_eq!(
        store
            .begin_sign_in("b1", "org_b", "alice@example.com", "10.0.0.1", 303, 0)
            .await
            .unwrap(),
        (0, 1),
        "another organization's user; the same address"
    );
    assert_eq!(
        store
            .begin_sign_in("a4", "org_a", "alice@example.com", "10.0.0.1", 304, 302)
            .await
            .unwrap(),
        (1, 1),
        "failures before `since` are gone"
    );
    // A new password ends the user's other sessions.
    let other = SessionRecord {
        token_hash: [5; 32],
        ..session.clone()
    };
    store
        .create_session(&other, 0, 0, &signed_in)
        .await
        .unwrap();
    store
        .set_password(
            "org_a",
            "usr_alice",
            "$argon2id$newer",
            false,
            None,
            Some(&[7; 32]),
        )
        .await
        .unwrap();
    assert!(store.session(&[5; 32]).await.unwrap().is_none());
    assert!(
        store.session(&[7; 32]).await.unwrap().is_some(),
        "the changing one stays"
    );
    let head = store.audit_head().await.unwrap().0;
    let out = audit("org_a", "console.signed_out", None);
    store.end_session(&[7; 32], Some(&out)).await.unwrap();
    store.end_session(&[7; 32], Some(&out)).await.unwrap();
    assert!(store.session(&[7; 32]).await.unwrap().is_none());
    assert_eq!(
        store.audit_head().await.unwrap().0,
        head + 1,
        "audited once"
    );
}

async fn ids(store: &impl Store, org_id: &str, f: KeyFilter) -> Vec<String> {
    store
        .list_keys(org_id, &f)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect()
}

/// The story. Runs against an empty, migrated database.
async fn story(store: &impl Store) {
    // Migrations are idempotent.
    store.migrate().await.unwrap();

    // Organizations: exactly one default, slugs unique.
    let owner = user("usr_owner", "org_a", "owner", &["administrators"]);
    let a = store
        .create_org(
            &org("org_a", "acme", true),
            Some(&owner),
            &[
                audit("org_a", "org.created", None),
                audit("org_a", "user.created", None),
            ],
        )
        .await
        .unwrap();
    let again = store
        .create_org(
            &org("org_x", "other", true),
            None,
            &[audit("org_x", "org.created", None)],
        )
        .await
        .unwrap();
    assert_eq!(again, a, "a second default is not created");
    store
        .create_org(
            &org("org_b", "beta", false),
            None,
            &[audit("org_b", "org.created", None)],
        )
        .await
        .unwrap();
    let dup = store
        .create_org(
            &org("org_c", "beta", false),
            None,
            &[audit("org_c", "org.created", None)],
        )
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    assert_eq!(store.default_org().await.unwrap().unwrap().id, "org_a");
    assert_eq!(
        store.org_by_slug("beta").await.unwrap().unwrap().id,
        "org_b"
    );
    assert_eq!(store.list_orgs().await.unwrap().len(), 2);

    // Keys with grants, atomically with audit and change log.
    let (_, v0) = store.changes_since(0, 1000).await.unwrap();
    let k1 = key("key_1", "org_a", "secret-1", 100);
    // Grants come back in the order given, on both backends (a stored
    // position, not the storage's row order).
    let k2 = KeyRecord {
        scopes: vec![
            "vehicles:write".into(),
            "damages:read".into(),
            "vehicles:read".into(),
        ],
        permission_sets: vec!["z-set".into(), "a-set".into()],
        // Limits and networks come back as given, too.
        limits: vec![
            Limit::parse_flag("l", "monthly=100000/30d").unwrap(),
            Limit::parse_flag("l", "burst=100/60s").unwrap(),
        ],
        allowed_cidrs: vec![
            Network::parse("n", "203.0.113.0/24").unwrap(),
            Network::parse("n", "2001:db8::/32").unwrap(),
        ],
        ..key("key_2", "org_a", "secret-2", 200)
    };
    let kb = key("key_b", "org_b", "secret-b", 150);
    store
        .insert_keys(
            "org_a",
            &[k1.clone(), k2.clone()],
            &[
                audit("org_a", "key.created", Some("key_1")),
                audit("org_a", "key.created", Some("key_2")),
            ],
            false,
        )
        .await
        .unwrap();
    store
        .insert_keys(
            "org_b",
            std::slice::from_ref(&kb),
            &[audit("org_b", "key.created", Some("key_b"))],
            false,
        )
        .await
        .unwrap();
    let got = store.get_key("org_a", "key_1").await.unwrap().unwrap();
    assert_eq!(got, k1);
    assert_eq!(store.get_key("org_a", "key_2").await.unwrap().unwrap(), k2);
    let snap = store
        .snapshot_keys_by_id(&["key_2".to_owned()])
        .await
        .unwrap();
    assert_eq!(
        (&snap[0].limits, &snap[0].allowed_cidrs),
        (&k2.limits, &k2.allowed_cidrs)
    );
    // Only the digest is stored, and it finds the key across organizations.
    let found = store
        .key_by_digest(&Digester::sha256().digest("secret-b"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.org_id, "org_b");
    assert!(
        store
            .key_by_digest(&KeyDigest::from_bytes([7; 32]))
            .await
            .unwrap()
            .is_none()
    );

    // Organization isolation: another org's id is simply not there.
    assert!(store.get_key("org_a", "key_b").await.unwrap().is_none());
    assert_eq!(
        ids(store, "org_a", KeyFilter::default()).await,
        ["key_2", "key_1"]
    );
    assert_eq!(ids(store, "org_b", KeyFilter::default()).await, ["key_b"]);
    let revoke_other = store
        .revoke_key(
            "org_a",
            "key_b",
            300,
            &audit("org_a", "key.revoked", Some("key_b")),
        )
        .await;
    assert!(matches!(revoke_other, Err(StoreError::NotFound)));

    // A duplicate digest fails the whole batch; nothing half-written.
    let dup = key("key_3", "org_a", "secret-1", 300);
    let fresh = key("key_4", "org_a", "secret-4", 300);
    let res = store
        .insert_keys(
            "org_a",
            &[fresh.clone(), dup.clone()],
            &[
                audit("org_a", "key.created", Some("key_4")),
                audit("org_a", "key.created", Some("key_3")),
            ],
            false,
        )
        .await;
    assert!(matches!(res, Err(StoreError::Conflict(_))), "{res:?}");
    assert!(store.get_key("org_a", "key_4").await.unwrap().is_none());
    // …unless existing digests are skipped, as a legacy import does.
    let res = store
        .insert_keys(
            "org_a",
            &[fresh, dup],
            &[
                audit("org_a", "key.imported", Some("key_4")),
                audit("org_a", "key.imported", Some("key_3")),
            ],
            true,
        )
        .await
        .unwrap();
    assert_eq!(res, [true, false]);

    // Revocation, once.
    assert_eq!(
        store
            .revoke_key(
                "org_a",
                "key_1",
                400,
                &audit("org_a", "key.revoked", Some("key_1"))
            )
            .await
            .unwrap(),
        Revoked::Now
    );
    assert_eq!(
        store
            .revoke_key(
                "org_a",
                "key_1",
                500,
                &audit("org_a", "key.revoked", Some("key_1"))
            )
            .await
            .unwrap(),
        Revoked::Already(400)
    );

    // Roll: new key inserted, old one expires at the end of the grace.
    let k5 = key("key_5", "org_a", "secret-5", 600);
    store
        .roll_key(
            "org_a",
            "key_2",
            700,
            &k5,
            &audit("org_a", "key.rolled", Some("key_2")),
        )
        .await
        .unwrap();
    let old = store.get_key("org_a", "key_2").await.unwrap().unwrap();
    assert_eq!(
        (old.expires_at, old.rolled_to.as_deref()),
        (Some(700), Some("key_5"))
    );
    let roll_revoked = store
        .roll_key(
            "org_a",
            "key_1",
            700,
            &key("key_6", "org_a", "secret-6", 600),
            &audit("org_a", "key.rolled", Some("key_1")),
        )
        .await;
    assert!(matches!(roll_revoked, Err(StoreError::NotFound)));
    assert!(store.get_key("org_a", "key_6").await.unwrap().is_none());

    // Filters.
    assert_eq!(
        ids(
            store,
            "org_a",
            KeyFilter {
                revoked: Some(true),
                ..Default::default()
            }
        )
        .await,
        ["key_1"]
    );
    assert_eq!(
        ids(
            store,
            "org_a",
            KeyFilter {
                active_at: Some(650),
                ..Default::default()
            }
        )
        .await,
        ["key_5", "key_4", "key_2"]
    );
    assert_eq!(
        ids(
            store,
            "org_a",
            KeyFilter {
                active_at: Some(700),
                ..Default::default()
            }
        )
        .await,
        ["key_5", "key_4"]
    );
    assert_eq!(
        ids(
            store,
            "org_a",
            KeyFilter {
                inactive_at: Some(700),
                ..Default::default()
            }
        )
        .await,
        ["key_2", "key_1"]
    );
    assert_eq!(
        ids(
            store,
            "org_a",
            KeyFilter {
                permission_set: Some("inspections:write".into()),
                limit: Some(2),
                ..Default::default()
            }
        )
        .await,
        ["key_5", "key_4"]
    );
    assert_eq!(
        ids(
            store,
            "org_a",
            KeyFilter {
                before: Some((300, "key_4".into())),
                ..Default::default()
            }
        )
        .await,
        ["key_2", "key_1"]
    );

    // Last use, batched; later times win; unused filter counts from creation.
    store
        .touch_keys(&[
            ("key_4".into(), 1_000),
            ("key_4".into(), 900),
            ("key_5".into(), 800),
        ])
        .await
        .unwrap();
    assert_eq!(
        store
            .get_key("org_a", "key_4")
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(1_000)
    );
    assert_eq!(
        ids(
            store,
            "org_a",
            KeyFilter {
                unused_since: Some(850),
                ..Default::default()
            }
        )
        .await,
        ["key_5", "key_2", "key_1"]
    );

    // Change log: every key write, in commit order.
    let (changes, v1) = store.changes_since(v0, 1000).await.unwrap();
    let kinds: Vec<(&str, Option<&str>)> = changes
        .iter()
        .map(|c| (c.kind.as_str(), c.key_id.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("key.created", Some("key_1")),
            ("key.created", Some("key_2")),
            ("key.created", Some("key_b")),
            ("key.created", Some("key_4")),
            ("key.revoked", Some("key_1")),
            ("key.rolled", Some("key_2")),
            ("key.created", Some("key_5")),
        ]
    );
    assert!(changes.windows(2).all(|w| w[0].version < w[1].version));
    assert_eq!(v1, changes.last().unwrap().version);
    assert!(store.changes_since(v1, 1000).await.unwrap().0.is_empty());
    // The snapshot pages: every key once, in id order, equal to its record.
    let mut paged = Vec::new();
    let mut after = String::new();
    loop {
        let page = store.snapshot_keys(&after, 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.id.clone();
        paged.extend(page);
    }
    assert_eq!(paged.len(), 5);
    assert_eq!(store.count_keys().await.unwrap(), 5);
    assert!(paged.windows(2).all(|w| w[0].id < w[1].id));
    for k in &paged {
        let record = store.get_key(&k.org_id, &k.id).await.unwrap().unwrap();
        assert_eq!(k, &SnapshotKey::from_record(&record), "{}", k.id);
        let (scopes, sets) = SnapshotKey::grant_names(&k.grants);
        let mut want_scopes = record.scopes.clone();
        want_scopes.sort();
        assert_eq!(scopes, want_scopes);
        assert_eq!(sets.len(), record.permission_sets.len());
    }

    // Audit: appended in batches, one unbroken chain; every field comes back
    // as written, whatever it holds (quotes, backslashes, dollar quotes,
    // SQL, non-ASCII, empty text, absent values).
    let hostile = AuditEntry {
        method: Some("PO'ST".into()),
        path: Some("/a'b\\c$$d$x$;--/é✓/\u{1F600}".into()),
        status: Some(403),
        required: vec!["a:b".into(), "c'd".into()],
        client: Some(String::new()),
        request_id: Some("'); DROP TABLE audit_log; --".into()),
        details: r#"{"q":"it's \\ \"x\" $tag$"}"#.into(),
        ..audit("org_a", "gateway.request", Some("key_5"))
    };
    let seqs = store
        .append_audit(&[hostile.clone(), audit("org_b", "gateway.request", None)])
        .await
        .unwrap();
    assert_eq!(seqs.len(), 2);
    let chain = store.audit_chain(0, 1_000).await.unwrap();
    let stored = chain.iter().find(|r| r.seq == seqs[0]).unwrap();
    assert_eq!(stored.entry, hostile);
    let mut prev = GENESIS;
    for (i, r) in chain.iter().enumerate() {
        assert_eq!(r.seq, i as i64 + 1);
        assert_eq!(r.prev_hash, prev);
        assert_eq!(
            r.hash,
            chain_link(&prev, r.seq, &r.entry),
            "record {}",
            r.seq
        );
        prev = r.hash;
    }
    // org.created ×2, user.created, key.created ×3, key.imported,
    // key.revoked, key.rolled, 2 appended.
    assert_eq!(chain.len(), 11);
    assert_eq!(chain.last().unwrap().seq, *seqs.last().unwrap());
    assert_eq!(
        store.audit_head().await.unwrap(),
        (chain.last().unwrap().seq, chain.last().unwrap().hash)
    );
    // Its gateway requests are not its trail (query_audit finds them).
    store
        .append_audit(&[audit("org_a", "gateway.request", Some("key_1"))])
        .await
        .unwrap();
    let for_key = store.audit_for_key("org_a", "key_1", 10).await.unwrap();
    let actions: Vec<&str> = for_key.iter().map(|r| r.entry.action.as_str()).collect();
    assert_eq!(actions, ["key.revoked", "key.created"]);
    assert!(
        store
            .audit_for_key("org_b", "key_1", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

fn ask(key: &str, first: bool, want: u64, floor_or_release: u64) -> LeaseAsk {
    LeaseAsk {
        key_id: key.into(),
        limit: "burst".into(),
        window: 7,
        requests: 100,
        ends_at: 8_000,
        first,
        want,
        floor: if first { floor_or_release } else { 0 },
        release: if first { 0 } else { floor_or_release },
        leaving: false,
    }
}

/// Leases on a shared limit: present nodes, the rule of `limits.rs`, and
/// concurrent asks that never lease more than the limit.
async fn leases<S: Store + Clone>(store: &S) {
    assert_eq!(
        store.limit_heartbeat("node-a", 1_000, 5_000).await.unwrap(),
        1
    );
    assert_eq!(
        store.limit_heartbeat("node-b", 1_000, 5_000).await.unwrap(),
        2
    );
    // Gone once its time has passed.
    assert_eq!(
        store.limit_heartbeat("node-a", 7_000, 5_000).await.unwrap(),
        1
    );
    assert_eq!(
        store.limit_heartbeat("node-b", 7_000, 5_000).await.unwrap(),
        2
    );

    // Two nodes, 100 requests: each may admit 2 unasked (a twentieth,
    // split). A first ask is granted from its own 2 and what no one holds;
    // the other node's 2 stay held back.
    assert_eq!(keyward_store::unasked_share(100, 2), 2);
    let a = store
        .claim_leases(2, &[ask("key_l", true, 99, 10)])
        .await
        .unwrap();
    let expected = LeaseAnswer {
        granted: 98,
        claimed: 98,
        nodes: 1,
    };
    assert_eq!(a, [expected]);
    let back = store
        .claim_leases(2, &[ask("key_l", false, 0, 58)])
        .await
        .unwrap();
    assert_eq!((back[0].granted, back[0].claimed), (0, 40));
    // A first ask is granted at least what the node has admitted.
    let b = store
        .claim_leases(2, &[ask("key_l", true, 5, 20)])
        .await
        .unwrap();
    let expected = LeaseAnswer {
        granted: 20,
        claimed: 60,
        nodes: 2,
    };
    assert_eq!(b, [expected]);
    // More: only what is left.
    let more = store
        .claim_leases(2, &[ask("key_l", false, 100, 0)])
        .await
        .unwrap();
    assert_eq!(more[0].granted, 40);
    assert_eq!(more[0].claimed, 100);
    assert_eq!(more[0].room(100, 2), 0);
    let none = store
        .claim_leases(2, &[ask("key_l", false, 1, 0)])
        .await
        .unwrap();
    assert_eq!(none[0].granted, 0);
    // Handed back, then leased by the other.
    let back = store
        .claim_leases(2, &[ask("key_l", false, 0, 25)])
        .await
        .unwrap();
    assert_eq!((back[0].granted, back[0].claimed), (0, 75));
    let mut leaving = ask("key_l", false, 0, 5);
    leaving.leaving = true;
    let left = store.claim_leases(2, &[leaving]).await.unwrap();
    assert_eq!(
        left,
        [LeaseAnswer {
            granted: 0,
            claimed: 70,
            nodes: 1
        }]
    );
    store.limit_leave("node-a").await.unwrap();
    assert_eq!(
        store.limit_heartbeat("node-b", 7_001, 5_000).await.unwrap(),
        1
    );

    // Concurrent asks of four nodes on one row: never more than the limit,
    // and what was granted is what is claimed.
    let tasks: Vec<_> = (0..4)
        .map(|node| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut granted = store
                    .claim_leases(4, &[ask("key_c", true, 7, 0)])
                    .await
                    .unwrap()[0]
                    .granted;
                for i in 0..40 {
                    let want = 1 + (node + i) % 5;
                    granted += store
                        .claim_leases(4, &[ask("key_c", false, want, 0)])
                        .await
                        .unwrap()[0]
                        .granted;
                }
                granted
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let last = store
        .claim_leases(4, &[ask("key_c", false, 0, 0)])
        .await
        .unwrap();
    assert_eq!(last[0].claimed, total);
    assert_eq!(total, 100, "every request leased, none twice");

    // Several asks in one call, not in key order: each answer is its own
    // ask's (the backend sorts rows to lock them in one order).
    let mut z = ask("key_z", true, 9, 0);
    z.requests = 9;
    let mut m = ask("key_m", true, 4, 0);
    m.requests = 4;
    let mut y = ask("key_a", true, 50, 0);
    y.limit = "zeta".into();
    let answers = store.claim_leases(1, &[z, y, m]).await.unwrap();
    let granted: Vec<u64> = answers.iter().map(|a| a.granted).collect();
    assert_eq!(granted, [9, 50, 4]);
    // Ended windows are forgotten: their row starts afresh.
    store.forget_leases(9_000).await.unwrap();
    let fresh = store
        .claim_leases(1, &[ask("key_l", true, 10, 0)])
        .await
        .unwrap();
    let expected = LeaseAnswer {
        granted: 10,
        claimed: 10,
        nodes: 1,
    };
    assert_eq!(fresh, [expected]);
}

fn usage_row(key: &str, hour: i64, route: &str, outcome: &str, count: u64, last: i64) -> UsageRow {
    UsageRow {
        key_id: key.into(),
        hour,
        method: "GET".into(),
        route: route.into(),
        outcome: outcome.into(),
        count,
        last_seen: last,
    }
}

/// Usage counts: two nodes' flushes add up, reads are per key and range,
/// old hours are pruned.
async fn usage(store: &impl Store) {
    const H: i64 = 3_600_000;
    let node_a = [
        usage_row("key_u", 10 * H, "/vehicles", "allowed", 5, 10 * H + 7),
        usage_row("key_u", 10 * H, "/vehicles", "forbidden", 1, 10 * H + 3),
        usage_row("key_u", 11 * H, "", "not_found", 2, 11 * H + 1),
        usage_row("key_v", 10 * H, "/vehicles", "allowed", 9, 10 * H + 9),
    ];
    let node_b = [usage_row(
        "key_u",
        10 * H,
        "/vehicles",
        "allowed",
        3,
        10 * H + 5,
    )];
    store.add_usage(&node_a).await.unwrap();
    store.add_usage(&node_b).await.unwrap();
    store.add_usage(&[]).await.unwrap();
    let rows = store.key_usage("key_u", 10 * H, 12 * H).await.unwrap();
    assert_eq!(
        rows,
        [
            usage_row("key_u", 10 * H, "/vehicles", "allowed", 8, 10 * H + 7),
            usage_row("key_u", 10 * H, "/vehicles", "forbidden", 1, 10 * H + 3),
            usage_row("key_u", 11 * H, "", "not_found", 2, 11 * H + 1),
        ]
    );
    // The range is half-open.
    assert_eq!(
        store
            .key_usage("key_u", 11 * H, 12 * H)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.prune_usage(11 * H).await.unwrap(), 3);
    assert_eq!(store.key_usage("key_u", 0, 12 * H).await.unwrap().len(), 1);
    assert!(
        store
            .key_usage("key_v", 0, 12 * H)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The policy: none until set, replaced whole, its change audited in the
/// same transaction, each organization its own.
async fn policy(store: &impl Store) {
    assert_eq!(store.get_policy("org_a").await.unwrap(), None);
    let first = StoredPolicy {
        text: r#"{"max_key_lifetime":"365d"}"#.into(),
        updated_at: 7,
        updated_by: "cli:ops".into(),
    };
    store
        .put_policy("org_a", &first, &audit("org_a", "policy.updated", None))
        .await
        .unwrap();
    assert_eq!(store.get_policy("org_a").await.unwrap(), Some(first));
    let second = StoredPolicy {
        text: r#"{"flag_unused_after":"90d"}"#.into(),
        updated_at: 9,
        updated_by: "user:usr_1".into(),
    };
    store
        .put_policy("org_a", &second, &audit("org_a", "policy.updated", None))
        .await
        .unwrap();
    assert_eq!(store.get_policy("org_a").await.unwrap(), Some(second));
    assert_eq!(store.get_policy("org_b").await.unwrap(), None);
    let audited = store
        .query_audit(
            "org_a",
            &AuditQuery {
                action: Some("policy.updated".into()),
                limit: 10,
                ..AuditQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(audited.len(), 2);

    // Notices: each recorded once, whoever records it; flags cleared by use.
    let mut k = key("key_note", "org_a", "secret-note", 1_000);
    k.expires_at = Some(5_000);
    store
        .insert_keys(
            "org_a",
            &[k],
            &[audit("org_a", "key.created", Some("key_note"))],
            false,
        )
        .await
        .unwrap();
    let near = store.keys_expiring("org_a", 6_000).await.unwrap();
    assert_eq!(
        near.iter()
            .map(|k| (k.id.as_str(), k.expires_at, k.warned_ms))
            .collect::<Vec<_>>(),
        [("key_note", 5_000, None)]
    );
    assert!(
        store
            .keys_expiring("org_a", 4_999)
            .await
            .unwrap()
            .is_empty()
    );
    let warn = |ms: i64| {
        (
            KeyNotice::Expiring {
                key_id: "key_note".into(),
                threshold_ms: ms,
            },
            audit("org_a", "key.expiring", Some("key_note")),
        )
    };
    assert_eq!(told(store.note_keys(&[warn(2_000)]).await.unwrap()), 1);
    assert_eq!(
        told(store.note_keys(&[warn(2_000), warn(3_000)]).await.unwrap()),
        0
    );
    assert_eq!(told(store.note_keys(&[warn(1_000)]).await.unwrap()), 1);
    assert_eq!(
        store.keys_expiring("org_a", 6_000).await.unwrap()[0].warned_ms,
        Some(1_000)
    );
    let expired = (
        KeyNotice::Expired {
            key_id: "key_note".into(),
        },
        audit("org_a", "key.expired", Some("key_note")),
    );
    assert_eq!(
        told(
            store
                .note_keys(std::slice::from_ref(&expired))
                .await
                .unwrap()
        ),
        1
    );
    assert_eq!(told(store.note_keys(&[expired]).await.unwrap()), 0);
    assert!(
        store
            .keys_expiring("org_a", 6_000)
            .await
            .unwrap()
            .is_empty()
    );
    let unused = (
        KeyNotice::Unused {
            key_id: "key_note".into(),
            at: 7_000,
        },
        audit("org_a", "key.unused", Some("key_note")),
    );
    assert_eq!(
        told(
            store
                .note_keys(std::slice::from_ref(&unused))
                .await
                .unwrap()
        ),
        1
    );
    assert_eq!(
        told(
            store
                .note_keys(std::slice::from_ref(&unused))
                .await
                .unwrap()
        ),
        0
    );
    let flagged = |s: &str| {
        let s = s.to_owned();
        async move {
            store
                .get_key("org_a", &s)
                .await
                .unwrap()
                .unwrap()
                .flagged_unused_at
        }
    };
    assert_eq!(flagged("key_note").await, Some(7_000));
    // Not used since, and idle for the window: kept.
    assert_eq!(
        store
            .clear_unused_flags("org_a", Some(2_000))
            .await
            .unwrap(),
        0
    );
    store
        .touch_keys(&[("key_note".into(), 7_500)])
        .await
        .unwrap();
    assert_eq!(
        store
            .clear_unused_flags("org_a", Some(2_000))
            .await
            .unwrap(),
        1
    );
    assert_eq!(flagged("key_note").await, None);
    assert_eq!(told(store.note_keys(&[unused]).await.unwrap()), 1);
    assert_eq!(store.clear_unused_flags("org_a", None).await.unwrap(), 1);

    // A duty: one holder at a time, renewed by its holder, taken by
    // another once it has run out.
    assert!(
        store
            .claim_duty("policy", "node-a", 1_000, 100)
            .await
            .unwrap()
    );
    assert!(
        !store
            .claim_duty("policy", "node-b", 1_050, 100)
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_duty("policy", "node-a", 1_060, 100)
            .await
            .unwrap()
    );
    assert!(
        !store
            .claim_duty("policy", "node-b", 1_159, 100)
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_duty("policy", "node-b", 1_160, 100)
            .await
            .unwrap()
    );
    assert!(
        !store
            .claim_duty("policy", "node-a", 1_200, 100)
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_duty("other", "node-a", 1_200, 100)
            .await
            .unwrap()
    );
}

/// How many notices were new.
fn told(new: Vec<bool>) -> usize {
    new.into_iter().filter(|n| *n).count()
}

fn webhook(id: &str, org_id: &str, events: &[&str]) -> WebhookRecord {
    WebhookRecord {
        id: id.into(),
        org_id: org_id.into(),
        url: format!("https://hooks.example.com/{id}"),
        description: String::new(),
        events: events.iter().map(|e| (*e).to_owned()).collect(),
        secret: "whsec_c2VjcmV0".into(),
        created_at: 5,
        created_by: "cli:test".into(),
        disabled_at: None,
        failures: 0,
        failing_since: None,
        next_attempt_at: 0,
        pending: 0,
    }
}

fn attempt(audit_seq: i64, at: i64, status: u16) -> Attempt {
    Attempt {
        audit_seq,
        at,
        status: Some(status),
        error: None,
        duration_ms: 3,
        delivered: (200..300).contains(&status),
    }
}

fn state(lease_until: i64) -> EndpointState {
    EndpointState {
        failures: 0,
        failing_since: None,
        next_attempt_at: 0,
        disabled_at: None,
        lease_until,
    }
}

/// Webhooks: events are queued with the change that causes them, for the
/// endpoints subscribed to them; one node at a time holds an endpoint; each
/// attempt is recorded while the lease holds; deleting forgets the queue.
async fn webhooks(store: &impl Store) {
    let created = audit("org_a", "webhook.created", None);
    store
        .create_webhook(
            &webhook("wh_1", "org_a", &["key.created", "key.revoked"]),
            &created,
        )
        .await
        .unwrap();
    store
        .create_webhook(&webhook("wh_2", "org_a", &["key.rolled"]), &created)
        .await
        .unwrap();
    store
        .create_webhook(&webhook("wh_3", "org_b", &["key.created"]), &created)
        .await
        .unwrap();
    let listed = store.list_webhooks("org_a").await.unwrap();
    assert_eq!(
        listed.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
        ["wh_1", "wh_2"]
    );
    assert_eq!(listed[0].events, ["key.created", "key.revoked"]);
    assert!(
        !format!("{:?}", listed[0]).contains("whsec_"),
        "Debug shows no secret"
    );
    assert_eq!(store.get_webhook("org_b", "wh_1").await.unwrap(), None);

    // Nothing is queued until something happens.
    assert_eq!(store.claim_webhook("node-a", 100, 50).await.unwrap(), None);
    let k = key("key_wh", "org_a", "secret-wh", 20);
    store
        .insert_keys(
            "org_a",
            &[k],
            &[audit("org_a", "key.created", Some("key_wh"))],
            false,
        )
        .await
        .unwrap();
    store
        .revoke_key(
            "org_a",
            "key_wh",
            30,
            &audit("org_a", "key.revoked", Some("key_wh")),
        )
        .await
        .unwrap();
    let pending = store.pending_events("wh_1", 10).await.unwrap();
    let actions: Vec<&str> = pending.iter().map(|p| p.entry.action.as_str()).collect();
    assert_eq!(actions, ["key.created", "key.revoked"]);
    assert!(pending[0].audit_seq < pending[1].audit_seq);
    assert_eq!(pending[0].entry.key_id.as_deref(), Some("key_wh"));
    assert!(store.pending_events("wh_2", 10).await.unwrap().is_empty());
    assert!(store.pending_events("wh_3", 10).await.unwrap().is_empty());
    assert_eq!(
        store
            .get_webhook("org_a", "wh_1")
            .await
            .unwrap()
            .unwrap()
            .pending,
        2
    );

    // One holder at a time; a lease lost records nothing.
    let held = store
        .claim_webhook("node-a", 100, 50)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(held.id, "wh_1");
    assert_eq!(held.secret, "whsec_c2VjcmV0");
    assert_eq!(store.claim_webhook("node-b", 120, 50).await.unwrap(), None);
    let first = pending[0].audit_seq;
    assert!(
        !store
            .record_attempt(
                "node-b",
                "wh_1",
                &attempt(first, 121, 200),
                &state(200),
                None
            )
            .await
            .unwrap()
    );
    let failing = EndpointState {
        failures: 1,
        failing_since: Some(122),
        next_attempt_at: 130,
        ..state(180)
    };
    assert!(
        store
            .record_attempt("node-a", "wh_1", &attempt(first, 122, 503), &failing, None)
            .await
            .unwrap()
    );
    store.release_webhook("node-a", "wh_1").await.unwrap();
    // The back-off holds it back from every node until it ends.
    assert_eq!(store.claim_webhook("node-b", 129, 50).await.unwrap(), None);
    assert_eq!(
        store
            .claim_webhook("node-b", 130, 50)
            .await
            .unwrap()
            .unwrap()
            .failures,
        1
    );
    assert!(
        store
            .record_attempt(
                "node-b",
                "wh_1",
                &attempt(first, 131, 204),
                &state(200),
                None
            )
            .await
            .unwrap()
    );
    let left = store.pending_events("wh_1", 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].attempts, 0);
    // A node killed while holding it: the lease runs out, another takes it.
    assert_eq!(store.claim_webhook("node-a", 199, 50).await.unwrap(), None);
    assert_eq!(
        store
            .claim_webhook("node-a", 200, 50)
            .await
            .unwrap()
            .unwrap()
            .id,
        "wh_1"
    );

    let history = store.deliveries("wh_1", None, 10).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].event, "key.revoked");
    assert_eq!(history[0].delivered_at, None);
    assert_eq!(history[1].event, "key.created");
    assert_eq!(history[1].delivered_at, Some(134));
    let tries: Vec<(i64, &str, Option<u16>)> = history[1]
        .attempts
        .iter()
        .map(|a| (a.attempt, a.node.as_str(), a.status))
        .collect();
    assert_eq!(tries, [(1, "node-a", Some(503)), (2, "node-b", Some(204))]);
    let older = store
        .deliveries("wh_1", Some(history[0].audit_seq), 10)
        .await
        .unwrap();
    assert_eq!(older.len(), 1);

    // A disabled endpoint gets nothing new.
    let disabled = EndpointState {
        disabled_at: Some(201),
        ..state(250)
    };
    assert!(
        store
            .record_attempt(
                "node-a",
                "wh_1",
                &attempt(history[0].audit_seq, 201, 500),
                &disabled,
                Some(&audit("org_a", "webhook.disabled", None)),
            )
            .await
            .unwrap()
    );
    let k2 = key("key_wh2", "org_a", "secret-wh2", 40);
    store
        .insert_keys(
            "org_a",
            &[k2],
            &[audit("org_a", "key.created", Some("key_wh2"))],
            false,
        )
        .await
        .unwrap();
    assert_eq!(store.pending_events("wh_1", 10).await.unwrap().len(), 1);
    assert_eq!(
        store.claim_webhook("node-a", 1_000, 50).await.unwrap(),
        None
    );

    // Retention forgets delivered events only; deleting forgets everything.
    assert_eq!(store.prune_deliveries(135).await.unwrap(), 1);
    assert_eq!(store.deliveries("wh_1", None, 10).await.unwrap().len(), 1);
    let deleted = audit("org_a", "webhook.deleted", None);
    assert!(
        !store
            .delete_webhook("org_b", "wh_1", &deleted)
            .await
            .unwrap()
    );
    assert!(
        store
            .delete_webhook("org_a", "wh_1", &deleted)
            .await
            .unwrap()
    );
    assert_eq!(store.get_webhook("org_a", "wh_1").await.unwrap(), None);
    assert!(store.deliveries("wh_1", None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn sqlite_story() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("story.db").display());
    let store = SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    story(&store).await;
    people(&store).await;
    leases(&store).await;
    usage(&store).await;
    policy(&store).await;
    webhooks(&store).await;
}

/// A message that reaches the terminal even though the test harness
/// captures `eprintln!`: a skipped test must never pass silently.
macro_rules! loud {
    ($($arg:tt)*) => {{
        let message = format!($($arg)*);
        // CI sets KEYWARD_REQUIRE_POSTGRES=1: there a skip is a failure.
        if message.contains("SKIPPED")
            && message.contains("PostgreSQL")
            && std::env::var("KEYWARD_REQUIRE_POSTGRES").as_deref() == Ok("1")
        {
            panic!("{message} (KEYWARD_REQUIRE_POSTGRES=1)");
        }
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "{message}");
    }};
}

/// A fresh PostgreSQL database for one test, dropped afterwards; `None` (after
/// a loud message) when `KEYWARD_TEST_POSTGRES_URL` is unset or unreachable.
async fn scratch_postgres(name: &str) -> Option<(sqlx::PgPool, String, String)> {
    let Ok(admin_url) = std::env::var("KEYWARD_TEST_POSTGRES_URL") else {
        loud!("\n*** SKIPPED {name}: KEYWARD_TEST_POSTGRES_URL is not set (PostgreSQL) ***\n");
        return None;
    };
    let admin = match sqlx::PgPool::connect(&admin_url).await {
        Ok(p) => p,
        Err(e) => {
            loud!("\n*** SKIPPED {name}: PostgreSQL at {admin_url} is unreachable: {e} ***\n");
            return None;
        }
    };
    let nanos = std::time::SystemTime::UNIX_EPOCH
        .elapsed()
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let db = format!("keyward_{name}_{}_{nanos}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&admin)
        .await
        .unwrap();
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    Some((admin, db.clone(), format!("{base}/{db}")))
}

/// Drops the scratch database when the test ends, also when it panics: on a
/// thread of its own, since a runtime cannot block inside another.
struct DropDatabase {
    admin_url: String,
    db: String,
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let (url, db) = (self.admin_url.clone(), self.db.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(admin) = sqlx::PgPool::connect(&url).await {
                    let sql = format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin).await;
                }
            });
        })
        .join();
    }
}

#[tokio::test]
async fn postgres_story() {
    let Some((admin, db, url)) = scratch_postgres("story").await else {
        return;
    };
    admin.close().await;
    let _cleanup = DropDatabase {
        admin_url: std::env::var("KEYWARD_TEST_POSTGRES_URL").unwrap(),
        db,
    };
    let store = PgStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    story(&store).await;
    people(&store).await;
    leases(&store).await;
    usage(&store).await;
    policy(&store).await;
    webhooks(&store).await;
}
