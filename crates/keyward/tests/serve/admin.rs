//! The admin API (SPEC §6) over a real socket: every endpoint's success and
//! errors, organizations probing each other, no escalation, membership
//! audit, key immutability, and the OpenAPI document.

use crate::harness::{Kw, Server, TRANSIT, TRANSIT_BROAD_WRITE_SETS, req};
use crate::strings;
use serde_json::{Value, json};

/// Every keyward-* write scope (write implies read): an administrator key.
pub const ADMIN: &[&str] = &[
    "--scope",
    "keyward-api-keys:write",
    "--scope",
    "keyward-groups:write",
    "--scope",
    "keyward-users:write",
    "--scope",
    "keyward-audit:read",
];

pub fn admin_key(kw: &Kw, org: Option<&str>, extra: &[&str]) -> (String, String) {
    let mut args: Vec<&str> = Vec::new();
    if let Some(o) = org {
        args.extend(["--org", o]);
    }
    args.extend(["--name", "admin"]);
    args.extend_from_slice(ADMIN);
    args.extend_from_slice(extra);
    kw.key(&args)
}

fn get(server: &Server, path: &str, key: &str) -> crate::harness::Resp {
    req("GET", path).bearer(key).send(server)
}

fn post(server: &Server, path: &str, key: &str, body: &Value) -> crate::harness::Resp {
    req("POST", path).bearer(key).json(body).send(server)
}

fn user(kw: &Kw, org: Option<&str>, email: &str, groups: &[&str]) -> Value {
    let mut args = vec!["users", "create", "--email", email, "--json"];
    if let Some(o) = org {
        args.extend(["--org", o]);
    }
    for g in groups {
        args.extend(["--group", g]);
    }
    serde_json::from_str(&kw.cli_ok(&args)).unwrap()
}

