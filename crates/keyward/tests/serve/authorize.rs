//! Forward authentication (SPEC §12, issue 21): `/v1/authorize` decides
//! the request a proxy describes exactly as the gateway decides it, in
//! each of the three ways a proxy describes it.

use crate::harness::{Kw, PREFIX, Resp, Server, Upstream, req};
use crate::upstream_flag;
use serde_json::Value;

/// How a proxy describes the request it asks about.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// Traefik, Caddy.
    Forwarded,
    /// nginx `auth_request`.
    Original,
    /// Envoy `ext_authz` with `path_prefix`.
    Prefixed,
}

const FORMS: [Form; 3] = [Form::Forwarded, Form::Original, Form::Prefixed];

/// Asks `/v1/authorize` about `method uri` with `key` (if any).
fn ask(server: &Server, form: Form, method: &str, uri: &str, key: Option<&str>) -> Resp {
    let r = match form {
        Form::Forwarded => req("GET", "/v1/authorize")
            .header("X-Forwarded-Method", method)
            .header("X-Forwarded-Uri", uri),
        Form::Original => req("GET", "/v1/authorize")
            .header("X-Original-Method", method)
            .header("X-Original-URI", uri),
        Form::Prefixed => req(method, &format!("/v1/authorize{uri}")),
    };
    match key {
        Some(k) => r.bearer(k),
        None => r,
    }
    .send(server)
}

fn body_json(r: &Resp) -> Value {
    if r.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&r.body).unwrap_or(Value::Null)
    }
}

/// The keys every door is compared with the gateway for: none, malformed,
/// revoked, a read-only preset, everything, and one write scope.
pub(crate) struct MatrixKeys {
    pub(crate) ro: String,
    pub(crate) full_id: String,
    pub(crate) full: String,
    one: String,
    revoked: String,
}

impl MatrixKeys {
    pub(crate) fn make(kw: &Kw) -> Self {
        let (_, ro) = kw.key(&["--name", "reader", "--preset", "read-only-integration"]);
        let (full_id, full) = kw.key(&["--name", "all", "--preset", "full-fleet-management"]);
        let (_, one) = kw.key(&["--name", "one", "--scope", "vehicles:write"]);
        let (revoked_id, revoked) = kw.key(&["--name", "gone", "--scope", "vehicles:read"]);
        kw.cli_ok(&["keys", "revoke", &revoked_id]);
        MatrixKeys {
            ro,
            full_id,
            full,
            one,
            revoked,
        }
    }

    pub(crate) fn keys(&self) -> Vec<Option<&str>> {
        vec![
            None,
            Some("insp_live_notakey"),
            Some(&self.revoked),
            Some(&self.ro),
            Some(&self.full),
            Some(&self.one),
        ]
    }
}

/// The fleet catalog's routes, each concrete, with the methods it takes
/// and one it does not.
pub(crate) fn fleet_requests(kw: &Kw) -> Vec<(String, String)> {
    let shown: Value = serde_json::from_str(&kw.cli_ok(&["catalog", "show", "--json"])).unwrap();
    let mut out = Vec::new();
    for route in shown["routes"].as_array().unwrap() {
        let path = route["path"]
            .as_str()
            .unwrap()
            .replace("{id}", "42")
            .replace('*', "/7");
        for m in route["methods"].as_array().unwrap() {
            out.push((m.as_str().unwrap().to_owned(), format!("{PREFIX}{path}")));
        }
        out.push(("PATCH".to_owned(), format!("{PREFIX}{path}")));
    }
    for (m, p) in [
        ("GET", "/elsewhere".to_owned()),
        ("GET", format!("{PREFIX}/no-such-thing")),
        ("GET", format!("{PREFIX}/vehicles/../admin")),
        ("GET", format!("{PREFIX}/vehicles//1")),
        ("GET", format!("{PREFIX}/vehicles/1%2Fadmin")),
        ("GET", format!("{PREFIX}/vehicles/%2e%2e")),
        ("DELETE", format!("{PREFIX}/vehicles/")),
    ] {
        out.push((m.to_owned(), p));
    }
    out
}

