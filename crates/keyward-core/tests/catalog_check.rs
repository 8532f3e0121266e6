//! Catalog validation: every error reported with its location; closure under
//! `implies` checked against a breadth-first reference.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]

use keyward_core::Catalog;
use proptest::prelude::*;
use std::collections::{BTreeSet, VecDeque};

fn errors(text: &str) -> Vec<String> {
    match Catalog::parse("t.toml", text) {
        Ok(_) => Vec::new(),
        Err(e) => e.to_string().lines().map(str::to_owned).collect(),
    }
}

#[test]
fn reports_every_error_with_its_location() {
    let text = r#"name = "demo"
key_prefix = "dm"

[[scopes]]
name = "a:read"
description = "A"
implies = ["nope:read"]

[[scopes]]
name = "Bad Name"
description = "B"

[[scopes]]
name = "a:read"
description = "dup"

[[scopes]]
name = "c:write"
description = "C"
status = "soon"

[[scopes]]
name = "p:read"
description = "planned"
status = "planned"

[[permission_sets]]
id = "set-one"
name = "One"
scopes = ["a:read", "zz:read", "p:read"]

[[presets]]
id = "pre"
name = "Pre"
permission_sets = ["missing-set"]

[[routes]]
methods = ["GET", "FETCH"]
path = "/a/{id"
scopes = ["a:read"]

[[routes]]
methods = ["GET"]
path = "/c"
scopes = []

[[routes]]
methods = ["GET"]
path = "/a"
scopes = ["a:read"]

[[routes]]
methods = ["GET"]
path = "/a"
scopes = ["a:read"]
"#;
    let got = errors(text);
    let want = [
        "t.toml:7:12: scope `a:read` implies unknown scope `nope:read`",
        "t.toml:10:8: scope name `Bad Name` must match `resource:action` (`^[a-z][a-z0-9-]*:[a-z][a-z0-9-]*$`)",
        "t.toml:14:8: scope `a:read` is defined twice",
        "t.toml:20:10: scope `c:write` has unknown status `soon`: expected available, planned, under-review or deprecated",
        "t.toml:30:21: permission set `set-one` refers to unknown scope `zz:read`",
        "t.toml:30:32: permission set `set-one` refers to scope `p:read`, which is planned",
        "t.toml:35:20: preset `pre` refers to unknown permission set `missing-set`",
        "t.toml:38:19: route `/a/{id` has unknown method `FETCH`: expected one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
        "t.toml:39:8: route path `/a/{id`: `{id` must be a whole `{param}` segment",
        "t.toml:45:10: route `/c` requires no scopes: every route must name at least one",
        "t.toml:53:12: route `GET /a` duplicates `GET /a`",
    ];
    assert_eq!(got, want);
}

#[test]
fn reports_cycles_and_syntax_errors() {
    let cyc = r#"name = "demo"
key_prefix = "dm"
[[scopes]]
name = "a:x"
description = "A"
implies = ["b:x"]
[[scopes]]
name = "b:x"
description = "B"
implies = ["a:x"]
"#;
    assert_eq!(
        errors(cyc),
        ["t.toml:4:8: scope hierarchy has a cycle: a:x → b:x → a:x"]
    );
    let syntax = "name = \"demo\"\nkey_prefix = \"dm\nx = 1\n";
    let e = errors(syntax);
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("t.toml:2:"), "{e:?}");
    let unknown_field = "name = \"demo\"\nkey_prefix = \"dm\"\nprefix = \"x\"\n";
    let e = errors(unknown_field);
    assert!(
        e[0].starts_with("t.toml:3:1: invalid catalog: unknown field `prefix`"),
        "{e:?}"
    );
    let reserved = "name = \"demo\"\nkey_prefix = \"dm\"\n[[scopes]]\nname = \"keyward-api-keys:read\"\ndescription = \"x\"\n";
    assert!(errors(reserved)[0].contains("reserved `keyward-` namespace"));
}

/// Builds a catalog text with scopes s0..sN and the given implies edges.
fn catalog_text(n: usize, edges: &[(usize, usize)]) -> String {
    let mut t = String::from("name = \"p\"\nkey_prefix = \"pp\"\n");
    for i in 0..n {
        let implies: Vec<String> = edges
            .iter()
            .filter(|(a, _)| *a == i)
            .map(|(_, b)| format!("\"s{b}:read\""))
            .collect();
        t.push_str(&format!(
            "[[scopes]]\nname = \"s{i}:read\"\ndescription = \"d\"\nimplies = [{}]\n",
            implies.join(", ")
        ));
    }
    t
}

fn bfs(n: usize, edges: &[(usize, usize)], start: usize) -> BTreeSet<usize> {
    let mut seen = BTreeSet::from([start]);
    let mut q = VecDeque::from([start]);
    while let Some(x) = q.pop_front() {
        for &(a, b) in edges {
            if a == x && b < n && seen.insert(b) {
                q.push_back(b);
            }
        }
    }
    seen
}

proptest! {
    #[test]
    fn closure_matches_bfs(n in 1usize..12, raw_edges in prop::collection::vec((0usize..12, 0usize..12), 0..30)) {
        let mut edges: Vec<(usize, usize)> = raw_edges.into_iter().filter(|(a, b)| *a < n && *b < n && a != b).collect();
        edges.sort();
        edges.dedup();
        let cyclic = (0..n).any(|i| edges.iter().any(|&(a, b)| a == i && bfs(n, &edges, b).contains(&i)));
        match Catalog::parse("p.toml", &catalog_text(n, &edges)) {
            Ok(c) => {
                prop_assert!(!cyclic);
                for i in 0..n {
                    let s = c.scope(c.scope_id(&format!("s{i}:read")).unwrap());
                    let got: BTreeSet<String> = c.names(s.closure()).into_iter().map(str::to_owned).collect();
                    let want: BTreeSet<String> = bfs(n, &edges, i).into_iter().map(|j| format!("s{j}:read")).collect();
                    prop_assert_eq!(got, want);
                }
            }
            Err(e) => {
                prop_assert!(cyclic, "{}", e);
                prop_assert!(e.errors.iter().all(|x| x.message.contains("cycle")), "{}", e);
            }
        }
    }
}
