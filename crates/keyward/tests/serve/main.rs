//! `keyward serve` over real sockets: a real server process in front of a
//! real upstream, written to by the real CLI on the same SQLite file.

#![allow(
    clippy::disallowed_methods,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test, and deadlines are real time"
)]

mod admin;
mod authorize;
mod browser;
mod console;
mod embedded;
mod harness;
mod hostile;
mod isolation;
mod leaks;
mod least_privilege;
mod limits;
mod policy;
mod proxies;
mod schemathesis;
mod shared_limits;
mod webhooks;

use harness::{Kw, PREFIX, Upstream, raw, req, until};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A key with a valid checksum that no database here holds.
fn foreign_key() -> String {
    let other = Kw::new();
    other.cli_ok(&["migrate"]);
    other
        .key(&["--name", "elsewhere", "--scope", "vehicles:read"])
        .1
}

fn upstream_flag(up: &Upstream) -> String {
    format!("http://{}", up.addr)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn every_row_of_the_spec_table() {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (_, ro) = kw.key(&["--name", "reader", "--preset", "read-only-integration"]);
    let (expiring_id, expiring) = kw.key(&[
        "--name",
        "short",
        "--scope",
        "vehicles:read",
        "--expires-in",
        "2s",
    ]);
    let expiring_created = Instant::now();
    let (revoked_id, revoked) = kw.key(&["--name", "gone", "--scope", "vehicles:read"]);
    kw.cli_ok(&["keys", "revoke", &revoked_id]);
    let server = kw.serve(&["--upstream", &upstream_flag(&up)]);

    // Allowed: forwarded with the path unchanged.
    let seen = server.get("/vehicles/42", &ro).seen();
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["path"], format!("{PREFIX}/vehicles/42"));

    // 401: missing, malformed, unknown, revoked, expired; each with its reason.
    let unauthorized = |r: &harness::Resp, reason: &str| {
        let e = r.error(401, "UNAUTHORIZED");
        assert_eq!(e["details"]["reason"], reason, "{e}");
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer realm="keyward""#)
        );
    };
    unauthorized(
        &req("GET", &format!("{PREFIX}/vehicles")).send(&server),
        "missing",
    );
    unauthorized(
        &req("GET", &format!("{PREFIX}/vehicles"))
            .header("Authorization", "Basic dXNlcjpwYXNz")
            .send(&server),
        "missing",
    );
    unauthorized(&server.get("/vehicles", "insp_live_notakey"), "malformed");
    let mut typo = ro.clone();
    typo.replace_range(12..13, if &ro[12..13] == "a" { "b" } else { "a" });
    unauthorized(&server.get("/vehicles", &typo), "malformed");
    unauthorized(&server.get("/vehicles", &foreign_key()), "unknown");
    unauthorized(&server.get("/vehicles", &revoked), "revoked");
    assert_eq!(
        server.get("/vehicles", &expiring).status,
        200,
        "not expired yet"
    );
    let waited = until(Duration::from_secs(10), "expiry", || {
        server.get("/vehicles", &expiring).status == 401
    });
    assert!(
        expiring_created.elapsed() >= Duration::from_millis(1900),
        "{waited:?}"
    );
    unauthorized(&server.get("/vehicles", &expiring), "expired");
    let _ = expiring_id;

    // 404 after authentication: unknown route, unknown method, outside the prefix.
    server.get("/no-such-thing", &ro).error(404, "NOT_FOUND");
    req("PATCH", &format!("{PREFIX}/vehicles/1"))
        .bearer(&ro)
        .send(&server)
        .error(404, "NOT_FOUND");
    req("GET", "/elsewhere")
        .bearer(&ro)
        .send(&server)
        .error(404, "NOT_FOUND");
    // Authentication comes first: no key on an unknown route is a 401.
    req("GET", &format!("{PREFIX}/no-such-thing"))
        .send(&server)
        .error(401, "UNAUTHORIZED");

    // 403: required = the missing scopes, available = as granted.
    let r = req("POST", &format!("{PREFIX}/inspections"))
        .bearer(&ro)
        .json(&json!({"vehicle": 1}))
        .send(&server);
    let e = r.error(403, "FORBIDDEN");
    assert_eq!(e["message"], "Insufficient permissions");
    assert_eq!(strings(&e["details"]["required"]), ["inspections:write"]);
    let mut available = strings(&e["details"]["available"]);
    available.sort();
    assert_eq!(
        available,
        [
            "damages:read",
            "driver-assignments:read",
            "inspection-templates:read",
            "inspections:read",
            "vehicle-fields:read",
            "vehicle-groups:read",
            "vehicles:read"
        ]
    );
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="keyward", error="insufficient_scope", scope="inspections:write""#)
    );
    // A 403 changes nothing: the key keeps working for what it holds.
    assert_eq!(server.get("/inspections", &ro).status, 200);

    // 400 before anything else, even without a key.
    for path in [
        "/vehicles/../admin",
        "/vehicles/./1",
        "/vehicles//1",
        "/vehicles/1%2Fadmin",
        "/vehicles/%2e%2e",
        "/vehicles/%FF",
        "/vehicles/",
    ] {
        let e = req("GET", &format!("{PREFIX}{path}"))
            .send(&server)
            .error(400, "BAD_REQUEST");
        assert!(
            e["message"].as_str().unwrap().contains("normal form"),
            "{path}: {e}"
        );
    }
}

