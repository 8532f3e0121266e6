//! Leaked keys (SPEC §11, issue 20): `keyward scan` over a real tree, then
//! the gateway of a real server refusing what `--revoke` revoked.

use crate::harness::{Kw, Upstream, req};
use crate::{foreign_key, upstream_flag};
use serde_json::Value;

/// `keyward scan ARGS…` with `input` on its standard input.
fn scan_piped(kw: &Kw, args: &[&str], input: &[u8]) -> std::process::Output {
    use std::io::Write as _;
    let mut child = std::process::Command::new(crate::harness::BIN)
        .arg("scan")
        .args(args)
        .env("KEYWARD_DATABASE_URL", kw.url())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// A key with a valid shape and a checksum that does not match.
fn broken(key: &str) -> String {
    let mut k = key.to_owned();
    let last = k.pop().unwrap();
    k.push(if last == 'A' { 'B' } else { 'A' });
    k
}

#[test]
fn scan_finds_live_revoked_and_unknown_keys_and_revoke_stops_them() {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (live_id, live) = kw.key(&["--name", "live", "--scope", "vehicles:read"]);
    let (old_id, old) = kw.key(&["--name", "old", "--scope", "vehicles:read"]);
    kw.cli_ok(&["keys", "revoke", &old_id]);
    let (_, audit_key) = kw.key(&["--name", "auditor", "--scope", "keyward-audit:read"]);
    let unknown = foreign_key();
    let tree = kw.dir.path().join("tree");
    std::fs::create_dir_all(tree.join("src/deep/er")).unwrap();
    std::fs::create_dir_all(tree.join(".git/objects")).unwrap();
    std::fs::write(
        tree.join("src/deep/er/settings.py"),
        format!("# config\nDEBUG = True\nAPI_KEY = \"{live}\"\nOTHER = '{unknown}'\n"),
    )
    .unwrap();
    std::fs::write(
        tree.join("README.md"),
        format!("old: {old}\nnot one: {}\n", broken(&live)),
    )
    .unwrap();
    // A file whose name holds a key: its name is shown redacted.
    std::fs::write(tree.join(format!("n-{old}.txt")), format!("{unknown}\n")).unwrap();
    // Binary files and git internals are not read.
    let mut blob = b"\x00\x01binary".to_vec();
    blob.extend_from_slice(live.as_bytes());
    std::fs::write(tree.join("image.png"), blob).unwrap();
    std::fs::write(tree.join(".git/objects/pack"), live.as_bytes()).unwrap();
    let tree_arg = tree.display().to_string();

    let out = kw.cli(&["scan", &tree_arg, "--json"]);
    assert_eq!(out.status.code(), Some(1), "a live key was found");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    for secret in [&live, &old, &unknown] {
        assert!(
            !stdout.contains(secret.as_str()) && !stderr.contains(secret.as_str()),
            "a full key was printed"
        );
    }
    assert!(stderr.contains("1 skipped as binary"), "{stderr}");
    let found: Value = serde_json::from_str(&stdout).unwrap();
    let rows: Vec<(String, String, Option<String>)> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["place"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_owned(),
                f["status"].as_str().unwrap().to_owned(),
                f["key_id"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                "README.md:1".to_owned(),
                "revoked".to_owned(),
                Some(old_id.clone())
            ),
            (
                format!("n-{}….txt:1", &old[..14]),
                "unknown".to_owned(),
                None
            ),
            (
                "settings.py:3".to_owned(),
                "live".to_owned(),
                Some(live_id.clone())
            ),
            ("settings.py:4".to_owned(), "unknown".to_owned(), None),
        ]
    );
    assert_eq!(found[2]["display_prefix"], live[..14]);

    // Standard input, as `git log -p | keyward scan -` feeds it.
    let out = scan_piped(&kw, &["-"], format!("+ added\n+ token={live}\n").as_bytes());
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("(stdin):2") && table.contains("live"),
        "{table}"
    );

    // The key works, then --revoke stops it.
    let server = kw.serve(&["--upstream", &upstream_flag(&up)]);
    assert_eq!(server.get("/vehicles", &live).status, 200);
    let out = kw.cli(&["scan", &tree_arg, "--revoke", "--json"]);
    assert_eq!(out.status.code(), Some(1), "it was live when found");
    let found: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(found[2]["revoked_now"], true, "{found}");
    assert_eq!(found[2]["status"], "revoked");
    crate::harness::until(
        std::time::Duration::from_secs(5),
        "the gateway refuses the key",
        || server.get("/vehicles", &live).status == 401,
    );
    let shown: Value =
        serde_json::from_str(&kw.cli_ok(&["keys", "show", &live_id, "--json"])).unwrap();
    assert_eq!(shown["flags"], serde_json::json!(["leaked"]), "{shown}");
    for (action, want) in [("key.revoked", "leaked"), ("key.leaked", "scan")] {
        let r = audit(&server, &audit_key, action, &live_id);
        let record = &r["data"][0];
        let field = if action == "key.revoked" {
            "reason"
        } else {
            "source"
        };
        assert_eq!(record["details"][field], want, "{r}");
        assert!(
            record["details"]["where"]
                .as_str()
                .unwrap()
                .ends_with("settings.py:3"),
            "{r}"
        );
    }
    // Found again: revoked now, nothing live, exit 0.
    let out = kw.cli(&["scan", &tree_arg]);
    assert_eq!(out.status.code(), Some(0));
}

