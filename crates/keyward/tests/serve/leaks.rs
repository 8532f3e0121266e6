//! Leaked keys (SPEC §11, issue 20): `keyward scan` over a real tree, then
//! the gateway of a real server refusing what `--revoke` revoked.

use crate::harness::{Kw, Upstream, req};
use crate::{foreign_key, upstream_flag};
use serde_json::Value;

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
    let mut child = std::process::Command::new(crate::harness::BIN)
        .args(["scan", "-"])
        .env("KEYWARD_DATABASE_URL", kw.url())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "+ added\n+ token={live}").unwrap();
    }
    let out = child.wait_with_output().unwrap();
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
        let r = req(
            "GET",
            &format!("/v1/audit?action={action}&key_id={live_id}"),
        )
        .bearer(&audit_key)
        .send(&server)
        .json();
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
