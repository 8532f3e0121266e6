//! `keyward scan`: the files side of SPEC §11. Walks paths (or reads
//! standard input), skips binary files and `.git` internals, and collects
//! every key of the catalog's prefix with a valid checksum, with its file
//! and line. What each key is, and what its sighting does, is the app's
//! (`keyward_app::leaks`). Keys stay in memory; nothing here prints one.

use keyward_app::leaks::Sighting;
use std::io::Read as _;
use std::path::{Path, PathBuf};

/// How much a scan read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Text files read.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files skipped as binary.
    pub binary: u64,
    /// Paths that could not be read (named on standard error).
    pub unreadable: u64,
}

/// A file whose first bytes hold a NUL is binary (what git and grep do).
const SNIFF: usize = 8_000;

/// Scans `paths` (`-`: standard input) for keys of `prefix`; `tick` is
/// called after each file, with the stats so far.
pub fn scan(
    paths: &[String],
    prefix: &str,
    tick: &mut dyn FnMut(&Stats),
) -> (Vec<Sighting>, Stats) {
    let mut found = Vec::new();
    let mut stats = Stats::default();
    for p in paths {
        if p == "-" {
            let mut bytes = Vec::new();
            match std::io::stdin().read_to_end(&mut bytes) {
                Ok(_) => text(&bytes, "(stdin)", prefix, &mut found, &mut stats),
                Err(e) => unreadable(&mut stats, "(stdin)", &e),
            }
            tick(&stats);
            continue;
        }
        walk(Path::new(p), true, prefix, &mut found, &mut stats, tick);
    }
    (found, stats)
}

fn unreadable(stats: &mut Stats, name: &str, e: &std::io::Error) {
    stats.unreadable += 1;
    eprintln!("warning: {name}: {e}");
}

/// One path: a file is read, a directory walked (without `.git`). A
/// symbolic link is followed when it is a path given (`top`), never inside
/// a walk (no loops, no leaving the tree).
fn walk(
    path: &Path,
    top: bool,
    prefix: &str,
    found: &mut Vec<Sighting>,
    stats: &mut Stats,
    tick: &mut dyn FnMut(&Stats),
) {
    // A file's name may itself hold a key: never shown whole.
    let shown = keyward_core::text::redact_keys(&path.display().to_string()).into_owned();
    let meta = match if top {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    } {
        Ok(m) => m,
        Err(e) => return unreadable(stats, &shown, &e),
    };
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => return unreadable(stats, &shown, &e),
        };
        // A stable order: the same tree reports the same way.
        entries.sort();
        for entry in entries {
            if entry.file_name().is_some_and(|n| n == ".git") {
                continue;
            }
            walk(&entry, false, prefix, found, stats, tick);
        }
    } else if meta.is_file() {
        match std::fs::read(path) {
            Ok(bytes) => text(&bytes, &shown, prefix, found, stats),
            Err(e) => unreadable(stats, &shown, &e),
        }
        tick(stats);
    }
    // Symbolic links, sockets, devices: not followed, not read.
}

/// The keys of `prefix` in one file's bytes, each with its line.
fn text(bytes: &[u8], name: &str, prefix: &str, found: &mut Vec<Sighting>, stats: &mut Stats) {
    if bytes[..bytes.len().min(SNIFF)].contains(&0) {
        stats.binary += 1;
        return;
    }
    stats.files += 1;
    stats.bytes += bytes.len() as u64;
    let text = String::from_utf8_lossy(bytes);
    let (mut line, mut counted) = (1u64, 0usize);
    for (range, _) in keyward_core::text::find_keys(&text) {
        let Some(key) = text.get(range.clone()) else {
            continue;
        };
        if !key.strip_prefix(prefix).is_some_and(|r| r.starts_with('_')) {
            continue;
        }
        line += text.as_bytes()[counted..range.start]
            .iter()
            .filter(|b| **b == b'\n')
            .count() as u64;
        counted = range.start;
        found.push(Sighting {
            place: format!("{name}:{line}"),
            key: key.to_owned(),
        });
    }
}