#[test]
fn authorize_answers_as_the_gateway_does_for_every_route_and_key() {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    // Made before the server starts, so its first snapshot holds them and
    // the revocation (made while it runs, a comparison could straddle the
    // sync that brings it: the gateway judging the key live, authorize a
    // moment later revoked).
    let matrix = MatrixKeys::make(&kw);
    let server = kw.serve(&["--upstream", &upstream_flag(&up)]);
    let keys = matrix.keys();
    let requests = fleet_requests(&kw);
    assert!(requests.len() > 40, "{}", requests.len());
    let mut allowed = 0;
    for (method, path) in &requests {
        for key in &keys {
            let mut through = req(method, path);
            if let Some(k) = key {
                through = through.bearer(k);
            }
            let gateway = through.send(&server);
            for form in FORMS {
                let asked = ask(&server, form, method, path, *key);
                let what = format!("{form:?} {method} {path} with {key:?}");
                assert_eq!(asked.status, gateway.status, "{what}");
                if gateway.status == 200 {
                    allowed += 1;
                    assert!(asked.body.is_empty(), "{what}");
                    assert!(asked.header("x-keyward-key-id").is_some(), "{what}");
                } else {
                    assert_eq!(body_json(&asked), body_json(&gateway), "{what}");
                    assert_eq!(
                        asked.header("www-authenticate"),
                        gateway.header("www-authenticate"),
                        "{what}"
                    );
                }
            }
        }
    }
    assert!(allowed > 60, "{allowed} allowed answers compared");
}

#[test]
fn an_allowed_request_carries_the_identity_and_writes_are_audited() {
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    let (id, key) = kw.key(&[
        "--name",
        "writer",
        "--scope",
        "vehicles:write",
        "--limit",
        "burst=3/1m",
    ]);
    let (_, auditor) = kw.key(&["--name", "auditor", "--scope", "keyward-audit:read"]);
    let server = kw.serve(&[]);
    let path = format!("{PREFIX}/vehicles/9?dry_run=1");
    let r = ask(&server, Form::Forwarded, "DELETE", &path, Some(&key));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-keyward-key-id"), Some(id.as_str()));
    assert!(
        r.header("x-keyward-org-id")
            .is_some_and(|o| o.starts_with("org_"))
    );
    assert!(
        r.header("x-keyward-scopes")
            .is_some_and(|s| s.split(' ').any(|s| s == "vehicles:write")),
        "{:?}",
        r.header("x-keyward-scopes")
    );
    let request_id = r.header("x-request-id").unwrap().to_owned();
    assert!(r.header("ratelimit").is_some(), "the limit is told");
    // The write is audited as authorized, with the path the proxy sent
    // (its query is not read).
    let records = req(
        "GET",
        &format!("/v1/audit?key_id={id}&action=gateway.request"),
    )
    .bearer(&auditor)
    .send(&server)
    .json();
    let record = &records["data"][0];
    assert_eq!(record["method"], "DELETE", "{records}");
    assert_eq!(record["path"], format!("{PREFIX}/vehicles/9"));
    assert_eq!(record["status"], 200);
    assert_eq!(record["request_id"], request_id);
    assert_eq!(record["details"]["reason"], "authorized", "{record}");
    // The limit is the gateway's: two more, then 429 with Retry-After.
    for form in [Form::Original, Form::Prefixed] {
        assert_eq!(
            ask(
                &server,
                form,
                "GET",
                &format!("{PREFIX}/vehicles"),
                Some(&key)
            )
            .status,
            200,
            "{form:?}"
        );
    }
    let r = ask(
        &server,
        Form::Forwarded,
        "PUT",
        &format!("{PREFIX}/vehicles/9"),
        Some(&key),
    );
    let e = r.error(429, "RATE_LIMITED");
    assert_eq!(e["details"]["limit"], "burst");
    assert!(r.header("retry-after").is_some());
}

