//! Request paths the gateway will authorize.
//!
//! keyward must never authorize one path and forward another, so a path that
//! an upstream might normalise differently is refused before anything else.
//! The rule assumes the most permissive back ends in common use: servlet
//! containers (Tomcat, Jetty, Spring) drop a segment's `;…` parameters before
//! resolving dot segments, IIS and ASP.NET read `\` as `/`, and some stacks
//! decode escapes before routing. A path is refused when
//!
//! - it does not begin with `/`;
//! - it holds a raw control character, space, backslash or non-ASCII byte
//!   (RFC 3986 wants those percent-encoded);
//! - a segment, once its `;…` parameter part is removed, is empty or made
//!   only of dots and encoded spaces (`//`, a trailing `/`, `.`, `..`, `..;`,
//!   `.;x=1`, `;x`, `...`, `..%20`: Windows drops trailing dots and spaces);
//! - an escape is malformed (`%zz`, `%2`), or decodes to `/`, `\`, `.`, `;`,
//!   `%` or a control character (`%00`–`%1F`, `%7F`), or escapes decode to bytes
//!   that are not UTF-8, or to text that Unicode normalisation (NFKC) would
//!   change (`%EF%BC%8E`, the fullwidth `．`, is `.`; `%EF%B8%B0`, `︰`, is
//!   `..`; `%EF%BD%85`, `ｅ`, is `e`, so `/vehicles/ｅxport` would reach a
//!   normalising back end as `/vehicles/export`), or to a space of any kind,
//!   or to a character Windows' best-fit mapping makes a delimiter (`¥` and
//!   `₩` are `\` in Japanese and Korean code pages).
//!
//! [`check_method`] is the method's rule: at most [`MAX_METHOD`] bytes, and
//! decided as sent (methods are case-sensitive; `delete` is no route).
//!
//! For every path this accepts, such a back end resolves the same segments
//! keyward matched (the property test at the end holds it to a permissive
//! resolver).

use thiserror::Error;

/// Why a path is not in normal form. Each message names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    /// Does not begin with `/`.
    #[error("path must begin with `/`")]
    NotAbsolute,
    /// `.` or `..` segment, also with a `;…` parameter part (`..;x`).
    #[error("path contains a dot segment `{0}`")]
    DotSegment(String),
    /// `//`, a trailing `/`, or a segment that is only a `;…` parameter part.
    #[error("path contains an empty segment")]
    EmptySegment,
    /// `%2F`, `%5C`, `%2E`, `%3B` or `%25`.
    #[error("path contains a percent-encoded `{0}`")]
    EncodedDelimiter(String),
    /// A character some back ends read as another: NFKC would change it (the
    /// fullwidth `．`), it is a space, or best-fit mapping makes it a
    /// delimiter.
    #[error(
        "path contains `{0}` (U+{1:04X}), which some back ends read as other characters (its normal form, a space or a delimiter)"
    )]
    Lookalike(char, u32),
    /// `\`, which some back ends read as `/`.
    #[error("path contains a backslash")]
    Backslash,
    /// `%00`–`%1F` or `%7F`.
    #[error("path contains a percent-encoded control character `%{0:02X}`")]
    EncodedControl(u8),
    /// Control characters, spaces, malformed escapes and the like.
    #[error("path contains a character that must be percent-encoded")]
    BadCharacter,
    /// Percent-escapes that decode to bytes which are not UTF-8.
    #[error("path decodes to invalid UTF-8")]
    InvalidUtf8,
}