#[test]
fn identity_headers_are_injected_and_client_headers_stripped() {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (id, key) = kw.key(&["--name", "writer", "--preset", "inspection-submission"]);
    let shown: Value = serde_json::from_str(&kw.cli_ok(&["keys", "show", &id, "--json"])).unwrap();
    let server = kw.serve(&["--upstream", &upstream_flag(&up)]);

    let r = req("POST", &format!("{PREFIX}/inspections?draft=1"))
        .bearer(&key)
        .header("X-Keyward-Key-Id", "key_forged")
        .header("x-keyward-scopes", "everything:write")
        .header("X-Keyward-Anything", "sneaky")
        .header("Connection", "X-Private-Hop")
        .header("X-Private-Hop", "secret")
        .header("Proxy-Authorization", "Basic c2VjcmV0")
        .header("X-Forwarded-For", "10.0.0.1")
        .header("X-Request-Id", "client-chosen-1")
        .header("X-Custom", "kept")
        .json(&json!({"vehicle": 7}))
        .send(&server);
    let seen = r.seen();
    let h = &seen["headers"];
    assert_eq!(seen["path"], format!("{PREFIX}/inspections?draft=1"));
    assert_eq!(seen["body_len"], 13);
    for gone in [
        "authorization",
        "x-keyward-anything",
        "x-private-hop",
        "proxy-authorization",
        "connection",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream: {h}");
    }
    assert_eq!(h["x-keyward-key-id"], json!([id]));
    assert_eq!(h["x-keyward-org-id"], json!([shown["org_id"]]));
    let effective: Vec<String> = strings(&shown["effective_scopes"]);
    assert_eq!(h["x-keyward-scopes"], json!([effective.join(" ")]));
    // keyward's own request id, never the client's, goes upstream and back.
    let made = r.header("x-request-id").unwrap().to_owned();
    assert_ne!(made, "client-chosen-1");
    assert_eq!(h["x-request-id"], json!([made]));
    // The client's own forwarding chain is not believed: the peer is the client.
    assert_eq!(h["x-forwarded-for"], json!(["127.0.0.1"]));
    assert_eq!(h["x-forwarded-proto"], json!(["http"]));
    assert_eq!(h["x-forwarded-host"], json!(["gateway.test"]));
    assert_eq!(h["host"], json!([up.addr.to_string()]));
    assert_eq!(h["x-custom"], json!(["kept"]));
    // The upstream's hop-by-hop headers stay between keyward and the upstream.
    assert_eq!(r.header("x-upstream-private"), None);

    // Without one (or with an unusable one), keyward makes the request id.
    let r = req("GET", &format!("{PREFIX}/vehicles"))
        .bearer(&key)
        .header("X-Request-Id", "has spaces and \"quotes\"")
        .send(&server);
    let made = r.header("x-request-id").unwrap().to_owned();
    assert_ne!(made, "has spaces and \"quotes\"");
    assert_eq!(r.seen()["headers"]["x-request-id"], json!([made]));
}

#[test]
fn cli_changes_reach_the_running_server_within_a_second() {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (a_id, a) = kw.key(&["--name", "a", "--scope", "vehicles:read"]);
    let (b_id, b) = kw.key(&["--name", "b", "--scope", "vehicles:read"]);
    let server = kw.serve(&["--upstream", &upstream_flag(&up)]);
    assert_eq!(server.get("/vehicles", &a).status, 200);

    // Revoked by the CLI: refused within 1 s of the CLI returning.
    kw.cli_ok(&["keys", "revoke", &a_id]);
    let took = until(Duration::from_secs(1), "revocation", || {
        server.get("/vehicles", &a).status == 401
    });
    let e = server.get("/vehicles", &a).error(401, "UNAUTHORIZED");
    assert_eq!(e["details"]["reason"], "revoked");
    eprintln!("revocation enforced after {took:?}");

    // Created by the CLI: accepted at once, not after the next sync.
    let (_, c) = kw.key(&["--name", "c", "--scope", "vehicles:read"]);
    assert_eq!(server.get("/vehicles", &c).status, 200);

    // Rolled with grace: the old key works until the grace ends, then 401 expired.
    let rolled_at = Instant::now();
    let out = kw.cli_ok(&["keys", "roll", &b_id, "--grace", "2s", "--json"]);
    let new_key = serde_json::from_str::<Value>(&out).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(server.get("/vehicles", &new_key).status, 200);
    assert_eq!(
        server.get("/vehicles", &b).status,
        200,
        "within the grace period"
    );
    until(Duration::from_secs(6), "end of grace", || {
        server.get("/vehicles", &b).status == 401
    });
    assert!(rolled_at.elapsed() >= Duration::from_millis(1900));
    let e = server.get("/vehicles", &b).error(401, "UNAUTHORIZED");
    assert_eq!(e["details"]["reason"], "expired");
    assert_eq!(server.get("/vehicles", &new_key).status, 200);
}