/// GitHub's side of secret scanning: a key pair made here, its public half
/// in a key file of the shape GitHub publishes.
mod github {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::EncodePublicKey as _;

    pub fn signer(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32].into()).unwrap()
    }

    pub fn key_file(keys: &[(&str, &SigningKey)]) -> String {
        let listed: Vec<serde_json::Value> = keys
            .iter()
            .map(|(id, k)| {
                serde_json::json!({
                    "key_identifier": id,
                    "key": k.verifying_key().to_public_key_pem(Default::default()).unwrap(),
                    "is_current": true,
                })
            })
            .collect();
        serde_json::json!({ "public_keys": listed }).to_string()
    }

    pub fn sign(k: &SigningKey, body: &[u8]) -> String {
        let sig: p256::ecdsa::Signature = k.sign(body);
        STANDARD.encode(sig.to_der().as_bytes())
    }

    /// A signature GitHub's Go signer may send: the same (r, s) with s
    /// replaced by n − s, as valid as the other.
    pub fn sign_high_s(k: &SigningKey, body: &[u8]) -> String {
        let sig: p256::ecdsa::Signature = k.sign(body);
        let (r, s) = sig.split_scalars();
        let high = p256::ecdsa::Signature::from_scalars(r, -*s).unwrap();
        let high = if high.normalize_s().is_some() {
            high
        } else {
            sig
        };
        STANDARD.encode(high.to_der().as_bytes())
    }
}

const REPORTS: &str = "/v1/secret-scanning/github";

/// The audit records of `action` about `key_id`, newest first.
fn audit(server: &crate::harness::Server, auditor: &str, action: &str, key_id: &str) -> Value {
    req("GET", &format!("/v1/audit?action={action}&key_id={key_id}"))
        .bearer(auditor)
        .send(server)
        .json()
}

fn report(
    server: &crate::harness::Server,
    id: &str,
    signature: &str,
    body: &[u8],
) -> crate::harness::Resp {
    req("POST", REPORTS)
        .header("Content-Type", "application/json")
        .header("Github-Public-Key-Identifier", id)
        .header("Github-Public-Key-Signature", signature)
        .body(body)
        .send(server)
}