fn audit_actions(server: &Server, key: &str, query: &str) -> Vec<String> {
    let page = get(server, &format!("/v1/audit?{query}"), key).json();
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn creating_keys_through_the_api() {
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    let (_, admin) = admin_key(
        &kw,
        None,
        &[
            "--scope",
            "vehicles:write",
            "--preset",
            "read-only-integration",
        ],
    );
    let (_, reader) = kw.key(&["--name", "r", "--scope", "keyward-api-keys:read"]);
    let server = kw.serve(&[]);

    let r = post(
        &server,
        "/v1/keys",
        &admin,
        &json!({"name": "  Fleet sync ", "scopes": ["vehicles:read"], "presets": ["read-only-integration"],
                "description": "nightly", "environment": "test", "expires_at": "2099-01-01T00:00:00Z"}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let created = r.json();
    assert_eq!(created["name"], "Fleet sync");
    assert_eq!(created["environment"], "test");
    assert_eq!(created["expires_at"], "2099-01-01T00:00:00Z");
    assert!(
        created["key"]
            .as_str()
            .unwrap()
            .starts_with(created["display_prefix"].as_str().unwrap())
    );
    assert!(strings(&created["effective_scopes"]).contains(&"vehicle-fields:read".to_owned()));
    // The key works at once on the gateway (no upstream here: 502 after the
    // decision allowed it) and is never shown again.
    let key = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    assert_eq!(server.get("/vehicles", key).status, 502);
    let shown = get(&server, &format!("/v1/keys/{id}"), &admin);
    assert_eq!(shown.status, 200);
    assert!(!String::from_utf8_lossy(&shown.body).contains(key));
    assert!(shown.json().get("key").is_none());

    // Bad input: a 4xx in the SPEC shape naming the field, never a 5xx.
    let cases: &[(Value, u16, &str, &str)] = &[
        (
            json!({"scopes": ["vehicles:read"]}),
            422,
            "VALIDATION_FAILED",
            "name",
        ),
        (
            json!({"name": 7, "scopes": ["vehicles:read"]}),
            422,
            "VALIDATION_FAILED",
            "name",
        ),
        (
            json!({"name": "x", "scopes": "vehicles:read"}),
            422,
            "VALIDATION_FAILED",
            "scopes",
        ),
        (
            json!({"name": "x", "scopes": ["vehicles:read"], "admin": true}),
            422,
            "VALIDATION_FAILED",
            "admin",
        ),
        (
            json!({"name": "  ", "scopes": ["vehicles:read"]}),
            422,
            "VALIDATION_FAILED",
            "name",
        ),
        (
            json!({"name": "x"}),
            422,
            "VALIDATION_FAILED",
            "at least one",
        ),
        (
            json!({"name": "x", "scopes": ["vehicles:read", "damages:read", "vehicles:read"]}),
            422,
            "VALIDATION_FAILED",
            "`vehicles:read` is listed more than once in scopes",
        ),
        (
            json!({"name": "x", "permission_sets": ["vehicles:read", "vehicles:read"]}),
            422,
            "VALIDATION_FAILED",
            "permission_sets",
        ),
        (
            json!({"name": "x", "presets": ["inspection-submission", "read-only-integration", "inspection-submission"]}),
            422,
            "VALIDATION_FAILED",
            "presets",
        ),
        (
            json!({"name": "x", "scopes": ["vehicles:fly"]}),
            422,
            "VALIDATION_FAILED",
            "vehicles:fly",
        ),
        (
            json!({"name": "x", "scopes": ["vehicles:read"], "expires_at": "tomorrow"}),
            422,
            "VALIDATION_FAILED",
            "expires_at",
        ),
        (
            json!({"name": "x", "scopes": ["vehicles:read"], "expires_at": "2001-01-01T00:00:00Z"}),
            422,
            "VALIDATION_FAILED",
            "expires_at",
        ),
        (
            json!({"name": "x", "scopes": ["vehicles:read"], "environment": "prod"}),
            422,
            "VALIDATION_FAILED",
            "environment",
        ),
        (json!([1, 2]), 422, "VALIDATION_FAILED", "invalid type"),
        // Never read by position, though serde would.
        (
            json!([
                "positional",
                ["vehicles:read"],
                [],
                [],
                null,
                "",
                "live",
                false
            ]),
            422,
            "VALIDATION_FAILED",
            "must be a JSON object",
        ),
        (
            json!("x"),
            422,
            "VALIDATION_FAILED",
            "must be a JSON object",
        ),
    ];
    for (body, status, code, needle) in cases {
        let e = post(&server, "/v1/keys", &admin, body).error(*status, code);
        assert!(e.to_string().contains(needle), "{body}: {e}");
    }
    for raw in [&b"{\"name\": "[..], b"", b"not json"] {
        req("POST", "/v1/keys")
            .bearer(&admin)
            .body(raw)
            .send(&server)
            .error(400, "BAD_REQUEST");
    }
    let huge = json!({"name": "x", "scopes": ["vehicles:read"], "description": "d".repeat(70_000)});
    post(&server, "/v1/keys", &admin, &huge).error(413, "PAYLOAD_TOO_LARGE");

    // Authentication, then the caller's own scope, then escalation.
    post(&server, "/v1/keys", "nope", &json!({})).error(401, "UNAUTHORIZED");
    let e = post(&server, "/v1/keys", &reader, &json!({"name": 1})).error(403, "FORBIDDEN");
    assert_eq!(e["details"]["required"], json!(["keyward-api-keys:write"]));
    let (_, narrow) = kw.key(&[
        "--name",
        "narrow",
        "--scope",
        "keyward-api-keys:write",
        "--scope",
        "vehicles:read",
    ]);
    let e = post(
        &server,
        "/v1/keys",
        &narrow,
        &json!({"name": "wider", "scopes": ["vehicles:write"]}),
    )
    .error(403, "FORBIDDEN");
    assert_eq!(e["details"]["required"], json!(["vehicles:write"]));
    let refused = audit_actions(&server, &admin, "action=key.create_refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    // A narrower key is fine.
    let r = post(
        &server,
        "/v1/keys",
        &narrow,
        &json!({"name": "same", "permission_sets": ["vehicles:read"]}),
    );
    assert_eq!(r.status, 201);
}

#[test]
fn broad_access_needs_acknowledgement() {
    let kw = Kw::new();
    let sets = TRANSIT_BROAD_WRITE_SETS;
    let mut args = vec!["--catalog", TRANSIT, "--acknowledge-broad-access"];
    for s in sets {
        args.extend(["--permission-set", s]);
    }
    let (_, admin) = admin_key(&kw, None, &args);
    let server = kw.serve(&["--catalog", TRANSIT]);
    let body = json!({"name": "everything", "permission_sets": sets});
    let e = post(&server, "/v1/keys", &admin, &body).error(422, "BROAD_ACCESS_UNACKNOWLEDGED");
    assert_eq!(
        e["details"]["permission_sets"].as_array().unwrap().len(),
        11
    );
    let mut ack = body.clone();
    ack["acknowledge_broad_access"] = json!(true);
    let r = post(&server, "/v1/keys", &admin, &ack);
    assert_eq!(r.status, 201);
    assert!(
        r.json()["broad_access_warning"]
            .as_str()
            .unwrap()
            .contains("11")
    );
}

#[test]
fn listing_showing_rolling_and_immutability() {
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    let (admin_id, admin) = admin_key(&kw, None, &["--scope", "vehicles:read"]);
    let server = kw.serve(&[]);
    let mut ids = Vec::new();
    for i in 0..7 {
        let r = post(
            &server,
            "/v1/keys",
            &admin,
            &json!({"name": format!("k{i}"), "permission_sets": ["vehicles:read"]}),
        );
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    // Pages of 3, newest first, every key once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/keys?limit=3&cursor={c}"),
            None => "/v1/keys?limit=3".to_owned(),
        };
        let page = get(&server, &path, &admin).json();
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 3);
        seen.extend(data.iter().map(|k| k["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut expected: Vec<String> = ids.iter().rev().cloned().collect();
    expected.push(admin_id.clone());
    assert_eq!(seen, expected);
    // Filters.
    let revoked = &ids[0];
    post(
        &server,
        &format!("/v1/keys/{revoked}/revoke"),
        &admin,
        &json!({}),
    );
    let only = get(&server, "/v1/keys?status=revoked", &admin).json();
    assert_eq!(only["data"][0]["id"], json!(revoked));
    assert_eq!(only["data"].as_array().unwrap().len(), 1);
    let active = get(
        &server,
        "/v1/keys?status=active&permission_set=vehicles:read",
        &admin,
    )
    .json();
    // Six of the created keys, and the admin key (granted the scope itself).
    assert_eq!(active["data"].as_array().unwrap().len(), 7);
    let legacy = get(&server, "/v1/keys?legacy=true", &admin).json();
    assert!(legacy["data"].as_array().unwrap().is_empty());
    let unused = get(&server, "/v1/keys?unused_for=1d", &admin).json();
    assert!(unused["data"].as_array().unwrap().is_empty());
    for (query, field) in [
        ("status=sleeping", "status"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=x", "limit"),
        ("cursor=garbage", "cursor"),
        ("unused_for=soon", "unused_for"),
        ("legacy=maybe", "legacy"),
        ("colour=blue", "colour"),
    ] {
        let e = get(&server, &format!("/v1/keys?{query}"), &admin).error(422, "VALIDATION_FAILED");
        assert_eq!(e["details"]["field"], field, "{query}: {e}");
    }
    get(&server, "/v1/keys/key_nothere", &admin).error(404, "NOT_FOUND");
    // NUL characters never reach storage (PostgreSQL text cannot hold them).
    get(&server, "/v1/keys/%00", &admin).error(400, "BAD_REQUEST");
    let e = get(&server, "/v1/audit?actor=%00", &admin).error(422, "VALIDATION_FAILED");
    assert_eq!(e["details"]["field"], "query");
    let e = post(
        &server,
        "/v1/keys",
        &admin,
        &json!({"name": "x", "scopes": ["vehicles:read"], "description": "a\u{0}b"}),
    )
    .error(422, "VALIDATION_FAILED");
    assert_eq!(e["details"]["field"], "body");

    // Roll: a new key at once; the old one until its grace ends.
    let old = post(
        &server,
        "/v1/keys",
        &admin,
        &json!({"name": "rolled", "scopes": ["vehicles:read"]}),
    )
    .json();
    let old_id = old["id"].as_str().unwrap();
    let old_key = old["key"].as_str().unwrap();
    let rolled = req("POST", &format!("/v1/keys/{old_id}/roll"))
        .bearer(&admin)
        .send(&server);
    assert_eq!(rolled.status, 201, "empty body means the default grace");
    let new = rolled.json();
    assert_eq!(new["name"], "rolled");
    assert_ne!(new["key"], old["key"]);
    assert_eq!(
        server.get("/vehicles", new["key"].as_str().unwrap()).status,
        502
    );
    assert_eq!(server.get("/vehicles", old_key).status, 502, "grace");
    let again = post(
        &server,
        &format!("/v1/keys/{}/roll", new["id"].as_str().unwrap()),
        &admin,
        &json!({"grace": "0s"}),
    );
    assert_eq!(again.status, 201);
    crate::harness::until(std::time::Duration::from_secs(2), "old key expired", || {
        server.get("/vehicles", new["key"].as_str().unwrap()).status == 401
    });
    let e = post(
        &server,
        &format!("/v1/keys/{old_id}/roll"),
        &admin,
        &json!({"grace": "forever"}),
    )
    .error(422, "VALIDATION_FAILED");
    assert_eq!(e["details"]["field"], "grace");
    post(
        &server,
        &format!("/v1/keys/{old_id}/roll"),
        &admin,
        &json!({"graze": "1h"}),
    )
    .error(422, "VALIDATION_FAILED");
    post(
        &server,
        &format!("/v1/keys/{revoked}/roll"),
        &admin,
        &json!({}),
    )
    .error(409, "CONFLICT");
    post(&server, "/v1/keys/key_nothere/roll", &admin, &json!({})).error(404, "NOT_FOUND");
    let e = post(
        &server,
        &format!("/v1/keys/{old_id}/roll"),
        &admin,
        &json!([]),
    )
    .error(422, "VALIDATION_FAILED");
    assert_eq!(e["details"]["field"], "body");
    // A refused roll is on record like a refused creation; an unknown id is
    // not a refusal.
    let refused = get(&server, "/v1/audit?action=key.roll_refused", &admin).json();
    let refused = refused["data"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["key_id"], json!(revoked));
    assert_eq!(refused[0]["status"], 409);

    // Immutable through every verb; each attempt audited.
    for method in ["PUT", "PATCH", "DELETE", "POST"] {
        let r = req(method, &format!("/v1/keys/{old_id}"))
            .bearer(&admin)
            .json(&json!({"name": "renamed", "scopes": ["vehicles:write"]}))
            .send(&server);
        let e = r.error(405, "KEY_IMMUTABLE");
        assert_eq!(e["details"]["key_id"], json!(old_id));
    }
    let shown = get(&server, &format!("/v1/keys/{old_id}"), &admin).json();
    assert_eq!(shown["name"], "rolled");
    assert_eq!(
        audit_actions(&server, &admin, "action=key.edit_refused").len(),
        4
    );

    // The catalog.
    let catalog = get(&server, "/v1/catalog", &admin).json();
    assert_eq!(catalog["key_prefix"], "insp");
    assert!(catalog["scopes"].as_array().unwrap().len() >= 13);
    // Unknown endpoints and methods: JSON, never plain text.
    get(&server, "/v1/nothing", &admin).error(404, "NOT_FOUND");
    let r = req("DELETE", "/v1/keys").bearer(&admin).send(&server);
    r.error(405, "METHOD_NOT_ALLOWED");
    assert!(r.header("allow").is_some_and(|a| a.contains("POST")));
}

#[test]
fn organizations_cannot_see_or_touch_each_other() {
    orgs_isolated(&Kw::new());
}

#[test]
fn organizations_cannot_see_or_touch_each_other_on_postgres() {
    if let Some(kw) = Kw::postgres("admin_orgs") {
        orgs_isolated(&kw);
    }
}

fn orgs_isolated(kw: &Kw) {
    kw.cli_ok(&["migrate"]);
    kw.cli_ok(&["orgs", "create", "Other Co"]);
    let (a_admin_id, a_admin) = admin_key(kw, None, &["--scope", "vehicles:write"]);
    let (b_admin_id, b_admin) = admin_key(kw, Some("other-co"), &["--scope", "vehicles:write"]);
    let a_user = user(kw, None, "alice@a.example", &["vehicles:read"]);
    let a_user_id = a_user["id"].as_str().unwrap();
    let server = kw.serve(&[]);

    let listed: Vec<String> = get(&server, "/v1/keys", &b_admin).json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, std::slice::from_ref(&b_admin_id));
    // Every id of org A is "not found" from org B, never "forbidden".
    get(&server, &format!("/v1/keys/{a_admin_id}"), &b_admin).error(404, "NOT_FOUND");
    post(
        &server,
        &format!("/v1/keys/{a_admin_id}/revoke"),
        &b_admin,
        &json!({}),
    )
    .error(404, "NOT_FOUND");
    post(
        &server,
        &format!("/v1/keys/{a_admin_id}/roll"),
        &b_admin,
        &json!({}),
    )
    .error(404, "NOT_FOUND");
    for method in ["PUT", "DELETE"] {
        req(
            method,
            &format!("/v1/groups/vehicles:read/users/{a_user_id}"),
        )
        .bearer(&b_admin)
        .send(&server)
        .error(404, "NOT_FOUND");
    }
    req("PUT", "/v1/groups/vehicles:read/users/alice@a.example")
        .bearer(&b_admin)
        .send(&server)
        .error(404, "NOT_FOUND");
    let members = get(&server, "/v1/groups/administrators/users", &b_admin).json();
    let emails: Vec<&str> = members["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["owner"], "only B's owner");
    assert!(
        members["data"][0]["org_id"] != json!(a_user["org_id"]),
        "B's owner, not A's"
    );
    let tab = get(&server, "/v1/groups/vehicles:read/users", &b_admin).json();
    assert!(tab["data"].as_array().unwrap().is_empty());
    let b_audit = get(&server, "/v1/audit?limit=500", &b_admin).json();
    for r in b_audit["data"].as_array().unwrap() {
        assert_eq!(r["org_id"], members["data"][0]["org_id"], "{r}");
    }
    let by_key = get(&server, &format!("/v1/audit?key_id={a_admin_id}"), &b_admin).json();
    assert!(by_key["data"].as_array().unwrap().is_empty());
    // Verify from B knows nothing of A's keys.
    let (_, b_verifier) = kw.key(&[
        "--org",
        "other-co",
        "--name",
        "v",
        "--scope",
        "keyward-api-keys:verify",
    ]);
    let v = post(
        &server,
        "/v1/verify",
        &b_verifier,
        &json!({"key": a_admin, "scopes": ["vehicles:read"]}),
    )
    .json();
    assert_eq!(v["valid"], false);
    // And A still works.
    assert_eq!(get(&server, "/v1/keys", &a_admin).status, 200);
}

#[test]
fn groups_memberships_and_their_audit() {
    memberships(&Kw::new());
}

#[test]
fn groups_memberships_and_their_audit_on_postgres() {
    if let Some(kw) = Kw::postgres("admin_groups") {
        memberships(&kw);
    }
}

fn memberships(kw: &Kw) {
    kw.cli_ok(&["migrate"]);
    let (_, admin) = admin_key(kw, None, &["--scope", "vehicles:write"]);
    let (_, groups_only) = kw.key(&[
        "--name",
        "groups-only",
        "--scope",
        "keyward-groups:write",
        "--scope",
        "vehicles:read",
    ]);
    let (_, blind) = kw.key(&["--name", "blind", "--scope", "keyward-groups:read"]);
    let (holder_id, _) = kw.key(&["--name", "holder", "--permission-set", "vehicles:write"]);
    let bob = user(kw, None, "bob@example.com", &[]);
    let bob_id = bob["id"].as_str().unwrap();
    let server = kw.serve(&[]);

    let groups = get(&server, "/v1/groups", &admin).json();
    let data = groups["data"].as_array().unwrap();
    assert_eq!(data[0]["id"], "administrators");
    assert_eq!(data[0]["members"], 1, "the owner");
    assert!(
        data.iter()
            .any(|g| g["id"] == "vehicles:write" && g["write"] == true)
    );
    // The Users tab needs keyward-users:read as well.
    let e = get(&server, "/v1/groups/administrators/users", &blind).error(403, "FORBIDDEN");
    assert_eq!(e["details"]["required"], json!(["keyward-users:read"]));

    // Add, repeat, remove, repeat: changes are reported and audited once each.
    let path = format!("/v1/groups/vehicles:write/users/{bob_id}");
    let r = req("PUT", &path).bearer(&admin).send(&server).json();
    assert_eq!(
        (r["member"].clone(), r["changed"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(r["user"]["groups"], json!(["vehicles:write"]));
    let r = req("PUT", "/v1/groups/vehicles:write/users/bob@example.com")
        .bearer(&admin)
        .send(&server)
        .json();
    assert_eq!(r["changed"], false, "by email too, and idempotent");
    let tab = get(&server, "/v1/groups/vehicles:write/users", &admin).json();
    assert_eq!(tab["data"][0]["email"], "bob@example.com");
    let r = req("DELETE", &path).bearer(&admin).send(&server).json();
    assert_eq!(
        (r["member"].clone(), r["changed"].clone()),
        (json!(false), json!(true))
    );
    let r = req("DELETE", &path).bearer(&admin).send(&server).json();
    assert_eq!(r["changed"], false);
    assert_eq!(
        audit_actions(&server, &admin, "action=group.member_added").len(),
        1
    );
    assert_eq!(
        audit_actions(&server, &admin, "action=group.member_removed").len(),
        1
    );
    // Unknown group or user.
    req("PUT", &format!("/v1/groups/pilots/users/{bob_id}"))
        .bearer(&admin)
        .send(&server)
        .error(404, "NOT_FOUND");
    req("PUT", "/v1/groups/vehicles:write/users/usr_nobody")
        .bearer(&admin)
        .send(&server)
        .error(404, "NOT_FOUND");
    get(&server, "/v1/groups/pilots/users", &admin).error(404, "NOT_FOUND");
    get(&server, "/v1/groups/pilots/api-keys", &admin).error(404, "NOT_FOUND");
    // No escalation: adding someone to a group hands out its scopes.
    let e = req("PUT", &path)
        .bearer(&groups_only)
        .send(&server)
        .error(403, "FORBIDDEN");
    assert_eq!(e["details"]["required"], json!(["vehicles:write"]));
    assert_eq!(
        audit_actions(&server, &admin, "action=group.member_add_refused").len(),
        1
    );
    let ok = req("PUT", &format!("/v1/groups/vehicles:read/users/{bob_id}"))
        .bearer(&groups_only)
        .send(&server);
    assert_eq!(ok.status, 200);
    req("PUT", &path)
        .bearer(&blind)
        .send(&server)
        .error(403, "FORBIDDEN");
    // Removing takes the group's scopes away: also only for who holds them.
    req("PUT", &path).bearer(&admin).send(&server);
    let e = req("DELETE", &path)
        .bearer(&groups_only)
        .send(&server)
        .error(403, "FORBIDDEN");
    assert_eq!(e["details"]["required"], json!(["vehicles:write"]));
    assert_eq!(
        audit_actions(&server, &admin, "action=group.member_remove_refused").len(),
        1
    );
    // Nobody but a holder of everything touches administrators, and its
    // last member stays.
    let e = req("DELETE", "/v1/groups/administrators/users/owner")
        .bearer(&admin)
        .send(&server)
        .error(403, "FORBIDDEN");
    assert!(!e["details"]["required"].as_array().unwrap().is_empty());
    let out = kw.cli(&["users", "remove-from-group", "owner", "administrators"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("last member of administrators"));

    // The API Keys tab: keys holding the set, fixed at creation.
    let tab = get(&server, "/v1/groups/vehicles:write/api-keys", &admin).json();
    let ids: Vec<&str> = tab["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&holder_id.as_str()), "{ids:?}");
    assert!(
        tab["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| strings(&k["effective_scopes"]).contains(&"vehicles:write".to_owned()))
    );
    kw.cli_ok(&["audit", "verify"]);
}

#[test]
fn audit_queries_filter_and_page() {
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    let (admin_id, admin) = admin_key(&kw, None, &["--scope", "vehicles:read"]);
    let (_, reader) = kw.key(&["--name", "r", "--scope", "vehicles:read"]);
    let server = kw.serve(&[]);
    for i in 0..4 {
        post(
            &server,
            "/v1/keys",
            &admin,
            &json!({"name": format!("k{i}"), "scopes": ["vehicles:read"]}),
        );
    }
    // A denied write through the gateway is in the log too.
    req("POST", "/api/third-party/v1/vehicles")
        .bearer(&reader)
        .send(&server)
        .error(403, "FORBIDDEN");

    let all = get(&server, "/v1/audit?limit=500", &admin).json();
    let data = all["data"].as_array().unwrap();
    let seqs: Vec<i64> = data.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "newest first");
    assert!(all["next_cursor"].is_null());
    let mine = format!("key:{admin_id}");
    let by_actor = get(
        &server,
        &format!("/v1/audit?actor={mine}&action=key.created"),
        &admin,
    )
    .json();
    assert_eq!(by_actor["data"].as_array().unwrap().len(), 4);
    let denied = get(&server, "/v1/audit?status=403", &admin).json();
    let denied = denied["data"].as_array().unwrap();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["required"], json!(["vehicles:write"]));
    assert_eq!(denied[0]["method"], "POST");
    assert!(denied[0]["request_id"].is_string());
    // Pages of 2 cover the same records.
    let mut paged = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = get(&server, &format!("/v1/audit?limit=2{cursor}"), &admin).json();
        paged.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["seq"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(paged, seqs);
    // Time range: everything is before the far future, nothing after it.
    let until = get(
        &server,
        "/v1/audit?until=2999-01-01T00:00:00Z&limit=500",
        &admin,
    )
    .json();
    assert_eq!(until["data"].as_array().unwrap().len(), seqs.len());
    let since = get(&server, "/v1/audit?since=2999-01-01T00:00:00Z", &admin).json();
    assert!(since["data"].as_array().unwrap().is_empty());
    for (query, field) in [
        ("since=yesterday", "since"),
        ("status=abc", "status"),
        ("cursor=-4", "cursor"),
        ("limit=0", "limit"),
        ("kind=x", "kind"),
    ] {
        let e = get(&server, &format!("/v1/audit?{query}"), &admin).error(422, "VALIDATION_FAILED");
        assert_eq!(e["details"]["field"], field, "{query}: {e}");
    }
    let e = get(&server, "/v1/audit", &reader).error(403, "FORBIDDEN");
    assert_eq!(e["details"]["required"], json!(["keyward-audit:read"]));
}

#[test]
fn the_openapi_document_describes_every_endpoint() {
    let kw = Kw::new();
    let server = kw.serve(&[]);
    let r = req("GET", "/openapi.json").send(&server);
    assert_eq!(r.status, 200);
    let spec = r.json();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let paths = spec["paths"].as_object().unwrap();
    for (method, path) in [
        ("post", "/v1/keys"),
        ("get", "/v1/keys"),
        ("get", "/v1/keys/{id}"),
        ("post", "/v1/keys/{id}/revoke"),
        ("post", "/v1/keys/{id}/roll"),
        ("get", "/v1/catalog"),
        ("get", "/v1/groups"),
        ("get", "/v1/groups/{id}/users"),
        ("get", "/v1/groups/{id}/api-keys"),
        ("put", "/v1/groups/{id}/users/{user}"),
        ("delete", "/v1/groups/{id}/users/{user}"),
        ("get", "/v1/audit"),
        ("post", "/v1/verify"),
        ("get", "/v1/whoami"),
        ("get", "/healthz"),
        ("get", "/metrics"),
    ] {
        assert!(paths[path][method].is_object(), "{method} {path}");
    }
    // And everything the document describes is served: no path or method in
    // it answers 404 or 405 (without a key, the API answers 401).
    for (path, ops) in paths {
        let concrete = path
            .replace("{id}", "key_doesnotexist0000")
            .replace("{user}", "usr_doesnotexist0000");
        for method in ops.as_object().unwrap().keys() {
            let method = method.to_ascii_uppercase();
            if !["GET", "POST", "PUT", "DELETE", "PATCH"].contains(&method.as_str()) {
                continue;
            }
            let r = req(&method, &concrete).send(&server);
            assert!(
                ![404, 405].contains(&r.status),
                "{method} {path} is documented but answers {}",
                r.status
            );
        }
    }
}

#[test]
fn every_endpoint_needs_a_key_and_its_scopes() {
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    let (_, nobody) = kw.key(&["--name", "nobody", "--scope", "vehicles:read"]);
    let (target_id, _) = kw.key(&["--name", "target", "--scope", "vehicles:write"]);
    let (_, roller) = kw.key(&[
        "--name",
        "roller",
        "--scope",
        "keyward-api-keys:write",
        "--scope",
        "vehicles:read",
    ]);
    let server = kw.serve(&[]);
    let key_path = format!("/v1/keys/{target_id}");
    let revoke = format!("{key_path}/revoke");
    let roll = format!("{key_path}/roll");
    let cases: &[(&str, &str, &[&str])] = &[
        ("POST", "/v1/keys", &["keyward-api-keys:write"]),
        ("GET", "/v1/keys", &["keyward-api-keys:read"]),
        ("GET", &key_path, &["keyward-api-keys:read"]),
        ("POST", &revoke, &["keyward-api-keys:write"]),
        ("POST", &roll, &["keyward-api-keys:write"]),
        ("GET", "/v1/catalog", &["keyward-api-keys:read"]),
        ("GET", "/v1/groups", &["keyward-groups:read"]),
        (
            "GET",
            "/v1/groups/administrators/users",
            &["keyward-groups:read", "keyward-users:read"],
        ),
        (
            "GET",
            "/v1/groups/administrators/api-keys",
            // Named in catalog order.
            &["keyward-api-keys:read", "keyward-groups:read"],
        ),
        (
            "PUT",
            "/v1/groups/vehicles:read/users/owner",
            &["keyward-groups:write"],
        ),
        (
            "DELETE",
            "/v1/groups/vehicles:read/users/owner",
            &["keyward-groups:write"],
        ),
        ("GET", "/v1/audit", &["keyward-audit:read"]),
        ("POST", "/v1/verify", &["keyward-api-keys:verify"]),
    ];
    for (method, path, scopes) in cases {
        let e = req(method, path).send(&server).error(401, "UNAUTHORIZED");
        assert_eq!(e["message"].as_str().map(str::is_empty), Some(false));
        let r = req(method, path)
            .bearer(&nobody)
            .json(&json!({"name": "x", "scopes": ["vehicles:read"]}))
            .send(&server);
        assert_eq!(
            r.header("www-authenticate")
                .map(|h| h.contains("insufficient_scope")),
            Some(true),
            "{method} {path}"
        );
        let e = r.error(403, "FORBIDDEN");
        assert_eq!(e["details"]["required"], json!(scopes), "{method} {path}");
        assert_eq!(e["details"]["available"], json!(["vehicles:read"]));
    }
    // whoami needs no keyward scope at all.
    let me = get(&server, "/v1/whoami", &nobody).json();
    assert_eq!(me["granted_scopes"], json!(["vehicles:read"]));
    // Rolling hands the new key the old one's scopes: the caller must hold them.
    let e = post(&server, &roll, &roller, &json!({})).error(403, "FORBIDDEN");
    assert_eq!(e["details"]["required"], json!(["vehicles:write"]));
    // Nothing was rolled or revoked by any of this.
    let (_, reader) = kw.key(&[
        "--name",
        "reader",
        "--scope",
        "keyward-api-keys:read",
        "--scope",
        "keyward-audit:read",
    ]);
    // The refused roll is on record, with the scopes the roller lacked.
    let refused = get(&server, "/v1/audit?action=key.roll_refused", &reader).json();
    let refused = refused["data"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["key_id"], json!(target_id));
    assert_eq!(refused[0]["status"], 403);
    assert_eq!(refused[0]["required"], json!(["vehicles:write"]));
    let target = get(&server, &key_path, &reader).json();
    assert_eq!(
        (target["status"].clone(), target["rolled_to"].clone()),
        (json!("active"), Value::Null)
    );
}
