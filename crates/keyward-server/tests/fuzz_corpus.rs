//! The committed `json_bodies` fuzz corpus (`fuzz/corpus/json_bodies/`),
//! replayed on stable through the same target body `cargo fuzz` runs.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is a failed test"
)]

use std::path::PathBuf;

#[test]
fn json_bodies_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/json_bodies");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        let data = std::fs::read(&path).expect("a corpus file");
        let outcome = std::panic::catch_unwind(|| keyward_server::fuzzing::json_bodies(&data));
        assert!(outcome.is_ok(), "{} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "empty corpus at {}", dir.display());
}
