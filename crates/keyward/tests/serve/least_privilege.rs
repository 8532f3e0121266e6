//! Least privilege (SPEC §9, issue 18) over a real socket: the narrowing
//! roll through the admin API and the CLI.

use crate::harness::{Kw, Upstream, req};
use crate::{strings, upstream_flag};
use serde_json::{Value, json};

#[test]
fn a_narrowing_roll_narrows_and_refuses_to_broaden() {
    let kw = Kw::new();
    let up = Upstream::start();
    kw.cli_ok(&["migrate"]);
    let (_, admin) = kw.key(&[
        "--name",
        "admin",
        "--scope",
        "keyward-api-keys:write",
        "--scope",
        "vehicles:write",
        "--scope",
        "damages:write",
    ]);
    let (id, key) = kw.key(&["--name", "writer", "--scope", "vehicles:write"]);
    let server = kw.serve(&["--upstream", &upstream_flag(&up)]);
    let roll = |id: &str, body: &Value| {
        req("POST", &format!("/v1/keys/{id}/roll"))
            .bearer(&admin)
            .json(body)
            .send(&server)
    };

    // Broader, in every way: refused, naming the extra scopes; nothing
    // written, the key untouched.
    for (body, extra) in [
        (json!({"scopes": ["damages:read"]}), vec!["damages:read"]),
        (
            json!({"scopes": ["vehicles:read", "damages:write"]}),
            vec!["damages:write", "damages:read"],
        ),
        (
            json!({"permission_sets": ["damages:read"]}),
            vec!["damages:read"],
        ),
    ] {
        let r = roll(&id, &body);
        let e = r.error(422, "ROLL_WOULD_BROADEN");
        let mut named = strings(&e["details"]["scopes"]);
        named.sort();
        let mut extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        extra.sort();
        assert_eq!(named, extra, "{body}");
    }
    // Unknown grants, or none: 422 naming them.
    for body in [
        json!({"scopes": ["vehicles:fly"]}),
        json!({"permission_sets": ["nope"]}),
        json!({"scopes": []}),
    ] {
        let r = roll(&id, &body);
        assert_eq!(r.status, 422, "{body}");
    }
    let shown: Value = serde_json::from_str(&kw.cli_ok(&["keys", "show", &id, "--json"])).unwrap();
    assert!(
        shown["rolled_to"].is_null(),
        "nothing partial written: {shown}"
    );
    assert_eq!(server.get("/vehicles", &key).status, 200);

    // Narrower: the new key holds only what it was given.
    let r = roll(&id, &json!({"scopes": ["vehicles:read"], "grace": "0s"}));
    assert_eq!(r.status, 201);
    let new = r.json();
    assert_eq!(strings(&new["scopes"]), ["vehicles:read"]);
    let new_key = new["key"].as_str().unwrap();
    assert_eq!(server.get("/vehicles", new_key).status, 200);
    let write = req("POST", "/api/third-party/v1/vehicles")
        .bearer(new_key)
        .json(&json!({}))
        .send(&server);
    assert_eq!(write.status, 403, "the write scope is gone");

    // A legacy key, rolled by the CLI into a scoped key.
    let file = kw.dir.path().join("legacy.txt");
    std::fs::write(&file, "sk_old_0123456789abcdefghij  Old sync\n").unwrap();
    kw.cli_ok(&["keys", "import-legacy", file.to_str().unwrap()]);
    let list: Value = serde_json::from_str(&kw.cli_ok(&["keys", "list", "--json"])).unwrap();
    let legacy_id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["legacy"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = kw.cli_ok(&[
        "keys",
        "roll",
        &legacy_id,
        "--scope",
        "vehicles:read",
        "--grace",
        "0s",
        "--json",
    ]);
    let scoped: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(scoped["legacy"], false, "{scoped}");
    assert_eq!(strings(&scoped["scopes"]), ["vehicles:read"]);
    // The CLI refuses broadening too, in words.
    let (id2, _) = kw.key(&["--name", "reader", "--scope", "vehicles:read"]);
    let refused = kw.cli(&["keys", "roll", &id2, "--scope", "vehicles:write"]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("vehicles:write"), "{said}");
}
