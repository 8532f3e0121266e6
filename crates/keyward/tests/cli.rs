//! The real `keyward` binary against a real SQLite file in a temp dir.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TRANSIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../catalogs/transit.toml");

struct Kw {
    dir: tempfile::TempDir,
    catalog: Option<PathBuf>,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}\n{}", self.stdout, self.stderr))
    }
    fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
    fn refused(self, needle: &str) -> Self {
        assert_eq!(
            self.code, 1,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "expected `{needle}` in stderr: {}",
            self.stderr
        );
        self
    }
}

impl Kw {
    fn new() -> Self {
        Kw {
            dir: tempfile::tempdir().unwrap(),
            catalog: None,
        }
    }

    fn transit() -> Self {
        Kw {
            catalog: Some(PathBuf::from(TRANSIT)),
            ..Kw::new()
        }
    }

    fn db_path(&self) -> PathBuf {
        self.dir.path().join("k.db")
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.db_path().display())
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_db(&self.url(), args)
    }

    fn run_db(&self, url: &str, args: &[&str]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyward"));
        cmd.current_dir(self.dir.path())
            .env_remove("KEYWARD_DATABASE_URL")
            .env_remove("KEYWARD_CATALOG")
            .env_remove("KEYWARD_ORG")
            .env_remove("KEYWARD_DIGEST_SECRET")
            .arg("--database")
            .arg(url);
        if let Some(c) = &self.catalog {
            cmd.arg("--catalog").arg(c);
        }
        let Output {
            status,
            stdout,
            stderr,
        } = cmd.args(args).output().unwrap();
        Run {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8(stdout).unwrap(),
            stderr: String::from_utf8(stderr).unwrap(),
        }
    }

    fn create(&self, args: &[&str]) -> Value {
        let mut all = vec!["keys", "create", "--json"];
        all.extend_from_slice(args);
        self.run(&all).ok().json()
    }

    fn key_count(&self) -> usize {
        self.run(&["keys", "list", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len()
    }

    /// Every byte the database holds on disk, WAL included.
    fn db_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        for suffix in ["", "-wal", "-shm"] {
            let p = PathBuf::from(format!("{}{suffix}", self.db_path().display()));
            if p.exists() {
                bytes.extend(std::fs::read(p).unwrap());
            }
        }
        bytes
    }
}

/// Runs `statements` on the database file directly, as an attacker with
/// write access to it would.
async fn tamper(kw: &Kw, statements: &[&str]) {
    let pool = sqlx::SqlitePool::connect(&kw.url()).await.unwrap();
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(*sql))
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn create_shows_the_key_once_and_stores_only_its_digest() {
    let kw = Kw::new();
    let created = kw.create(&[
        "--name",
        "  Inspection tablet ",
        "--preset",
        "inspection-submission",
        "--expires-in",
        "90d",
    ]);
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(
        key.starts_with("insp_live_") && key.len() == "insp_live_".len() + 38,
        "{key}"
    );
    assert_eq!(created["name"], "Inspection tablet");
    assert_eq!(created["status"], "active");
    assert_eq!(created["legacy"], false);
    assert!(key.starts_with(created["display_prefix"].as_str().unwrap()));
    assert_eq!(
        strs(&created["scopes"]),
        [
            "vehicles:read",
            "inspection-templates:read",
            "inspections:write"
        ]
    );
    assert_eq!(
        strs(&created["effective_scopes"]),
        [
            "vehicles:read",
            "vehicle-fields:read",
            "inspections:read",
            "inspections:write",
            "inspection-templates:read"
        ]
    );
    assert!(created["expires_at"].as_str().unwrap().ends_with('Z'));

    // Never again: not in show, list, explain, nor anywhere in the database.
    for args in [
        vec!["keys", "show", id.as_str(), "--json"],
        vec!["keys", "show", id.as_str()],
        vec!["keys", "list", "--json"],
        vec!["keys", "list"],
        vec![
            "explain",
            "--key-id",
            id.as_str(),
            "GET",
            "/vehicles",
            "--json",
        ],
    ] {
        let out = kw.run(&args);
        assert!(
            !out.stdout.contains(&key) && !out.stderr.contains(&key),
            "{args:?} leaked the key"
        );
    }
    let shown = kw.run(&["keys", "show", &id, "--json"]).ok().json();
    assert!(shown.get("key").is_none());
    assert_eq!(shown["id"], id.as_str());
    let bytes = kw.db_bytes();
    assert!(!bytes.is_empty());
    assert!(
        !contains(&bytes, &key),
        "the full key is in the database file"
    );
    assert!(
        !contains(&bytes, &key[10..]),
        "the key's random part is in the database file"
    );
}