/// Gateway audit rows: actor, method, path, status, details, client.
type AuditRow = (String, String, String, i64, String, Option<String>);

fn audit_rows(kw: &Kw) -> Vec<AuditRow> {
    harness::sqlite_rows(
        kw,
        "SELECT actor, method, path, status, details, client FROM audit_log \
         WHERE action = 'gateway.request' ORDER BY seq",
    )
}

/// `gateway.unauthenticated` records: (status, count).
fn unauthenticated_counts(kw: &Kw) -> Vec<(i64, u64)> {
    let rows: Vec<(i64, String)> = harness::sqlite_rows(
        kw,
        "SELECT status, details FROM audit_log WHERE action = 'gateway.unauthenticated' ORDER BY seq",
    );
    rows.into_iter()
        .map(|(status, d)| {
            let d: Value = serde_json::from_str(&d).unwrap();
            (status, d["count"].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn writes_and_403s_are_audited_before_the_response_and_the_chain_verifies() {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (rw_id, rw) = kw.key(&["--name", "rw", "--preset", "inspection-submission"]);
    let (ro_id, ro) = kw.key(&["--name", "ro", "--scope", "vehicles:read"]);
    let mut server = kw.serve(&[
        "--upstream",
        &upstream_flag(&up),
        "--flush-interval",
        "100ms",
    ]);
    let post = |key: &str, path: &str| {
        req("POST", &format!("{PREFIX}{path}"))
            .bearer(key)
            .json(&json!({"n": 1}))
            .send(&server)
    };
    assert_eq!(post(&rw, "/inspections").status, 200);
    assert_eq!(post(&ro, "/inspections").status, 403);
    assert_eq!(
        server.get("/inspections", &ro).status,
        403,
        "a GET 403 is audited too"
    );
    assert_eq!(
        req("DELETE", &format!("{PREFIX}/nowhere"))
            .bearer(&rw)
            .send(&server)
            .status,
        404
    );
    assert_eq!(
        req("POST", &format!("{PREFIX}/inspections"))
            .send(&server)
            .status,
        401
    );
    assert_eq!(
        server.get("/vehicles", &ro).status,
        200,
        "an allowed read is not audited"
    );
    // Many concurrent writers share transactions; every one is recorded.
    std::thread::scope(|s| {
        for _ in 0..24 {
            s.spawn(|| assert_eq!(post(&rw, "/inspections").status, 200));
        }
    });
    let rows = audit_rows(&kw);
    // The anonymous 401 is counted per client and minute, not chained
    // (below, after shutdown).
    assert_eq!(rows.len(), 4 + 24, "{rows:#?}");
    let rw_actor = format!("key:{rw_id}");
    let ro_actor = format!("key:{ro_id}");
    let path = format!("{PREFIX}/inspections");
    assert_eq!(rows[0].0, rw_actor);
    assert_eq!(
        (rows[0].1.as_str(), rows[0].2.as_str(), rows[0].3),
        ("POST", path.as_str(), 200)
    );
    assert_eq!((rows[1].0.as_str(), rows[1].3), (ro_actor.as_str(), 403));
    assert!(rows[1].4.contains("missing_scopes"), "{}", rows[1].4);
    assert_eq!((rows[2].1.as_str(), rows[2].3), ("GET", 403));
    assert_eq!((rows[3].1.as_str(), rows[3].3), ("DELETE", 404));
    assert!(rows[4..].iter().all(|r| r.0 == rw_actor && r.3 == 200));
    assert!(
        rows.iter().all(|r| r.5.as_deref() == Some("127.0.0.1")),
        "every record names the client's address: {rows:#?}"
    );

    // Last use is flushed in batches.
    until(Duration::from_secs(5), "last_used_at flushed", || {
        let shown: Value =
            serde_json::from_str(&kw.cli_ok(&["keys", "show", &ro_id, "--json"])).unwrap();
        !shown["last_used_at"].is_null()
    });
    assert!(server.stop().success());
    assert_eq!(unauthenticated_counts(&kw), vec![(401, 1)]);
    let out = kw.cli_ok(&["audit", "verify", "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert!(report["first_broken"].is_null(), "{report}");
    assert!(report["records"].as_u64().unwrap() >= 29 + 2);
}

#[test]
fn bad_input_gets_the_error_shape_and_never_a_5xx() {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (_, key) = kw.key(&["--name", "w", "--preset", "inspection-submission"]);
    let server = kw.serve(&[
        "--upstream",
        &upstream_flag(&up),
        "--max-body-bytes",
        "1024",
    ]);
    let path = format!("{PREFIX}/inspections");

    let e = req("GET", &path)
        .bearer(&key)
        .header("X-Big", &"a".repeat(20_000))
        .send(&server)
        .error(431, "REQUEST_HEADER_FIELDS_TOO_LARGE");
    assert_eq!(e["details"]["limit_bytes"], 16_384);

    // Too large by Content-Length: refused before forwarding.
    let e = req("POST", &path)
        .bearer(&key)
        .body(&[b'x'; 2000])
        .send(&server)
        .error(413, "PAYLOAD_TOO_LARGE");
    assert_eq!(e["details"]["limit_bytes"], 1024);
    // Too large while streaming (chunked, no length): refused as well.
    let mut chunked = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..4 {
        chunked.extend_from_slice(format!("{:x}\r\n{}\r\n", 600, "y".repeat(600)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    raw(server.addr, &chunked).error(413, "PAYLOAD_TOO_LARGE");
    // A body within the limit streams through.
    assert_eq!(
        req("POST", &path)
            .bearer(&key)
            .body(&[b'x'; 1000])
            .send(&server)
            .seen()["body_len"],
        1000
    );

    let malformed = |r: harness::Resp| {
        assert_eq!(
            r.error(401, "UNAUTHORIZED")["details"]["reason"],
            "malformed"
        );
    };
    malformed(
        req("GET", &path)
            .header("Authorization", &format!("Bearer {key} extra"))
            .send(&server),
    );
    malformed(
        req("GET", &path)
            .header("Authorization", &format!("Bearer  {key}"))
            .send(&server),
    );
    malformed(req("GET", &path).bearer(&key).bearer(&key).send(&server));
    malformed(req("GET", &path).bearer(&"k".repeat(600)).send(&server));
    let e = server
        .get("/inspections", &foreign_key())
        .error(401, "UNAUTHORIZED");
    assert_eq!(e["details"]["reason"], "unknown");

    // Percent-escapes that decode to invalid UTF-8: the SPEC shape.
    req("GET", &format!("{PREFIX}/vehicles/%C3%28"))
        .bearer(&key)
        .send(&server)
        .error(400, "BAD_REQUEST");
    // Raw non-ASCII bytes are not HTTP: the parser refuses them with a bare 400.
    let mut bytes = format!("GET {PREFIX}/vehicles/").into_bytes();
    bytes.extend_from_slice(b"\xff\xfe HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(raw(server.addr, &bytes).status, 400);

    // keyward's own namespace answers in the same shape.
    req("GET", "/v1/no-such-endpoint")
        .send(&server)
        .error(404, "NOT_FOUND");
    let r = req("GET", "/v1/verify").send(&server);
    r.error(405, "METHOD_NOT_ALLOWED");
    assert_eq!(r.header("allow"), Some("POST"));
    assert!(!server.log().contains(&key), "the full key reached the log");
}

#[test]
fn upstream_failures_are_502_and_504_never_a_hang() {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (_, key) = kw.key(&["--name", "r", "--scope", "vehicles:read"]);

    // Nothing listens on a port we just released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down = kw.serve(&["--upstream", &format!("http://{closed}")]);
    let e = down.get("/vehicles", &key).error(502, "BAD_GATEWAY");
    assert!(!e["message"].as_str().unwrap().contains(&key));
    drop(down);

    let slow = kw.serve(&[
        "--upstream",
        &upstream_flag(&up),
        "--upstream-timeout",
        "1s",
    ]);
    let started = Instant::now();
    req("GET", &format!("{PREFIX}/vehicles"))
        .bearer(&key)
        .header("X-Test-Delay-Ms", "4000")
        .send(&slow)
        .error(504, "GATEWAY_TIMEOUT");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The pool recovers: the next request is served normally.
    assert_eq!(slow.get("/vehicles", &key).status, 200);
    drop(slow);

    let none = kw.serve(&[]);
    none.get("/vehicles", &key)
        .error(502, "UPSTREAM_NOT_CONFIGURED");
    // Refusals do not depend on an upstream.
    none.get("/inspections", &key).error(403, "FORBIDDEN");
}

#[test]
fn verify_whoami_healthz_and_metrics() {
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    let (_, verifier) = kw.key(&["--name", "verifier", "--scope", "keyward-api-keys:verify"]);
    let (ro_id, ro) = kw.key(&["--name", "reader", "--preset", "read-only-integration"]);
    let (gone_id, gone) = kw.key(&["--name", "gone", "--scope", "vehicles:read"]);
    kw.cli_ok(&["keys", "revoke", &gone_id]);
    let other_org = {
        kw.cli_ok(&["orgs", "create", "Other Co"]);
        kw.key(&[
            "--org",
            "other-co",
            "--name",
            "theirs",
            "--scope",
            "vehicles:read",
        ])
        .1
    };
    let server = kw.serve(&[]);
    let verify = |body: Value| {
        req("POST", "/v1/verify")
            .bearer(&verifier)
            .json(&body)
            .send(&server)
    };

    let a = verify(json!({"key": ro, "method": "GET", "path": "/vehicles"})).json();
    assert_eq!(a["valid"], true);
    assert_eq!(a["allowed"], true);
    assert_eq!(a["key_id"], ro_id);
    assert_eq!(a["reason"], "allowed");
    assert_eq!(a["required"], json!(["vehicles:read"]));
    assert!(strings(&a["scopes"]).contains(&"vehicles:read".to_owned()));
    let with_prefix =
        verify(json!({"key": ro, "method": "GET", "path": format!("{PREFIX}/vehicles/9")})).json();
    assert_eq!(with_prefix["allowed"], true);
    // Methods are decided as sent, as the gateway decides them: `get` is no
    // route there, so it is not allowed here either.
    let lower = verify(json!({"key": ro, "method": "get", "path": "/vehicles/9"})).json();
    assert_eq!(
        (lower["allowed"].clone(), lower["reason"].clone()),
        (json!(false), json!("no_route"))
    );
    // JSON escapes in the strings mean the same strings (they are read
    // without copying only when there are none).
    let escaped = format!(
        r#"{{"key":"{}","method":"G\u0045T","path":"\/vehicles\/9"}}"#,
        ro.replace('_', "\\u005f")
    );
    let a = req("POST", "/v1/verify")
        .bearer(&verifier)
        .header("Content-Type", "application/json")
        .body(escaped.as_bytes())
        .send(&server)
        .json();
    assert_eq!(
        (a["allowed"].clone(), a["key_id"].clone()),
        (json!(true), json!(ro_id)),
        "{a}"
    );
    let denied = verify(json!({"key": ro, "method": "POST", "path": "/inspections"})).json();
    assert_eq!(
        (denied["valid"].clone(), denied["allowed"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(denied["missing"], json!(["inspections:write"]));
    assert_eq!(denied["reason"], "missing_scopes");
    let by_scope = verify(json!({"key": ro, "scopes": ["vehicles:read", "damages:read"]})).json();
    assert_eq!(by_scope["allowed"], true);
    for (key, reason) in [
        ("not-a-key".to_owned(), "malformed"),
        (foreign_key(), "unknown"),
        (gone.clone(), "revoked"),
        (other_org.clone(), "unknown"),
    ] {
        let a = verify(json!({"key": key, "scopes": ["vehicles:read"]})).json();
        assert_eq!(a["valid"], false, "{reason}: {a}");
        assert_eq!(a["allowed"], false);
        assert_eq!(a["reason"], reason);
        assert!(a["key_id"].is_null() && a["org_id"].is_null(), "{a}");
    }
    // Bad bodies name what is wrong.
    let e = req("POST", "/v1/verify")
        .bearer(&verifier)
        .header("Content-Type", "application/json")
        .body(b"{not json")
        .send(&server)
        .error(400, "BAD_REQUEST");
    assert!(e["message"].as_str().unwrap().contains("Invalid JSON"));
    let e = verify(json!({"key": ro, "scopes": ["vehicles:read"], "scope": "x"}))
        .error(422, "VALIDATION_FAILED");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `scope`"),
        "{e}"
    );
    let e = verify(json!({"key": 7, "scopes": []})).error(422, "VALIDATION_FAILED");
    assert!(
        e["message"].as_str().unwrap().contains("invalid type"),
        "{e}"
    );
    // An array is not an object, whatever serde would make of it by position.
    for body in [
        json!([ro, "GET", "/vehicles"]),
        json!("x"),
        json!(1),
        json!(null),
    ] {
        let e = verify(body.clone()).error(422, "VALIDATION_FAILED");
        assert_eq!(e["details"]["field"], "body", "{body}");
    }
    let e = verify(json!({"key": ro})).error(422, "VALIDATION_FAILED");
    assert_eq!(e["details"]["field"], "method");
    let e = verify(json!({"key": ro, "scopes": ["vehicles:fly"]})).error(422, "VALIDATION_FAILED");
    assert_eq!(e["details"]["field"], "scopes");
    assert!(
        e["message"].as_str().unwrap().contains("vehicles:fly"),
        "{e}"
    );
    let e = verify(json!({"key": ro, "method": "GET", "path": "/a/../b"}))
        .error(422, "VALIDATION_FAILED");
    assert_eq!(e["details"]["field"], "path");
    let big = json!({"key": "x".repeat(70_000), "scopes": []});
    verify(big).error(413, "PAYLOAD_TOO_LARGE");
    // The caller needs keyward-api-keys:verify.
    let e = req("POST", "/v1/verify")
        .bearer(&ro)
        .json(&json!({"key": ro, "scopes": ["vehicles:read"]}))
        .send(&server)
        .error(403, "FORBIDDEN");
    assert_eq!(e["details"]["required"], json!(["keyward-api-keys:verify"]));
    req("POST", "/v1/verify")
        .json(&json!({"key": ro, "scopes": ["vehicles:read"]}))
        .send(&server)
        .error(401, "UNAUTHORIZED");

    // whoami: any valid key.
    let me = req("GET", "/v1/whoami").bearer(&ro).send(&server).json();
    assert_eq!(me["id"], ro_id);
    assert_eq!(me["name"], "reader");
    assert!(strings(&me["effective_scopes"]).contains(&"vehicles:read".to_owned()));
    assert!(me.get("key").is_none() && !me.to_string().contains(&ro));
    req("GET", "/v1/whoami")
        .bearer(&gone)
        .send(&server)
        .error(401, "UNAUTHORIZED");

    let health = req("GET", "/healthz").send(&server);
    assert_eq!(health.status, 200);
    let h = health.json();
    assert_eq!(
        (h["status"].clone(), h["database"].clone()),
        (json!("ok"), json!("reachable"))
    );
    assert_eq!(h["snapshot"]["keys"], 4);
    assert!(h["snapshot"]["age_ms"].as_i64().unwrap() < 5_000);
    // The built-in catalog, unpublished: its name and the digest of its
    // text, which is what tells two nodes' catalogs apart.
    let fleet = keyward_core::Catalog::fleet().unwrap();
    assert_eq!(
        h["catalog"],
        json!({"name": "fleet", "version": null, "sha256": fleet.sha256_hex()}),
        "{h}"
    );

    let metrics = req("GET", "/metrics").send(&server);
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(metrics.body).unwrap();
    for needle in [
        "keyward_decision_seconds_bucket",
        "keyward_requests_total{status=\"403\",code=\"FORBIDDEN\"} 1",
        "keyward_snapshot_keys",
        "keyward_snapshot_sync_lag_seconds",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    for secret in [&verifier, &ro, &gone] {
        assert!(!text.contains(secret.as_str()));
        assert!(
            !server.log().contains(secret.as_str()),
            "a key reached the log"
        );
    }
}

#[test]
fn shutdown_drains_in_flight_requests_and_keeps_their_audit() {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (_, key) = kw.key(&["--name", "w", "--preset", "inspection-submission"]);
    let mut server = kw.serve(&["--upstream", &upstream_flag(&up)]);
    let request = req("POST", &format!("{PREFIX}/inspections"))
        .bearer(&key)
        .header("X-Test-Delay-Ms", "1500")
        .json(&json!({"slow": true}));
    let addr = server.addr;
    let in_flight = std::thread::spawn(move || raw(addr, &request.bytes()));
    // In flight: the upstream has it (and answers 1.5 s later).
    until(
        Duration::from_secs(10),
        "the request at the upstream",
        || up.hits() == 1,
    );
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        in_flight.join().unwrap().status,
        200,
        "the in-flight request completed"
    );
    let rows = audit_rows(&kw);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].3, 200);
    // And the port is closed.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn two_nodes_on_one_postgres_database() {
    let Some(kw) = Kw::postgres("two_nodes") else {
        return;
    };
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (a_id, a) = kw.key(&["--name", "a", "--scope", "vehicles:read"]);
    let (_, w) = kw.key(&["--name", "w", "--preset", "inspection-submission"]);
    let (_, admin) = kw.key(&["--name", "admin", "--scope", "keyward-api-keys:write"]);
    let mut node_a = kw.serve(&["--upstream", &upstream_flag(&up)]);
    let mut node_b = kw.serve(&["--upstream", &upstream_flag(&up)]);
    for node in [&node_a, &node_b] {
        assert_eq!(node.get("/vehicles", &a).status, 200);
    }
    // Created elsewhere: accepted by both at once.
    let (c_id, c) = kw.key(&["--name", "c", "--scope", "vehicles:read"]);
    for node in [&node_a, &node_b] {
        assert_eq!(node.get("/vehicles", &c).status, 200);
    }
    // Revoked through node A's API: refused by both within 1 s.
    let r = req("POST", &format!("/v1/keys/{a_id}/revoke"))
        .bearer(&admin)
        .send(&node_a);
    assert_eq!(r.json()["status"], "revoked", "{:?}", r.json());
    for node in [&node_a, &node_b] {
        let took = until(Duration::from_secs(1), "revocation on every node", || {
            node.get("/vehicles", &a).status == 401
        });
        eprintln!("revocation enforced after {took:?}");
    }
    // Rolled elsewhere: the new key works on both at once, the old one until
    // its grace ends, then on neither.
    let out = kw.cli_ok(&["keys", "roll", &c_id, "--grace", "1s", "--json"]);
    let rolled = serde_json::from_str::<Value>(&out).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    for node in [&node_a, &node_b] {
        assert_eq!(node.get("/vehicles", &rolled).status, 200);
        until(Duration::from_secs(3), "end of grace on every node", || {
            node.get("/vehicles", &c).status == 401
        });
    }
    // Concurrent audited writes through both nodes: one unbroken chain.
    std::thread::scope(|s| {
        for i in 0..30 {
            let node = if i % 2 == 0 { &node_a } else { &node_b };
            let w = &w;
            s.spawn(move || {
                let r = req("POST", &format!("{PREFIX}/inspections"))
                    .bearer(w)
                    .json(&json!({"n": i}))
                    .send(node);
                assert_eq!(r.status, 200);
            });
        }
    });
    assert!(node_a.stop().success());
    assert!(node_b.stop().success());
    let report: Value = serde_json::from_str(&kw.cli_ok(&["audit", "verify", "--json"])).unwrap();
    assert!(report["first_broken"].is_null(), "{report}");
    // org.created, its owner, 4 keys created, 1 revoked, 1 rolled, 30 requests.
    assert_eq!(report["records"], 38, "{report}");
}

#[test]
fn nodes_recover_when_postgres_drops_their_connections() {
    let Some(kw) = Kw::postgres("reconnect") else {
        return;
    };
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (a_id, a) = kw.key(&["--name", "a", "--scope", "vehicles:read"]);
    let (_, w) = kw.key(&["--name", "w", "--preset", "inspection-submission"]);
    let mut node = kw.serve(&["--upstream", &upstream_flag(&up)]);
    let post = |i: usize| {
        req("POST", &format!("{PREFIX}/inspections"))
            .bearer(&w)
            .json(&json!({"n": i}))
            .send(&node)
            .status
    };
    let mut acknowledged = 0;
    for i in 0..5 {
        assert_eq!(post(i), 200);
        acknowledged += 1;
    }
    // Every connection keyward holds is killed by the server.
    let db = kw.url().rsplit_once('/').unwrap().1.to_owned();
    kw.postgres
        .as_ref()
        .unwrap()
        .admin(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"
        ));
    // Writes go on (a request may be refused while the pool reconnects, but
    // none is acknowledged without its audit record).
    for i in 5..25 {
        match post(i) {
            200 => acknowledged += 1,
            503 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        acknowledged >= 20,
        "the node did not recover: {acknowledged}"
    );
    // The change log is followed again: a revocation is still seen within 1 s.
    kw.cli_ok(&["keys", "revoke", &a_id]);
    until(Duration::from_secs(1), "revocation after reconnect", || {
        node.get("/vehicles", &a).status == 401
    });
    assert!(node.stop().success());
    let report: Value = serde_json::from_str(&kw.cli_ok(&["audit", "verify", "--json"])).unwrap();
    assert!(report["first_broken"].is_null(), "{report}");
    // org.created, its owner, 2 keys, 1 revocation, and every acknowledged
    // request.
    assert_eq!(report["records"], 5 + acknowledged, "{report}");
}

#[test]
fn a_node_that_loses_its_database_fails_closed() {
    let Some(kw) = Kw::postgres("fail_closed") else {
        return;
    };
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (_, a) = kw.key(&["--name", "a", "--scope", "vehicles:read"]);
    let node = kw.serve(&["--upstream", &upstream_flag(&up), "--max-staleness", "1s"]);
    assert_eq!(node.get("/vehicles", &a).status, 200);
    // The database goes away for good.
    let pg = kw.postgres.as_ref().unwrap();
    pg.admin(&format!("DROP DATABASE {} WITH (FORCE)", pg.name));
    until(
        Duration::from_secs(5),
        "503 once the snapshot is stale",
        || node.get("/vehicles", &a).status == 503,
    );
    let e = node.get("/vehicles", &a).error(503, "UNAVAILABLE");
    assert!(
        e["details"]["snapshot_age_ms"].as_i64().unwrap() > 1_000,
        "{e}"
    );
    let health = req("GET", "/healthz").send(&node);
    assert_eq!(health.status, 503);
    let h = health.json();
    assert_eq!(h["status"], "stale");
    assert_eq!(h["database"], "unreachable");
}

#[test]
fn postgres_notifications_carry_changes_between_polls() {
    let Some(kw) = Kw::postgres("notify") else {
        return;
    };
    kw.cli_ok(&["migrate"]);
    let (a_id, a) = kw.key(&["--name", "a", "--scope", "vehicles:read"]);
    // Polling alone would take up to a minute here.
    let node = kw.serve(&["--sync-interval", "60s", "--max-staleness", "120s"]);
    let accepted = |key: &str| node.get("/vehicles", key).status == 502;
    assert!(accepted(&a));
    kw.cli_ok(&["keys", "revoke", &a_id]);
    let took = until(Duration::from_secs(5), "revocation by notification", || {
        !accepted(&a)
    });
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(
        node.get("/vehicles", &a).error(401, "UNAUTHORIZED")["details"]["reason"],
        "revoked"
    );
}

#[test]
fn keys_are_revoked_through_the_api_and_never_edited() {
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    let (_, admin) = kw.key(&["--name", "admin", "--scope", "keyward-api-keys:write"]);
    let (_, reader) = kw.key(&["--name", "reader", "--scope", "keyward-api-keys:read"]);
    let (target_id, target) = kw.key(&["--name", "target", "--scope", "vehicles:read"]);
    kw.cli_ok(&["orgs", "create", "Other Co"]);
    let (theirs_id, _) = kw.key(&[
        "--org",
        "other-co",
        "--name",
        "theirs",
        "--scope",
        "vehicles:read",
    ]);
    let server = kw.serve(&[]);
    let revoke = |id: &str, key: &str| {
        req("POST", &format!("/v1/keys/{id}/revoke"))
            .bearer(key)
            .send(&server)
    };

    // Without keyward-api-keys:write: 403, audited, nothing revoked.
    let e = revoke(&target_id, &reader).error(403, "FORBIDDEN");
    assert_eq!(e["details"]["required"], json!(["keyward-api-keys:write"]));
    assert_eq!(
        server.get("/vehicles", &target).status,
        502,
        "still accepted"
    );
    revoke(&target_id, "not-a-key").error(401, "UNAUTHORIZED");
    // Another organization's key does not exist here.
    revoke(&theirs_id, &admin).error(404, "NOT_FOUND");
    revoke("key_doesnotexist", &admin).error(404, "NOT_FOUND");

    let r = revoke(&target_id, &admin);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(
        (v["id"].clone(), v["status"].clone()),
        (json!(target_id), json!("revoked"))
    );
    assert_eq!(v["already_revoked"], false);
    assert!(!v.to_string().contains(&target));
    // Enforced at once on this node (it wrote the change), and idempotent.
    until(Duration::from_secs(1), "revocation", || {
        server.get("/vehicles", &target).status == 401
    });
    assert_eq!(revoke(&target_id, &admin).json()["already_revoked"], true);

    // Keys are immutable through every editing verb.
    for method in ["PUT", "PATCH"] {
        let r = req(method, &format!("/v1/keys/{target_id}"))
            .bearer(&admin)
            .json(&json!({"name": "renamed", "scopes": ["vehicles:write"]}))
            .send(&server);
        let e = r.error(405, "KEY_IMMUTABLE");
        assert!(
            e["message"].as_str().unwrap().contains("create a new key"),
            "{e}"
        );
    }
    let r = req("GET", &format!("/v1/keys/{target_id}/revoke"))
        .bearer(&admin)
        .send(&server);
    r.error(405, "METHOD_NOT_ALLOWED");
    assert_eq!(r.header("allow"), Some("POST"));

    // The 403 and the revocation are in the audit log (the anonymous 401
    // is counted per client and minute, written when its minute ends).
    let refused = audit_rows(&kw);
    assert_eq!(refused.len(), 1, "{refused:?}");
    let path = format!("/v1/keys/{target_id}/revoke");
    assert_eq!((refused[0].2.as_str(), refused[0].3), (path.as_str(), 403));
    let out = kw.cli_ok(&["keys", "show", &target_id, "--json"]);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["status"], "revoked");
    let report: Value = serde_json::from_str(&kw.cli_ok(&["audit", "verify", "--json"])).unwrap();
    assert!(report["first_broken"].is_null(), "{report}");
}