#[test]
fn a_report_signed_by_github_revokes_within_a_second_and_nothing_else_changes_anything() {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (live_id, live) = kw.key(&["--name", "ci token", "--scope", "vehicles:read"]);
    let (flag_id, flagged) = kw.key(&["--name", "flag me", "--scope", "vehicles:read"]);
    let (_, audit_key) = kw.key(&["--name", "auditor", "--scope", "keyward-audit:read"]);
    let unknown = foreign_key();
    let (github, stranger) = (github::signer(7), github::signer(11));
    let keys = kw.dir.path().join("github-keys.json");
    std::fs::write(&keys, github::key_file(&[("gh-current", &github)])).unwrap();
    let keys_arg = keys.display().to_string();
    let server = kw.serve(&[
        "--upstream",
        &upstream_flag(&up),
        "--github-scanning-keys",
        &keys_arg,
    ]);
    let body = serde_json::json!([
        {"token": live, "type": "keyward_api_key", "url": "https://github.com/octo/app/blob/abc/config.py", "source": "content"},
        {"token": live, "type": "keyward_api_key", "url": "https://github.com/octo/app/blob/def/other.py", "source": "content"},
        {"token": unknown, "type": "keyward_api_key", "url": "https://github.com/octo/app/blob/abc/x", "source": "content"},
        {"token": "not-a-key", "type": "keyward_api_key", "url": "https://github.com/octo/app", "source": "commit"},
    ])
    .to_string()
    .into_bytes();
    let good = github::sign(&github, &body);

    // Refused, each a 401 in the error shape that changes nothing.
    let mut tampered = body.clone();
    let at = tampered.len() - 3;
    tampered[at] ^= 1;
    let no_headers = req("POST", REPORTS).body(&body).send(&server);
    no_headers.error(401, "UNAUTHORIZED");
    for (what, id, signature, sent) in [
        (
            "tampered body",
            "gh-current",
            good.clone(),
            tampered.clone(),
        ),
        (
            "another key's signature",
            "gh-current",
            github::sign(&stranger, &body),
            body.clone(),
        ),
        (
            "unknown key identifier",
            "gh-old",
            good.clone(),
            body.clone(),
        ),
        ("empty identifier", "", good.clone(), body.clone()),
        (
            "signature not base64",
            "gh-current",
            "%%%not base64%%%".to_owned(),
            body.clone(),
        ),
        (
            "signature not DER",
            "gh-current",
            "bm90IGRlcg==".to_owned(),
            body.clone(),
        ),
        ("empty signature", "gh-current", String::new(), body.clone()),
        (
            "signature of the empty body",
            "gh-current",
            github::sign(&github, b""),
            body.clone(),
        ),
    ] {
        let r = report(&server, id, &signature, &sent);
        let e = r.error(401, "UNAUTHORIZED");
        assert_eq!(e["details"]["reason"], "signature", "{what}: {e}");
    }
    let metrics = String::from_utf8(req("GET", "/metrics").send(&server).body).unwrap();
    assert!(
        metrics.contains("keyward_secret_scanning_reports_total{signature=\"refused\"} 9"),
        "{metrics}"
    );
    // Signed, but not a report: 400 or 422, never a change.
    for (what, sent, status) in [
        ("not JSON", br#"[{"token": "#.to_vec(), 400),
        ("an object", br#"{"token": "x"}"#.to_vec(), 422),
        (
            "a token that is not a string",
            br#"[{"token": 5}]"#.to_vec(),
            422,
        ),
        (
            "no token",
            br#"[{"url": "https://github.com/x"}]"#.to_vec(),
            422,
        ),
        ("a NUL", br#"[{"token": "a\u0000"}]"#.to_vec(), 422),
    ] {
        let r = report(&server, "gh-current", &github::sign(&github, &sent), &sent);
        assert_eq!(
            r.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // Larger than a report may be: 413 before anything is believed.
    let huge = vec![b' '; 1024 * 1024 + 1];
    assert_eq!(
        report(&server, "gh-current", &github::sign(&github, &huge), &huge).status,
        413
    );
    assert_eq!(
        server.get("/vehicles", &live).status,
        200,
        "the key still works"
    );
    let told = req("GET", "/v1/audit?action=key.leaked")
        .bearer(&audit_key)
        .send(&server)
        .json();
    assert_eq!(told["data"], serde_json::json!([]), "{told}");

    // The signed report: revoked, and the gateway refuses within a second.
    let r = report(&server, "gh-current", &good, &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json(),
        serde_json::json!([
            {"token_raw": live, "token_type": "keyward_api_key", "label": "true_positive"},
            {"token_raw": unknown, "token_type": "keyward_api_key", "label": "false_positive"},
            {"token_raw": "not-a-key", "token_type": "keyward_api_key", "label": "false_positive"},
        ]),
        "one label per distinct token"
    );
    let took = crate::harness::until(
        std::time::Duration::from_secs(1),
        "the gateway refuses the reported key",
        || server.get("/vehicles", &live).status == 401,
    );
    eprintln!("refused {} ms after the report", took.as_millis());
    let leaked = audit(&server, &audit_key, "key.leaked", &live_id);
    assert_eq!(
        leaked["data"].as_array().unwrap().len(),
        1,
        "told once: {leaked}"
    );
    let record = &leaked["data"][0];
    assert_eq!(record["actor"], "github-secret-scanning", "{record}");
    assert_eq!(record["details"]["source"], "github");
    assert_eq!(record["details"]["action"], "revoke");
    assert_eq!(
        record["details"]["where"],
        "https://github.com/octo/app/blob/abc/config.py"
    );
    let revoked = audit(&server, &audit_key, "key.revoked", &live_id);
    assert_eq!(
        revoked["data"][0]["details"]["reason"], "leaked",
        "{revoked}"
    );

    // Reported again (GitHub retries): still a true positive, told once.
    // A high-S signature, as Go's signer may make, is as good.
    let again = report(
        &server,
        "gh-current",
        &github::sign_high_s(&github, &body),
        &body,
    );
    assert_eq!(again.json()[0]["label"], "true_positive");
    let leaked = audit(&server, &audit_key, "key.leaked", &live_id);
    assert_eq!(leaked["data"].as_array().unwrap().len(), 1, "{leaked}");

    // on_leak = flag: told and flagged, still working.
    kw.cli_ok(&["policy", "set", "--on-leak", "flag"]);
    // GitHub rotates its key: the file is rewritten, and read again.
    let rotated = github::signer(9);
    std::fs::write(&keys, github::key_file(&[("gh-rotated-2027", &rotated)])).unwrap();
    let body = serde_json::json!([{"token": flagged, "type": "keyward_api_key", "url": "https://gist.github.com/octo/1", "source": "gist"}])
        .to_string()
        .into_bytes();
    let r = report(&server, "gh-current", &good, &body);
    assert_eq!(r.status, 401, "the old key is gone from the file");
    let r = report(
        &server,
        "gh-rotated-2027",
        &github::sign(&rotated, &body),
        &body,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()[0]["label"], "true_positive");
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert_eq!(
        server.get("/vehicles", &flagged).status,
        200,
        "flagged, not revoked"
    );
    let shown: Value =
        serde_json::from_str(&kw.cli_ok(&["keys", "show", &flag_id, "--json"])).unwrap();
    assert_eq!(shown["flags"], serde_json::json!(["leaked"]), "{shown}");
    // A file rewritten with garbage keeps the keys read before.
    std::fs::write(&keys, "{\"public_keys\": [ half a downl").unwrap();
    let r = report(
        &server,
        "gh-rotated-2027",
        &github::sign(&rotated, &body),
        &body,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let log = server.log();
    for secret in [&live, &flagged, &unknown] {
        assert!(
            !log.contains(secret.as_str()),
            "a full key was logged:\n{log}"
        );
    }
    assert!(log.contains("keeping the keys read before"), "{log}");
}

#[test]
fn without_a_key_file_no_report_is_believed_and_a_bad_file_stops_the_start() {
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    let server = kw.serve(&[]);
    let r = req("POST", REPORTS).body(b"[]").send(&server);
    let e = r.error(401, "UNAUTHORIZED");
    assert_eq!(e["details"]["reason"], "not_configured");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("--github-scanning-keys"),
        "{e}"
    );
    drop(server);
    let bad = kw.dir.path().join("keys.json");
    for (what, text) in [
        ("not JSON", "<html>rate limited</html>"),
        ("no keys", r#"{"public_keys": []}"#),
        (
            "not a key",
            r#"{"public_keys": [{"key_identifier": "k9", "key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"}]}"#,
        ),
    ] {
        std::fs::write(&bad, text).unwrap();
        let out = kw.cli(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--github-scanning-keys",
            &bad.display().to_string(),
        ]);
        assert_eq!(out.status.code(), Some(1), "{what}: refused");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--github-scanning-keys"),
            "{what}: {stderr}"
        );
    }
    let out = kw.cli(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--github-scanning-keys",
        "/nonexistent/keys.json",
    ]);
    assert_eq!(out.status.code(), Some(1));
}

/// What a hostile sender, or a key file swapped for something else, may do
/// to the one endpoint anyone can call: nothing that exhausts or hangs the
/// node.
#[test]
fn unsigned_senders_and_odd_key_files_cannot_exhaust_or_hang_the_node() {
    use std::io::Write as _;
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    let (_, live) = kw.key(&["--name", "ci", "--scope", "vehicles:read"]);
    let github = github::signer(7);
    let keys = kw.dir.path().join("keys.json");
    std::fs::write(&keys, github::key_file(&[("gh-1", &github)])).unwrap();
    let keys_arg = keys.display().to_string();
    let server = kw.serve(&["--github-scanning-keys", &keys_arg]);
    let body = serde_json::json!([{"token": "not-a-key", "type": "t", "url": "u", "source": "s"}])
        .to_string()
        .into_bytes();
    let good = github::sign(&github, &body);

    // A body declared too large is refused before any of it is read.
    let r = crate::harness::raw(
        server.addr,
        format!("POST {REPORTS} HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\nGithub-Public-Key-Identifier: gh-1\r\nGithub-Public-Key-Signature: {good}\r\n\r\n").as_bytes(),
    );
    r.error(413, "PAYLOAD_TOO_LARGE");
    // Headers sent twice, or not ASCII: refused, whatever the first says.
    for (name, value) in [
        ("Github-Public-Key-Signature", good.as_str()),
        ("Github-Public-Key-Identifier", "gh-1"),
    ] {
        let r = report(&server, "gh-1", &good, &body);
        assert_eq!(r.status, 200);
        let twice = req("POST", REPORTS)
            .header("Github-Public-Key-Identifier", "gh-1")
            .header("Github-Public-Key-Signature", &good)
            .header(name, value)
            .body(&body)
            .send(&server);
        let e = twice.error(401, "UNAUTHORIZED");
        assert!(
            e["message"].as_str().unwrap().contains("more than once"),
            "{e}"
        );
    }
    let mut odd = format!("POST {REPORTS} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nGithub-Public-Key-Identifier: gh-\u{e9}\r\nGithub-Public-Key-Signature: {good}\r\nConnection: close\r\n\r\n", body.len()).into_bytes();
    odd.extend_from_slice(&body);
    let e = crate::harness::raw(server.addr, &odd).error(401, "UNAUTHORIZED");
    assert!(
        e["message"].as_str().unwrap().contains("names no key"),
        "{e}"
    );

    // Reports trickled in: at most 2 are read at once per client (8 in
    // all; 503 beyond), each cut off with 408 when its body does not arrive
    // in time; a report without the signature headers takes no slot.
    let open_slow = || {
        let mut s = std::net::TcpStream::connect(server.addr).unwrap();
        write!(s, "POST {REPORTS} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nGithub-Public-Key-Identifier: gh-1\r\nGithub-Public-Key-Signature: {good}\r\n\r\n[").unwrap();
        s
    };
    let mut slow: Vec<std::net::TcpStream> = (0..2).map(|_| open_slow()).collect();
    let seen = std::cell::RefCell::new(Vec::new());
    crate::harness::until_else(
        std::time::Duration::from_secs(5),
        "the third refused",
        || {
            // A probe may reach the server before a slow report does and
            // take its slot, and that report is then refused: it is
            // replaced, so that a probe refused proves both are held.
            for s in &mut slow {
                s.set_nonblocking(true).unwrap();
                let answered = !matches!(
                    s.peek(&mut [0u8; 1]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                );
                s.set_nonblocking(false).unwrap();
                if answered {
                    *s = open_slow();
                }
            }
            let status = report(&server, "gh-1", &good, &body).status;
            seen.borrow_mut().push(status);
            status == 503
        },
        || {
            format!(
                "answers: {:?}\nserver log:\n{}",
                seen.borrow(),
                server.log()
            )
        },
    );
    let busy = report(&server, "gh-1", &good, &body);
    busy.error(503, "BUSY");
    assert_eq!(busy.header("retry-after"), Some("1"));
    let unsigned = req("POST", REPORTS).body(&body).send(&server);
    let e = unsigned.error(401, "UNAUTHORIZED");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("no `Github-Public-Key-Identifier`"),
        "{e}"
    );
    // The gateway is not held up meanwhile.
    assert_eq!(
        server.get("/vehicles", &live).status,
        502,
        "allowed, no upstream"
    );
    for mut s in slow {
        use std::io::Read as _;
        s.set_read_timeout(Some(std::time::Duration::from_secs(15)))
            .unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let head = String::from_utf8_lossy(&answer);
        assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    }
    assert_eq!(
        report(&server, "gh-1", &good, &body).status,
        200,
        "room again"
    );

    // The key file swapped for a device or a pipe: the keys read before
    // stay in force, and no request hangs.
    for (what, swap) in [("a symbolic link to /dev/zero", "zero"), ("a pipe", "fifo")] {
        std::fs::remove_file(&keys).unwrap();
        if swap == "zero" {
            std::os::unix::fs::symlink("/dev/zero", &keys).unwrap();
        } else {
            let made = std::process::Command::new("mkfifo")
                .arg(&keys)
                .status()
                .unwrap();
            assert!(made.success());
        }
        let started = std::time::Instant::now();
        let r = report(&server, "gh-1", &good, &body);
        assert_eq!(
            r.status,
            200,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "{what}"
        );
    }
    let log = server.log();
    assert!(log.contains("not a regular file"), "{log}");
    // And at start: refused at once, named.
    for target in ["/dev/zero", keys.to_str().unwrap()] {
        let out = std::process::Command::new("timeout")
            .args([
                "10",
                crate::harness::BIN,
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--github-scanning-keys",
                target,
            ])
            .env("KEYWARD_DATABASE_URL", kw.url())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{target}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("not a regular file"), "{target}: {stderr}");
    }
}

#[test]
fn scan_reads_pipes_named_on_the_command_line_and_a_path_it_cannot_read_is_not_clean() {
    let kw = Kw::new();
    kw.cli_ok(&["migrate"]);
    let (_, live) = kw.key(&["--name", "piped", "--scope", "vehicles:read"]);
    // /dev/stdin names a pipe here, as `<(git log -p)` would; a NUL early
    // in a stream does not make it skipped.
    let mut input = b"ustar\0\0\0binary header\n".to_vec();
    // A long line first (longer than a line is kept whole): the stream is
    // read a chunk at a time, each byte searched once.
    input.extend_from_slice(&vec![b'x'; 20 << 20]);
    input.extend_from_slice(format!("\nkey={live}\n").as_bytes());
    let out = scan_piped(&kw, &["/dev/stdin", "--json"], &input);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(found[0]["status"], "live", "{found}");
    assert!(
        found[0]["place"].as_str().unwrap().ends_with(":3"),
        "{found}"
    );

    // A file name with control characters is shown escaped.
    let tree = kw.dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("evil\u{1b}[2K\rOK.txt"), format!("{live}\n")).unwrap();
    let out = kw.cli(&["scan", &tree.display().to_string()]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        !table.contains('\u{1b}') && table.contains("\\u{1b}[2K\\rOK.txt"),
        "{table}"
    );

    // A huge file is judged binary by its first bytes, never read whole.
    let sparse = std::fs::File::create(tree.join("disk.img")).unwrap();
    sparse.set_len(4 << 30).unwrap();
    drop(sparse);
    let started = std::time::Instant::now();
    let out = kw.cli(&["scan", &tree.display().to_string()]);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 skipped as binary"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(tree.join("disk.img")).unwrap();

    // Nothing live, but a path that could not be read: exit 3, not 0.
    let out = kw.cli(&["scan", &tree.join("missing").display().to_string()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not be read"));
}