#[test]
fn a_request_described_twice_or_by_halves_is_refused() {
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    let (_, key) = kw.key(&["--name", "reader", "--scope", "vehicles:read"]);
    let server = kw.serve(&[]);
    let allowed = format!("{PREFIX}/vehicles");
    let denied = format!("{PREFIX}/inspections");
    let base = || req("GET", "/v1/authorize").bearer(&key);
    let cases: Vec<(&str, crate::harness::Req)> = vec![
        ("nothing described", base()),
        (
            "both pairs (a client adding the pair nginx does not set)",
            base()
                .header("X-Original-Method", "GET")
                .header("X-Original-URI", &denied)
                .header("X-Forwarded-Method", "GET")
                .header("X-Forwarded-Uri", &allowed),
        ),
        ("a method alone", base().header("X-Forwarded-Method", "GET")),
        ("a URI alone", base().header("X-Original-URI", &allowed)),
        (
            "halves of each pair",
            base()
                .header("X-Forwarded-Method", "GET")
                .header("X-Original-URI", &allowed),
        ),
        (
            "the URI twice",
            base()
                .header("X-Forwarded-Method", "GET")
                .header("X-Forwarded-Uri", &allowed)
                .header("x-forwarded-uri", &denied),
        ),
        (
            "the method twice",
            base()
                .header("X-Original-Method", "GET")
                .header("X-Original-Method", "DELETE")
                .header("X-Original-URI", &allowed),
        ),
        (
            "an absolute URI",
            base()
                .header("X-Forwarded-Method", "GET")
                .header("X-Forwarded-Uri", &format!("http://evil{allowed}")),
        ),
        (
            "a URI without its slash",
            base()
                .header("X-Forwarded-Method", "GET")
                .header("X-Forwarded-Uri", &allowed[1..]),
        ),
        (
            "an empty method",
            base()
                .header("X-Forwarded-Method", "")
                .header("X-Forwarded-Uri", &allowed),
        ),
        (
            "a method that is not one",
            base()
                .header("X-Forwarded-Method", "G(T")
                .header("X-Forwarded-Uri", &allowed),
        ),
        (
            "a path not in normal form",
            base().header("X-Forwarded-Method", "GET").header(
                "X-Forwarded-Uri",
                &format!("{PREFIX}/vehicles/%2e%2e/../inspections"),
            ),
        ),
    ];
    for (what, r) in cases {
        let r = r.send(&server);
        r.error(400, "BAD_REQUEST");
        assert!(r.header("x-keyward-key-id").is_none(), "{what}");
    }
    // Envoy's form: the path after /v1/authorize, checked as the gateway
    // checks a path.
    for path in [
        "/v1/authorize/../v1/keys",
        "/v1/authorize//api",
        "/v1/authorize/%2e%2e/v1/keys",
    ] {
        req("GET", path)
            .bearer(&key)
            .send(&server)
            .error(400, "BAD_REQUEST");
    }
    req("GET", "/v1/authorizex")
        .bearer(&key)
        .send(&server)
        .error(404, "NOT_FOUND");
    // The query is not part of the decision, and cannot smuggle a path.
    let r = ask(
        &server,
        Form::Forwarded,
        "GET",
        &format!("{allowed}?next=/../inspections"),
        Some(&key),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        ask(&server, Form::Forwarded, "GET", &denied, Some(&key)).status,
        403
    );
}

