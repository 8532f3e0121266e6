//! The key policy (SPEC §10, issue 19) over a real socket and through the
//! CLI: read, set (every bad field named, nothing written), audited, and
//! honoured by key creation and rolls.

use crate::harness::{Kw, Upstream, execute, pg_rows, req, until};
use crate::{strings, upstream_flag};
use serde_json::{Value, json};
use std::time::Duration;

#[test]
fn the_policy_is_read_set_and_honoured_by_creation() {
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    let (_, settings) = kw.key(&[
        "--name",
        "settings",
        "--scope",
        "keyward-settings:write",
        "--scope",
        "keyward-api-keys:write",
        "--scope",
        "vehicles:read",
        "--scope",
        "keyward-audit:read",
    ]);
    let (_, reader) = kw.key(&["--name", "reader", "--scope", "keyward-settings:read"]);
    let (_, keys_only) = kw.key(&["--name", "keys", "--scope", "keyward-api-keys:write"]);
    let server = kw.serve(&[]);
    let put = |key: &str, body: &Value| {
        req("PUT", "/v1/policy")
            .bearer(key)
            .json(body)
            .send(&server)
    };

    // The default, to whoever may read settings, and to no one else.
    let p = req("GET", "/v1/policy")
        .bearer(&reader)
        .send(&server)
        .json();
    assert_eq!(p["max_key_lifetime"], Value::Null, "{p}");
    assert_eq!(p["on_leak"], "revoke");
    assert_eq!(p["updated_at"], Value::Null);
    req("GET", "/v1/policy")
        .bearer(&keys_only)
        .send(&server)
        .error(403, "FORBIDDEN");
    put(&reader, &json!({"max_key_lifetime": "30d"})).error(403, "FORBIDDEN");

    // Bad policies: 422 naming every bad field; nothing written.
    for (body, fields) in [
        (
            json!({"max_key_lifetime": "forever"}),
            vec!["max_key_lifetime"],
        ),
        (json!({"max_key_lifetime": "5m"}), vec!["max_key_lifetime"]),
        (
            json!({"flag_unused_after": "90d", "revoke_unused_after": "30d"}),
            vec!["revoke_unused_after"],
        ),
        (
            json!({"revoke_unused_after": "30d"}),
            vec!["revoke_unused_after"],
        ),
        (
            json!({"expiry_warning": ["1d", "24h"]}),
            vec!["expiry_warning"],
        ),
        (
            json!({"max_key_lifetime": "x", "flag_unused_after": "1h", "expiry_warning": ["0s"]}),
            vec!["max_key_lifetime", "flag_unused_after", "expiry_warning"],
        ),
        (json!({"on_leak": "ignore"}), vec!["on_leak"]),
    ] {
        let e = put(&settings, &body).error(422, "VALIDATION_FAILED");
        let named: Vec<String> = match e["details"]["fields"].as_array() {
            Some(all) => all
                .iter()
                .map(|f| f["field"].as_str().unwrap().to_owned())
                .collect(),
            None => vec![e["details"]["field"].as_str().unwrap().to_owned()],
        };
        assert_eq!(named, fields, "{body}: {e}");
    }
    put(&settings, &json!({"max_lifetime": "30d"})).error(422, "VALIDATION_FAILED");
    let p = req("GET", "/v1/policy")
        .bearer(&reader)
        .send(&server)
        .json();
    assert_eq!(p["updated_at"], Value::Null, "nothing written: {p}");

    // A good one: answered as now in force, audited with old and new.
    let r = put(
        &settings,
        &json!({"max_key_lifetime": "30d", "flag_unused_after": "90d",
                "revoke_unused_after": "180d", "expiry_warning": ["1d", "14d"],
                "on_leak": "flag"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let p = r.json();
    assert_eq!(p["max_key_lifetime"], "30d");
    assert_eq!(strings(&p["expiry_warning"]), ["1d", "14d"]);
    assert_eq!(p["on_leak"], "flag");
    assert!(p["updated_by"].as_str().unwrap().starts_with("key:"), "{p}");
    let audit = req("GET", "/v1/audit?action=policy.updated")
        .bearer(&settings)
        .send(&server)
        .json();
    let details = &audit["data"][0]["details"];
    assert_eq!(details["old"]["max_key_lifetime"], Value::Null, "{details}");
    assert_eq!(details["new"]["max_key_lifetime"], "30d");

    // Creation: no expiry gets the lifetime; a longer one is refused.
    let create = |body: &Value| {
        req("POST", "/v1/keys")
            .bearer(&settings)
            .json(body)
            .send(&server)
    };
    let made = create(&json!({"name": "short", "scopes": ["vehicles:read"]}));
    assert_eq!(made.status, 201);
    let expires = made.json()["expires_at"].as_str().unwrap().to_owned();
    let at: jiff::Timestamp = expires.parse().unwrap();
    let lifetime = at.as_millisecond() - jiff::Timestamp::now().as_millisecond();
    let day = 86_400_000;
    assert!((29 * day..=30 * day).contains(&lifetime), "{expires}");
    let far = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(31 * 24))
        .unwrap();
    let e = create(&json!({"name": "long", "scopes": ["vehicles:read"],
                           "expires_at": far.to_string()}))
    .error(422, "EXPIRY_EXCEEDS_POLICY");
    assert_eq!(e["details"]["field"], "expires_at");
    assert_eq!(e["details"]["max_key_lifetime"], "30d");
    // The CLI too, in words.
    let refused = kw.cli(&[
        "keys",
        "create",
        "--name",
        "cli-long",
        "--scope",
        "vehicles:read",
        "--expires-in",
        "60d",
    ]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("at most 30d"), "{said}");
}

#[test]
fn the_cli_shows_and_sets_the_policy() {
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    let shown = kw.cli_ok(&["policy", "show"]);
    assert!(shown.contains("never set"), "{shown}");
    let set: Value = serde_json::from_str(&kw.cli_ok(&[
        "policy",
        "set",
        "--max-key-lifetime",
        "365d",
        "--expiry-warning",
        "14d",
        "--expiry-warning",
        "1d",
        "--json",
    ]))
    .unwrap();
    assert_eq!(set["max_key_lifetime"], "365d");
    assert_eq!(strings(&set["expiry_warning"]), ["14d", "1d"]);
    // Fields not given stay; `none` clears.
    let set: Value = serde_json::from_str(&kw.cli_ok(&[
        "policy",
        "set",
        "--flag-unused-after",
        "90d",
        "--max-key-lifetime",
        "none",
        "--json",
    ]))
    .unwrap();
    assert_eq!(set["max_key_lifetime"], Value::Null, "{set}");
    assert_eq!(set["flag_unused_after"], "90d");
    assert_eq!(strings(&set["expiry_warning"]), ["14d", "1d"]);
    // Refused in words, naming the field; nothing changed.
    let bad = kw.cli(&["policy", "set", "--revoke-unused-after", "30d"]);
    assert!(!bad.status.success());
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(said.contains("revoke_unused_after"), "{said}");
    let shown = kw.cli_ok(&["policy", "show"]);
    assert!(shown.contains("flag_unused_after    90d"), "{shown}");
    assert!(shown.contains("revoke_unused_after  none"), "{shown}");
    // A run now: a fresh key is not unused for 90 days.
    kw.key(&["--name", "fresh", "--scope", "vehicles:read"]);
    let run: Value =
        serde_json::from_str(&kw.cli_ok(&["policy", "run", "--dry-run", "--json"])).unwrap();
    assert_eq!(run["dry_run"], true, "{run}");
    assert_eq!(run["flagged"], json!([]));
    assert_eq!(run["revoked"], json!([]));
    let said = kw.cli_ok(&["policy", "run"]);
    assert!(said.contains("Unused past the flag: 0"), "{said}");
    assert!(said.contains("Flagged as unused now: 0"), "{said}");
}

/// Servers apply the policy on their own, one node at a time: a key unused
/// past the revocation is revoked once, by actor `policy`, and the nodes
/// stop accepting it.
#[test]
fn servers_apply_the_policy_one_node_at_a_time() {
    let _heavy = crate::harness::heavy();
    let Some(kw) = Kw::postgres("policy_nodes") else {
        return;
    };
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (old_id, old) = kw.key(&["--name", "old", "--scope", "vehicles:read"]);
    let (_, fresh) = kw.key(&["--name", "fresh", "--scope", "vehicles:read"]);
    kw.cli_ok(&[
        "policy",
        "set",
        "--flag-unused-after",
        "1d",
        "--revoke-unused-after",
        "2d",
    ]);
    // `old` was created three days ago and never used.
    execute(
        &kw,
        "UPDATE keys SET created_at = created_at - 259200000 WHERE name = 'old'",
    );
    let flags = [
        "--upstream",
        &upstream_flag(&up),
        "--policy-interval",
        "200ms",
    ];
    let a = kw.serve(&flags);
    let b = kw.serve(&flags);
    until(Duration::from_secs(10), "the policy's revocation", || {
        !pg_rows::<(String,)>(
            &kw,
            "SELECT actor FROM audit_log WHERE action = 'key.revoked'",
        )
        .is_empty()
    });
    until(Duration::from_secs(5), "both nodes refuse it", || {
        a.get("/vehicles", &old).status == 401 && b.get("/vehicles", &old).status == 401
    });
    assert_eq!(a.get("/vehicles", &fresh).status, 200);
    assert_eq!(b.get("/vehicles", &fresh).status, 200);
    std::thread::sleep(Duration::from_millis(600));
    let revoked: Vec<(String, Option<String>, String)> = pg_rows(
        &kw,
        "SELECT actor, key_id, details FROM audit_log WHERE action = 'key.revoked'",
    );
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0].0, "policy");
    assert_eq!(revoked[0].1.as_deref(), Some(old_id.as_str()));
    assert!(revoked[0].2.contains("unused"), "{revoked:?}");
    let holders: Vec<(String,)> = pg_rows(&kw, "SELECT holder FROM duties WHERE name = 'policy'");
    assert_eq!(holders.len(), 1, "one node holds the duty");
}

