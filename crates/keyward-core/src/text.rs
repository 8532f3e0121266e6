//! Text a client chose, before keyward stores, shows or logs it.
//!
//! Three rules, one place:
//! - **No secrets at rest by accident.** A full key pasted into the wrong
//!   field (a name, a path, an unknown scope) must not be stored and shown.
//!   Names and descriptions holding one are refused ([`check_label`]);
//!   anywhere else, recorded text is redacted to the key's display prefix
//!   ([`redact_keys`]).
//! - **Bounded records.** A path an anonymous client chose is clipped to
//!   [`MAX_RECORDED_PATH`] bytes and marked ([`clip`]), so a flood of long
//!   requests cannot grow the audit log or the log file at will.
//! - **Names read as they are.** Bidirectional overrides and zero-width
//!   characters make a name display as something else (`Trojan Source`);
//!   they are refused like control characters.
//!
//! Deliberately not here: which field is which, or what a refusal looks like
//! on the wire; callers name the field.

use crate::key::{self, CHECKSUM_LEN, RANDOM_LEN};
use std::borrow::Cow;
use std::ops::Range;

/// Longest part of a client's path written to the audit log or a log line.
pub const MAX_RECORDED_PATH: usize = 1024;

/// What [`clip`] appends to text it shortened.
pub const TRUNCATED_MARK: &str = "…[truncated]";

/// Where a full key with a valid checksum sits in `text`, each with its
/// display prefix. Any key prefix counts (another deployment's key is as
/// secret as ours).
///
/// Cheap on text without keys: one scan for `_live_` / `_test_`.
pub fn find_keys(text: &str) -> Vec<(Range<usize>, String)> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    // Every key has `_live_` or `_test_` right after its prefix.
    while let Some(at) = next_env_marker(bytes, from) {
        from = at + 1;
        let body_start = at + "_live_".len();
        let body_end = body_start + RANDOM_LEN + CHECKSUM_LEN;
        let Some(body) = bytes.get(body_start..body_end) else {
            continue;
        };
        if !body.iter().all(u8::is_ascii_alphanumeric) {
            continue;
        }
        // The prefix is 2 to 16 lowercase letters and digits before `at`;
        // try each start, longest first (the checksum decides).
        let run = bytes[..at]
            .iter()
            .rev()
            .take(16)
            .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            .count();
        for start in (at - run)..at.saturating_sub(1) {
            let Some(candidate) = text.get(start..body_end) else {
                continue;
            };
            if let Ok(parsed) = key::parse(candidate) {
                found.push((start..body_end, parsed.display_prefix()));
                from = body_end;
                break;
            }
        }
    }
    found
}

fn next_env_marker(bytes: &[u8], from: usize) -> Option<usize> {
    // Most recorded text has no `_` at all: look for that byte first.
    let mut at = from;
    loop {
        let i = at + bytes.get(at..)?.iter().position(|&b| b == b'_')?;
        if matches!(bytes.get(i..i + 6), Some(b"_live_" | b"_test_")) {
            return Some(i);
        }
        at = i + 1;
    }
}

/// Whether `text` holds a full key with a valid checksum.
pub fn contains_key(text: &str) -> bool {
    !find_keys(text).is_empty()
}

/// `text` with every full key replaced by its display prefix and `…`.
/// Borrowed when there is none (the common case).
pub fn redact_keys(text: &str) -> Cow<'_, str> {
    replace_found(Cow::Borrowed(text), find_keys)
}

/// [`redact_keys`], and also the secret part of a key of `prefix` written
/// without its prefix or with other separators (`insp-live-…`, the bare 38
/// characters), recognised by its checksum under either environment.
pub fn redact_secrets<'a>(text: &'a str, prefix: &str) -> Cow<'a, str> {
    replace_found(redact_keys(text), |t| find_bare_secrets(t, prefix))
}

