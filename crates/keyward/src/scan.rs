//! `keyward scan`: the files side of SPEC §11. Walks paths (or reads
//! standard input), skips binary files and `.git` internals, and collects
//! every key of the catalog's prefix with a valid checksum, with its file
//! and line. What each key is, and what its sighting does, is the app's
//! (`keyward_app::leaks`). Keys stay in memory; nothing here prints one.

use keyward_app::leaks::Sighting;
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
            if let Err(e) = stream(
                std::io::stdin().lock(),
                "(stdin)",
                prefix,
                &mut found,
                &mut stats,
            ) {
                unreadable(&mut stats, "(stdin)", &e);
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
    // A file's name may itself hold a key: never shown whole; nor its
    // control characters, which could rewrite the terminal's lines.
    let shown = printable(&keyward_core::text::redact_keys(
        &path.display().to_string(),
    ));
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
        if let Err(e) = file(path, meta.len(), &shown, prefix, found, stats) {
            unreadable(stats, &shown, &e);
        }
        tick(stats);
    } else if top {
        // A pipe or device named on the command line (`<(git log -p)`,
        // `/dev/stdin`): read as a stream, as standard input is.
        if let Err(e) =
            std::fs::File::open(path).and_then(|f| stream(f, &shown, prefix, found, stats))
        {
            unreadable(stats, &shown, &e);
        }
        tick(stats);
    }
    // Inside a walk, symbolic links, pipes, sockets and devices are not
    // followed and not read.
}

/// Files larger than this are streamed rather than read whole.
const READ_WHOLE: u64 = 16 << 20;

/// One regular file: its first bytes decide whether it is binary (then
/// nothing more is read, however large it is); a large text file is
/// streamed, a small one read whole.
fn file(
    path: &Path,
    len: u64,
    name: &str,
    prefix: &str,
    found: &mut Vec<Sighting>,
    stats: &mut Stats,
) -> std::io::Result<()> {
    use std::io::Read as _;
    let f = std::fs::File::open(path)?;
    let mut head = Vec::with_capacity(SNIFF);
    f.take(SNIFF as u64).read_to_end(&mut head)?;
    if head.contains(&0) {
        stats.binary += 1;
        return Ok(());
    }
    let mut f = std::fs::File::open(path)?;
    if len > READ_WHOLE {
        return stream(f, name, prefix, found, stats);
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    f.read_to_end(&mut bytes)?;
    text(&bytes, name, prefix, found, stats);
    Ok(())
}

/// Characters that change how a line reads without being seen: bidirectional
/// overrides and isolates, zero-width characters, the byte-order mark.
fn invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// `text` with control and invisible characters escaped (`\u{1b}`).
fn printable(text: &str) -> String {
    if !text.chars().any(|c| c.is_control() || invisible(c)) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() || invisible(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Bytes read from a stream at a time.
const CHUNK: usize = 1 << 20;

/// A line longer than this is cut (keeping enough of its end that a key
/// across the cut is found whole, and once).
const MAX_LINE: usize = 16 << 20;

/// The longest key: a 16-character prefix, `_live_`, 38 characters.
const LONGEST_KEY: usize = 16 + 6 + 38;

/// Keys in a stream (standard input, a pipe): read a chunk at a time and
/// scanned a line at a time, so memory stays bounded however long the
/// stream, and never skipped as binary (`tar c . | keyward scan -` is
/// searched too).
fn stream(
    mut r: impl std::io::Read,
    name: &str,
    prefix: &str,
    found: &mut Vec<Sighting>,
    stats: &mut Stats,
) -> std::io::Result<()> {
    stats.files += 1;
    let mut pending: Vec<u8> = Vec::with_capacity(CHUNK);
    let mut chunk = vec![0u8; CHUNK];
    let mut line = 1u64;
    loop {
        let n = match r.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        stats.bytes += n as u64;
        let before = pending.len();
        pending.extend_from_slice(&chunk[..n]);
        // Up to the last complete line; a line too long is cut short of
        // its end, its keys counted where they start. Only the new bytes
        // are searched: what was pending holds no line end.
        let cut = match pending[before..].iter().rposition(|b| *b == b'\n') {
            Some(i) => before + i + 1,
            None if pending.len() > MAX_LINE => pending.len() - LONGEST_KEY,
            None => continue,
        };
        line = keys_in(&pending, cut, line, name, prefix, found);
        pending.drain(..cut);
    }
    let end = pending.len();
    keys_in(&pending, end, line, name, prefix, found);
    Ok(())
}

/// The keys of `prefix` starting before `cut` in `bytes`, which begin at
/// line `line`; the line at `cut`. Bytes that are not ASCII are read as `?`
/// (keys are ASCII), so positions stay those of the bytes.
fn keys_in(
    bytes: &[u8],
    cut: usize,
    mut line: u64,
    name: &str,
    prefix: &str,
    found: &mut Vec<Sighting>,
) -> u64 {
    let text: String = bytes
        .iter()
        .map(|&b| if b.is_ascii() { char::from(b) } else { '?' })
        .collect();
    let mut counted = 0usize;
    for (range, _) in keyward_core::text::find_keys(&text) {
        if range.start >= cut {
            break;
        }
        let key = &text[range.clone()];
        if !key.strip_prefix(prefix).is_some_and(|r| r.starts_with('_')) {
            continue;
        }
        line += newlines(&bytes[counted..range.start]);
        counted = range.start;
        found.push(Sighting {
            place: format!("{name}:{line}"),
            key: key.to_owned(),
        });
    }
    line + newlines(&bytes[counted..cut])
}

fn newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|b| **b == b'\n').count() as u64
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