/// The console's key policy page: shown to whoever may read settings,
/// changed by whoever may write them, refusals naming each field.
#[test]
fn the_console_shows_and_sets_the_policy() {
    use crate::console::{Visitor, field, first_start, owner_visitor, text};
    let kw = Kw::new();
    let password = first_start(&kw);
    let out = kw.cli_ok(&[
        "users",
        "create",
        "--email",
        "rita@example.com",
        "--group",
        "keyward-settings:read",
    ]);
    let rita_password = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("one-time password: "))
        .map(str::to_owned);
    let server = kw.serve(&[]);
    let mut v = owner_visitor(&server, &password);
    let page = text(&v.get("/console/settings"));
    assert!(
        page.contains("Key policy") && page.contains("Save policy"),
        "{page}"
    );
    assert!(page.contains("href=\"/console/settings\" aria-current=\"page\""));
    let csrf = field(&page, "csrf");

    // Refused: each bad field named, the form kept, nothing saved.
    let r = v.post(
        "/console/settings",
        &[
            ("csrf", &csrf),
            ("max_key_lifetime", "forever"),
            ("flag_unused_after", "90d"),
            ("revoke_unused_after", "30d"),
            ("expiry_warning", ""),
            ("on_leak", "revoke"),
        ],
    );
    let refused = text(&r);
    assert_eq!(r.status, 422, "{refused}");
    assert!(refused.contains("max_key_lifetime:") && refused.contains("revoke_unused_after:"));
    assert!(refused.contains("value=\"forever\""), "the form as sent");
    assert!(kw.cli_ok(&["policy", "show"]).contains("never set"));
    // A field the form does not have, or an action it does not know, is a
    // mistake to report, not something to read as the default.
    for (extra, named) in [
        (("on_leak", "ignore"), "on_leak: `ignore`"),
        (("on_leek", "flag"), "no field `on_leek`"),
        (("max_key_lifetme", "30d"), "no field `max_key_lifetme`"),
    ] {
        let mut fields = vec![("csrf", csrf.as_str()), ("max_key_lifetime", "30d")];
        fields.push(extra);
        let r = v.post("/console/settings", &fields);
        let refused = text(&r);
        assert_eq!(r.status, 422, "{refused}");
        assert!(refused.contains(named), "{named}: {refused}");
    }
    assert!(kw.cli_ok(&["policy", "show"]).contains("never set"));
    // Without the CSRF token: refused.
    let r = v.post("/console/settings", &[("max_key_lifetime", "30d")]);
    assert_eq!(r.status, 403);

    // Saved, and shown back.
    let r = v.post(
        "/console/settings",
        &[
            ("csrf", &csrf),
            ("max_key_lifetime", "365d"),
            ("flag_unused_after", "90d"),
            ("revoke_unused_after", ""),
            ("expiry_warning", "14d, 1d"),
            ("on_leak", "flag"),
        ],
    );
    assert_eq!(r.status, 303, "{}", text(&r));
    let page = text(&v.get("/console/settings?done=saved"));
    assert!(page.contains("The policy was saved"));
    assert!(page.contains("value=\"365d\"") && page.contains("value=\"14d, 1d\""));
    assert!(page.contains("<option value=\"flag\" selected>"));
    let shown: Value = serde_json::from_str(&kw.cli_ok(&["policy", "show", "--json"])).unwrap();
    assert_eq!(shown["max_key_lifetime"], "365d");
    assert_eq!(strings(&shown["expiry_warning"]), ["14d", "1d"]);
    assert!(shown["updated_by"].as_str().unwrap().starts_with("user:"));

    // A reader sees it, cannot change it.
    if let Some(pw) = rita_password {
        let mut rita = Visitor::new(&server);
        rita.post(
            "/console/sign-in",
            &[("email", "rita@example.com"), ("password", &pw)],
        );
        let csrf = field(&text(&rita.get("/console/password")), "csrf");
        rita.post(
            "/console/password",
            &[
                ("csrf", &csrf),
                ("current_password", &pw),
                ("new_password", "rita's long new password"),
            ],
        );
        let page = text(&rita.get("/console/settings"));
        assert!(page.contains("value=\"365d\""), "{page}");
        assert!(!page.contains("Save policy"));
        let csrf = field(&page, "csrf");
        let r = rita.post(
            "/console/settings",
            &[("csrf", &csrf), ("max_key_lifetime", "1d")],
        );
        assert_eq!(r.status, 403, "{}", text(&r));
    } else {
        panic!("no one-time password for rita in {out}");
    }
}
