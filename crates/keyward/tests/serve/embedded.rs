//! keyward inside a Rust service (SPEC §12, issue 21): `keyward-embed`'s
//! layer in front of a real axum service on a real socket, over the same
//! database as a real `keyward serve`: the same answers as the gateway for
//! the whole fleet table, a CLI revocation refused within a second, and
//! the audit records the gateway would write.

use crate::harness::{Kw, PREFIX, Resp, Upstream, raw, req, until};
use crate::upstream_flag;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;

/// A fleet API protected by the embedded layer, on its own runtime.
struct Protected {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Protected {
    fn start(kw: &Kw) -> Self {
        use axum::extract::Extension;
        use keyward_embed::{Caller, Options, Verifier};
        let url = kw.url();
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let verifier = Verifier::open(&url, Options::default()).await.unwrap();
                // The service: says who called and what it saw.
                let app = axum::Router::new()
                    .fallback(
                        |Extension(caller): Extension<Caller>, req: axum::extract::Request| async move {
                            let status = req
                                .headers()
                                .get("x-answer")
                                .and_then(|v| v.to_str().ok()?.parse().ok())
                                .unwrap_or(200);
                            let body = json!({
                                "key_id": caller.key_id(),
                                "org_id": caller.org_id(),
                                "scopes": caller.scopes().collect::<Vec<_>>(),
                                "authorization": req.headers().get("authorization").is_some(),
                                "forged": req.headers().get("x-keyward-key-id").is_some(),
                                "headers": req.headers().keys().map(|n| n.as_str().to_owned()).collect::<Vec<_>>(),
                            });
                            (
                                axum::http::StatusCode::from_u16(status).unwrap(),
                                axum::Json(body),
                            )
                        },
                    )
                    .layer(verifier.layer());
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
                verifier.shutdown().await;
            });
        });
        let addr = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        Protected {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn send(&self, r: crate::harness::Req) -> Resp {
        raw(self.addr, &r.bytes())
    }

    /// Stops serving and waits for the verifier's last writes.
    fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Protected {
    fn drop(&mut self) {
        self.stop();
    }
}

fn body_json(r: &Resp) -> Value {
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

#[test]
fn the_embedded_layer_answers_as_the_gateway_and_audits_the_same() {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let matrix = crate::authorize::MatrixKeys::make(&kw);
    let (ro, full_id, full) = (
        matrix.ro.as_str(),
        matrix.full_id.as_str(),
        matrix.full.as_str(),
    );
    let server = kw.serve(&["--upstream", &upstream_flag(&up)]);
    let mut api = Protected::start(&kw);
    let keys = matrix.keys();
    let mut compared = 0;
    for (method, path) in crate::authorize::fleet_requests(&kw) {
        for key in &keys {
            let mut r = req(&method, &path);
            if let Some(k) = key {
                r = r.bearer(k);
            }
            let (gateway, embedded) = (r.send(&server), api.send(r));
            let what = format!("{method} {path} with {key:?}");
            assert_eq!(embedded.status, gateway.status, "{what}");
            if gateway.status != 200 {
                assert_eq!(body_json(&embedded), body_json(&gateway), "{what}");
                assert_eq!(
                    embedded.header("www-authenticate"),
                    gateway.header("www-authenticate"),
                    "{what}"
                );
            }
            compared += 1;
        }
    }
    assert!(compared > 250, "{compared}");

    // Allowed: the caller in the extensions; no key, no forged identity.
    let r = api.send(
        req("DELETE", &format!("{PREFIX}/vehicles/7"))
            .bearer(full)
            .header("X-Keyward-Key-Id", "key_forged")
            .header("X-Answer", "204"),
    );
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("x-request-id").is_some());
    let r = api.send(
        req("GET", &format!("{PREFIX}/vehicles"))
            .bearer(full)
            .header("X-Keyward-Key-Id", "key_forged")
            // What the service could act on instead of what was judged:
            // stripped, as the gateway strips it.
            .header("X-HTTP-Method-Override", "DELETE")
            .header("X-Original-URL", "/api/third-party/v1/damages")
            .header("X_Keyward_Scopes", "keyward-admin")
            .header("X-Keyward-Status", "200")
            .header("X-Trace", "kept"),
    );
    let seen = r.json();
    let names = seen["headers"].as_array().unwrap();
    assert!(names.contains(&json!("x-trace")), "{seen}");
    for stripped in [
        "x-http-method-override",
        "x-original-url",
        "x_keyward_scopes",
        "x-keyward-status",
    ] {
        assert!(!names.contains(&json!(stripped)), "{stripped}: {seen}");
    }
    assert_eq!(seen["key_id"], full_id, "{seen}");
    assert_eq!(seen["authorization"], false, "the key reached the service");
    assert_eq!(
        seen["forged"], false,
        "a forged identity header reached the service"
    );
    assert!(
        seen["scopes"]
            .as_array()
            .unwrap()
            .contains(&json!("vehicles:write"))
    );

    // Audited as the gateway audits: the write with the service's status,
    // the 403.
    let forbidden = api.send(
        req("POST", &format!("{PREFIX}/inspections"))
            .bearer(ro)
            .body(b"{}"),
    );
    assert_eq!(forbidden.status, 403);
    api.stop();
    let rows = crate::audit_rows(&kw);
    let by_full: Vec<_> = rows
        .iter()
        .filter(|r| {
            r.0 == format!("key:{full_id}")
                && r.1 == "DELETE"
                && r.2 == format!("{PREFIX}/vehicles/7")
        })
        .collect();
    assert!(
        by_full.iter().any(|r| r.3 == 204),
        "the write audited with the service's status: {rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.1 == "POST" && r.3 == 403 && r.2 == format!("{PREFIX}/inspections")),
        "{rows:?}"
    );
    let verified = kw.cli_ok(&["audit", "verify"]);
    assert!(!verified.contains("broken"), "{verified}");
}

#[test]
fn a_key_revoked_in_the_database_is_refused_in_process_within_a_second() {
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    let (id, key) = kw.key(&["--name", "integration", "--scope", "vehicles:read"]);
    let api = Protected::start(&kw);
    let get = || api.send(req("GET", &format!("{PREFIX}/vehicles")).bearer(&key));
    assert_eq!(get().status, 200);
    // A key created after the start is known at once (looked up by its
    // digest on first sight).
    let (_, later) = kw.key(&["--name", "later", "--scope", "vehicles:read"]);
    assert_eq!(
        api.send(req("GET", &format!("{PREFIX}/vehicles/1")).bearer(&later))
            .status,
        200
    );
    kw.cli_ok(&["keys", "revoke", &id]);
    let took = until(Duration::from_secs(1), "the revocation in process", || {
        get().status == 401
    });
    eprintln!(
        "revoked key refused in process {} ms after the CLI returned",
        took.as_millis()
    );
    let e = get().error(401, "UNAUTHORIZED");
    assert_eq!(e["details"]["reason"], "revoked");
}
