//! Least privilege (SPEC §9, issue 18) over a real socket: the narrowing
//! roll through the admin API and the CLI.

use crate::harness::{Kw, Upstream, req};
use crate::{strings, upstream_flag};
use serde_json::{Value, json};

#[test]
fn a_narrowing_roll_narrows_and_refuses_to_broaden() {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (_, admin) = kw.key(&[
        "--name",
        "admin",
        "--scope",
        "keyward-api-keys:write",
        "--scope",
        "vehicles:write",
        "--scope",
        "damages:write",
    ]);
    let (id, key) = kw.key(&["--name", "writer", "--scope", "vehicles:write"]);
    let server = kw.serve(&["--upstream", &upstream_flag(&up)]);
    let roll = |id: &str, body: &Value| {
        req("POST", &format!("/v1/keys/{id}/roll"))
            .bearer(&admin)
            .json(body)
            .send(&server)
    };

    // Broader, in every way: refused, naming the extra scopes; nothing
    // written, the key untouched.
    for (body, extra) in [
        (json!({"scopes": ["damages:read"]}), vec!["damages:read"]),
        (
            json!({"scopes": ["vehicles:read", "damages:write"]}),
            vec!["damages:write", "damages:read"],
        ),
        (
            json!({"permission_sets": ["damages:read"]}),
            vec!["damages:read"],
        ),
    ] {
        let r = roll(&id, &body);
        let e = r.error(422, "ROLL_WOULD_BROADEN");
        let mut named = strings(&e["details"]["scopes"]);
        named.sort();
        let mut extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        extra.sort();
        assert_eq!(named, extra, "{body}");
    }
    // Unknown grants, or none: 422 naming them.
    for body in [
        json!({"scopes": ["vehicles:fly"]}),
        json!({"permission_sets": ["nope"]}),
        json!({"scopes": []}),
    ] {
        let r = roll(&id, &body);
        assert_eq!(r.status, 422, "{body}");
    }
    let shown: Value = serde_json::from_str(&kw.cli_ok(&["keys", "show", &id, "--json"])).unwrap();
    assert!(
        shown["rolled_to"].is_null(),
        "nothing partial written: {shown}"
    );
    assert_eq!(server.get("/vehicles", &key).status, 200);

    // Narrower: the new key holds only what it was given.
    let r = roll(&id, &json!({"scopes": ["vehicles:read"], "grace": "0s"}));
    assert_eq!(r.status, 201);
    let new = r.json();
    assert_eq!(strings(&new["scopes"]), ["vehicles:read"]);
    let new_key = new["key"].as_str().unwrap();
    assert_eq!(server.get("/vehicles", new_key).status, 200);
    let write = req("POST", "/api/third-party/v1/vehicles")
        .bearer(new_key)
        .json(&json!({}))
        .send(&server);
    assert_eq!(write.status, 403, "the write scope is gone");
    // A key is rolled once: a second roll is refused, naming the successor.
    let again = roll(&id, &json!({"scopes": ["vehicle-fields:read"]}));
    let e = again.error(409, "CONFLICT");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains(new["id"].as_str().unwrap()),
        "{e}"
    );
    // Concurrent rolls of one key: one wins, the others are refused.
    let (fresh, _) = kw.key(&["--name", "raced", "--scope", "vehicles:write"]);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..6)
            .map(|_| s.spawn(|| roll(&fresh, &json!({"scopes": ["vehicles:read"]})).status))
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}"
    );

    // A legacy key, rolled by the CLI into a scoped key.
    let file = kw.dir.path().join("legacy.txt");
    std::fs::write(&file, "sk_old_0123456789abcdefghij  Old sync\n").unwrap();
    kw.cli_ok(&["keys", "import-legacy", file.to_str().unwrap()]);
    let list: Value = serde_json::from_str(&kw.cli_ok(&["keys", "list", "--json"])).unwrap();
    let legacy_id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["legacy"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = kw.cli_ok(&[
        "keys",
        "roll",
        &legacy_id,
        "--scope",
        "vehicles:read",
        "--grace",
        "0s",
        "--json",
    ]);
    let scoped: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(scoped["legacy"], false, "{scoped}");
    assert_eq!(strings(&scoped["scopes"]), ["vehicles:read"]);
    // The CLI refuses broadening too, in words.
    let (id2, _) = kw.key(&["--name", "reader", "--scope", "vehicles:read"]);
    let refused = kw.cli(&["keys", "roll", &id2, "--scope", "vehicles:write"]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("vehicles:write"), "{said}");
}

