//! The shape of the code, held by a test so it stays true (issue 16): no
//! module of the server imports one that imports it back, and no source
//! file of the workspace grows past what one reader can hold.
//!
//! Reads the sources as text: paths through `crate::`, `super::` and a
//! module's own children are the edges; comments and string literals are
//! skipped, and a file's `#[cfg(test)]` tail is left out (its `super::` is
//! the module under test).

#![allow(
    clippy::expect_used,
    reason = "a test: a source tree that cannot be read should fail it loudly"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest source file allowed, in lines.
const MAX_LINES: usize = 800;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/lib.rs` → `crate`, `src/a.rs` and `src/a/mod.rs` → `a`,
/// `src/a/b.rs` → `a::b`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    if parts.is_empty() {
        "crate".to_owned()
    } else {
        parts.join("::")
    }
}

/// The code of a file without comments, string and char literals, and
/// without its `#[cfg(test)]` tail.
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or(text);
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("\"\"");
            }
            b'\'' if b.get(i + 2) == Some(&b'\'') => i += 3,
            b'\'' if b.get(i + 1) == Some(&b'\\') => {
                i += 2;
                while i < b.len() && b[i] != b'\'' {
                    i += 1;
                }
                i += 1;
            }
            c => {
                out.push(char::from(c));
                i += 1;
            }
        }
    }
    out
}

/// Paths `a::b::c` in `code`, as lists of identifiers (a path also
/// continues into `{`: `use x::{y, z}` counts as `x`).
fn paths(code: &str) -> Vec<Vec<String>> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let chars: Vec<char> = code.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !is_ident(chars[i]) || (i > 0 && (is_ident(chars[i - 1]) || chars[i - 1] == ':')) {
            i += 1;
            continue;
        }
        let mut path = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < chars.len() && is_ident(chars[j]) {
                j += 1;
            }
            path.push(chars[start..j].iter().collect::<String>());
            if chars.get(j) == Some(&':')
                && chars.get(j + 1) == Some(&':')
                && chars.get(j + 2).is_some_and(|c| is_ident(*c))
            {
                j += 2;
            } else {
                break;
            }
        }
        if path.len() > 1 {
            found.push(path);
        }
        i = j.max(i + 1);
    }
    found
}

/// The module a path from module `from` names (the longest known prefix),
/// if it names one of this crate's modules.
fn target(from: &str, path: &[String], modules: &BTreeSet<String>) -> Option<String> {
    let mut base: Vec<String> = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("super") => {
            let mut m: Vec<String> = from.split("::").map(str::to_owned).collect();
            if from == "crate" {
                return None;
            }
            m.pop();
            m
        }
        Some(first) => {
            // A child module of `from`, named bare (`use page::…`).
            let child = if from == "crate" {
                first.to_owned()
            } else {
                format!("{from}::{first}")
            };
            if !modules.contains(&child) {
                return None;
            }
            if from == "crate" {
                Vec::new()
            } else {
                from.split("::").map(str::to_owned).collect()
            }
        }
        None => return None,
    };
    let rest = if matches!(path[0].as_str(), "crate" | "super") {
        &path[1..]
    } else {
        path
    };
    let mut best = if base.is_empty() {
        "crate".to_owned()
    } else {
        base.join("::")
    };
    for seg in rest {
        base.push(seg.clone());
        let name = base.join("::");
        if modules.contains(&name) {
            best = name;
        } else {
            break;
        }
    }
    Some(best)
}

/// Module → the modules it imports (self excluded).
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(src, f)).collect();
    let mut edges = BTreeMap::new();
    for file in &files {
        let from = module_of(src, file);
        let text = std::fs::read_to_string(file).expect("readable source");
        let to: BTreeSet<String> = paths(&code_of(&text))
            .iter()
            .filter_map(|p| target(&from, p, &modules))
            .filter(|t| *t != from)
            .collect();
        edges.insert(from, to);
    }
    edges
}

/// A cycle through `start`, if any, as the list of modules on it.
fn cycle_from(start: &str, edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_owned(), vec![start.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((at, trail)) = stack.pop() {
        for next in edges.get(&at).into_iter().flatten() {
            if next == start {
                let mut cycle = trail.clone();
                cycle.push(start.to_owned());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = trail.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

#[test]
fn no_module_of_the_server_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = graph(&src);
    assert!(
        edges.len() > 15 && edges["gateway"].contains("auth"),
        "the graph was not read: {edges:?}"
    );
    let cycles: Vec<String> = edges
        .keys()
        .filter_map(|m| cycle_from(m, &edges))
        .map(|c| c.join(" → "))
        .collect();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_reader_sees_through_comments_and_strings() {
    let code = code_of(
        "use crate::a::b; // crate::c\n/* super::d */ let s = \"crate::e\"; let c = b'\"'; x::y();\n#[cfg(test)]\nuse super::f;",
    );
    let found = paths(&code);
    assert_eq!(
        found,
        vec![
            vec!["crate".to_owned(), "a".to_owned(), "b".to_owned()],
            vec!["x".to_owned(), "y".to_owned()],
        ]
    );
    let modules: BTreeSet<String> = ["a", "a::b", "page", "console", "console::page"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    let t = |from: &str, p: &[&str]| {
        let p: Vec<String> = p.iter().map(|s| (*s).to_owned()).collect();
        target(from, &p, &modules)
    };
    assert_eq!(t("x", &["crate", "a", "b", "Item"]), Some("a::b".into()));
    assert_eq!(t("x", &["crate", "State"]), Some("crate".into()));
    assert_eq!(
        t("console::keys", &["super", "page", "Form"]),
        Some("console::page".into())
    );
    assert_eq!(
        t("console", &["page", "asset"]),
        Some("console::page".into())
    );
    assert_eq!(t("console", &["http", "StatusCode"]), None);
}

#[test]
fn no_source_file_is_longer_than_one_reader_can_hold() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&crates).expect("crates/").flatten() {
        rust_files(&entry.path().join("src"), &mut files);
    }
    assert!(files.len() > 40, "sources not found under {crates:?}");
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).ok()?.lines().count();
            (n > MAX_LINES).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "split by purpose:\n{}", long.join("\n"));
}