#[test]
fn bad_input_is_refused_clearly_and_writes_nothing() {
    let kw = Kw::new();
    // First start says its piece on stderr; later errors start with `error: `.
    kw.run(&["migrate"]).ok();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--name", "", "--scope", "vehicles:read"],
            "name: must not be empty",
        ),
        (
            &["--name", "   ", "--scope", "vehicles:read"],
            "name: must not be empty",
        ),
        (
            &["--name", &"n".repeat(101), "--scope", "vehicles:read"],
            "name: must be at most 100 characters, got 101",
        ),
        (&["--name", "x"], "a key needs at least one grant"),
        (
            &["--name", "x", "--scope", "vehicles:fly"],
            "unknown scope `vehicles:fly`",
        ),
        (
            &["--name", "x", "--scope", "reports:read"],
            "scope `reports:read` is planned, not available",
        ),
        (
            &["--name", "x", "--scope", "users:read"],
            "scope `users:read` is under-review, not available",
        ),
        (
            &["--name", "x", "--permission-set", "nope"],
            "unknown permission set `nope`",
        ),
        (
            &["--name", "x", "--preset", "everything"],
            "unknown preset `everything`",
        ),
        (
            &[
                "--name",
                "x",
                "--scope",
                "vehicles:read",
                "--expires-in",
                "90",
            ],
            "--expires-in: malformed duration `90`",
        ),
        (
            &[
                "--name",
                "x",
                "--scope",
                "vehicles:read",
                "--expires-in",
                "1y",
            ],
            "malformed duration `1y`",
        ),
        (
            &[
                "--name",
                "x",
                "--scope",
                "vehicles:read",
                "--environment",
                "prod",
            ],
            "unknown environment `prod`",
        ),
    ];
    for (args, needle) in cases {
        let mut all = vec!["keys", "create"];
        all.extend_from_slice(args);
        let out = kw.run(&all).refused(needle);
        assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
    }
    // Every problem at once, not just the first.
    kw.run(&[
        "keys",
        "create",
        "--name",
        "x",
        "--scope",
        "a:b",
        "--scope",
        "reports:read",
        "--preset",
        "p",
    ])
    .refused(
        "unknown preset `p`; unknown scope `a:b`; scope `reports:read` is planned, not available",
    );
    assert_eq!(kw.key_count(), 0);
    kw.run(&["keys", "show", "key_missing"])
        .refused("key `key_missing` not found");
    kw.run(&["keys", "revoke", "key_missing"])
        .refused("key `key_missing` not found");
    kw.run(&["keys", "list", "--unused-for", "soon"])
        .refused("--unused-for: malformed duration `soon`");
    kw.run(&["keys", "list", "--status", "sleeping"])
        .refused("unknown status `sleeping`");
    kw.run(&["--org", "nowhere", "keys", "list"])
        .refused("organization `nowhere` not found");
    let bad_url = kw.run_db("mysql://u:hunter2@h/db", &["keys", "list"]);
    assert_eq!(bad_url.code, 3, "{}", bad_url.stderr);
    assert!(!bad_url.stderr.contains("hunter2"), "{}", bad_url.stderr);
}