fn get_json(server: &crate::harness::Server, path: &str, key: &str) -> crate::harness::Resp {
    req("GET", path).bearer(key).send(server)
}

#[test]
fn traffic_shows_in_usage_and_the_suggestion_narrows_it() {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (_, admin) = kw.key(&["--name", "admin", "--scope", "keyward-api-keys:read"]);
    let (id, key) = kw.key(&[
        "--name",
        "broad",
        "--scope",
        "vehicles:write",
        "--scope",
        "damages:read",
    ]);
    let server = kw.serve(&[
        "--upstream",
        &upstream_flag(&up),
        "--flush-interval",
        "200ms",
    ]);
    for _ in 0..3 {
        assert_eq!(server.get("/vehicles", &key).status, 200);
    }
    assert_eq!(server.get("/vehicles/7", &key).status, 200);
    assert_eq!(server.get("/inspections", &key).status, 403);
    assert_eq!(server.get("/nowhere", &key).status, 404);
    // Unauthenticated requests are nobody's use.
    assert_eq!(server.get("/vehicles", "insp_live_nope").status, 401);
    let mut report = Value::Null;
    crate::harness::until(std::time::Duration::from_secs(5), "usage flushed", || {
        report = get_json(&server, &format!("/v1/keys/{id}/usage"), &admin).json();
        report["routes"].as_array().is_some_and(|r| r.len() == 4)
    });
    assert_eq!(report["granularity"], "day");
    let buckets = report["buckets"].as_array().unwrap();
    assert!(
        buckets.len() >= 30,
        "every day of the range: {}",
        buckets.len()
    );
    let last = buckets.last().unwrap();
    assert_eq!(
        (last["allowed"].as_u64(), last["denied"].as_u64()),
        (Some(4), Some(2))
    );
    let list = report["routes"].as_array().unwrap();
    assert_eq!(list[0]["route"], "/vehicles", "busiest first: {report}");
    assert_eq!(list[0]["method"], "GET");
    assert_eq!(list[0]["allowed"], 3);
    assert_eq!(strings(&list[0]["required"]), ["vehicles:read"]);
    let forbidden = list.iter().find(|r| r["route"] == "/inspections").unwrap();
    assert_eq!(
        (forbidden["allowed"].as_u64(), forbidden["denied"].as_u64()),
        (Some(0), Some(1))
    );
    assert!(
        list.iter().any(|r| r["route"] == "" && r["denied"] == 1),
        "{report}"
    );
    // Hourly, over a day.
    let hourly = get_json(
        &server,
        &format!("/v1/keys/{id}/usage?since=1d&granularity=hour"),
        &admin,
    )
    .json();
    assert_eq!(hourly["granularity"], "hour");
    let total: u64 = hourly["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["allowed"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 4);

    // The suggestion: reads only, so `vehicles:read`; `damages:read` unused.
    let s = get_json(
        &server,
        &format!("/v1/keys/{id}/suggestion?window=7d"),
        &admin,
    )
    .json();
    assert_eq!(s["verdict"], "narrow", "{s}");
    assert_eq!(s["requests"], 6);
    assert_eq!(strings(&s["suggested"]["scopes"]), ["vehicles:read"]);
    let mut unused = strings(&s["unused_grants"]);
    unused.sort();
    assert_eq!(unused, ["damages:read", "vehicles:write"]);
    // A window shorter than the hour so far still sees this hour's use.
    let s = get_json(
        &server,
        &format!("/v1/keys/{id}/suggestion?window=1s"),
        &admin,
    )
    .json();
    assert_eq!(s["verdict"], "narrow", "{s}");
    // An unused key.
    let (idle, _) = kw.key(&["--name", "idle", "--scope", "vehicles:read"]);
    let s = get_json(&server, &format!("/v1/keys/{idle}/suggestion"), &admin).json();
    assert_eq!(s["verdict"], "unused");

    // Bad input: unknown key, ranges that do not parse.
    let r = get_json(&server, "/v1/keys/key_nope/usage", &admin);
    r.error(404, "NOT_FOUND");
    let r = get_json(&server, "/v1/keys/key_nope/suggestion", &admin);
    r.error(404, "NOT_FOUND");
    for (query, field) in [
        ("since=yesterday", "since"),
        ("since=1d&until=2d", "since"),
        ("granularity=minute", "granularity"),
        ("since=60d&granularity=hour", "granularity"),
        ("until=soon", "until"),
        ("bogus=1", "bogus"),
    ] {
        let r = get_json(&server, &format!("/v1/keys/{id}/usage?{query}"), &admin);
        let e = r.error(422, "VALIDATION_FAILED");
        assert_eq!(e["details"]["field"], field, "{query}");
    }
    for query in ["window=forever", "window=0s"] {
        let r = get_json(
            &server,
            &format!("/v1/keys/{id}/suggestion?{query}"),
            &admin,
        );
        let e = r.error(422, "VALIDATION_FAILED");
        assert_eq!(e["details"]["field"], "window", "{query}");
    }

    // The CLI shows the same.
    let out = kw.cli_ok(&["keys", "usage", &id]);
    assert!(
        out.contains("/vehicles") && out.contains("vehicles:read"),
        "{out}"
    );
    let out = kw.cli_ok(&["keys", "suggest", &id]);
    assert!(
        out.contains(&format!("keyward keys roll {id} --scope vehicles:read")),
        "{out}"
    );
    let json: Value =
        serde_json::from_str(&kw.cli_ok(&["keys", "suggest", &id, "--json"])).unwrap();
    assert_eq!(json["verdict"], "narrow");
    for args in [
        &["keys", "usage", &id, "--since", "whenever"][..],
        &[
            "keys",
            "usage",
            &id,
            "--since",
            "32d",
            "--granularity",
            "hour",
        ][..],
        &["keys", "suggest", &id, "--window", "0s"][..],
        &["keys", "suggest", &id, "--window", "401d"][..],
    ] {
        let refused = kw.cli(args);
        assert!(!refused.status.success(), "{args:?}");
    }
}

#[test]
fn two_nodes_add_up_their_usage() {
    let Some(kw) = Kw::postgres("usage_two_nodes") else {
        return;
    };
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (_, admin) = kw.key(&["--name", "admin", "--scope", "keyward-api-keys:read"]);
    let (id, key) = kw.key(&["--name", "reader", "--scope", "vehicles:read"]);
    let flags = [
        "--upstream",
        &upstream_flag(&up),
        "--flush-interval",
        "200ms",
    ];
    let mut a = kw.serve(&flags);
    let b = kw.serve(&flags);
    for _ in 0..5 {
        assert_eq!(a.get("/vehicles", &key).status, 200);
    }
    for _ in 0..7 {
        assert_eq!(b.get("/vehicles", &key).status, 200);
    }
    // A's counts reach the database at its shutdown at the latest.
    assert!(a.stop().success());
    crate::harness::until(
        std::time::Duration::from_secs(5),
        "both nodes' counts",
        || {
            let r = get_json(&b, &format!("/v1/keys/{id}/usage"), &admin).json();
            r["routes"][0]["allowed"] == 12
        },
    );
}

/// The key page's chart, busiest routes and least-privilege panel, and the
/// narrowing roll from it, as a browser without script sees them.
#[test]
fn the_console_charts_a_keys_use_and_replaces_it_with_a_narrower_key() {
    use crate::console::{field, first_start, owner_visitor, text};
    let kw = Kw::new();
    let up = Upstream::start();
    let password = first_start(&kw);
    let (id, key) = kw.key(&[
        "--name",
        "broad",
        "--scope",
        "vehicles:write",
        "--scope",
        "damages:read",
    ]);
    let (quiet, _) = kw.key(&["--name", "quiet", "--scope", "vehicles:read"]);
    let server = kw.serve(&[
        "--upstream",
        &upstream_flag(&up),
        "--flush-interval",
        "200ms",
    ]);
    let mut v = owner_visitor(&server, &password);
    for _ in 0..3 {
        assert_eq!(server.get("/vehicles", &key).status, 200);
    }
    assert_eq!(server.get("/inspections", &key).status, 403);
    let path = format!("/console/keys/{id}");
    let mut page = String::new();
    crate::harness::until(std::time::Duration::from_secs(5), "the chart", || {
        page = text(&v.get(&path));
        page.contains(": 3 allowed, 1 denied</title>")
    });
    // Drawn on the server, one bar a day, nothing the CSP would refuse.
    assert!(page.contains("<svg class=\"chart\""), "{page}");
    assert!(page.contains("3 allowed, 1 denied</title>"));
    assert_eq!(page.matches("<g class=\"day\">").count(), 30);
    assert!(!page.contains("style="), "no inline style: {page}");
    assert!(!page.contains("<script>"), "no inline script");
    let vehicles = page.find("<code>GET /vehicles</code>").unwrap();
    let inspections = page.find("<code>GET /inspections</code>").unwrap();
    assert!(vehicles < inspections, "busiest first");
    // The panel: what went unused, and the narrower key on offer.
    let panel = &page[page.find("id=\"least-privilege\"").unwrap()..];
    assert!(panel.contains("Not used:"), "{panel}");
    for grant in ["damages:read", "vehicles:write"] {
        assert!(panel.contains(grant), "{grant}: {panel}");
    }
    assert!(panel.contains("name=\"scope\" value=\"vehicles:read\""));
    assert!(panel.contains("Replace with a narrower key"));
    let quiet_page = text(&v.get(&format!("/console/keys/{quiet}")));
    assert!(quiet_page.contains("No request used this key in the last 30 days"));
    assert!(quiet_page.contains("No allowed request used this key"));
    // The keys list finds the unused one (a key never used counts from its
    // creation), and says what is wrong with a filter it cannot read.
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let unused = text(&v.get("/console/keys?unused_for=1s"));
    assert!(unused.contains(">quiet</a>"), "{unused}");
    assert!(!text(&v.get("/console/keys?unused_for=30d")).contains(">quiet</a>"));
    let bad = v.get("/console/keys?unused_for=soon");
    assert_eq!(bad.status, 422, "{}", text(&bad));

    // Hostile posts of the form: broader or unknown grants are refused on
    // the page, naming them, and nothing is created.
    let count = || {
        serde_json::from_str::<Value>(&kw.cli_ok(&["keys", "list", "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    let before = count();
    let roll = format!("/console/keys/{id}/roll");
    let mut current = page.clone();
    for (name, grant, named) in [
        ("scope", "damages:write", "damages:write"),
        ("set", "damages:write", "damages:write"),
        ("scope", "vehicles:fly", "vehicles:fly"),
        // A misspelt field would otherwise roll with every grant kept.
        ("scopes", "vehicles:read", "no field `scopes`"),
    ] {
        let r = v.post(
            &roll,
            &[
                ("csrf", &field(&current, "csrf")),
                ("nonce", &field(&current, "nonce")),
                ("grace", "1h"),
                (name, grant),
            ],
        );
        current = text(&r);
        assert_eq!(r.status, 422, "{name}={grant}: {current}");
        assert!(current.contains(named), "{named}: {current}");
    }
    assert_eq!(count(), before, "nothing created");

    // The narrowing roll the panel offers.
    let r = v.post(
        &roll,
        &[
            ("csrf", &field(&current, "csrf")),
            ("nonce", &field(&current, "nonce")),
            ("grace", "1h"),
            ("scope", "vehicles:read"),
        ],
    );
    let created = text(&r);
    assert_eq!(r.status, 201, "{created}");
    assert!(created.contains("Copy the narrower replacement key"));
    let secret = created
        .split("readonly value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    assert_eq!(server.get("/vehicles", &secret).status, 200);
    let write = req("POST", "/api/third-party/v1/vehicles")
        .bearer(&secret)
        .json(&json!({}))
        .send(&server);
    assert_eq!(write.status, 403, "the write scope is gone");
    // The old key works out its grace; its page offers no second roll.
    assert_eq!(server.get("/vehicles", &key).status, 200);
    let old = text(&v.get(&path));
    assert!(old.contains("Replaced by"), "{old}");
    assert!(!old.contains("Replace with a narrower key"));
    assert!(!old.contains("Roll key"));
    assert!(old.contains("Revoke key"));
}

/// Use the catalog's routes do not show is use all the same: the admin API
/// (keyward's own scopes, counted by the scopes each endpoint requires) and
/// a verify by scopes (which keeps every grant), so the suggestion never
/// drops a grant in use. Every refused roll is audited, even one that lost
/// a race; a narrowing roll asks its caller to hold the new grants only.
#[test]
fn the_suggestion_sees_admin_and_verify_use_and_refused_rolls_are_audited() {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (mixed_id, mixed) = kw.key(&[
        "--name",
        "mixed",
        "--scope",
        "vehicles:read",
        "--scope",
        "keyward-api-keys:read",
        "--scope",
        "damages:read",
    ]);
    let (checked_id, checked) = kw.key(&[
        "--name",
        "checked",
        "--scope",
        "vehicles:read",
        "--scope",
        "damages:read",
    ]);
    let (_, verifier) = kw.key(&["--name", "verifier", "--scope", "keyward-api-keys:verify"]);
    let (_, admin) = kw.key(&[
        "--name",
        "admin",
        "--scope",
        "keyward-api-keys:write",
        "--scope",
        "vehicles:read",
    ]);
    let server = kw.serve(&[
        "--upstream",
        &upstream_flag(&up),
        "--flush-interval",
        "200ms",
    ]);
    assert_eq!(server.get("/vehicles", &mixed).status, 200);
    for _ in 0..3 {
        assert_eq!(get_json(&server, "/v1/keys", &mixed).status, 200);
    }
    let v = req("POST", "/v1/verify")
        .bearer(&verifier)
        .json(&json!({"key": checked, "scopes": ["damages:read"]}))
        .send(&server)
        .json();
    assert_eq!(v["allowed"], true, "{v}");

    let mut s = Value::Null;
    crate::harness::until(std::time::Duration::from_secs(5), "usage flushed", || {
        s = get_json(&server, &format!("/v1/keys/{mixed_id}/suggestion"), &admin).json();
        s["requests"] == 4
    });
    assert_eq!(s["verdict"], "narrow", "{s}");
    let mut kept = strings(&s["suggested"]["scopes"]);
    kept.sort();
    assert_eq!(kept, ["keyward-api-keys:read", "vehicles:read"], "{s}");
    assert_eq!(strings(&s["unused_grants"]), ["damages:read"]);
    let report = get_json(&server, &format!("/v1/keys/{mixed_id}/usage"), &admin).json();
    let own = report["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "keyward:keyward-api-keys:read")
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(own["allowed"], 3);
    assert_eq!(strings(&own["required"]), ["keyward-api-keys:read"]);

    // Verified by scopes only: what it needed is not known, so every grant
    // stays, and it counts as used.
    let s = get_json(
        &server,
        &format!("/v1/keys/{checked_id}/suggestion"),
        &admin,
    )
    .json();
    assert_eq!(s["verdict"], "already_minimal", "{s}");
    let shown: Value =
        serde_json::from_str(&kw.cli_ok(&["keys", "show", &checked_id, "--json"])).unwrap();
    assert!(!shown["last_used_at"].is_null(), "{shown}");

    // A narrowing roll by a caller holding the new grants, not the old
    // key's: allowed. A grace beyond 30 days: refused.
    let roll = |id: &str, body: &Value| {
        req("POST", &format!("/v1/keys/{id}/roll"))
            .bearer(&admin)
            .json(body)
            .send(&server)
    };
    let long = roll(
        &checked_id,
        &json!({"grace": "31d", "scopes": ["vehicles:read"]}),
    );
    assert_eq!(
        long.error(422, "VALIDATION_FAILED")["details"]["field"],
        "grace"
    );
    let narrowed = roll(&checked_id, &json!({"scopes": ["vehicles:read"]}));
    assert_eq!(
        narrowed.status,
        201,
        "{:?}",
        String::from_utf8_lossy(&narrowed.body)
    );

    // Racing rolls: one wins, and every refused one is in the audit log.
    let (raced, _) = kw.key(&["--name", "raced", "--scope", "vehicles:read"]);
    let refused: Vec<String> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..12)
            .map(|_| s.spawn(|| roll(&raced, &json!({"grace": "1h"}))))
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|r| r.status == 409)
            .map(|r| r.header("x-request-id").unwrap().to_owned())
            .collect()
    });
    assert_eq!(refused.len(), 11);
    let audit = get_json(
        &server,
        "/v1/audit?action=key.roll_refused&limit=500",
        &admin,
    );
    assert_eq!(audit.status, 403, "the admin key lacks keyward-audit:read");
    let log: Value = serde_json::from_str(&kw.cli_ok(&["audit", "verify", "--json"])).unwrap();
    assert!(log["first_broken"].is_null(), "{log}");
    let (_, auditor) = kw.key(&["--name", "auditor", "--scope", "keyward-audit:read"]);
    let records = get_json(
        &server,
        "/v1/audit?action=key.roll_refused&limit=500",
        &auditor,
    )
    .json();
    let ids: Vec<&str> = records["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["request_id"].as_str())
        .collect();
    for id in &refused {
        assert!(ids.contains(&id.as_str()), "{id} not audited: {records}");
    }
}
