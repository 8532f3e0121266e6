//! Hostile input over a real socket, against a real upstream that counts
//! what it receives whole: path confusion, spoofed identity headers, long
//! targets and anonymous floods, client request ids, keys pasted into the
//! wrong field, broken body framing, sign-in bursts. Each class is tried in
//! several spellings and encodings; each refusal asserts its status and
//! that the upstream received nothing.

use crate::harness::{Kw, PREFIX, Server, Upstream, raw, req};
use crate::upstream_flag;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Audit rows: action, actor, path, status, request id, details, client.
type Row = (
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
    String,
    Option<String>,
);

fn audit(kw: &Kw) -> Vec<Row> {
    crate::harness::sqlite_rows(
        kw,
        "SELECT action, actor, path, status, request_id, details, client FROM audit_log ORDER BY seq",
    )
}

/// A served fleet catalog with a key holding `vehicles:write`.
fn writer(extra: &[&str]) -> (Kw, Upstream, Server, String) {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (_, key) = kw.key(&["--name", "writer", "--scope", "vehicles:write"]);
    let mut args = vec!["--upstream".to_owned(), upstream_flag(&up)];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = kw.serve(&args);
    (kw, up, server, key)
}

/// Paths a permissive back end resolves differently from keyward, in the
/// spellings of each class.
const CONFUSED: &[&str] = &[
    // dot segments behind `;` parameters (Tomcat, Jetty, Spring)
    "/vehicles/..;/damages/1",
    "/vehicles/..;jsessionid=1/damages/1",
    "/vehicles/.;/1",
    "/vehicles/..;;/damages",
    "/vehicles/;/1",
    "/vehicles/%2e%2e;/damages/1",
    "/vehicles/..%3b/damages/1",
    "/vehicles/..%3B/damages/1",
    // backslashes (IIS, ASP.NET), encoded in both cases
    "/vehicles/%5c..%5cdamages/1",
    "/vehicles/%5C..%5Cdamages/1",
    "/vehicles%5c1",
    // encoded control characters
    "/vehicles/1%00",
    "/vehicles/1%00.json",
    "/vehicles/1%0d%0aX-Injected:%20yes",
    "/vehicles/1%0A",
    "/vehicles/1%09",
    "/vehicles/1%1f",
    "/vehicles/1%7F",
    // segments Windows trims to `..` or to nothing
    "/vehicles/.../damages/1",
    "/vehicles/..%20/damages/1",
    "/vehicles/.%20./damages/1",
    "/vehicles/%20/1",
    // characters Unicode normalisation or best-fit mapping makes delimiters
    "/vehicles/%EF%BC%8E%EF%BC%8E/damages/1",
    "/vehicles/..%EF%BC%8Fdamages/1",
    "/vehicles/..%ef%bc%bcdamages/1",
    "/vehicles/%E2%80%A5/damages/1",
    "/vehicles/1%CD%BE",
    "/vehicles/%EF%B8%B0/inspections",
    "/vehicles/%EF%B8%99/inspections",
    "/vehicles/1%EF%B8%94",
    "/vehicles/%E2%84%80",
    "/vehicles/..%C2%A0/inspections",
    "/vehicles/..%E3%80%80/inspections",
    "/vehicles/x%C2%A5..%C2%A5inspections",
    "/vehicles/x%E2%82%A9..",
    // text a normalising back end reads as other text: `ｅxport` is `export`
    "/vehicles/%EF%BD%85xport",
    "/vehicles/1%C2%AA",
    "/vehicles/e%CC%81",
    // invisible characters some normalisers strip: `..` there
    "/vehicles/..%E2%80%8B/inspections",
    "/vehicles/.%C2%AD./inspections",
    "/vehicles/..%EF%BB%BF/inspections",
    "/vehicles/..%CD%8F/inspections",
    // the classes refused before
    "/vehicles/../damages/1",
    "/vehicles/%2e%2e/damages/1",
    "/vehicles/%2F1",
    "/vehicles//1",
];