/// Checks that `path` (without query string) is in normal form.
///
/// `/` alone is normal; `/vehicles/` (trailing slash) is not.
///
/// # Errors
/// The first [`PathError`] found.
pub fn check_normal(path: &str) -> Result<(), PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if bytes.len() == 1 {
        return Ok(());
    }
    // One pass over the bytes (this runs on every gateway request). A bad
    // character anywhere outranks a bad segment, which outranks a bad escape,
    // so the first segment error waits until the end of the pass.
    let mut segment_error = None;
    let mut segment_start = 1;
    // Where the current segment's `;…` parameter part begins, if it has one.
    let mut params_at = None;
    let mut escapes = false;
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        // Most bytes are ordinary: one table load and one branch each.
        match BYTE_CLASS[usize::from(b)] {
            ORDINARY => {}
            BAD => return Err(PathError::BadCharacter),
            BACKSLASH => return Err(PathError::Backslash),
            SLASH => {
                // Most segments start with a letter or digit: none of
                // `bad_segment`'s cases (an empty or `;`-led one does not).
                if segment_error.is_none()
                    && !bytes
                        .get(segment_start)
                        .is_some_and(u8::is_ascii_alphanumeric)
                {
                    segment_error = bad_segment(path, segment_start, params_at, i);
                }
                segment_start = i + 1;
                params_at = None;
            }
            SEMICOLON => {
                if params_at.is_none() {
                    params_at = Some(i);
                }
            }
            _ => escapes = true,
        }
    }
    if segment_error.is_none()
        && !bytes
            .get(segment_start)
            .is_some_and(u8::is_ascii_alphanumeric)
    {
        segment_error = bad_segment(path, segment_start, params_at, bytes.len());
    }
    if let Some(e) = segment_error {
        return Err(e);
    }
    if escapes { check_escapes(path) } else { Ok(()) }
}

const ORDINARY: u8 = 0;
const BAD: u8 = 1;
const BACKSLASH: u8 = 2;
const SLASH: u8 = 3;
const SEMICOLON: u8 = 4;
const PERCENT: u8 = 5;

/// What each byte of a path is to [`check_normal`]. `BAD` covers controls,
/// space, DEL, non-ASCII, and the characters RFC 3986 does not allow in a
/// path. A `#` or `?` there was not cut off as fragment or query by
/// whoever described the request (`/v1/authorize`, `/v1/verify`), and a
/// back end may cut it.
static BYTE_CLASS: [u8; 256] = {
    let mut table = [ORDINARY; 256];
    let mut i = 0;
    while i < 256 {
        #[expect(clippy::cast_possible_truncation, reason = "i < 256")]
        let b = i as u8;
        table[i] = match b {
            0..=b' '
            | 0x7f..
            | b'#'
            | b'?'
            | b'"'
            | b'<'
            | b'>'
            | b'`'
            | b'{'
            | b'}'
            | b'|'
            | b'^'
            | b'['
            | b']' => BAD,
            b'\\' => BACKSLASH,
            b'/' => SLASH,
            b';' => SEMICOLON,
            b'%' => PERCENT,
            _ => ORDINARY,
        };
        i += 1;
    }
    table
};

/// The segment `path[start..end]`, judged as it is and without its `;…`
/// parameter part (which begins at `params_at`).
fn bad_segment(
    path: &str,
    start: usize,
    params_at: Option<usize>,
    end: usize,
) -> Option<PathError> {
    let bare = path
        .get(start..params_at.unwrap_or(end))
        .unwrap_or_default();
    let segment = path.get(start..end).unwrap_or_default();
    match bare {
        "" => Some(PathError::EmptySegment),
        "." | ".." => Some(PathError::DotSegment(segment.to_owned())),
        _ if only_dots_and_spaces(bare) => Some(if bare.contains('.') {
            PathError::DotSegment(segment.to_owned())
        } else {
            PathError::EmptySegment
        }),
        _ => None,
    }
}

/// Whether `bare` is made only of `.` and `%20` (Windows drops trailing dots
/// and spaces, so `...` and `..%20` are `..` there, and `%20` is empty).
fn only_dots_and_spaces(bare: &str) -> bool {
    let mut rest = bare.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = match (b, tail) {
            (b'.', _) => tail,
            (b'%', [b'2', b'0', more @ ..]) => more,
            _ => return false,
        };
    }
    true
}

/// The ASCII a non-ASCII character becomes under Windows' best-fit mapping
/// to a code page, where that is a delimiter and NFKC does not say so.
pub(crate) fn best_fit_delimiter(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{2215}' | '\u{2044}' | '\u{29F8}' => "/",
        // `¥` and `₩` are the backslash of Japanese and Korean code pages.
        '\u{00A5}' | '\u{20A9}' | '\u{2216}' | '\u{29F5}' | '\u{29F9}' => "\\",
        _ => return None,
    })
}