/// `text` with what `find` finds replaced by its display prefix and `…`.
fn replace_found<'a>(
    text: Cow<'a, str>,
    find: impl Fn(&str) -> Vec<(Range<usize>, String)>,
) -> Cow<'a, str> {
    let found = find(&text);
    if found.is_empty() {
        return text;
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (range, display) in found {
        out.push_str(text.get(last..range.start).unwrap_or_default());
        out.push_str(&display);
        out.push('…');
        last = range.end;
    }
    out.push_str(text.get(last..).unwrap_or_default());
    Cow::Owned(out)
}

/// Secret parts of `prefix` keys inside runs of letters and digits, with
/// the display prefix of the key each completes.
pub fn find_bare_secrets(text: &str, prefix: &str) -> Vec<(Range<usize>, String)> {
    const SECRET: usize = RANDOM_LEN + CHECKSUM_LEN;
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    // One CRC of 32 bytes per window and environment, from a state that
    // has already seen `<prefix>_<env>_`.
    let heads = [key::Environment::Live, key::Environment::Test]
        .map(|env| (env, key::head_hasher(prefix, env)));
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while bytes.get(i).is_some_and(u8::is_ascii_alphanumeric) {
            i += 1;
        }
        let mut w = start;
        while w + SECRET <= i {
            let window = bytes.get(w..w + SECRET).unwrap_or_default();
            let hit = heads.iter().find_map(|(env, head)| {
                key::completes(head, window).then(|| {
                    let shown = text.get(w..w + key::DISPLAY_RANDOM_LEN).unwrap_or_default();
                    format!("{prefix}_{env}_{shown}")
                })
            });
            match hit {
                Some(display) => {
                    found.push((w..w + SECRET, display));
                    w += SECRET;
                }
                None => w += 1,
            }
        }
        i += 1;
    }
    found
}

/// The longest prefix of `text` of at most `max` bytes on a character
/// boundary.
fn clip_bytes(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

/// `text` cut to at most `max` bytes (on a character boundary) followed by
/// [`TRUNCATED_MARK`], or borrowed as it is when short enough.
pub fn clip(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    Cow::Owned([clip_bytes(text, max), TRUNCATED_MARK].concat())
}

/// A client's path as keyward records it (audit log, log lines): keys and
/// bare secrets of `key_prefix` keys redacted ([`redact_secrets`]), then
/// clipped to [`MAX_RECORDED_PATH`]. A key hidden behind escapes
/// (`insp%5Flive%5F…`) is found in the decoded path; the path is then
/// recorded decoded, with the key redacted.
pub fn recorded_path<'a>(path: &'a str, key_prefix: &str) -> Cow<'a, str> {
    // Only what may be kept is scanned (bounding the work an anonymous
    // client can cause), with room for a key that straddles the cut.
    let whole = path;
    let path = clip_bytes(whole, MAX_RECORDED_PATH + 64);
    let redacted = match redact_secrets(path, key_prefix) {
        Cow::Borrowed(p) if p.contains('%') => {
            let decoded = crate::path::percent_decode(p.as_bytes());
            let decoded = String::from_utf8_lossy(&decoded);
            match redact_secrets(&decoded, key_prefix) {
                Cow::Owned(clean) => Cow::Owned(clean),
                Cow::Borrowed(_) => Cow::Borrowed(p),
            }
        }
        other => other,
    };
    let clipped = match redacted {
        Cow::Borrowed(p) => clip(p, MAX_RECORDED_PATH),
        Cow::Owned(p) => Cow::Owned(clip(&p, MAX_RECORDED_PATH).into_owned()),
    };
    // Cut before scanning, then shortened by redaction: still marked.
    if path.len() < whole.len() && !clipped.ends_with(TRUNCATED_MARK) {
        return Cow::Owned([&*clipped, TRUNCATED_MARK].concat());
    }
    clipped
}

