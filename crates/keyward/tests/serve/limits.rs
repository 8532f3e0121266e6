//! Limits on a key (SPEC §8) over real sockets, on one node: bursts, two
//! limits, allowed networks, verify agreeing with the gateway.

use crate::harness::{Kw, Resp, Server, Upstream, req};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Sleeps until just after the next whole second, so a burst of a few
/// requests falls inside one one-second window.
fn start_of_a_second() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_millis();
    std::thread::sleep(Duration::from_millis(u64::from(1_000 - now) + 20));
}

fn statuses(server: &Server, key: &str, n: usize) -> Vec<Resp> {
    (0..n).map(|_| server.get("/vehicles", key)).collect()
}

#[test]
fn a_burst_passes_then_429_with_its_headers_then_the_next_window_admits() {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (id, key) = kw.key(&[
        "--name",
        "limited",
        "--scope",
        "vehicles:read",
        "--limit",
        "burst=3/1s",
    ]);
    let shown = kw.cli_ok(&["keys", "show", &id]);
    assert!(shown.contains("burst=3/1s"), "{shown}");
    let server = kw.serve(&["--upstream", &crate::upstream_flag(&up)]);
    start_of_a_second();
    let rs = statuses(&server, &key, 4);
    for (i, r) in rs.iter().take(3).enumerate() {
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.header("ratelimit-policy"), Some("\"burst\";q=3;w=1"));
        assert_eq!(
            r.header("ratelimit"),
            Some(format!("\"burst\";r={};t=1", 2 - i).as_str())
        );
    }
    let e = rs[3].error(429, "RATE_LIMITED");
    assert_eq!(e["details"]["limit"], "burst");
    assert_eq!(e["details"]["retry_after"], 1);
    assert_eq!(rs[3].header("retry-after"), Some("1"));
    assert_eq!(rs[3].header("ratelimit"), Some("\"burst\";r=0;t=1"));
    assert_eq!(
        up.hits(),
        3,
        "the refused request never reached the upstream"
    );
    // The next window admits again.
    start_of_a_second();
    assert_eq!(server.get("/vehicles", &key).status, 200);
    // A key without limits carries no such headers.
    let (_, free) = kw.key(&["--name", "free", "--scope", "vehicles:read"]);
    let r = server.get("/vehicles", &free);
    assert_eq!(r.status, 200);
    assert!(r.header("ratelimit").is_none());
}

#[test]
fn the_tighter_of_two_limits_refuses() {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (_, key) = kw.key(&[
        "--name",
        "two",
        "--scope",
        "vehicles:read",
        "--limit",
        "hourly=3/1h",
        "--limit",
        "second=2/1s",
    ]);
    let server = kw.serve(&["--upstream", &crate::upstream_flag(&up)]);
    start_of_a_second();
    let rs = statuses(&server, &key, 3);
    assert_eq!((rs[0].status, rs[1].status), (200, 200));
    // The tightest limit is the one shown while admitted.
    assert_eq!(rs[1].header("ratelimit"), Some("\"second\";r=0;t=1"));
    assert_eq!(
        rs[2].error(429, "RATE_LIMITED")["details"]["limit"],
        "second"
    );
    start_of_a_second();
    let rs = statuses(&server, &key, 2);
    assert_eq!(rs[0].status, 200, "the refused request was not counted");
    assert!(
        rs[0]
            .header("ratelimit")
            .unwrap()
            .starts_with("\"hourly\";r=0;"),
        "{:?}",
        rs[0].header("ratelimit")
    );
    let e = rs[1].error(429, "RATE_LIMITED");
    assert_eq!(e["details"]["limit"], "hourly");
    assert!(e["details"]["retry_after"].as_i64().unwrap() > 1);
}