/// The first character of decoded path text that some back end reads as
/// another: a space of any kind, a best-fit delimiter, an invisible
/// character some normalisers strip (`..%E2%80%8B` is `..` there), or text NFKC would
/// change (the first character whose own normal form differs, or else the
/// first non-ASCII one, for a sequence that composes).
fn unnormal_char(text: &str) -> Option<char> {
    use unicode_normalization::UnicodeNormalization;
    if let Some(c) = text.chars().find(|&c| {
        !c.is_ascii()
            && (c.is_whitespace()
                || best_fit_delimiter(c).is_some()
                || crate::text::is_invisible(c))
    }) {
        return Some(c);
    }
    if unicode_normalization::is_nfkc(text) {
        return None;
    }
    text.chars()
        .find(|&c| !std::iter::once(c).nfkc().eq(std::iter::once(c)))
        .or_else(|| text.chars().find(|c| !c.is_ascii()))
}

/// Longest request method keyward decides on; no catalog route names a
/// longer one.
pub const MAX_METHOD: usize = 32;

/// Why a method is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MethodError {
    /// Empty, or longer than [`MAX_METHOD`] bytes.
    #[error("method must be 1 to {MAX_METHOD} bytes")]
    Length,
    /// Not an HTTP token (RFC 9110 §5.6.2).
    #[error("method must be an HTTP token (letters, digits and !#$%&'*+-.^_`|~)")]
    NotToken,
}

/// Checks a request method the way the gateway does. Methods are decided as
/// sent: they are case-sensitive, so `delete` matches no `DELETE` route.
///
/// # Errors
/// The [`MethodError`].
pub fn check_method(method: &str) -> Result<(), MethodError> {
    if method.is_empty() || method.len() > MAX_METHOD {
        return Err(MethodError::Length);
    }
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if method.bytes().all(token) {
        Ok(())
    } else {
        Err(MethodError::NotToken)
    }
}

/// The percent-escapes of a path otherwise normal.
fn check_escapes(path: &str) -> Result<(), PathError> {
    let bytes = path.as_bytes();
    let mut non_ascii = false;
    for (i, _) in path.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3).unwrap_or_default();
        let decoded = match hex {
            [a, b] => match (char::from(*a).to_digit(16), char::from(*b).to_digit(16)) {
                (Some(h), Some(l)) => Some(h * 16 + l),
                _ => None,
            },
            _ => None,
        };
        match decoded {
            Some(0x2f) => return Err(PathError::EncodedDelimiter("/".into())),
            Some(0x5c) => return Err(PathError::EncodedDelimiter("\\".into())),
            Some(0x2e) => return Err(PathError::EncodedDelimiter(".".into())),
            Some(0x3b) => return Err(PathError::EncodedDelimiter(";".into())),
            Some(0x25) => return Err(PathError::EncodedDelimiter("%".into())),
            Some(b @ (0..0x20 | 0x7f)) => {
                return Err(PathError::EncodedControl(u8::try_from(b).unwrap_or(0)));
            }
            Some(b) => non_ascii |= b >= 0x80,
            None => return Err(PathError::BadCharacter),
        }
    }
    if non_ascii {
        let decoded = percent_decode(bytes);
        let text = std::str::from_utf8(&decoded).map_err(|_| PathError::InvalidUtf8)?;
        if let Some(c) = unnormal_char(text) {
            return Err(PathError::Lookalike(c, u32::from(c)));
        }
    }
    Ok(())
}

