//! The console's pages without a browser: every page's status and content,
//! sign-in and its refusals, CSRF and cross-site refusals, the created key
//! shown once, over a real socket to a real `keyward serve`.

use crate::harness::{Kw, Resp, Server, TRANSIT, TRANSIT_BROAD_WRITE_SETS, req};
use serde_json::Value;

/// A cookie-keeping client speaking forms, like a browser without script.
pub struct Visitor<'a> {
    server: &'a Server,
    cookie: Option<String>,
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char);
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl<'a> Visitor<'a> {
    pub fn new(server: &'a Server) -> Self {
        Visitor {
            server,
            cookie: None,
        }
    }

    fn keep(&mut self, r: &Resp) {
        if let Some(c) = r.header("set-cookie") {
            let pair = c.split(';').next().unwrap_or("");
            self.cookie = match pair.split_once('=') {
                Some((_, "")) => None,
                _ => Some(pair.to_owned()),
            };
        }
    }

    pub fn get(&mut self, path: &str) -> Resp {
        let mut r = req("GET", path);
        if let Some(c) = &self.cookie {
            r = r.header("cookie", c);
        }
        let resp = r.send(self.server);
        self.keep(&resp);
        resp
    }

    pub fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Resp {
        self.post_with(path, fields, &[])
    }

    pub fn post_with(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Resp {
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let mut r = req("POST", path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.join("&").as_bytes());
        if let Some(c) = &self.cookie {
            r = r.header("cookie", c);
        }
        for (k, v) in headers {
            r = r.header(k, v);
        }
        let resp = r.send(self.server);
        self.keep(&resp);
        resp
    }
}

pub fn text(r: &Resp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The value of the first `name="…" value="…"` input in a page.
pub fn field(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no field {name} in {page}"))
        + marker.len();
    page[start..].split('"').next().unwrap_or("").to_owned()
}

fn see_other(r: &Resp, to: &str) {
    assert_eq!(r.status, 303, "{}", text(r));
    assert_eq!(r.header("location"), Some(to));
}

/// The owner's one-time password, as the first start printed it.
pub fn first_start(kw: &Kw) -> String {
    let out = kw.cli(&["migrate"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("one-time password: "))
        .unwrap_or_else(|| panic!("no password in {stderr}"))
        .to_owned()
}

fn admin_audit(server: &Server, admin: &str, action: &str) -> Vec<Value> {
    let r = req("GET", &format!("/v1/audit?action={action}&limit=500"))
        .bearer(admin)
        .send(server)
        .json();
    r["data"].as_array().unwrap().clone()
}

#[test]
fn console_pages_without_a_browser() {
    let kw = Kw::new();
    let password = first_start(&kw);
    kw.cli_ok(&[
        "users",
        "create",
        "--email",
        "bob@example.com",
        "--group",
        "vehicles:read",
    ]);
    let legacy_file = kw.dir.path().join("legacy.txt");
    std::fs::write(
        &legacy_file,
        "sk_old_0123456789abcdefghij  Old billing sync\n",
    )
    .unwrap();
    kw.cli_ok(&["keys", "import-legacy", legacy_file.to_str().unwrap()]);
    let (_, auditor) = kw.key(&["--name", "auditor", "--scope", "keyward-audit:read"]);
    let server = kw.serve(&[]);
    let mut v = Visitor::new(&server);

    // Signed out: every page sends to the sign-in page.
    for path in [
        "/console/keys",
        "/console/keys/new",
        "/console/groups",
        "/console/audit",
        "/console/password",
    ] {
        see_other(&v.get(path), "/console/sign-in");
    }
    see_other(&v.get("/console"), "/console/keys");
    let page = v.get("/console/sign-in");
    assert_eq!(page.status, 200);
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert!(
        page.header("content-security-policy")
            .is_some_and(|c| c.contains("frame-ancestors 'none'"))
    );
    assert!(text(&page).contains("<h1>Sign in</h1>"));
    assert_eq!(v.get("/console/static/console.js").status, 200);
    assert_eq!(v.get("/console/static/console.css").status, 200);

    // Wrong password: the same words whatever was wrong.
    let r = v.post(
        "/console/sign-in",
        &[("email", "owner"), ("password", "nope")],
    );
    assert_eq!(r.status, 401);
    assert!(text(&r).contains("The email or password is not right."));
    let r = v.post(
        "/console/sign-in",
        &[("email", "ghost@example.com"), ("password", "nope")],
    );
    assert_eq!(r.status, 401);
    assert!(text(&r).contains("The email or password is not right."));
    // A NUL in any field is refused in words, never a server error.
    let r = v.post(
        "/console/sign-in",
        &[("email", "a\u{0}b"), ("password", "x")],
    );
    assert_eq!(r.status, 400);
    // A sign-in form over 8 KiB is 413 (it is read before anyone is
    // known; signed-in forms get 64 KiB); one whose body breaks off is 400,
    // as in the admin API (the body is read by the same plumbing).
    let r = v.post(
        "/console/sign-in",
        &[("email", &"e".repeat(9_000)), ("password", "x")],
    );
    assert_eq!(r.status, 413);
    assert!(text(&r).contains("larger than 8 KiB"), "{}", text(&r));
    let broken = crate::harness::raw(
        server.addr,
        b"POST /console/sign-in HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
          Content-Type: application/x-www-form-urlencoded\r\n\
          Transfer-Encoding: chunked\r\n\r\nzz\r\nemail=a\r\n0\r\n\r\n",
    );
    assert_eq!(broken.status, 400);
    // A form posted from another site is refused before anything else.
    let r = v.post_with(
        "/console/sign-in",
        &[("email", "owner"), ("password", &password)],
        &[("origin", "https://evil.example")],
    );
    assert_eq!(r.status, 403);
    assert!(r.header("set-cookie").is_none());

    // The one-time password signs in, and must be replaced first.
    let r = v.post(
        "/console/sign-in",
        &[("email", "owner"), ("password", &password)],
    );
    see_other(&r, "/console/password");
    let cookie = r.header("set-cookie").unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    see_other(&v.get("/console/keys"), "/console/password");
    let page = text(&v.get("/console/password"));
    assert!(page.contains("one-time password"));
    let csrf = field(&page, "csrf");
    let r = v.post(
        "/console/password",
        &[
            ("csrf", &csrf),
            ("current_password", &password),
            ("new_password", "short"),
        ],
    );
    assert_eq!(r.status, 422);
    assert!(text(&r).contains("12 to 128 characters"));
    let r = v.post(
        "/console/password",
        &[
            ("csrf", "forged"),
            ("current_password", &password),
            ("new_password", "a long enough password"),
        ],
    );
    assert_eq!(r.status, 403);
    // A forged form is a refused write, on record like the API's.
    let refused = admin_audit(&server, &auditor, "console.request_refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["details"]["reason"], "csrf");
    assert_eq!(refused[0]["path"], "/console/password");
    assert_eq!(refused[0]["method"], "POST");
    // So is a wrong current password, whoever holds the session.
    let r = v.post(
        "/console/password",
        &[
            ("csrf", &csrf),
            ("current_password", "not the password at all"),
            ("new_password", "a long enough password"),
        ],
    );
    assert_eq!(r.status, 422);
    let refused = admin_audit(&server, &auditor, "user.password_change_refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["status"], 422);
    let r = v.post(
        "/console/password",
        &[
            ("csrf", &csrf),
            ("current_password", &password),
            ("new_password", "a long enough password"),
        ],
    );
    see_other(&r, "/console/keys");

    // API Keys: the list, with the legacy key badged.
    let page = text(&v.get("/console/keys"));
    assert!(page.contains("Old billing sync"));
    assert!(page.contains("badge legacy"));
    assert!(page.contains("Create New API Key"));
    let r = v.get("/console/keys?status=revoked");
    assert!(text(&r).contains("No key matches these filters."));
    assert_eq!(v.get("/console/keys?status=sleeping").status, 422);

    // Create New API Key: sets by product area, with descriptions and
    // whether they write.
    let form = text(&v.get("/console/keys/new"));
    for needle in [
        "<legend>Vehicles</legend>",
        "can write",
        "read only",
        "Read-Only Integration",
        "Create Key",
    ] {
        assert!(form.contains(needle), "{needle}");
    }
    let nonce = field(&form, "nonce");
    // Refused by the server as the browser would have refused it.
    let r = v.post(
        "/console/keys",
        &[
            ("csrf", &csrf),
            ("nonce", &nonce),
            ("name", "   "),
            ("set", "vehicles:read"),
        ],
    );
    assert_eq!(r.status, 422);
    assert!(text(&r).contains("Name: must not be empty."));
    let nonce = field(&text(&r), "nonce");
    let r = v.post(
        "/console/keys",
        &[("csrf", &csrf), ("nonce", &nonce), ("name", "No sets")],
    );
    assert_eq!(r.status, 422);
    assert!(text(&r).contains("Choose at least one permission set."));
    let nonce = field(&text(&r), "nonce");
    let fields = [
        ("csrf", csrf.as_str()),
        ("nonce", nonce.as_str()),
        ("name", "Dashboard"),
        ("set", "vehicles:read"),
        ("set", "inspections:read"),
    ];
    let created = v.post("/console/keys", &fields);
    assert_eq!(created.status, 201);
    assert_eq!(created.header("cache-control"), Some("no-store"));
    let page = text(&created);
    assert!(page.contains("You will not see it again"));
    let key = field(
        &page.replace("readonly value", "name=\"secret\" value"),
        "secret",
    );
    assert!(key.starts_with("insp_live_"), "{key}");
    // The key works on the gateway (no upstream: 502 after it was allowed).
    assert_eq!(server.get("/vehicles", &key).status, 502);
    // Resubmitting the same form never shows a key again.
    let again = v.post("/console/keys", &fields);
    assert_eq!(again.status, 409);
    assert!(!text(&again).contains("insp_live_"));
    // Nor does any page.
    let list = text(&v.get("/console/keys"));
    assert!(!list.contains(&key));
    let id = first_key_id(&list);

    // Key detail: sets, effective scopes with what they imply, trail, no edit.
    let detail = text(&v.get(&format!("/console/keys/{id}")));
    for needle in [
        "vehicle-fields:read",
        "inspections:read",
        "key.created",
        "cannot be edited",
        "Roll key",
        "Revoke key",
    ] {
        assert!(detail.contains(needle), "{needle}");
    }
    assert!(!detail.contains(&key));
    assert!(!detail.to_lowercase().contains("edit key"));
    // Roll: a new key, shown once; the old one until its grace ends.
    let nonce = field(&detail, "nonce");
    let rolled = v.post(
        &format!("/console/keys/{id}/roll"),
        &[("csrf", &csrf), ("nonce", &nonce), ("grace", "1h")],
    );
    assert_eq!(rolled.status, 201);
    let new_key = field(
        &text(&rolled).replace("readonly value", "name=\"secret\" value"),
        "secret",
    );
    assert_ne!(new_key, key);
    assert_eq!(server.get("/vehicles", &new_key).status, 502);
    assert_eq!(server.get("/vehicles", &key).status, 502, "grace");
    // Revoke the old one.
    let r = v.post(&format!("/console/keys/{id}/revoke"), &[("csrf", &csrf)]);
    see_other(&r, &format!("/console/keys/{id}?done=revoked"));
    assert!(
        text(&v.get(&format!("/console/keys/{id}?done=revoked"))).contains("The key was revoked.")
    );
    crate::harness::until(std::time::Duration::from_secs(2), "revocation", || {
        server.get("/vehicles", &key).status == 401
    });
    // Forged or missing CSRF tokens change nothing.
    assert_eq!(
        v.post(&format!("/console/keys/{id}/revoke"), &[("csrf", "x")])
            .status,
        403
    );
    assert_eq!(
        v.post(&format!("/console/keys/{id}/revoke"), &[]).status,
        403
    );
    let legacy_id = list
        .split("Old billing sync")
        .next()
        .and_then(|s| s.rsplit("href=\"/console/keys/").next())
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    let legacy = text(&v.get(&format!("/console/keys/{legacy_id}")));
    assert!(legacy.contains("keeps full administrator access"));
    assert_eq!(v.get("/console/keys/key_nothere").status, 404);

    // Authorization Groups: Users tab (add, remove) and API Keys tab.
    let groups = text(&v.get("/console/groups"));
    assert!(groups.contains("Administrators") && groups.contains("vehicles:write"));
    let tab = text(&v.get("/console/groups/vehicles:read?tab=users"));
    assert!(tab.contains("bob@example.com"));
    let tab = text(&v.get("/console/groups/inspections:write?tab=users"));
    assert!(tab.contains("No user is in this group yet."));
    let bob = field(
        &tab.replace("<option value", "<option name=\"user\" value"),
        "user",
    );
    let r = v.post(
        "/console/groups/inspections:write/users",
        &[("csrf", &csrf), ("user", &bob)],
    );
    see_other(&r, "/console/groups/inspections:write?tab=users&done=added");
    let tab = text(&v.get("/console/groups/inspections:write?tab=users"));
    assert!(tab.contains("bob@example.com") && tab.contains("Remove"));
    let r = v.post(
        &format!("/console/groups/inspections:write/users/{bob}/remove"),
        &[("csrf", &csrf)],
    );
    see_other(
        &r,
        "/console/groups/inspections:write?tab=users&done=removed",
    );
    let keys_tab = text(&v.get("/console/groups/vehicles:read?tab=api-keys"));
    assert!(keys_tab.contains("Dashboard"));
    assert_eq!(v.get("/console/groups/pilots").status, 404);

    // Audit log: filters and the chain indicator.
    let audit = text(&v.get("/console/audit"));
    assert!(audit.contains("chain verified"));
    assert!(audit.contains("group.member_added") && audit.contains("console.signed_in"));
    let filtered = text(&v.get("/console/audit?action=key.revoked"));
    assert!(filtered.contains("key.revoked") && !filtered.contains("group.member_added"));
    assert_eq!(v.get("/console/audit?since=yesterday").status, 422);

    // Sign-in successes and failures are audited.
    assert!(admin_audit(&server, &auditor, "console.sign_in_failed").len() >= 2);
    assert_eq!(admin_audit(&server, &auditor, "console.signed_in").len(), 1);

    // Sign out: the cookie is cleared and the session is gone for good.
    let old = v.cookie.clone().unwrap();
    let r = v.post("/console/sign-out", &[("csrf", &csrf)]);
    see_other(&r, "/console/sign-in");
    assert!(
        r.header("set-cookie")
            .is_some_and(|c| c.contains("Max-Age=0"))
    );
    v.cookie = Some(old);
    see_other(&v.get("/console/keys"), "/console/sign-in");
}

#[test]
fn console_access_follows_groups() {
    let kw = Kw::new();
    first_start(&kw);
    let bob = kw.cli_ok(&[
        "users",
        "create",
        "--email",
        "bob@example.com",
        "--group",
        "vehicles:read",
        "--json",
    ]);
    let bob: Value = serde_json::from_str(&bob).unwrap();
    let bob_password = bob["one_time_password"].as_str().unwrap().to_owned();
    let server = kw.serve(&[]);
    let mut v = Visitor::new(&server);
    see_other(
        &v.post(
            "/console/sign-in",
            &[("email", "bob@example.com"), ("password", &bob_password)],
        ),
        "/console/password",
    );
    let csrf = field(&text(&v.get("/console/password")), "csrf");
    see_other(
        &v.post(
            "/console/password",
            &[
                ("csrf", &csrf),
                ("current_password", &bob_password),
                ("new_password", "bob's long password"),
            ],
        ),
        "/console/keys",
    );
    // Bob's groups give him no keyward scope: every page says so in words.
    for path in [
        "/console/keys",
        "/console/keys/new",
        "/console/groups",
        "/console/audit",
    ] {
        let r = v.get(path);
        assert_eq!(r.status, 403, "{path}");
        assert!(text(&r).contains("Ask an administrator"), "{path}");
    }
    // A write he may not make is refused, and on record with what he lacks.
    let csrf = field(&text(&v.get("/console/password")), "csrf");
    let r = v.post("/console/keys", &[("csrf", &csrf), ("name", "mine")]);
    assert_eq!(r.status, 403);
    let r = v.post("/console/groups/administrators/users", &[("csrf", &csrf)]);
    assert_eq!(r.status, 403);
    let (_, auditor) = kw.key(&["--name", "auditor", "--scope", "keyward-audit:read"]);
    let refused = admin_audit(&server, &auditor, "console.request_refused");
    let mut lacking: Vec<String> = refused
        .iter()
        .map(|r| format!("{} {}", r["path"].as_str().unwrap(), r["required"]))
        .collect();
    lacking.sort();
    assert_eq!(
        lacking,
        [
            "/console/groups/administrators/users [\"keyward-groups:write\"]",
            "/console/keys [\"keyward-api-keys:write\"]",
        ]
    );
    assert!(refused.iter().all(|r| r["status"] == 403
        && r["details"]["reason"] == "missing_scopes"
        && r["actor"].as_str().unwrap().starts_with("user:")));
    // Throttling: five wrong passwords, then even the right one waits.
    let mut other = Visitor::new(&server);
    for _ in 0..5 {
        assert_eq!(
            other
                .post(
                    "/console/sign-in",
                    &[("email", "bob@example.com"), ("password", "guess")]
                )
                .status,
            401
        );
    }
    let r = other.post(
        "/console/sign-in",
        &[
            ("email", "bob@example.com"),
            ("password", "bob's long password"),
        ],
    );
    assert_eq!(r.status, 429);
    assert!(text(&r).contains("try again in 15 minutes"));
}

#[test]
fn broad_access_without_javascript() {
    let kw = Kw::new();
    let password = first_start(&kw);
    let server = kw.serve(&["--catalog", TRANSIT]);
    let mut v = Visitor::new(&server);
    v.post(
        "/console/sign-in",
        &[("email", "owner"), ("password", &password)],
    );
    let csrf = field(&text(&v.get("/console/password")), "csrf");
    v.post(
        "/console/password",
        &[
            ("csrf", &csrf),
            ("current_password", &password),
            ("new_password", "a long enough password"),
        ],
    );
    let sets = TRANSIT_BROAD_WRITE_SETS;
    let nonce = field(&text(&v.get("/console/keys/new")), "nonce");
    let mut fields = vec![
        ("csrf", csrf.as_str()),
        ("nonce", nonce.as_str()),
        ("name", "Everything"),
    ];
    fields.extend(sets.iter().map(|s| ("set", *s)));
    // Without the confirmation: refused, the form comes back with the
    // warning shown and the sets still chosen.
    let r = v.post("/console/keys", &fields);
    assert_eq!(r.status, 422);
    let page = text(&r);
    assert!(page.contains("Broad access not acknowledged"), "{page}");
    assert!(
        page.contains("id=\"broad-warning\" class=\"warning\" role=\"alert\">"),
        "shown"
    );
    assert_eq!(page.matches("checked>").count(), 11);
    let nonce = field(&page, "nonce");
    fields[1] = ("nonce", nonce.as_str());
    fields.push(("acknowledge_broad_access", "yes"));
    let r = v.post("/console/keys", &fields);
    assert_eq!(r.status, 201);
    assert!(text(&r).contains("Broad access: 11 write-capable permission sets"));
}

/// A NUL in a page's address (path or query) is a 400 page on both
/// backends, as in a form: PostgreSQL text cannot hold one, so it must never
/// reach the store (where it was a 500).
#[test]
fn console_refuses_nul_in_addresses_on_both_backends() {
    let mut nodes = vec![Kw::new()];
    nodes.extend(Kw::postgres("console_nul"));
    for kw in &nodes {
        let password = first_start(kw);
        let server = kw.serve(&[]);
        let mut v = owner_visitor(&server, &password);
        for path in [
            "/console/keys/key_a%00b",
            "/console/keys/%00",
            "/console/groups/administrators%00",
            "/console/groups/a%00?tab=users",
            "/console/audit?key_id=a%00",
            "/console/audit?actor=%00&action=key.created",
            "/console/keys?status=%00",
            "/console/keys?before=a%00b",
            "/console/groups/administrators?tab=users&done=%00",
        ] {
            let r = v.get(path);
            assert_eq!(r.status, 400, "{path}: {}", text(&r));
            assert!(text(&r).contains("NUL"), "{path}");
        }
        let csrf = field(&text(&v.get("/console/keys")), "csrf");
        for path in [
            "/console/keys/key_a%00/revoke",
            "/console/keys/key_a%00/roll",
            "/console/groups/a%00/users",
            "/console/groups/administrators/users/usr_%00/remove",
        ] {
            let r = v.post(path, &[("csrf", &csrf)]);
            assert_eq!(r.status, 400, "{path}: {}", text(&r));
        }
        // Every page, whether or not it reads its query; a POST is refused
        // before it acts.
        for path in [
            "/console/keys/new?x=%00",
            "/console/groups?x=%00",
            "/console/password?x=%00",
            "/console/sign-in?x=%00",
            "/console?x=%00",
            "/console/static/console.css?%00",
        ] {
            assert_eq!(v.get(path).status, 400, "{path}");
        }
        let (id, key) = kw.key(&["--name", "kept", "--scope", "vehicles:read"]);
        let r = v.post(
            &format!("/console/keys/{id}/revoke?a=%00"),
            &[("csrf", &csrf)],
        );
        assert_eq!(r.status, 400);
        assert_eq!(server.get("/vehicles", &key).status, 502, "not revoked");
        // The same ids without the NUL are simply not found.
        assert_eq!(v.get("/console/keys/key_ab").status, 404);
    }
}

/// The owner, signed in with a password of their own (the one-time one
/// replaced).
pub fn owner_visitor<'a>(server: &'a Server, password: &str) -> Visitor<'a> {
    let mut v = Visitor::new(server);
    see_other(
        &v.post(
            "/console/sign-in",
            &[("email", "owner"), ("password", password)],
        ),
        "/console/password",
    );
    let csrf = field(&text(&v.get("/console/password")), "csrf");
    see_other(
        &v.post(
            "/console/password",
            &[
                ("csrf", &csrf),
                ("current_password", password),
                ("new_password", "the owner's long password"),
            ],
        ),
        "/console/keys",
    );
    v
}

#[test]
fn the_console_sets_and_shows_a_keys_limits() {
    let kw = Kw::new();
    let password = first_start(&kw);
    let server = kw.serve(&[]);
    let mut v = owner_visitor(&server, &password);
    let form = text(&v.get("/console/keys/new"));
    assert!(form.contains("Rate limits and quotas") && form.contains("Allowed networks"));
    let (csrf, nonce) = (field(&form, "csrf"), field(&form, "nonce"));
    // A bad limit is refused in words, the form kept as sent.
    let r = v.post(
        "/console/keys",
        &[
            ("csrf", &csrf),
            ("nonce", &nonce),
            ("name", "Limited"),
            ("set", "vehicles:read"),
            ("limits", "burst=100/1m\nmonthly=0/30d"),
            ("allowed_cidrs", "203.0.113.0/24"),
        ],
    );
    assert_eq!(r.status, 422);
    let page = text(&r);
    assert!(
        page.contains("Limits.requests: must be at least 1."),
        "{page}"
    );
    assert!(
        page.contains("monthly=0/30d"),
        "the form keeps what was sent"
    );
    let nonce = field(&page, "nonce");
    let created = v.post(
        "/console/keys",
        &[
            ("csrf", &csrf),
            ("nonce", &nonce),
            ("name", "Limited"),
            ("set", "vehicles:read"),
            ("limits", "burst=100/60s\r\nmonthly=100000/30d"),
            ("allowed_cidrs", "203.0.113.0/24, 2001:db8::/32"),
        ],
    );
    assert_eq!(created.status, 201);
    let list = text(&v.get("/console/keys"));
    let id = first_key_id(&list);
    let detail = text(&v.get(&format!("/console/keys/{id}")));
    for needle in [
        "<code>burst</code>: 100 per 1m",
        "<code>monthly</code>: 100000 per 30d",
        "<code>203.0.113.0/24</code>",
        "<code>2001:db8::/32</code>",
    ] {
        assert!(detail.contains(needle), "{needle}");
    }
}

/// The id of the first key a list page links to.
fn first_key_id(list: &str) -> String {
    list.split("href=\"/console/keys/key_")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .map(|s| format!("key_{s}"))
        .unwrap()
}