#[test]
fn allowed_networks_are_checked_after_authentication_and_audited() {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (_, admin) = kw.key(&[
        "--name",
        "auditor",
        "--scope",
        "keyward-audit:read",
        "--scope",
        "keyward-api-keys:verify",
    ]);
    let (_, here) = kw.key(&[
        "--name",
        "here",
        "--scope",
        "vehicles:read",
        "--allow-cidr",
        "10.0.0.0/8",
        "--allow-cidr",
        "127.0.0.0/8",
    ]);
    let (_, elsewhere) = kw.key(&[
        "--name",
        "elsewhere",
        "--scope",
        "vehicles:read",
        "--allow-cidr",
        "203.0.113.0/24",
        "--allow-cidr",
        "2001:db8::/32",
    ]);
    let server = kw.serve(&["--upstream", &crate::upstream_flag(&up)]);
    assert_eq!(server.get("/vehicles", &here).status, 200);
    // keyward's own endpoints hold a key to its networks too.
    let (_, remote_admin) = kw.key(&[
        "--name",
        "remote admin",
        "--scope",
        "keyward-api-keys:read",
        "--scope",
        "keyward-api-keys:write",
        "--allow-cidr",
        "203.0.113.0/24",
    ]);
    for (method, path) in [
        ("GET", "/v1/keys"),
        ("GET", "/v1/whoami"),
        ("POST", "/v1/keys"),
    ] {
        req(method, path)
            .bearer(&remote_admin)
            .json(&json!({"name": "minted", "scopes": ["vehicles:read"]}))
            .send(&server)
            .error(403, "IP_NOT_ALLOWED");
    }
    let e = server
        .get("/vehicles", &elsewhere)
        .error(403, "IP_NOT_ALLOWED");
    assert!(e["message"].as_str().unwrap().contains("127.0.0.1"), "{e}");
    // Authentication first: a bad key is 401 wherever it comes from.
    server
        .get("/vehicles", &format!("{elsewhere}x"))
        .error(401, "UNAUTHORIZED");
    // Networks before the route: an unknown path is still IP_NOT_ALLOWED.
    server
        .get("/no-such-route", &elsewhere)
        .error(403, "IP_NOT_ALLOWED");
    // A header cannot move the client: without a trusted proxy, the peer is it.
    req("GET", "/api/third-party/v1/vehicles")
        .bearer(&elsewhere)
        .header("X-Forwarded-For", "203.0.113.9")
        .send(&server)
        .error(403, "IP_NOT_ALLOWED");
    assert_eq!(up.hits(), 1);
    let audit = req("GET", "/v1/audit?action=gateway.request")
        .bearer(&admin)
        .send(&server)
        .json();
    let refused: Vec<&Value> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["details"]["reason"] == "ip_not_allowed")
        .collect();
    // The gateway's three, and the admin API's three (a read refused for
    // its network is audited like a 403).
    assert_eq!(refused.len(), 6, "{audit}");
    assert!(refused.iter().all(|r| r["status"] == 403));

    // Verify answers as the gateway decides, from the address it is given.
    let verify = |body: Value| {
        req("POST", "/v1/verify")
            .bearer(&admin)
            .json(&body)
            .send(&server)
    };
    let ask = |client_ip: Option<&str>| {
        let mut body = json!({"key": elsewhere, "method": "GET", "path": "/vehicles"});
        if let Some(ip) = client_ip {
            body["client_ip"] = json!(ip);
        }
        let a = verify(body).json();
        (
            a["valid"].clone(),
            a["allowed"].clone(),
            a["reason"].clone(),
        )
    };
    assert_eq!(
        ask(Some("203.0.113.77")),
        (json!(true), json!(true), json!("allowed"))
    );
    assert_eq!(
        ask(Some("2001:db8::5")),
        (json!(true), json!(true), json!("allowed"))
    );
    assert_eq!(
        ask(Some("::ffff:203.0.113.77")),
        (json!(true), json!(true), json!("allowed"))
    );
    for outside in [Some("198.51.100.1"), Some("2001:db9::1"), None] {
        assert_eq!(
            ask(outside),
            (json!(true), json!(false), json!("ip_not_allowed")),
            "{outside:?}"
        );
    }
    let e = verify(json!({"key": elsewhere, "scopes": ["vehicles:read"], "client_ip": "nope"}))
        .error(422, "VALIDATION_FAILED");
    assert_eq!(e["details"]["field"], "client_ip");
    // A field of the wrong JSON type is named too.
    for (body, field) in [
        (json!({"key": &elsewhere, "client_ip": 1}), "client_ip"),
        (
            json!({"key": &elsewhere, "client_ip": ["1.2.3.4"]}),
            "client_ip",
        ),
        (json!({"key": 5}), "key"),
        (
            json!({"key": &elsewhere, "scopes": "vehicles:read"}),
            "scopes",
        ),
        (json!({"key": &elsewhere, "scopes": [1]}), "scopes"),
        (json!({"key": &elsewhere, "path": {}}), "path"),
    ] {
        let e = verify(body.clone()).error(422, "VALIDATION_FAILED");
        assert_eq!(e["details"]["field"], field, "{body}");
    }
}

