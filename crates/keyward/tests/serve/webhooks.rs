//! Webhooks (SPEC §10, issue 19) over real sockets, to a real receiving
//! HTTP server in the test: refusals by class, Standard Webhooks signatures
//! checked by an independent implementation (Python's standard library),
//! order per key through a receiver outage, a delivering node killed with
//! SIGKILL mid-delivery, and two PostgreSQL nodes sharing the work.

use crate::harness::{Kw, Server, req, until};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the receiver answers.
const UP: u8 = 0;
const DOWN: u8 = 1;
const HOLD: u8 = 2;
/// Answers 307, sending the sender to [`REDIRECT_TO`].
const REDIRECT: u8 = 3;

/// Where a receiver in [`REDIRECT`] mode points.
static REDIRECT_TO: Mutex<String> = Mutex::new(String::new());

/// One request the receiver answered 2xx.
#[derive(Clone, Debug)]
struct Got {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

impl Got {
    fn doc(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// A webhook receiver: answers 204 (up), 503 (down), or holds each request
/// until the mode changes (hold); records what it accepted.
struct Receiver {
    url: String,
    mode: Arc<AtomicU8>,
    got: Arc<Mutex<Vec<Got>>>,
    /// Requests received, answered or not.
    seen: Arc<AtomicUsize>,
    /// Requests being held now.
    held: Arc<AtomicUsize>,
}

impl Receiver {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/hooks/keyward", listener.local_addr().unwrap());
        let r = Receiver {
            url,
            mode: Arc::default(),
            got: Arc::default(),
            seen: Arc::default(),
            held: Arc::default(),
        };
        let (mode, got, seen, held) = (
            r.mode.clone(),
            r.got.clone(),
            r.seen.clone(),
            r.held.clone(),
        );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(listener, mode, got, seen, held));
        });
        r
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    fn ids(&self) -> Vec<String> {
        self.got().into_iter().map(|g| g.id).collect()
    }
}

