//! The committed fuzz corpora (`fuzz/corpus/`), replayed on stable through
//! the same target bodies `cargo fuzz` runs, so CI keeps every input the
//! fuzzers found interesting.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is a failed test"
)]

use keyward_core::fuzzing;
use std::path::PathBuf;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        let data = std::fs::read(&path).expect("a corpus file");
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "{target}: empty corpus at {}", dir.display());
}

#[test]
fn path_and_route_corpus() {
    replay("path_and_route", fuzzing::path_and_route);
}

#[test]
fn key_text_corpus() {
    replay("key_text", fuzzing::key_text);
}

#[test]
fn catalog_load_corpus() {
    replay("catalog_load", fuzzing::catalog_load);
}

#[test]
fn limits_corpus() {
    replay("limits", fuzzing::limits);
}