#[test]
fn nginx_form_refusals_carry_their_status_and_document_in_headers() {
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    let (_, key) = kw.key(&["--name", "reader", "--scope", "vehicles:read"]);
    let server = kw.serve(&[]);
    for (method, path, key, status) in [
        (
            "GET",
            format!("{PREFIX}/inspections"),
            Some(key.as_str()),
            403,
        ),
        ("GET", format!("{PREFIX}/vehicles"), None, 401),
        (
            "GET",
            format!("{PREFIX}/nowhere/%C3%BC"),
            Some(key.as_str()),
            404,
        ),
        (
            "GET",
            format!("{PREFIX}/vehicles/.."),
            Some(key.as_str()),
            400,
        ),
    ] {
        let r = ask(&server, Form::Original, method, &path, key);
        assert_eq!(r.status, status, "{path}");
        assert_eq!(
            r.header("x-keyward-status"),
            Some(status.to_string().as_str())
        );
        let in_header: Value = serde_json::from_str(r.header("x-keyward-error").unwrap()).unwrap();
        assert_eq!(in_header, body_json(&r), "{path}");
        assert!(r.header("x-keyward-error").unwrap().is_ascii());
        // The other forms keep their headers to themselves.
        let r = ask(&server, Form::Forwarded, method, &path, key);
        assert!(r.header("x-keyward-error").is_none());
    }
    let r = ask(
        &server,
        Form::Original,
        "GET",
        &format!("{PREFIX}/vehicles"),
        Some(&key),
    );
    assert_eq!(r.status, 200);
    assert!(r.header("x-keyward-status").is_none());
}

/// What the gateway strips before the API, but a proxy would pass on after
/// an allowed answer, is refused in every form and spelling: a protocol
/// upgrade, a method or path override, an `X-Keyward-*` header other than
/// the identity the proxy replaces, a folded spelling of a header the proxy
/// or keyward sets; and a declared body over `--max-body-bytes` is 413, as
/// at the gateway.
#[test]
fn what_the_api_could_act_on_instead_is_refused() {
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    let (_, key) = kw.key(&["--name", "reader", "--scope", "vehicles:read"]);
    let server = kw.serve(&["--max-body-bytes", "1000"]);
    let uri = format!("{PREFIX}/vehicles");
    let described = |form: Form| {
        let r = match form {
            Form::Forwarded => req("GET", "/v1/authorize")
                .header("X-Forwarded-Method", "GET")
                .header("X-Forwarded-Uri", &uri),
            Form::Original => req("GET", "/v1/authorize")
                .header("X-Original-Method", "GET")
                .header("X-Original-URI", &uri),
            Form::Prefixed => req("GET", &format!("/v1/authorize{uri}")),
        };
        r.bearer(&key)
    };
    for form in FORMS {
        assert_eq!(described(form).send(&server).status, 200, "{form:?}");
        for (header, value) in [
            ("Upgrade", "h2c"),
            ("upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Connection", "keep-alive, upgrade"),
            ("Connection", "close,UPGRADE "),
            ("X-HTTP-Method-Override", "DELETE"),
            ("x-http-method", "DELETE"),
            ("X-Method-Override", "PUT"),
            ("X-Original-URL", "/api/third-party/v1/damages"),
            ("X-Rewrite-URL", "/api/third-party/v1/damages"),
            ("X-Envoy-Original-Path", "/api/third-party/v1/damages"),
            ("X_HTTP_Method_Override", "DELETE"),
            ("X.Original.URL", "/api/third-party/v1/damages"),
            ("x-http_method-override", "DELETE"),
            ("X-Keyward-Status", "200"),
            ("X-Keyward-Key-Name", "admin"),
            ("X_Keyward_Scopes", "keyward-admin"),
            ("X.Keyward.Key-Id", "key_forged"),
            ("X-Request_Id", "forged"),
            ("X_Forwarded_For", "10.0.0.1"),
        ] {
            let r = described(form).header(header, value).send(&server);
            let e = r.error(400, "BAD_REQUEST");
            assert!(
                e["message"].as_str().unwrap().contains("upgrade")
                    || e["details"]["header"] == header.to_ascii_lowercase(),
                "{form:?} {header}: {e}"
            );
        }
        // The identity headers themselves are replaced by the proxy.
        let r = described(form)
            .header("X-Keyward-Key-Id", "key_forged")
            .header("X-Keyward-Scopes", "keyward-admin")
            .send(&server);
        assert_eq!(r.status, 200, "{form:?}");
        // A declared body over the gateway's bound.
        let r = described(form)
            .header("Content-Length", "1001")
            .header("Connection", "close")
            .send(&server);
        r.error(413, "PAYLOAD_TOO_LARGE");
    }
}