async fn serve(
    listener: std::net::TcpListener,
    mode: Arc<AtomicU8>,
    got: Arc<Mutex<Vec<Got>>>,
    seen: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (mode, got, seen, held) = (mode.clone(), got.clone(), seen.clone(), held.clone());
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (mode, got, seen, held) =
                        (mode.clone(), got.clone(), seen.clone(), held.clone());
                    async move {
                        let header = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned()
                        };
                        let (id, timestamp, signature) = (
                            header("webhook-id"),
                            header("webhook-timestamp"),
                            header("webhook-signature"),
                        );
                        assert_eq!(header("content-type"), "application/json");
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        seen.fetch_add(1, Ordering::SeqCst);
                        if mode.load(Ordering::SeqCst) == HOLD {
                            held.fetch_add(1, Ordering::SeqCst);
                            while mode.load(Ordering::SeqCst) == HOLD {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            held.fetch_sub(1, Ordering::SeqCst);
                        }
                        let now = mode.load(Ordering::SeqCst);
                        let status = if now == DOWN {
                            503
                        } else if now == REDIRECT {
                            307
                        } else {
                            got.lock().unwrap().push(Got {
                                id,
                                timestamp,
                                signature,
                                body: String::from_utf8(body.to_vec()).unwrap(),
                            });
                            204
                        };
                        let mut res =
                            hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                        *res.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        if status == 307 {
                            let to = REDIRECT_TO.lock().unwrap().clone();
                            res.headers_mut().insert("location", to.parse().unwrap());
                        }
                        Ok::<_, std::convert::Infallible>(res)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Checks every signature with Python's standard library: an
/// implementation of the Standard Webhooks scheme that shares no code with
/// keyward's.
fn verify_independently(secret: &str, got: &[Got]) {
    let messages: Vec<Value> = got
        .iter()
        .map(|g| json!([g.id, g.timestamp, g.signature, g.body]))
        .collect();
    let script = r#"
import base64, hashlib, hmac, json, sys
secret, messages = json.load(sys.stdin)
assert secret.startswith("whsec_")
key = base64.b64decode(secret[len("whsec_"):])
for (msg_id, ts, header, body) in messages:
    signed = ("%s.%s.%s" % (msg_id, ts, body)).encode()
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [s.split(",", 1)[1] for s in header.split(" ") if s.startswith("v1,")]
    assert any(hmac.compare_digest(expected, g) for g in given), (msg_id, header, expected)
print(len(messages))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the independent signature check");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(json!([secret, messages]).to_string().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "signatures did not verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        got.len().to_string()
    );
}

fn settings_key(kw: &Kw) -> String {
    kw.key(&[
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
    ])
    .1
}

/// The audit log's records of `action`, as the API answers them.
fn audited(server: &Server, key: &str, action: &str) -> String {
    let r = req("GET", &format!("/v1/audit?action={action}"))
        .bearer(key)
        .send(server);
    assert_eq!(r.status, 200);
    String::from_utf8(r.body).unwrap()
}

/// `keyward webhooks create URL --event EVENTS --allow-private --json`
/// (the CLI, as an operator would), its answer.
fn hook_via_cli(kw: &Kw, url: &str, events: &str) -> Value {
    let out = kw.cli_ok(&[
        "webhooks",
        "create",
        url,
        "--event",
        events,
        "--allow-private",
        "--json",
    ]);
    serde_json::from_str(&out).unwrap()
}

fn create(server: &Server, key: &str, body: &Value) -> crate::harness::Resp {
    req("POST", "/v1/webhooks")
        .bearer(key)
        .json(body)
        .send(server)
}

/// The seq of a `msg_<seq>` id: the audit position, which orders events.
fn seq(id: &str) -> i64 {
    id.strip_prefix("msg_").unwrap().parse().unwrap()
}

#[test]
fn bad_webhooks_are_refused_by_class_and_name_the_field() {
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    let key = settings_key(&kw);
    let (_, reader) = kw.key(&["--name", "reader", "--scope", "keyward-settings:read"]);
    let server = kw.serve(&[]);
    let events = json!(["key.created"]);
    for url in [
        // Not http(s).
        "ftp://hooks.example.com/",
        "file:///etc/passwd",
        "gopher://hooks.example.com/",
        "javascript:alert(1)",
        "hooks.example.com/in",
        "//hooks.example.com/in",
        "",
        // Credentials.
        "https://user:pw@hooks.example.com/",
        "https://user@hooks.example.com/",
        "https://hooks.example.com@127.0.0.1/",
        // Private, loopback and link-local, in every spelling.
        "http://127.0.0.1/",
        "http://127.0.0.1:8080/in",
        "http://localhost/",
        "http://LOCALHOST./",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://[fe80::1]/",
        "http://[fd00::1]/",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://0177.0.0.1/",
        "http://127.1/",
        // Malformed.
        "https://hooks.example.com/#x",
        "https://hooks example.com/",
        "https://hooks.example.com:99999/",
        "https://[::1/",
        "https://hooks.example.com\\@127.0.0.1/",
        "https://h\u{e9}.example.com/",
    ] {
        let e = create(&server, &key, &json!({"url": url, "events": events}))
            .error(422, "VALIDATION_FAILED");
        assert_eq!(e["details"]["field"], "url", "{url}: {e}");
    }
    let e = create(
        &server,
        &key,
        &json!({"url": "http://[::1]/", "events": events}),
    )
    .error(422, "VALIDATION_FAILED");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("--allow-private-webhooks"),
        "{e}"
    );

    // Unknown events: every one listed.
    let e = create(
        &server,
        &key,
        &json!({"url": "https://hooks.example.com/", "events": ["key.created", "key.deleted", "Key.Created", "*"]}),
    )
    .error(422, "VALIDATION_FAILED");
    assert_eq!(e["details"]["field"], "events");
    let message = e["message"].as_str().unwrap();
    for name in ["`key.deleted`", "`Key.Created`", "`*`"] {
        assert!(message.contains(name), "{message}");
    }
    assert!(!message.contains("`key.created`"), "{message}");
    for (body, field) in [
        (
            json!({"url": "https://hooks.example.com/", "events": []}),
            "events",
        ),
        (json!({"url": "https://hooks.example.com/"}), "events"),
        (json!({"events": ["key.created"]}), "url"),
        (json!({"url": 7, "events": ["key.created"]}), "url"),
        (
            json!({"url": "https://hooks.example.com/", "events": "key.created"}),
            "events",
        ),
        (
            json!({"url": "https://hooks.example.com/", "events": ["key.created"], "description": "x".repeat(1001)}),
            "description",
        ),
        (
            json!({"url": "https://hooks.example.com/", "events": ["key.created"], "secret": "whsec_mine"}),
            "secret",
        ),
    ] {
        let e = create(&server, &key, &body).error(422, "VALIDATION_FAILED");
        assert_eq!(e["details"]["field"], field, "{body}: {e}");
    }
    create(
        &server,
        &reader,
        &json!({"url": "https://hooks.example.com/", "events": events}),
    )
    .error(403, "FORBIDDEN");
    req("GET", "/v1/webhooks/wh_nope/deliveries")
        .bearer(&key)
        .send(&server)
        .error(404, "NOT_FOUND");
    req("DELETE", "/v1/webhooks/wh_nope")
        .bearer(&key)
        .send(&server)
        .error(404, "NOT_FOUND");
    // Nothing was created, and the CLI refuses the same way.
    let list = req("GET", "/v1/webhooks")
        .bearer(&reader)
        .send(&server)
        .json();
    assert_eq!(list["data"], json!([]));
    let out = kw.cli(&[
        "webhooks",
        "create",
        "http://127.0.0.1:9/",
        "--event",
        "key.created",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("url: points to a non-public address"));
}

#[test]
fn events_are_signed_delivered_in_order_and_retried_after_an_outage() {
    // Several servers and timed waits: kept apart from the timing tests.
    let _heavy = crate::harness::heavy();
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    let key = settings_key(&kw);
    let receiver = Receiver::start();
    let server = kw.serve(&["--allow-private-webhooks", "--webhook-timeout", "2s"]);
    let created = create(
        &server,
        &key,
        &json!({"url": receiver.url, "events": ["key.created", "key.rolled", "key.revoked"], "description": "ops"}),
    );
    assert_eq!(
        created.status,
        201,
        "{:?}",
        String::from_utf8_lossy(&created.body)
    );
    let created = created.json();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let hook = created["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(created["status"], "enabled");
    // The secret is shown once: never listed, never audited.
    let listed = req("GET", "/v1/webhooks").bearer(&key).send(&server);
    assert!(!String::from_utf8_lossy(&listed.body).contains(&secret));
    assert_eq!(listed.json()["data"][0]["id"], hook.as_str());
    let audit = audited(&server, &key, "webhook.created");
    assert!(audit.contains(&hook) && !audit.contains(&secret), "{audit}");

    // Up: every event arrives once, signed, in order, without a full key.
    let (a, a_key) = kw.key(&["--name", "a", "--scope", "vehicles:read"]);
    let (b, _) = kw.key(&["--name", "b", "--scope", "vehicles:read"]);
    kw.cli_ok(&["keys", "revoke", &a]);
    until(Duration::from_secs(10), "three events delivered", || {
        receiver.got().len() >= 3
    });
    let got = receiver.got();
    let kinds: Vec<(String, String)> = got
        .iter()
        .map(|g| {
            let d = g.doc();
            (
                d["type"].as_str().unwrap().to_owned(),
                d["data"]["key_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("key.created".to_owned(), a.clone()),
            ("key.created".to_owned(), b.clone()),
            ("key.revoked".to_owned(), a.clone()),
        ]
    );
    for g in &got {
        let d = g.doc();
        assert!(!g.body.contains(&a_key));
        assert!(d["org_id"].as_str().unwrap().starts_with("org_"));
        assert!(d["timestamp"].as_str().unwrap().ends_with('Z'));
    }
    verify_independently(&secret, &got);

    // Down (503): the first event keeps failing, and nothing after it is
    // sent; back up, everything arrives in order.
    receiver.set(DOWN);
    let (c, _) = kw.key(&["--name", "c", "--scope", "vehicles:read"]);
    let rolled: Value =
        serde_json::from_str(&kw.cli_ok(&["keys", "roll", &c, "--json", "--grace", "0s"])).unwrap();
    let c2 = rolled["id"].as_str().unwrap().to_owned();
    kw.cli_ok(&["keys", "revoke", &c2]);
    let before = receiver.seen.load(Ordering::SeqCst);
    until(Duration::from_secs(10), "a refused attempt", || {
        receiver.seen.load(Ordering::SeqCst) > before
    });
    let page = req("GET", &format!("/v1/webhooks/{hook}/deliveries"))
        .bearer(&key)
        .send(&server)
        .json();
    let listed = req("GET", "/v1/webhooks").bearer(&key).send(&server).json();
    assert_eq!(listed["data"][0]["status"], "failing", "{listed}");
    assert_eq!(listed["data"][0]["pending"], 3, "{listed}");
    let newest_first: Vec<&str> = page["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["status"].as_str().unwrap())
        .collect();
    assert_eq!(newest_first[newest_first.len() - 3..], ["delivered"; 3]);
    receiver.set(UP);
    // The retry waits out the back-off (5 s after the first failure).
    until(Duration::from_secs(30), "the backlog delivered", || {
        receiver.got().len() >= 6
    });
    let got = receiver.got();
    let seqs: Vec<i64> = got.iter().map(|g| seq(&g.id)).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        seqs, sorted,
        "delivered once each, in the order they happened"
    );
    let after: Vec<(String, Option<String>)> = got[3..]
        .iter()
        .map(|g| {
            let d = g.doc();
            (
                d["type"].as_str().unwrap().to_owned(),
                d["data"]["key_id"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        after,
        [
            ("key.created".to_owned(), Some(c.clone())),
            ("key.rolled".to_owned(), Some(c.clone())),
            ("key.revoked".to_owned(), Some(c2.clone())),
        ]
    );
    verify_independently(&secret, &got);
    let page = req("GET", &format!("/v1/webhooks/{hook}/deliveries?limit=3"))
        .bearer(&key)
        .send(&server)
        .json();
    let first_failed = &page["deliveries"][2];
    assert_eq!(first_failed["type"], "key.created", "{page}");
    let attempts: Vec<Value> = first_failed["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].clone())
        .collect();
    assert!(attempts.len() >= 2, "{page}");
    assert_eq!(attempts[0], 503);
    assert_eq!(attempts[attempts.len() - 1], 204);
    assert!(page["next_before"].is_i64(), "{page}");
    let listed = req("GET", "/v1/webhooks").bearer(&key).send(&server).json();
    assert_eq!(listed["data"][0]["status"], "enabled", "{listed}");
    assert_eq!(listed["data"][0]["pending"], 0, "{listed}");

    // A receiver that does not answer never slows a request: a key is
    // created while it holds a delivery.
    receiver.set(HOLD);
    let held = kw.key(&["--name", "held", "--scope", "vehicles:read"]).0;
    until(Duration::from_secs(10), "a delivery held", || {
        receiver.held.load(Ordering::SeqCst) > 0
    });
    let made = req("POST", "/v1/keys")
        .bearer(&key)
        .json(&json!({"name": "while held", "scopes": ["vehicles:read"]}))
        .send(&server);
    assert_eq!(made.status, 201);
    assert!(
        receiver.held.load(Ordering::SeqCst) > 0,
        "answered while the receiver holds"
    );
    receiver.set(UP);
    until(Duration::from_secs(30), "the held events delivered", || {
        receiver
            .got()
            .iter()
            .any(|g| g.doc()["data"]["name"] == "while held")
    });
    assert!(
        receiver
            .got()
            .iter()
            .any(|g| g.doc()["data"]["key_id"] == held.as_str())
    );

    // Deleting stops deliveries (audited).
    let gone = req("DELETE", &format!("/v1/webhooks/{hook}"))
        .bearer(&key)
        .send(&server)
        .json();
    assert_eq!(gone["deleted"], true);
    let n = receiver.got().len();
    kw.key(&["--name", "after", "--scope", "vehicles:read"]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(receiver.got().len(), n);
    let audit = audited(&server, &key, "webhook.deleted");
    assert!(audit.contains(&hook), "{audit}");
}

#[test]
fn a_node_killed_mid_delivery_loses_nothing() {
    // Several servers and timed waits: kept apart from the timing tests.
    let _heavy = crate::harness::heavy();
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    let receiver = Receiver::start();
    let secret = hook_via_cli(&kw, &receiver.url, "key.created")["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let flags = ["--allow-private-webhooks", "--webhook-timeout", "1s"];
    let mut first = kw.serve(&flags);
    receiver.set(HOLD);
    let ids: Vec<String> = (0..3)
        .map(|i| {
            kw.key(&["--name", &format!("k{i}"), "--scope", "vehicles:read"])
                .0
        })
        .collect();
    until(Duration::from_secs(10), "the first delivery held", || {
        receiver.held.load(Ordering::SeqCst) > 0
    });
    // SIGKILL: no shutdown, its lease left behind.
    let mut child = first.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    receiver.set(UP);
    let _second = kw.serve(&flags);
    until(
        Duration::from_secs(30),
        "every event delivered by the restart",
        || {
            let got: Vec<String> = receiver
                .got()
                .iter()
                .filter_map(|g| g.doc()["data"]["key_id"].as_str().map(str::to_owned))
                .collect();
            ids.iter().all(|id| got.contains(id))
        },
    );
    verify_independently(&secret, &receiver.got());
    let list: Value = serde_json::from_str(&kw.cli_ok(&["webhooks", "list", "--json"])).unwrap();
    assert_eq!(list[0]["pending"], 0, "{list}");
}

#[test]
fn two_postgres_nodes_never_both_deliver_and_survive_a_kill() {
    // Several servers and timed waits: kept apart from the timing tests.
    let _heavy = crate::harness::heavy();
    let Some(kw) = Kw::postgres("webhooks") else {
        return;
    };
    kw.cli_ok(&["migrate"]);
    let receiver = Receiver::start();
    let hook = hook_via_cli(&kw, &receiver.url, "key.created,key.revoked")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let flags = ["--allow-private-webhooks", "--webhook-timeout", "1s"];
    let mut a = kw.serve(&flags);
    let _b = kw.serve(&flags);
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            kw.key(&["--name", &format!("k{i}"), "--scope", "vehicles:read"])
                .0,
        );
    }
    until(Duration::from_secs(20), "twenty events delivered", || {
        receiver.got().len() >= 20
    });
    std::thread::sleep(Duration::from_secs(1));
    let got = receiver.ids();
    let mut unique = got.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        got.len(),
        "an event was delivered twice: {got:?}"
    );
    assert_eq!(got.len(), 20);

    // Kill one node while it holds a delivery: the other takes over once
    // its lease runs out; nothing is lost.
    receiver.set(HOLD);
    for id in &ids[..3] {
        kw.cli_ok(&["keys", "revoke", id]);
    }
    until(Duration::from_secs(10), "a delivery held", || {
        receiver.held.load(Ordering::SeqCst) > 0
    });
    let mut child = a.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    receiver.set(UP);
    until(Duration::from_secs(40), "the revocations delivered", || {
        receiver
            .got()
            .iter()
            .filter(|g| g.doc()["type"] == "key.revoked")
            .count()
            >= 3
    });
    let page: Value = serde_json::from_str(&kw.cli_ok(&[
        "webhooks",
        "deliveries",
        &hook,
        "--json",
        "--limit",
        "200",
    ]))
    .unwrap();
    let deliveries = page["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 23);
    assert!(
        deliveries.iter().all(|d| d["status"] == "delivered"),
        "{page}"
    );
    // Every attempt has its own number: no two nodes made the same one.
    for d in deliveries {
        let numbers: Vec<i64> = d["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["attempt"].as_i64().unwrap())
            .collect();
        assert_eq!(
            numbers,
            (1..=numbers.len() as i64).collect::<Vec<_>>(),
            "{d}"
        );
    }
}

#[test]
fn one_organizations_hanging_receivers_do_not_hold_up_another() {
    // Several servers and timed waits: kept apart from the timing tests.
    let _heavy = crate::harness::heavy();
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    kw.cli_ok(&["orgs", "create", "Other"]);
    let hanging = Receiver::start();
    let healthy = Receiver::start();
    hanging.set(HOLD);
    for _ in 0..6 {
        kw.cli_ok(&[
            "webhooks",
            "create",
            &hanging.url,
            "--event",
            "key.created",
            "--allow-private",
        ]);
    }
    kw.cli_ok(&[
        "--org",
        "other",
        "webhooks",
        "create",
        &healthy.url,
        "--event",
        "key.created",
        "--allow-private",
    ]);
    let _server = kw.serve(&["--allow-private-webhooks", "--webhook-timeout", "30s"]);
    kw.key(&["--name", "noisy", "--scope", "vehicles:read"]);
    until(
        Duration::from_secs(10),
        "the hanging receivers hold deliveries",
        || hanging.held.load(Ordering::SeqCst) >= 3,
    );
    let other = kw
        .key(&[
            "--org",
            "other",
            "--name",
            "quiet",
            "--scope",
            "vehicles:read",
        ])
        .0;
    until(
        Duration::from_secs(10),
        "the other organization's event",
        || {
            healthy
                .got()
                .iter()
                .any(|g| g.doc()["data"]["key_id"] == other.as_str())
        },
    );
    // Still held: the other organization did not wait for them.
    assert!(hanging.held.load(Ordering::SeqCst) >= 3);
    // And one organization holds at most three deliveries at once.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hanging.held.load(Ordering::SeqCst), 3);
    hanging.set(UP);
}

#[test]
fn redirects_are_not_followed() {
    // Several servers and timed waits: kept apart from the timing tests.
    let _heavy = crate::harness::heavy();
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    let first = Receiver::start();
    let elsewhere = Receiver::start();
    *REDIRECT_TO.lock().unwrap() = elsewhere.url.clone();
    first.set(REDIRECT);
    let hook = hook_via_cli(&kw, &first.url, "key.created")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let _server = kw.serve(&["--allow-private-webhooks", "--webhook-timeout", "2s"]);
    kw.key(&["--name", "k", "--scope", "vehicles:read"]);
    let page = || -> Value {
        serde_json::from_str(&kw.cli_ok(&["webhooks", "deliveries", &hook, "--json"])).unwrap()
    };
    until(
        Duration::from_secs(10),
        "a redirected attempt recorded",
        || page()["deliveries"][0]["attempts"][0].is_object(),
    );
    let page = page();
    let attempt = &page["deliveries"][0]["attempts"][0];
    assert!(
        attempt["error"]
            .as_str()
            .unwrap()
            .contains("redirects are not followed"),
        "{page}"
    );
    assert_eq!(page["deliveries"][0]["status"], "pending");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        elsewhere.seen.load(Ordering::SeqCst),
        0,
        "the redirect was not followed"
    );
}