#[test]
fn broad_access_needs_acknowledgement() {
    let kw = Kw::transit();
    let catalog = kw.run(&["catalog", "show", "--json"]).ok().json();
    let write_sets: Vec<String> = catalog["permission_sets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["write"] == true && s["single_scope"] == false)
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .take(11)
        .collect();
    assert_eq!(write_sets.len(), 11);
    let mut args = vec!["keys", "create", "--name", "Everything"];
    for s in &write_sets {
        args.extend(["--permission-set", s.as_str()]);
    }
    let out = kw
        .run(&args)
        .refused("broad access not acknowledged: 11 write-capable permission sets selected");
    assert!(out.stderr.contains(&write_sets[10]), "{}", out.stderr);
    assert_eq!(kw.key_count(), 0);
    // Ten is not broad.
    let ten: Vec<&str> = args[..args.len() - 2].to_vec();
    let created = kw.run(&[ten.as_slice(), &["--json"]].concat()).ok().json();
    assert!(created.get("broad_access_warning").is_none());
    args.extend(["--acknowledge-broad-access", "--json"]);
    let created = kw.run(&args).ok().json();
    assert!(created["key"].as_str().unwrap().starts_with("trn_live_"));
    assert!(
        created["broad_access_warning"]
            .as_str()
            .unwrap()
            .contains("11 write-capable")
    );
    // The refusal is in the audit log, and the chain holds.
    assert_eq!(
        kw.run(&["audit", "verify", "--json"]).ok().json()["first_broken"],
        Value::Null
    );
}

#[test]
fn revoke_roll_and_explain() {
    let kw = Kw::new();
    let created = kw.create(&[
        "--name",
        "TMS",
        "--scope",
        "vehicles:write",
        "--scope",
        "inspections:read",
    ]);
    let id = created["id"].as_str().unwrap().to_owned();

    let allowed = kw
        .run(&[
            "explain",
            "--key-id",
            &id,
            "PUT",
            "/api/third-party/v1/vehicles/42",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(allowed["decision"]["allowed"], true);
    assert_eq!(allowed["route_path"], "/vehicles/42");
    assert_eq!(allowed["decision"]["route"], "POST, PUT, DELETE /vehicles*");
    let denied = kw.run(&["explain", "--key-id", &id, "POST", "/inspections", "--json"]);
    assert_eq!(denied.code, 1);
    let d = denied.json()["decision"].clone();
    assert_eq!(
        (d["status"].as_u64(), d["code"].as_str()),
        (Some(403), Some("FORBIDDEN"))
    );
    assert_eq!(strs(&d["missing"]), ["inspections:write"]);
    assert_eq!(strs(&d["granted"]), ["vehicles:write", "inspections:read"]);
    let text = kw
        .run(&["explain", "--scope", "damages:read", "GET", "/damages/7"])
        .ok();
    assert!(
        text.stdout.contains("ALLOWED") && text.stdout.contains("GET /damages/{id}"),
        "{}",
        text.stdout
    );
    let none = kw.run(&[
        "explain",
        "--scope",
        "damages:read",
        "GET",
        "/damages/7/photos",
        "--json",
    ]);
    assert_eq!(none.json()["decision"]["code"], "NOT_FOUND");
    kw.run(&[
        "explain",
        "--scope",
        "damages:read",
        "GET",
        "/damages/../vehicles",
    ])
    .refused("path: `/damages/../vehicles`: path contains a dot segment `..`");
    kw.run(&["explain", "--scope", "nope:read", "GET", "/damages"])
        .refused("unknown scope `nope:read`");

    // Roll with grace: old key works until the grace ends.
    let rolled = kw
        .run(&["keys", "roll", &id, "--grace", "1h", "--json"])
        .ok()
        .json();
    let new_id = rolled["id"].as_str().unwrap().to_owned();
    assert_ne!(rolled["key"], created["key"]);
    assert_eq!(rolled["scopes"], created["scopes"]);
    let old = kw.run(&["keys", "show", &id, "--json"]).ok().json();
    assert_eq!(
        (old["status"].as_str(), old["rolled_to"].as_str()),
        (Some("active"), Some(new_id.as_str()))
    );
    assert!(old["expires_at"].is_string());
    // Zero grace: the old key expires at once.
    let rolled2 = kw
        .run(&["keys", "roll", &new_id, "--grace", "0s", "--json"])
        .ok()
        .json();
    let expired = kw
        .run(&["explain", "--key-id", &new_id, "GET", "/vehicles", "--json"])
        .json();
    assert_eq!(expired["decision"]["reason"], "expired");
    // Rolled (and expired since): a key is rolled once, and the refusal
    // names its successor.
    kw.run(&["keys", "roll", &new_id]).refused(&format!(
        "was already rolled to `{}`: roll that key instead",
        rolled2["id"].as_str().unwrap()
    ));

    // Revoke: 401 revoked, idempotent, cannot be rolled.
    let newest = rolled2["id"].as_str().unwrap().to_owned();
    let out = kw.run(&["keys", "revoke", &newest]).ok();
    assert!(out.stdout.contains("stops working now"), "{}", out.stdout);
    let again = kw.run(&["keys", "revoke", &newest]).ok();
    assert!(again.stdout.contains("already revoked"), "{}", again.stdout);
    let again = kw.run(&["keys", "revoke", &newest, "--json"]).ok().json();
    assert_eq!(
        (again["already_revoked"].as_bool(), again["status"].as_str()),
        (Some(true), Some("revoked"))
    );
    let r = kw
        .run(&["explain", "--key-id", &newest, "GET", "/vehicles", "--json"])
        .json();
    assert_eq!(
        (
            r["decision"]["status"].as_u64(),
            r["decision"]["reason"].as_str()
        ),
        (Some(401), Some("revoked"))
    );
    kw.run(&["keys", "roll", &newest])
        .refused("is revoked: create a new key instead");

    let revoked = kw
        .run(&["keys", "list", "--status", "revoked", "--json"])
        .ok()
        .json();
    assert_eq!(revoked.as_array().unwrap().len(), 1);
    let active = kw
        .run(&["keys", "list", "--status", "active", "--json"])
        .ok()
        .json();
    assert_eq!(active.as_array().unwrap().len(), 1);
    assert_eq!(
        kw.run(&["keys", "list", "--unused-for", "90d", "--json"])
            .ok()
            .json(),
        Value::Array(vec![])
    );
    assert_eq!(
        kw.run(&["keys", "list", "--unused-for", "0s", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Every action is in the key's audit trail.
    let show = kw.run(&["keys", "show", &id]).ok();
    assert!(
        show.stdout.contains("key.rolled") && show.stdout.contains("key.created"),
        "{}",
        show.stdout
    );
}

#[test]
fn legacy_import_is_complete_resumable_and_all_or_nothing_per_file() {
    let kw = Kw::new();
    let file = kw.dir.path().join("legacy.txt");
    let mut text = String::from("# old keys\n");
    for i in 0..1_234 {
        text.push_str(&format!(
            "oldkey_{i:06}_abcdefghijklmnop  Integration {i}\n"
        ));
    }
    std::fs::write(&file, &text).unwrap();
    let report = kw
        .run(&["keys", "import-legacy", file.to_str().unwrap(), "--json"])
        .ok()
        .json();
    assert_eq!(
        (report["imported"].as_u64(), report["skipped"].as_u64()),
        (Some(1_234), Some(0))
    );
    let again = kw
        .run(&["keys", "import-legacy", file.to_str().unwrap(), "--json"])
        .ok()
        .json();
    assert_eq!(
        (again["imported"].as_u64(), again["skipped"].as_u64()),
        (Some(0), Some(1_234))
    );
    let legacy = kw.run(&["keys", "list", "--legacy", "--json"]).ok().json();
    let first = &legacy.as_array().unwrap()[0];
    assert_eq!(first["legacy"], true);
    assert!(strs(&first["effective_scopes"]).contains(&"damages:write".to_owned()));
    assert!(!contains(&kw.db_bytes(), "oldkey_000042_abcdefghijklmnop"));

    let bad = kw.dir.path().join("bad.txt");
    std::fs::write(&bad, "oldkey_ok_0123456789abcdef\ntooshort\n\nfine_key_0123456789abcdefg\nfine_key_0123456789abcdefg dup\n").unwrap();
    let out = kw
        .run(&["keys", "import-legacy", bad.to_str().unwrap()])
        .refused("line 2: key is 8 characters, at least 20 are required");
    assert!(
        out.stderr.contains("line 5: same key as line 4")
            && out.stderr.contains("nothing was imported"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("tooshort"),
        "a key was echoed: {}",
        out.stderr
    );
    assert_eq!(kw.key_count(), 1_234);
}

#[test]
fn organizations_are_isolated() {
    let kw = Kw::new();
    let org = kw
        .run(&["orgs", "create", "Beta Corp", "--json"])
        .ok()
        .json();
    assert_eq!(org["slug"], "beta-corp");
    kw.run(&["orgs", "create", "beta corp"])
        .refused("organization `beta-corp` already exists");
    kw.run(&["orgs", "create", "  "])
        .refused("name: must not be empty");
    let orgs = kw.run(&["orgs", "list", "--json"]).ok().json();
    assert_eq!(orgs.as_array().unwrap().len(), 2);
    let beta_key = kw
        .run(&[
            "--org",
            "beta-corp",
            "keys",
            "create",
            "--name",
            "B",
            "--scope",
            "damages:read",
            "--json",
        ])
        .ok()
        .json();
    let beta_id = beta_key["id"].as_str().unwrap();
    assert_eq!(kw.key_count(), 0, "the default org sees no beta keys");
    kw.run(&["keys", "show", beta_id])
        .refused(&format!("key `{beta_id}` not found"));
    kw.run(&["keys", "revoke", beta_id]).refused("not found");
    assert_eq!(
        kw.run(&["--org", "beta-corp", "keys", "show", beta_id, "--json"])
            .ok()
            .json()["status"],
        "active"
    );
}

#[tokio::test]
async fn audit_verify_finds_the_first_altered_record() {
    let kw = Kw::new();
    for i in 0..3 {
        kw.create(&["--name", &format!("k{i}"), "--scope", "vehicles:read"]);
    }
    let ok = kw.run(&["audit", "verify"]).ok();
    assert!(
        ok.stdout.contains("audit chain verified: 5 records"),
        "{}",
        ok.stdout
    );
    // An attacker with write access to the file alters record 3.
    tamper(
        &kw,
        &[
            "DROP TRIGGER audit_log_no_update",
            "UPDATE audit_log SET actor = 'cli:someone-else' WHERE seq = 3",
        ],
    )
    .await;
    let broken = kw.run(&["audit", "verify", "--json"]);
    assert_eq!(broken.code, 1);
    let report = broken.json();
    assert_eq!(report["first_broken"]["seq"], 3);
    assert!(
        report["first_broken"]["reason"]
            .as_str()
            .unwrap()
            .contains("altered")
    );
}

#[tokio::test]
async fn audit_verify_detects_a_removed_tail() {
    let kw = Kw::new();
    for i in 0..2 {
        kw.create(&["--name", &format!("k{i}"), "--scope", "vehicles:read"]);
    }
    tamper(
        &kw,
        &[
            "DROP TRIGGER audit_log_no_delete",
            "DELETE FROM audit_log WHERE seq = 4",
        ],
    )
    .await;
    let broken = kw.run(&["audit", "verify", "--json"]);
    assert_eq!(broken.code, 1, "{}", broken.stdout);
    let report = broken.json();
    assert_eq!(report["first_broken"]["seq"], 4);
    assert!(
        report["first_broken"]["reason"]
            .as_str()
            .unwrap()
            .contains("removed")
    );
}

#[tokio::test]
async fn audit_log_is_append_only() {
    let kw = Kw::new();
    kw.create(&["--name", "k", "--scope", "vehicles:read"]);
    let pool = sqlx::SqlitePool::connect(&kw.url()).await.unwrap();
    let err = sqlx::query("DELETE FROM audit_log")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
}

#[test]
fn catalog_check_reports_every_error() {
    let kw = Kw::new();
    let ok = kw.run(&["catalog", "check", TRANSIT]).ok();
    assert!(
        ok.stdout.contains("valid catalog `transit`"),
        "{}",
        ok.stdout
    );
    let bad = kw.dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\nkey_prefix = \"X\"\n[[scopes]]\nname = \"a:read\"\ndescription = \"\"\nimplies = [\"b:read\"]\n").unwrap();
    let out = kw.run(&["catalog", "check", bad.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stderr);
    assert!(lines[0].ends_with("bad.toml:2:14: key prefix `X` must be 2 to 16 lowercase letters or digits, starting with a letter"), "{}", lines[0]);
    assert!(
        lines[1].ends_with("bad.toml:5:15: scope `a:read` has an empty description"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].ends_with("bad.toml:6:12: scope `a:read` implies unknown scope `b:read`"),
        "{}",
        lines[2]
    );
    let syntax = kw.dir.path().join("syntax.toml");
    std::fs::write(&syntax, "name = \"x\"\nkey_prefix = [\n").unwrap();
    kw.run(&["catalog", "check", syntax.to_str().unwrap()])
        .refused("syntax.toml:");
    kw.run(&["catalog", "check", "/nonexistent/catalog.toml"])
        .refused("cannot read catalog `/nonexistent/catalog.toml`");
    // A gateway prefix `serve` would refuse (it overlaps keyward's own
    // endpoints, matched first) is refused here too.
    let transit = std::fs::read_to_string(TRANSIT).unwrap();
    for prefix in ["/v1", "/v1/api", "/console", ""] {
        let shadowed = kw.dir.path().join("shadowed.toml");
        std::fs::write(
            &shadowed,
            transit.replace(
                "gateway_prefix = \"/api/v1\"",
                &format!("gateway_prefix = \"{prefix}\""),
            ),
        )
        .unwrap();
        kw.run(&["catalog", "check", shadowed.to_str().unwrap()])
            .refused("overlaps keyward's own endpoints");
    }
    // Commands refuse to run on an invalid catalog.
    kw.run(&["--catalog", bad.to_str().unwrap(), "keys", "list"])
        .refused("key prefix `X`");
    let shown = kw.run(&["catalog", "show"]).ok();
    assert!(
        shown.stdout.contains("vehicles:read") && shown.stdout.contains("Read-Only Integration")
    );
}

#[test]
fn migrate_is_idempotent() {
    let kw = Kw::new();
    let first = kw.run(&["migrate"]).ok();
    let second = kw.run(&["migrate"]).ok();
    assert!(first.stdout.contains("default organization `default`"));
    assert_eq!(first.stdout, second.stdout);
    assert!(Path::new(&kw.db_path()).exists());
}

#[test]
fn first_start_creates_an_owner_and_users_manage_groups() {
    let kw = Kw::new();
    // The first command creates the default organization and its owner, and
    // prints the one-time password once, on stderr.
    let first = kw.run(&["migrate"]).ok();
    assert!(
        first.stderr.contains("sign in as: owner"),
        "{}",
        first.stderr
    );
    let password = first
        .stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("one-time password: "))
        .unwrap()
        .to_owned();
    assert_eq!(password.len(), 20);
    let again = kw.run(&["migrate"]).ok();
    assert!(
        !again.stderr.contains("one-time password"),
        "{}",
        again.stderr
    );
    // Only the argon2id hash is stored.
    let bytes = std::fs::read(kw.db_path()).unwrap_or_default();
    let wal = std::fs::read(kw.db_path().with_extension("db-wal")).unwrap_or_default();
    for b in [&bytes, &wal] {
        assert!(!b.windows(password.len()).any(|w| w == password.as_bytes()));
    }
    let users = kw.run(&["users", "list", "--json"]).ok().json();
    assert_eq!(users[0]["email"], "owner");
    assert_eq!(users[0]["groups"], serde_json::json!(["administrators"]));
    assert_eq!(users[0]["must_change_password"], true);
    assert!(users[0].get("password_hash").is_none());

    let alice = kw
        .run(&[
            "users",
            "create",
            "--email",
            "Alice@Example.com",
            "--group",
            "vehicles:read",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(alice["email"], "alice@example.com");
    assert_eq!(alice["one_time_password"].as_str().unwrap().len(), 20);
    kw.run(&["users", "create", "--email", "alice@example.com"])
        .refused("already exists");
    kw.run(&["users", "create", "--email", "bob", "--group", "nope"])
        .refused("unknown group `nope`");
    let added = kw
        .run(&[
            "users",
            "add-to-group",
            "alice@example.com",
            "inspections:write",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(added["changed"], true);
    assert_eq!(
        added["user"]["groups"],
        serde_json::json!(["inspections:write", "vehicles:read"])
    );
    let repeat = kw
        .run(&[
            "users",
            "add-to-group",
            "alice@example.com",
            "inspections:write",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(repeat["changed"], false);
    kw.run(&[
        "users",
        "remove-from-group",
        "alice@example.com",
        "vehicles:read",
    ])
    .ok();
    let members = kw
        .run(&["users", "list", "--group", "inspections:write", "--json"])
        .ok()
        .json();
    assert_eq!(members.as_array().unwrap().len(), 1);
    kw.run(&[
        "users",
        "add-to-group",
        "nobody@example.com",
        "vehicles:read",
    ])
    .refused("user `nobody@example.com` not found");
    let reset = kw
        .run(&["users", "reset-password", "alice@example.com", "--json"])
        .ok()
        .json();
    assert_ne!(reset["one_time_password"], alice["one_time_password"]);
    // Another organization starts with its own owner; users do not cross.
    let org = kw
        .run(&["orgs", "create", "Acme Corp", "--json"])
        .ok()
        .json();
    assert_eq!(org["owner"]["email"], "owner");
    kw.run(&[
        "--org",
        "acme-corp",
        "users",
        "add-to-group",
        "alice@example.com",
        "vehicles:read",
    ])
    .refused("not found");
    // Every change is in the chain.
    kw.run(&["audit", "verify"]).ok();
}
