//! The bodies of keyward-core's fuzz targets (`fuzz/fuzz_targets/`), kept
//! here so the same code runs under `cargo fuzz` on nightly and, over the
//! committed corpora, as ordinary tests on stable
//! (`tests/fuzz_corpus.rs`). Each panics on a broken property, never on
//! bad input.
//!
//! Not part of the API: hidden from the docs, free to change.

use crate::path::{best_fit_delimiter, check_normal, percent_decode, strip_gateway_prefix};
use crate::{Catalog, KeyAccess, ScopeSet, key, text};
use std::sync::LazyLock;
use unicode_normalization::UnicodeNormalization;

static FLEET: LazyLock<Option<Catalog>> = LazyLock::new(|| Catalog::fleet().ok());

/// The path check, the permissive-back-end property, and a decision on every
/// accepted path.
pub fn path_and_route(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    // The first line is the method, the rest the path.
    let (method, path) = input.split_once('\n').unwrap_or(("GET", input));
    if check_normal(path).is_err() {
        return;
    }
    assert_eq!(
        permissive(path),
        as_authorized(path),
        "accepted `{path}` resolves elsewhere on a permissive back end"
    );
    let Some(catalog) = FLEET.as_ref() else {
        return;
    };
    let all = catalog
        .scope_set(&["vehicles:write", "inspections:write"])
        .unwrap_or(ScopeSet::EMPTY);
    let access = KeyAccess::new(catalog, all);
    let route_path = strip_gateway_prefix(catalog.gateway_prefix(), path).unwrap_or(path);
    let decision = catalog.authorize(Ok(&access), 0, method, route_path);
    // Deny is a value: whatever the outcome, it names only known scopes.
    assert!(decision.missing.is_subset(&decision.required));
}

/// What a permissive back end makes of a path: escapes decoded first (`%2F`,
/// `%5C` and `%3B` becoming delimiters too), then NFKC and best-fit mapping
/// (`．` becoming `.`, `¥` becoming `\`, a no-break space a space), `\` read
/// as `/`, each segment's `;…` parameters
/// dropped, empty and `.` segments dropped, `..` popping its parent, and
/// (Windows) any other segment of only dots and spaces taken for `..`.
/// Returns its segments.
pub fn permissive(path: &str) -> Vec<Vec<u8>> {
    let decoded = percent_decode(path.as_bytes());
    let mut normalised = Vec::with_capacity(decoded.len());
    for chunk in decoded.utf8_chunks() {
        let mut mapped = String::with_capacity(chunk.valid().len());
        for c in chunk.valid().chars() {
            match best_fit_delimiter(c) {
                Some(ascii) => mapped.push_str(ascii),
                // Some normalisers strip invisible characters.
                None if crate::text::is_invisible(c) => {}
                None => mapped.push(c),
            }
        }
        for n in mapped.nfkc() {
            let n = if n.is_whitespace() { ' ' } else { n };
            normalised.extend_from_slice(n.encode_utf8(&mut [0; 4]).as_bytes());
        }
        normalised.extend_from_slice(chunk.invalid());
    }
    let mut out: Vec<Vec<u8>> = Vec::new();
    for seg in normalised.split(|&b| b == b'/' || b == b'\\') {
        let bare = seg.split(|&b| b == b';').next().unwrap_or_default();
        let dots_and_spaces = bare.iter().all(|&b| b == b'.' || b == b' ');
        match bare {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            _ if dots_and_spaces => {
                if bare.contains(&b'.') {
                    out.pop();
                }
            }
            _ => out.push(bare.to_vec()),
        }
    }
    out
}

/// The segments keyward matched routes against: the raw path split on `/`,
/// each segment's `;…` parameters dropped, then decoded.
pub fn as_authorized(path: &str) -> Vec<Vec<u8>> {
    path.split('/')
        .skip(1)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let bare = s.split(';').next().unwrap_or_default();
            percent_decode(bare.as_bytes())
        })
        .collect()
}

/// Key parsing, key finding and redaction, labels and clipping.
pub fn key_text(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = key::parse(input) {
        assert!(input.starts_with(&parsed.display_prefix()));
    }
    let found = text::find_keys(input);
    let redacted = text::redact_keys(input);
    for (range, display) in &found {
        let whole = input.get(range.clone()).unwrap_or_default();
        assert!(key::parse(whole).is_ok(), "found a key that does not parse");
        assert!(!redacted.contains(whole), "a found key survived redaction");
        assert!(redacted.contains(display.as_str()));
    }
    // Redaction leaves nothing a second pass would find.
    assert!(text::find_keys(&redacted).is_empty());
    let scrubbed = text::redact_secrets(input, "insp");
    assert!(text::find_keys(&scrubbed).is_empty());
    assert!(text::find_bare_secrets(&scrubbed, "insp").is_empty());
    let _ = text::check_label(input, true);
    let clipped = text::clip(input, 64);
    assert!(clipped.len() <= 64 + text::TRUNCATED_MARK.len());
    let _ = text::recorded_path(input, "insp");
}

/// Loading a catalog: every input is a catalog or a list of errors.
pub fn catalog_load(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    match Catalog::parse("fuzz.toml", input) {
        Ok(catalog) => {
            // A loaded catalog's own prefix is in normal form.
            let prefix = catalog.gateway_prefix();
            assert!(
                prefix.is_empty() || check_normal(prefix).is_ok(),
                "{prefix}"
            );
        }
        Err(errors) => assert!(!errors.to_string().is_empty()),
    }
}

/// Limits and networks as clients write them: every input is a valid limit
/// or network that reads back the same, or an error naming the field; and
/// counting never admits more than a limit in a window.
pub fn limits(data: &[u8]) {
    use crate::limits::{Admission, Counter, Limit, Network, admit, window_of};
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    for part in input.split('\n') {
        match Limit::parse_flag("--limit", part) {
            Ok(l) => {
                // What is stored reads back to the same limit.
                let text = format!("{}={}/{}", l.name, l.requests, l.per());
                assert_eq!(Limit::parse_flag("l", &text).ok(), Some(l.clone()));
                // A burst at one instant admits exactly `requests` (capped
                // to keep the run short).
                if l.requests <= 64 {
                    let limits = [l.clone()];
                    let mut counters = [Counter::default()];
                    let now = i64::from(u32::try_from(part.len()).unwrap_or(0)) * 997;
                    let admitted = (0..80)
                        .filter(|_| {
                            matches!(
                                admit(&limits, &mut counters, now, |_| 0),
                                Admission::Allowed { .. }
                            )
                        })
                        .count();
                    assert_eq!(u64::try_from(admitted).ok(), Some(l.requests.min(80)));
                    assert_eq!(counters[0].window, window_of(now, l.per_ms));
                }
            }
            Err(e) => assert!(e.field.starts_with("--limit"), "{e}"),
        }
        match Network::parse("n", part) {
            Ok(n) => {
                let again = Network::parse("n", &n.to_string()).ok();
                assert_eq!(again, Some(n), "a network reads back as itself");
            }
            Err(e) => assert_eq!(e.field, "n"),
        }
    }
}