/// Why a label (a name or description) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// A control character (newline, tab, NUL…).
    #[error("must not contain control characters")]
    Control,
    /// A bidirectional override or isolate, or a zero-width character.
    #[error("must not contain invisible or text-direction characters (U+{0:04X})")]
    Invisible(u32),
    /// A full API key.
    #[error(
        "must not contain an API key (it looks like one with a valid checksum; revoke it if it was real)"
    )]
    Key,
}

/// Checks text a person will read as a label: a name or a description.
/// `allow_newlines` admits line breaks (descriptions).
///
/// # Errors
/// The first [`LabelError`] found.
pub fn check_label(text: &str, allow_newlines: bool) -> Result<(), LabelError> {
    for c in text.chars() {
        if c.is_control() && !(allow_newlines && matches!(c, '\n' | '\r' | '\t')) {
            return Err(LabelError::Control);
        }
        if is_invisible(c) {
            return Err(LabelError::Invisible(u32::from(c)));
        }
    }
    if contains_key(text) {
        return Err(LabelError::Key);
    }
    Ok(())
}

/// Bidirectional embeddings, overrides and isolates, and the zero-width,
/// filler and other invisible formatting characters that make text display
/// as something other than what it is.
pub(crate) fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}' // zero-width space, joiners, LRM, RLM
            | '\u{202A}'..='\u{202E}' // embeddings and overrides
            | '\u{2028}' | '\u{2029}' // line and paragraph separators
            | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
            | '\u{2066}'..='\u{206F}' // isolates, deprecated format characters
            | '\u{061C}' // Arabic letter mark
            | '\u{FEFF}' // zero-width no-break space
            | '\u{180B}'..='\u{180F}' // Mongolian selectors and separator
            | '\u{00AD}' // soft hyphen
            | '\u{17B4}' | '\u{17B5}' // Khmer inherent vowels
            | '\u{2800}' // braille blank
            | '\u{FFF0}'..='\u{FFF8}' // unassigned specials
            | '\u{1BCA0}'..='\u{1BCA3}' // shorthand format controls
            | '\u{034F}' // combining grapheme joiner
            | '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' // Hangul fillers
            | '\u{FE00}'..='\u{FE0F}' // variation selectors
            | '\u{FFF9}'..='\u{FFFB}' // interlinear annotations
            | '\u{1D173}'..='\u{1D17A}' // musical formatting
            | '\u{E0000}'..='\u{E0FFF}' // tags, variation selectors supplement
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{Environment, RANDOM_BYTES, generate};

    fn a_key(prefix: &str, seed: u8) -> String {
        let bytes: Vec<u8> = (0..RANDOM_BYTES).map(|i| (i as u8 ^ seed) % 248).collect();
        generate(prefix, Environment::Live, &bytes)
            .unwrap()
            .expose()
            .to_owned()
    }

    #[test]
    fn keys_are_found_wherever_they_sit() {
        let k = a_key("insp", 7);
        let display = key::parse(&k).unwrap().display_prefix();
        for (text, at) in [
            (k.clone(), 0),
            (format!("my key is {k}"), 10),
            (format!("/vehicles/{k}/photos"), 10),
            (format!("xx{k}"), 2),
            (format!("{k}{k}"), 0),
        ] {
            let found = find_keys(&text);
            assert!(!found.is_empty(), "{text}");
            assert_eq!(found[0].0.start, at, "{text}");
            assert_eq!(found[0].1, display);
            assert!(contains_key(&text));
            let redacted = redact_keys(&text);
            assert!(!redacted.contains(&k[12..]), "{redacted}");
            assert!(redacted.contains(&format!("{display}…")), "{redacted}");
        }
        assert_eq!(find_keys(&format!("{k}{k}")).len(), 2);
        let other = a_key("trn", 9);
        assert!(contains_key(&format!("name {other}")));
    }

    #[test]
    fn near_keys_are_left_alone() {
        let k = a_key("insp", 3);
        let mut typo = k.clone().into_bytes();
        let last = typo.len() - 1;
        typo[last] = if typo[last] == b'A' { b'B' } else { b'A' };
        let typo = String::from_utf8(typo).unwrap();
        for text in [
            "plain name",
            "insp_live_",
            "insp_live_short",
            &typo,
            &k[..k.len() - 1],
            "a_live_b_test_c",
            "_live_",
            "é_live_ü",
        ] {
            assert!(find_keys(text).is_empty(), "{text}");
            assert!(matches!(redact_keys(text), Cow::Borrowed(_)));
        }
    }

    #[test]
    fn clipping_marks_and_respects_characters() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("abcdef", 3), format!("abc{TRUNCATED_MARK}"));
        // `é` is two bytes: a cut inside it moves back.
        assert_eq!(clip("aéb", 2), format!("a{TRUNCATED_MARK}"));
        let long = format!("/{}", "a".repeat(60_000));
        let recorded = recorded_path(&long, "insp");
        assert!(recorded.len() <= MAX_RECORDED_PATH + TRUNCATED_MARK.len());
        assert!(recorded.ends_with(TRUNCATED_MARK));
    }

    #[test]
    fn keys_behind_escapes_are_found_in_the_decoded_path() {
        let k = a_key("insp", 5);
        let encoded = format!("/damages/{}", k.replace('_', "%5F"));
        let recorded = recorded_path(&encoded, "insp");
        assert!(!recorded.contains(&k[14..]), "{recorded}");
        assert!(recorded.contains(&format!("{}…", &k[..14])), "{recorded}");
        // Escapes without a key are recorded as sent.
        assert_eq!(recorded_path("/a%20b/c%C3%A9", "insp"), "/a%20b/c%C3%A9");
    }

    #[test]
    fn bare_secrets_of_our_keys_are_found_by_their_checksum() {
        let k = a_key("insp", 11);
        let secret = &k[10..];
        for text in [
            format!("/inspections/{secret}"),
            format!("/inspections/insp-live-{secret}"),
            format!("/x/INSP.LIVE.{secret}/y"),
            format!("xx{secret}"),
        ] {
            let clean = redact_secrets(&text, "insp");
            assert!(!clean.contains(secret), "{clean}");
            assert!(clean.contains(&format!("{}…", &k[..14])), "{clean}");
            assert!(!recorded_path(&text, "insp").contains(secret));
        }
        // Another catalog's prefix, or a long id that is no secret: kept.
        let id = "a".repeat(60);
        assert!(matches!(redact_secrets(&id, "insp"), Cow::Borrowed(_)));
        assert!(redact_secrets(&format!("/x/{secret}"), "trn").contains(secret));
    }

    #[test]
    fn labels() {
        assert_eq!(check_label("Production Server", false), Ok(()));
        assert_eq!(check_label("Ünïcode ✓ 🔑", false), Ok(()));
        assert_eq!(check_label("line\nbreak", true), Ok(()));
        assert_eq!(check_label("line\nbreak", false), Err(LabelError::Control));
        assert_eq!(check_label("nul\0", true), Err(LabelError::Control));
        for c in [
            '\u{17B4}',
            '\u{1BCA0}',
            '\u{2800}',
            '\u{202E}',
            '\u{2066}',
            '\u{200B}',
            '\u{200D}',
            '\u{FEFF}',
            '\u{061C}',
            '\u{E0041}',
            '\u{3164}',
            '\u{034F}',
            '\u{FE0F}',
            '\u{FFF9}',
            '\u{2028}',
        ] {
            assert_eq!(
                check_label(&format!("admin{c}txt.exe"), true),
                Err(LabelError::Invisible(u32::from(c)))
            );
        }
        let k = a_key("insp", 1);
        assert_eq!(check_label(&k, false), Err(LabelError::Key));
        assert_eq!(
            check_label(&format!("tablet {k}"), true),
            Err(LabelError::Key)
        );
        assert_eq!(
            LabelError::Invisible(0x202E).to_string(),
            "must not contain invisible or text-direction characters (U+202E)"
        );
    }
}