#[test]
fn verify_counts_and_refuses_like_the_gateway() {
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    let (_, verifier) = kw.key(&["--name", "v", "--scope", "keyward-api-keys:verify"]);
    let (_, key) = kw.key(&[
        "--name",
        "limited",
        "--scope",
        "vehicles:read",
        "--limit",
        "daily=2/1d",
    ]);
    let server = kw.serve(&[]);
    let ask = || {
        req("POST", "/v1/verify")
            .bearer(&verifier)
            .json(&json!({"key": key, "scopes": ["vehicles:read"]}))
            .send(&server)
            .json()
    };
    assert_eq!(ask()["allowed"], true);
    assert_eq!(ask()["allowed"], true);
    let a = ask();
    assert_eq!(
        (a["valid"].clone(), a["allowed"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(a["reason"], "rate_limited");
    assert!(a["retry_after"].as_i64().unwrap() >= 1, "{a}");
    // The same key through the gateway is out of requests too.
    server.get("/vehicles", &key).error(429, "RATE_LIMITED");
}

#[test]
fn bad_limits_and_networks_are_refused_naming_the_flag() {
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    for (flag, value, needle) in [
        ("--limit", "burst", "NAME=REQUESTS/PER"),
        ("--limit", "Burst=1/1m", "not a limit name"),
        ("--limit", "burst=0/1m", "at least 1"),
        ("--limit", "burst=1/31d", "whole seconds from 1s to 30d"),
        ("--limit", "burst=1/500ms", "whole seconds from 1s to 30d"),
        (
            "--allow-cidr",
            "203.0.113.0/33",
            "prefix length must be 0 to 32",
        ),
        (
            "--allow-cidr",
            "2001:db8::/129",
            "prefix length must be 0 to 128",
        ),
        ("--allow-cidr", "example.com", "not a network"),
    ] {
        let out = kw.cli(&[
            "keys",
            "create",
            "--name",
            "x",
            "--scope",
            "vehicles:read",
            flag,
            value,
        ]);
        assert!(!out.status.success(), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(needle) && err.contains(flag),
            "{flag} {value}: {err}"
        );
    }
    let mut args = vec!["keys", "create", "--name", "x", "--scope", "vehicles:read"];
    let limits: Vec<String> = (0..11).map(|i| format!("l{i}=1/1m")).collect();
    for l in &limits {
        args.extend(["--limit", l]);
    }
    let out = kw.cli(&args);
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 10 limits"));
    let out = kw.cli(&[
        "keys",
        "create",
        "--name",
        "x",
        "--scope",
        "vehicles:read",
        "--limit",
        "a=1/1m",
        "--limit",
        "a=2/1h",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("named twice"));
}

#[test]
fn the_admin_api_sets_limits_and_refuses_bad_ones_by_field() {
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    let (_, admin) = kw.key(&[
        "--name",
        "admin",
        "--scope",
        "keyward-api-keys:write",
        "--scope",
        "keyward-api-keys:read",
        "--scope",
        "vehicles:read",
    ]);
    let server = kw.serve(&[]);
    let create = |body: Value| {
        req("POST", "/v1/keys")
            .bearer(&admin)
            .json(&body)
            .send(&server)
    };
    let r = create(json!({
        "name": "limited",
        "scopes": ["vehicles:read"],
        "limits": [
            {"name": "burst", "requests": 100, "per": "60s"},
            {"name": "monthly", "requests": 100000, "per": "30d"}
        ],
        "allowed_cidrs": ["203.0.113.0/24", "2001:db8::/32", "198.51.100.4"]
    }));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let created = r.json();
    assert_eq!(
        created["limits"],
        json!([
            {"name": "burst", "requests": 100, "per": "1m"},
            {"name": "monthly", "requests": 100000, "per": "30d"}
        ])
    );
    assert_eq!(
        created["allowed_cidrs"],
        json!(["203.0.113.0/24", "2001:db8::/32", "198.51.100.4/32"])
    );
    let id = created["id"].as_str().unwrap();
    let shown = req("GET", &format!("/v1/keys/{id}"))
        .bearer(&admin)
        .send(&server)
        .json();
    assert_eq!(shown["limits"], created["limits"]);
    assert_eq!(shown["allowed_cidrs"], created["allowed_cidrs"]);
    // A roll copies them.
    let rolled = req("POST", &format!("/v1/keys/{id}/roll"))
        .bearer(&admin)
        .json(&json!({}))
        .send(&server)
        .json();
    assert_eq!(rolled["limits"], created["limits"]);
    assert_eq!(rolled["allowed_cidrs"], created["allowed_cidrs"]);

    let limit = |name: &str, requests: Value, per: &str| json!({"name": name, "requests": requests, "per": per});
    let eleven: Vec<Value> = (0..11)
        .map(|i| limit(&format!("l{i}"), json!(1), "1m"))
        .collect();
    for (limits, cidrs, field) in [
        (
            json!([limit("ok", json!(1), "1m"), limit("b", json!(1), "1x")]),
            json!([]),
            "limits[1].per",
        ),
        (
            json!([limit("Bad", json!(1), "1m")]),
            json!([]),
            "limits[0].name",
        ),
        (
            json!([limit("a-b", json!(0), "1m")]),
            json!([]),
            "limits[0].requests",
        ),
        (
            json!([limit("a", json!(1), "1m"), limit("a", json!(2), "1h")]),
            json!([]),
            "limits[1].name",
        ),
        (
            json!([limit("a", json!(1), "31d")]),
            json!([]),
            "limits[0].per",
        ),
        (json!(eleven), json!([]), "limits"),
        (
            json!([]),
            json!(["203.0.113.0/24", "10.0.0.0/33"]),
            "allowed_cidrs[1]",
        ),
        (json!([]), json!(["::/129"]), "allowed_cidrs[0]"),
        // Host bits: one address or the network? Not guessed.
        (json!([]), json!(["203.0.113.7/24"]), "allowed_cidrs[0]"),
        (
            json!([]),
            json!(["::ffff:10.0.0.0/104"]),
            "allowed_cidrs[0]",
        ),
        (
            json!([limit("a", json!(1_000_000_000_000_000_u64), "1m")]),
            json!([]),
            "limits[0].requests",
        ),
        (json!([]), json!(["not-a-network"]), "allowed_cidrs[0]"),
    ] {
        let body = json!({"name": "x", "scopes": ["vehicles:read"], "limits": limits, "allowed_cidrs": cidrs});
        let e = create(body).error(422, "VALIDATION_FAILED");
        assert_eq!(e["details"]["field"], field, "{e}");
    }
    // Wrong JSON types are refused by shape, naming the field.
    for (limits, needle) in [
        (json!([limit("a", json!(-1), "1m")]), "limits[0].requests"),
        (
            json!([{"name": "a", "requests": 1, "per": "1m", "burst": 2}]),
            "burst",
        ),
    ] {
        let body = json!({"name": "x", "scopes": ["vehicles:read"], "limits": limits});
        let e = create(body).error(422, "VALIDATION_FAILED");
        assert!(e.to_string().contains(needle), "{e}");
    }
}

#[test]
fn behind_a_trusted_proxy_the_client_is_the_right_most_untrusted_hop() {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (_, key) = kw.key(&[
        "--name",
        "office",
        "--scope",
        "vehicles:read",
        "--allow-cidr",
        "203.0.113.0/24",
        "--allow-cidr",
        "2001:db8::/32",
    ]);
    let server = kw.serve(&[
        "--upstream",
        &crate::upstream_flag(&up),
        "--trusted-proxy",
        "127.0.0.0/8",
        "--trusted-proxy",
        "10.0.0.5",
    ]);
    let status = |xff: Option<&str>| {
        let mut r = req("GET", "/api/third-party/v1/vehicles").bearer(&key);
        if let Some(x) = xff {
            r = r.header("X-Forwarded-For", x);
        }
        r.send(&server).status
    };
    assert_eq!(status(Some("203.0.113.9")), 200);
    assert_eq!(status(Some("2001:db8::7")), 200);
    // Trusted hops are passed over, right to left.
    assert_eq!(status(Some("203.0.113.9, 10.0.0.5")), 200);
    // What a client wrote left of the last untrusted hop is its own word.
    assert_eq!(status(Some("203.0.113.9, 198.51.100.1")), 403);
    assert_eq!(status(Some("198.51.100.1, 203.0.113.9")), 200);
    // Without the header, or with garbage in it, the peer is the client.
    assert_eq!(status(None), 403);
    assert_eq!(status(Some("not-an-address")), 403);
    assert_eq!(status(Some("198.51.100.1, junk")), 403);
    // The upstream hears the client the proxy named.
    let r = req("GET", "/api/third-party/v1/vehicles")
        .bearer(&key)
        .header("X-Forwarded-For", "198.51.100.1, 203.0.113.44")
        .send(&server);
    assert_eq!(
        r.seen()["headers"]["x-forwarded-for"],
        json!(["203.0.113.44"])
    );
}

#[test]
fn refusals_past_a_limit_are_one_record_per_key_limit_and_minute() {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (_, auditor) = kw.key(&["--name", "auditor", "--scope", "keyward-audit:read"]);
    let (id, key) = kw.key(&[
        "--name",
        "hammer",
        "--scope",
        "vehicles:read",
        "--limit",
        "daily=1/1d",
    ]);
    let mut server = kw.serve(&["--upstream", &crate::upstream_flag(&up)]);
    assert_eq!(server.get("/vehicles", &key).status, 200);
    for _ in 0..25 {
        server.get("/vehicles", &key).error(429, "RATE_LIMITED");
    }
    // Written when the minute ends, or at shutdown.
    assert!(server.stop().success());
    let server = kw.serve(&[]);
    let page = req("GET", "/v1/audit?action=gateway.rate_limited")
        .bearer(&auditor)
        .send(&server)
        .json();
    let records = page["data"].as_array().unwrap();
    // One record a minute: two only if the burst straddled a minute's end.
    assert!((1..=2).contains(&records.len()), "{page}");
    let total: i64 = records
        .iter()
        .map(|r| r["details"]["count"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 25);
    for r in records {
        assert_eq!(r["key_id"], json!(id));
        assert_eq!(r["actor"], json!(format!("key:{id}")));
        assert_eq!(r["status"], 429);
        assert_eq!(r["details"]["sample"]["limit"], "daily");
        assert_eq!(r["client"], "127.0.0.1");
    }
    // Nothing per request in the chain.
    let each = req("GET", &format!("/v1/audit?key_id={id}"))
        .bearer(&auditor)
        .send(&server)
        .json();
    assert!(
        each["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] != 429 || r["action"] == "gateway.rate_limited"),
        "{each}"
    );
}