/// Decodes `%XY` escapes; callers have checked every escape is well formed
/// (a malformed one is kept as it is).
pub(crate) fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |j: usize| bytes.get(j).and_then(|c| char::from(*c).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push(u8::try_from(h * 16 + l).unwrap_or(0));
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Removes the gateway prefix, or `None` when `path` lies outside it.
///
/// `/api/v1` matches `/api/v1` and `/api/v1/x`, not `/api/v10`.
pub fn strip_gateway_prefix<'a>(prefix: &str, path: &'a str) -> Option<&'a str> {
    if prefix.is_empty() {
        return Some(path);
    }
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() {
        Some("/")
    } else if rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::{as_authorized, permissive};

    #[test]
    fn normal_and_refused_paths() {
        let ok = [
            "/",
            "/vehicles",
            "/vehicles/42",
            "/a/b%20c",
            "/a/%7Euser",
            "/a/b.json",
            "/a/..b",
            "/a/b.",
            "/a/.b.",
            "/a/b;c",
            "/a/x;..",
            "/a/b;jsessionid=1/c",
            "/caf%C3%A9",
        ];
        for p in ok {
            assert_eq!(check_normal(p), Ok(()), "{p}");
        }
        let dot = |s: &str| PathError::DotSegment(s.into());
        let look = |c: char| PathError::Lookalike(c, u32::from(c));
        let enc = |s: &str| PathError::EncodedDelimiter(s.into());
        let bad: &[(&str, PathError)] = &[
            ("vehicles", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("/vehicles/", PathError::EmptySegment),
            ("//vehicles", PathError::EmptySegment),
            ("/a//b", PathError::EmptySegment),
            ("/a/;x/b", PathError::EmptySegment),
            ("/a/;", PathError::EmptySegment),
            ("/a/./b", dot(".")),
            ("/a/..", dot("..")),
            ("/a/..;/b", dot("..;")),
            ("/a/..;x=1/b", dot("..;x=1")),
            ("/a/.;/b", dot(".;")),
            ("/a/..;;/b", dot("..;;")),
            ("/a%2Fb", enc("/")),
            ("/a%2fb", enc("/")),
            ("/a%5Cb", enc("\\")),
            ("/a%5cb", enc("\\")),
            ("/a/%2e%2e/b", enc(".")),
            ("/a/%2e%2e;/b", enc(".")),
            ("/a/%252F", enc("%")),
            ("/a/..%3b/b", enc(";")),
            ("/a/..%3B/b", enc(";")),
            ("/a\\b", PathError::Backslash),
            ("/a/..\\b", PathError::Backslash),
            ("/a%00b", PathError::EncodedControl(0)),
            ("/a%0d%0aX-Injected:%201", PathError::EncodedControl(0x0d)),
            ("/a%0A", PathError::EncodedControl(0x0a)),
            ("/a%1f", PathError::EncodedControl(0x1f)),
            ("/a%7F", PathError::EncodedControl(0x7f)),
            ("/a/%zz", PathError::BadCharacter),
            ("/a/%2", PathError::BadCharacter),
            ("/a/%u002e", PathError::BadCharacter),
            ("/a b", PathError::BadCharacter),
            ("/a\tb", PathError::BadCharacter),
            ("/a\u{0}b", PathError::BadCharacter),
            ("/a/...", dot("...")),
            ("/a/..%20/b", dot("..%20")),
            ("/a/.%20.", dot(".%20.")),
            ("/a/%20", PathError::EmptySegment),
            ("/a/%20%20;x/b", PathError::EmptySegment),
            ("/a/caf\u{e9}", PathError::BadCharacter),
            ("/a/%EF%BC%8E%EF%BC%8E/b", look('\u{FF0E}')),
            ("/a/..%EF%BC%8Fb", look('\u{FF0F}')),
            ("/a/x%E2%80%A5", look('\u{2025}')),
            ("/a/x%CD%BE", look('\u{037E}')),
            ("/a/%EF%B8%B0/b", look('\u{FE30}')),
            ("/a/%EF%B8%99", look('\u{FE19}')),
            ("/a/x%EF%B8%94", look('\u{FE14}')),
            ("/a/%E2%84%80", look('\u{2100}')),
            ("/a/..%C2%A0/b", look('\u{A0}')),
            ("/a/..%E3%80%80/b", look('\u{3000}')),
            ("/a/x%C2%A5y", look('\u{A5}')),
            ("/a/x%E2%82%A9y", look('\u{20A9}')),
            ("/a/TT%C2%AAE", look('\u{AA}')),
            ("/a/..%E2%80%8B/b", look('\u{200B}')),
            ("/a/.%C2%AD./b", look('\u{AD}')),
            ("/a/..%EF%BB%BF", look('\u{FEFF}')),
            ("/vehicles/%EF%BD%85xport", look('\u{FF45}')),
            ("/a/e%CC%81", look('\u{301}')),
            ("/a/%FF", PathError::InvalidUtf8),
            ("/a/%C0%AE", PathError::InvalidUtf8),
            ("/a/%C3%28", PathError::InvalidUtf8),
        ];
        for (p, e) in bad {
            assert_eq!(check_normal(p).as_ref(), Err(e), "{p}");
        }
    }

    /// The rule as the module documents it, one clause at a time: the oracle
    /// the one-pass check must agree with (same verdict, same error).
    fn by_the_rules(path: &str) -> Result<(), PathError> {
        let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
        if rest.is_empty() {
            return Ok(());
        }
        // The first character refused as it stands decides the error.
        match path
            .bytes()
            .find(|&b| b <= b' ' || b >= 0x7f || b == b'\\' || b"#?\"<>`{}|^[]".contains(&b))
        {
            Some(b'\\') => return Err(PathError::Backslash),
            Some(_) => return Err(PathError::BadCharacter),
            None => {}
        }
        for seg in rest.split('/') {
            // Dots and (encoded) spaces only, or nothing: refused.
            let bare = seg.split(';').next().unwrap_or_default();
            let spaced = bare.replace("%20", " ");
            if spaced.trim_matches(|c| c == '.' || c == ' ').is_empty() {
                return Err(if spaced.contains('.') {
                    PathError::DotSegment(seg.to_owned())
                } else {
                    PathError::EmptySegment
                });
            }
        }
        check_escapes(path)
    }

    proptest::proptest! {
        #[test]
        fn one_pass_agrees_with_the_rules(path in "/?([a-z./;%0-9fFeEcC\\\\\x01 é#?]{0,12})") {
            proptest::prop_assert_eq!(check_normal(&path), by_the_rules(&path));
        }

        /// Whatever the check accepts, a permissive back end resolves to the
        /// segments keyward authorized.
        #[test]
        fn accepted_paths_resolve_to_what_was_authorized(
            path in "/([a-z.;%/\\\\0-9a-fA-F]{0,16})"
        ) {
            if check_normal(&path).is_ok() {
                proptest::prop_assert_eq!(permissive(&path), as_authorized(&path), "{}", path);
            }
        }
    }

    /// The property above, on the spellings a security review used.
    #[test]
    fn review_samples_are_refused_or_resolve_alike() {
        for p in [
            "/vehicles/..;/damages/1",
            "/vehicles/.;/damages",
            "/vehicles\\..\\damages",
            "/vehicles/%5c..%5cdamages",
            "/vehicles/%2e%2e;/damages",
            "/vehicles/..%3b/damages",
            "/vehicles;/..;/damages",
            "/vehicles/1%00",
            "/vehicles/1%0d%0aHost:x",
        ] {
            assert!(check_normal(p).is_err(), "{p} must be refused");
        }
    }

    #[test]
    fn methods_are_tokens_of_at_most_32_bytes_decided_as_sent() {
        for ok in [
            "GET",
            "DELETE",
            "delete",
            "PROPFIND",
            "X-CUSTOM_1",
            &"M".repeat(32),
        ] {
            assert_eq!(check_method(ok), Ok(()), "{ok}");
        }
        for (bad, e) in [
            ("", MethodError::Length),
            (&*"M".repeat(33), MethodError::Length),
            ("GE T", MethodError::NotToken),
            ("GET/", MethodError::NotToken),
            ("GÉT", MethodError::NotToken),
        ] {
            assert_eq!(check_method(bad), Err(e), "{bad}");
        }
    }

    #[test]
    fn gateway_prefix() {
        let p = "/api/third-party/v1";
        assert_eq!(
            strip_gateway_prefix(p, "/api/third-party/v1/vehicles"),
            Some("/vehicles")
        );
        assert_eq!(strip_gateway_prefix(p, "/api/third-party/v1"), Some("/"));
        assert_eq!(strip_gateway_prefix(p, "/api/third-party/v10/x"), None);
        assert_eq!(strip_gateway_prefix(p, "/other"), None);
        assert_eq!(strip_gateway_prefix("", "/x"), Some("/x"));
    }
}