#[test]
fn confusing_paths_are_refused_before_authentication_and_never_forwarded() {
    let (kw, up, server, key) = writer(&[]);
    let verifier = verifier(&kw);
    for path in CONFUSED {
        for method in ["GET", "DELETE", "POST"] {
            let target = format!("{PREFIX}{path}");
            // With a valid key, with none: the path is judged first.
            for with_key in [true, false] {
                let mut r = req(method, &target);
                if with_key {
                    r = r.bearer(&key);
                }
                let e = r.send(&server).error(400, "BAD_REQUEST");
                let message = e["message"].as_str().unwrap();
                assert!(
                    message.contains("normal form"),
                    "{method} {path}: {message}"
                );
            }
        }
        // The verify service and `keyward explain` judge paths the same way.
        let r = req("POST", "/v1/verify")
            .bearer(&verifier)
            .json(&json!({"key": key, "method": "DELETE", "path": format!("{PREFIX}{path}")}))
            .send(&server);
        r.error(422, "VALIDATION_FAILED");
        let out = kw.cli(&["explain", "--scope", "vehicles:write", "DELETE", path]);
        assert!(!out.status.success(), "explain accepted {path}");
    }
    // A raw backslash or non-ASCII byte is refused too (by keyward, or by
    // the HTTP parser).
    for target in [
        format!("{PREFIX}/vehicles\\..\\damages\\1"),
        format!("{PREFIX}/vehicles/..\\damages"),
        format!("{PREFIX}/vehicles/\u{FF0E}\u{FF0E}/damages/1"),
        format!("{PREFIX}/vehicles/caf\u{e9}"),
    ] {
        let mut request = format!("DELETE {target} HTTP/1.1\r\nHost: x\r\n").into_bytes();
        request.extend_from_slice(
            format!("Authorization: Bearer {key}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let r = raw(server.addr, &request);
        assert_eq!(r.status, 400, "{target}");
    }
    assert_eq!(up.hits(), 0, "a confusing path reached the upstream");
    // A `;` parameter on an ordinary segment is no confusion: it is matched
    // and forwarded as it is.
    let seen = req("DELETE", &format!("{PREFIX}/vehicles/42;v=2"))
        .bearer(&key)
        .send(&server)
        .seen();
    assert_eq!(seen["path"], format!("{PREFIX}/vehicles/42;v=2"));
}

/// A key that may call `POST /v1/verify`, in the same database.
fn verifier(kw: &Kw) -> String {
    kw.key(&["--name", "verifier", "--scope", "keyward-api-keys:verify"])
        .1
}

#[test]
fn spoofed_identity_headers_never_reach_the_upstream_in_any_spelling() {
    let spoofs = [
        ("X_Keyward_Scopes", "everything:write"),
        ("X-KEYWARD_ORG_ID", "org_forged"),
        ("x_keyward_key_id", "key_forged"),
        ("X-Keyward_Scopes", "everything:write"),
        ("X_KEYWARD-Anything", "x"),
        ("X_Request_Id", "forged-id"),
        ("X_Forwarded_For", "10.9.9.9"),
        ("X-Forwarded_Host", "evil.example"),
        // Headers that would make the upstream act on another method, path
        // or client than the one keyward authorized.
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-HTTP-Method", "DELETE"),
        ("X-Method-Override", "DELETE"),
        ("X_HTTP_Method_Override", "DELETE"),
        ("X-Original-URL", "/api/third-party/v1/damages"),
        ("X-Rewrite-URL", "/api/third-party/v1/damages"),
        ("X-Original-Method", "DELETE"),
        ("Forwarded", "for=10.0.0.1;proto=https;host=evil.example"),
        ("X-Forwarded-Prefix", "/admin"),
        // Client addresses of other proxies, and forwarding headers keyward
        // does not write.
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Port", "443"),
        ("X-Forwarded-Uri", "/api/third-party/v1/damages"),
        ("X-Real-IP", "6.6.6.6"),
        ("True-Client-IP", "6.6.6.6"),
        ("X-Client-IP", "6.6.6.6"),
        ("X-Envoy-Original-Path", "/api/third-party/v1/damages"),
        ("Fastly-Client-IP", "6.6.6.6"),
        ("X-Original-Host", "evil.example"),
        ("Forwarded-For", "6.6.6.6"),
        // Other punctuation: lighttpd's CGI folds it like `_`.
        ("X-Keyward.Scopes", "everything:write"),
        ("X-Keyward~Org-Id", "org_forged"),
        ("X-Forwarded.For", "6.6.6.6"),
    ];
    for allow in [false, true] {
        let (_, up, server, key) = writer(if allow {
            &["--allow-underscore-headers"][..]
        } else {
            &[][..]
        });
        let mut r = req("GET", &format!("{PREFIX}/vehicles")).bearer(&key);
        for (n, v) in spoofs {
            r = r.header(n, v);
        }
        let r = r
            .header("My_Custom_Header", "kept?")
            .header("X-Plain", "kept");
        let seen = r.send(&server).seen();
        let h = seen["headers"].as_object().unwrap();
        for name in h.keys() {
            let folded = name.replace('_', "-");
            for o in [
                "x-http-method-override",
                "x-http-method",
                "x-method-override",
                "x-original-url",
                "x-rewrite-url",
                "x-original-method",
                "forwarded",
                "x-forwarded-prefix",
                "x-forwarded-port",
                "x-forwarded-uri",
                "x-real-ip",
                "true-client-ip",
                "x-client-ip",
                "x-envoy-original-path",
                "fastly-client-ip",
                "x-original-host",
                "forwarded-for",
            ] {
                assert_ne!(folded, o, "{name} reached the upstream (allow={allow})");
            }
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{name} reached the upstream"
            );
            if folded.starts_with("x-keyward-") || folded == "x-request-id" {
                assert!(
                    !name.contains('_'),
                    "{name} reached the upstream (allow={allow})"
                );
            }
            assert!(!name.starts_with("x_forwarded") && name != "x-forwarded_host");
        }
        assert_eq!(h["x-keyward-scopes"].as_array().unwrap().len(), 1);
        let scopes = h["x-keyward-scopes"][0].as_str().unwrap();
        assert!(
            scopes.contains("vehicles:write") && !scopes.contains("everything"),
            "{scopes}"
        );
        assert_ne!(h["x-keyward-org-id"], json!(["org_forged"]));
        assert_ne!(h["x-request-id"], json!(["forged-id"]));
        assert_eq!(
            h["x-forwarded-for"],
            json!(["127.0.0.1"]),
            "the client's own chain is not believed"
        );
        assert_eq!(h["x-plain"], json!(["kept"]));
        assert_eq!(h.contains_key("my_custom_header"), allow, "{h:?}");
        assert_eq!(up.hits(), 1);
    }
}

#[test]
fn a_missing_repeated_or_malformed_host_is_400_and_an_absolute_target_names_the_host() {
    let (_, up, server, key) = writer(&[]);
    let send = |head: &str| {
        let request = format!("{head}Authorization: Bearer {key}\r\nConnection: close\r\n\r\n");
        raw(server.addr, request.as_bytes())
    };
    let path = format!("{PREFIX}/vehicles");
    for head in [
        format!("GET {path} HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n"),
        format!("GET {path} HTTP/1.1\r\nHost: evil/../x?#\r\n"),
        format!("GET {path} HTTP/1.1\r\nHost: a b, c\r\n"),
        format!("GET {path} HTTP/1.1\r\nHost: user@evil.example\r\n"),
        format!("GET {path} HTTP/1.1\r\nHost: a.example,evil.example\r\n"),
        format!("GET {path} HTTP/1.1\r\nHost: a.example;x\r\n"),
        format!("GET {path} HTTP/1.1\r\nHost: a.example:99999\r\n"),
        format!("GET {path} HTTP/1.1\r\nHost: [zz]\r\n"),
        format!("GET {path} HTTP/1.1\r\n"),
        format!("GET http://asked.example{path} HTTP/1.1\r\n"),
        format!("GET http://u:p@a.example{path} HTTP/1.1\r\nHost: a.example\r\n"),
        format!("GET http://a.example,evil.example{path} HTTP/1.1\r\nHost: a.example\r\n"),
        format!("GET ftp://a.example{path} HTTP/1.1\r\nHost: a.example\r\n"),
    ] {
        let r = send(&head);
        assert_eq!(r.status, 400, "{head:?}");
    }
    assert_eq!(up.hits(), 0);
    // An absolute-form target's authority is the host asked for.
    let r = send(&format!(
        "GET http://asked.example:81{path} HTTP/1.1\r\nHost: other.example\r\n"
    ));
    let seen = r.seen();
    assert_eq!(
        seen["headers"]["x-forwarded-host"],
        json!(["asked.example:81"])
    );
    assert_eq!(seen["path"], path);
}

#[test]
fn long_targets_are_414_and_anonymous_floods_are_counted_not_chained() {
    let (kw, up, mut server, key) = writer(&[]);
    // Beyond 8 KB of request target: 414 before anything else, anywhere.
    let long = "a".repeat(9 * 1024);
    for target in [
        format!("{PREFIX}/vehicles/{long}"),
        format!("{PREFIX}/vehicles?q={long}"),
        format!("/v1/keys/{long}"),
        format!("/console/{long}"),
    ] {
        for with_key in [true, false] {
            let mut r = req("POST", &target);
            if with_key {
                r = r.bearer(&key);
            }
            r.send(&server).error(414, "URI_TOO_LONG");
        }
    }
    // 300 anonymous writes with 7 KB paths: answered 401 each, recorded as
    // one counted record per client, minute and status.
    let path = format!("{PREFIX}/vehicles/{}", "b".repeat(7 * 1024));
    for i in 0..300 {
        let r = req("POST", &path)
            .body(format!("{i}").as_bytes())
            .send(&server);
        r.error(401, "UNAUTHORIZED");
    }
    for i in 0..20 {
        req("DELETE", &format!("{PREFIX}/vehicles/..;/x{i}"))
            .send(&server)
            .error(400, "BAD_REQUEST");
    }
    // A key's own write with a long path: recorded, its path clipped.
    req("POST", &path).bearer(&key).send(&server).seen();
    assert_eq!(up.hits(), 1);
    server.stop();
    let rows = audit(&kw);
    let counted: Vec<&Row> = rows
        .iter()
        .filter(|r| r.0 == "gateway.unauthenticated")
        .collect();
    let per_request = rows
        .iter()
        .filter(|r| r.0 == "gateway.request" && r.1 == "anonymous")
        .count();
    assert_eq!(per_request, 0, "anonymous refusals were chained one by one");
    let total: u64 = counted
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(&r.5).unwrap()["count"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(total, 320);
    // Two statuses, at most two minutes each.
    assert!((2..=4).contains(&counted.len()), "{}", counted.len());
    for r in rows.iter().filter(|r| r.2.is_some()) {
        let p = r.2.as_deref().unwrap();
        assert!(
            p.len() <= 1024 + "…[truncated]".len(),
            "{} bytes stored",
            p.len()
        );
    }
    let own = rows
        .iter()
        .find(|r| r.0 == "gateway.request" && r.1.starts_with("key:"))
        .unwrap();
    assert!(own.2.as_deref().unwrap().ends_with("…[truncated]"));
    // The log holds no whole path either.
    let log = server.log();
    assert!(!log.contains(&"b".repeat(1100)), "a whole path was logged");
    assert!(log.len() < 400 * 1024, "log grew to {} bytes", log.len());
    let out = kw.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn request_ids_are_keywards_own_and_the_clients_is_kept_beside() {
    let (kw, _up, mut server, key) = writer(&[]);
    let r = req("POST", &format!("{PREFIX}/vehicles"))
        .bearer(&key)
        .header("X-Request-Id", "client-abc-1")
        .json(&json!({}))
        .send(&server);
    let ours = r.header("x-request-id").unwrap().to_owned();
    assert_ne!(ours, "client-abc-1");
    assert_eq!(r.seen()["headers"]["x-request-id"], json!([ours]));
    // An id another request already used cannot be claimed either.
    let again = req("POST", &format!("{PREFIX}/vehicles"))
        .bearer(&key)
        .header("X-Request-Id", &ours)
        .json(&json!({}))
        .send(&server);
    assert_ne!(again.header("x-request-id"), Some(ours.as_str()));
    server.stop();
    let rows: Vec<Row> = audit(&kw)
        .into_iter()
        .filter(|r| r.0 == "gateway.request")
        .collect();
    assert_eq!(rows[0].4.as_deref(), Some(ours.as_str()));
    let details: Value = serde_json::from_str(&rows[0].5).unwrap();
    assert_eq!(details["client_request_id"], "client-abc-1");
    assert_ne!(rows[0].4, rows[1].4);
}

#[test]
fn keys_pasted_into_the_wrong_field_are_refused_or_redacted() {
    let (kw, up, mut server, key) = writer(&[]);
    let (_, admin) = kw.key(&["--name", "admin", "--scope", "keyward-api-keys:write"]);
    let display = &key[..14];
    let post = |body: Value| {
        req("POST", "/v1/keys")
            .bearer(&admin)
            .json(&body)
            .send(&server)
    };
    for (field, body) in [
        ("name", json!({"name": key, "scopes": ["vehicles:read"]})),
        (
            "name",
            json!({"name": format!("tablet {key}"), "scopes": ["vehicles:read"]}),
        ),
        (
            "description",
            json!({"name": "ok", "description": format!("key={key}"), "scopes": ["vehicles:read"]}),
        ),
        (
            "name",
            json!({"name": "evil\u{202E}gnp.exe", "scopes": ["vehicles:read"]}),
        ),
        (
            "name",
            json!({"name": "zero\u{200B}width", "scopes": ["vehicles:read"]}),
        ),
        (
            "name",
            json!({"name": "isolate\u{2067}x", "scopes": ["vehicles:read"]}),
        ),
        (
            "description",
            json!({"name": "ok", "description": "bom\u{FEFF}", "scopes": ["vehicles:read"]}),
        ),
    ] {
        let e = post(body).error(422, "VALIDATION_FAILED");
        assert_eq!(e["details"]["field"], field, "{e}");
        assert!(!e.to_string().contains(&key[14..]), "{e}");
    }
    // Inside an unknown scope, in a path (also behind escapes), as a
    // request id, as a method: refused, or recorded redacted.
    post(json!({"name": "ok", "scopes": [format!("x:{key}")]}));
    req("POST", &format!("{PREFIX}/vehicles/{key}"))
        .bearer(&key)
        .header("X-Request-Id", &key)
        .send(&server)
        .seen();
    req(
        "POST",
        &format!("{PREFIX}/damages/{}", key.replace('_', "%5F")),
    )
    .bearer(&key)
    .send(&server)
    .error(403, "FORBIDDEN");
    // The secret part alone, or with other separators: found by its checksum.
    for path in [
        format!("{PREFIX}/damages/{}", &key[10..]),
        format!("{PREFIX}/damages/insp-live-{}", &key[10..]),
    ] {
        req("POST", &path)
            .bearer(&key)
            .send(&server)
            .error(403, "FORBIDDEN");
    }
    for method in [
        key.clone(),
        "Y".repeat(50_000),
        format!("Q{}", "q".repeat(40)),
    ] {
        let r = req(&method, &format!("{PREFIX}/vehicles"))
            .bearer(&key)
            .send(&server);
        assert_eq!(r.status, 400, "a {}-byte method", method.len());
    }
    // Typed into the sign-in form's email field: redacted before the email
    // is lowercased (a lowercased key's case is guessable from its checksum).
    let r = req("POST", "/console/sign-in")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("email={key}&password=x").as_bytes())
        .send(&server);
    assert_eq!(r.status, 401);
    req("POST", &format!("/v1/keys/{key}/revoke"))
        .bearer(&admin)
        .send(&server);
    assert_eq!(up.hits(), 1);
    server.stop();
    let rows = audit(&kw);
    let secret = key[14..].to_lowercase();
    for r in &rows {
        let all = format!("{r:?}").to_lowercase();
        assert!(!all.contains(&secret), "a full key was stored: {all}");
    }
    assert!(rows.iter().any(|r| {
        r.2.as_deref()
            .is_some_and(|p| p.contains(&format!("{display}…")))
    }));
    assert!(
        !server.log().to_lowercase().contains(&secret),
        "a full key was logged"
    );
    assert!(
        server.log().len() < 64 * 1024,
        "{} bytes of log",
        server.log().len()
    );
}

#[test]
fn a_broken_chunked_body_is_400_not_502() {
    let (_, up, server, key) = writer(&[]);
    for body in [
        "zz\r\nhello\r\n0\r\n\r\n",             // not hex
        "5\r\nhello world\r\n0\r\n\r\n",        // longer than declared
        "5;ext\r\nhel",                         // cut short
        "-5\r\nhello\r\n0\r\n\r\n",             // negative
        "ffffffffffffffffff\r\nx\r\n0\r\n\r\n", // overflows
    ] {
        let request = format!(
            "POST {PREFIX}/vehicles HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}"
        );
        let send = || {
            let mut s = std::net::TcpStream::connect(server.addr).unwrap();
            std::io::Write::write_all(&mut s, request.as_bytes()).unwrap();
            // Then the client stops sending (a cut-short body ends here).
            s.shutdown(std::net::Shutdown::Write).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut s, &mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        };
        // A node just started on a loaded machine may refuse writes for a
        // moment (its first sync or audit batch slower than 500 ms): 503
        // with Retry-After, which a client retries.
        let mut head = String::new();
        crate::harness::until(Duration::from_secs(10), "writes accepted", || {
            head = send();
            !head.contains("AUDIT_UNAVAILABLE")
        });
        let status: u16 = head.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
        assert_eq!(status, 400, "{body:?}: {head}");
        assert!(head.contains("BAD_REQUEST"), "{body:?}: {head}");
    }
    assert_eq!(up.hits(), 0, "a broken body reached the upstream whole");
}

#[test]
fn console_pages_and_group_membership_refuse_what_they_do_not_read() {
    let (kw, _up, server, _) = writer(&[]);
    let page = req("GET", "/console/sign-in").send(&server);
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let js = req("GET", "/console/static/console.js").send(&server);
    assert_eq!(js.header("x-content-type-options"), Some("nosniff"));
    let (_, admin) = kw.key(&[
        "--name",
        "groups",
        "--scope",
        "keyward-groups:write",
        "--scope",
        "keyward-users:write",
        "--scope",
        "vehicles:read",
    ]);
    let path = "/v1/groups/vehicles:read/users/owner";
    for body in [json!({"role": "admin"}), json!({"user": "x"}), json!([1])] {
        for method in ["PUT", "DELETE"] {
            let r = req(method, path).bearer(&admin).json(&body).send(&server);
            assert_eq!(
                r.status,
                422,
                "{method} {body}: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
    }
    for body in [Some(json!({})), None] {
        let mut r = req("PUT", path).bearer(&admin);
        if let Some(b) = &body {
            r = r.json(b);
        }
        let r = r.send(&server);
        assert_eq!(
            r.status,
            200,
            "{body:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_burst_of_sign_ins_is_bounded_in_memory_and_answered_busy() {
    let (kw, _up, server, _) = writer(&[]);
    let pid = server.child.as_ref().unwrap().id();
    let before = rss_kib(pid);
    let started = Instant::now();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let addr = server.addr;
    let answers: Vec<(u16, Option<String>)> = (0..100)
        .map(|i| {
            std::thread::spawn(move || {
                let body = format!("email=nobody{i}%40example.com&password=guess{i}");
                let request = format!(
                    "POST /console/sign-in HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let r = raw(addr, request.as_bytes());
                (r.status, r.header("retry-after").map(str::to_owned))
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    watcher.join().unwrap();
    let elapsed = started.elapsed();
    let peak = peak.load(std::sync::atomic::Ordering::SeqCst);
    let mut by_status = std::collections::BTreeMap::new();
    for (s, _) in &answers {
        *by_status.entry(*s).or_insert(0) += 1;
    }
    eprintln!(
        "sign-in burst: 100 requests in {elapsed:?}, RSS {before} KiB before, peak {peak} KiB, answers {by_status:?}"
    );
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
    for (status, _) in &answers {
        assert!(
            [401, 429, 503].contains(status),
            "{status}: {}",
            server.log()
        );
    }
    let busy: Vec<_> = answers.iter().filter(|(s, _)| *s == 503).collect();
    assert!(
        !busy.is_empty(),
        "no sign-in was refused as busy: {answers:?}"
    );
    assert!(
        busy.iter().all(|(_, ra)| ra.as_deref() == Some("1")),
        "{busy:?}"
    );
    assert!(
        peak < before + 120 * 1024,
        "memory grew from {before} KiB to {peak} KiB"
    );
    // Once the burst is over, sign-ins are served again.
    let r = req("POST", "/console/sign-in")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(b"email=owner&password=nope")
        .send(&server);
    assert!([401, 429].contains(&r.status), "{}", r.status);
    // A sign-in body is read before anyone is known: 8 KiB at most (a
    // signed-in user's forms get 64 KiB).
    let big = format!("email=a%40example.com&password={}", "x".repeat(8 * 1024));
    let r = req("POST", "/console/sign-in")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(big.as_bytes())
        .send(&server);
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    // A throttled sign-in says when to come back.
    let mut last = r;
    for _ in 0..25 {
        if last.status == 429 {
            break;
        }
        last = req("POST", "/console/sign-in")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(b"email=owner&password=nope")
            .send(&server);
    }
    assert_eq!(last.status, 429);
    assert!(
        last.header("retry-after")
            .is_some_and(|s| s.parse::<u64>().is_ok())
    );
    // Throttled sign-ins (free to send) are counted, not chained one each.
    for _ in 0..50 {
        let r = req("POST", "/console/sign-in")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(b"email=owner&password=nope")
            .send(&server);
        assert_eq!(r.status, 429);
    }
    let mut server = server;
    server.stop();
    let rows = audit(&kw);
    let throttled: Vec<&Row> = rows
        .iter()
        .filter(|r| r.0 == "console.sign_in_failed" && r.5.contains("throttled"))
        .collect();
    assert!(
        (1..=2).contains(&throttled.len()),
        "{} throttled records",
        throttled.len()
    );
    let counted: u64 = throttled
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(&r.5).unwrap()["count"]
                .as_u64()
                .unwrap_or(1)
        })
        .sum();
    assert!(counted >= 51, "{counted}");
}
