//! Request paths the gateway will authorize.
//!
//! keyward must never authorize one path and forward another, so a path that
//! an upstream might normalise differently is refused before anything else:
//! dot segments, empty segments, and percent-encoded `/`, `.` or `%`.

use thiserror::Error;

/// Why a path is not in normal form. Each message names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    /// Does not begin with `/`.
    #[error("path must begin with `/`")]
    NotAbsolute,
    /// `.` or `..` segment.
    #[error("path contains a dot segment `{0}`")]
    DotSegment(String),
    /// `//` or a trailing `/`.
    #[error("path contains an empty segment")]
    EmptySegment,
    /// `%2F`, `%2E` or `%25`.
    #[error("path contains a percent-encoded `{0}`")]
    EncodedDelimiter(String),
    /// Control characters, spaces and the like.
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
    let mut escapes = false;
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        match b {
            0..=b' ' | 0x7f => return Err(PathError::BadCharacter),
            b'/' => {
                if segment_error.is_none() {
                    segment_error = bad_segment(path.get(segment_start..i).unwrap_or_default());
                }
                segment_start = i + 1;
            }
            b'%' => escapes = true,
            _ => {}
        }
    }
    if segment_error.is_none() {
        segment_error = bad_segment(path.get(segment_start..).unwrap_or_default());
    }
    if let Some(e) = segment_error {
        return Err(e);
    }
    if escapes { check_escapes(path) } else { Ok(()) }
}

fn bad_segment(segment: &str) -> Option<PathError> {
    match segment {
        "" => Some(PathError::EmptySegment),
        "." | ".." => Some(PathError::DotSegment(segment.to_owned())),
        _ => None,
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
            Some(0x2e) => return Err(PathError::EncodedDelimiter(".".into())),
            Some(0x25) => return Err(PathError::EncodedDelimiter("%".into())),
            Some(b) => non_ascii |= b >= 0x80,
            None => return Err(PathError::BadCharacter),
        }
    }
    if non_ascii && std::str::from_utf8(&percent_decode(bytes)).is_err() {
        return Err(PathError::InvalidUtf8);
    }
    Ok(())
}

/// Decodes `%XY` escapes; callers have checked every escape is well formed.
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
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
            "/caf%C3%A9",
        ];
        for p in ok {
            assert_eq!(check_normal(p), Ok(()), "{p}");
        }
        let bad: &[(&str, PathError)] = &[
            ("vehicles", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("/vehicles/", PathError::EmptySegment),
            ("//vehicles", PathError::EmptySegment),
            ("/a//b", PathError::EmptySegment),
            ("/a/./b", PathError::DotSegment(".".into())),
            ("/a/..", PathError::DotSegment("..".into())),
            ("/a%2Fb", PathError::EncodedDelimiter("/".into())),
            ("/a%2fb", PathError::EncodedDelimiter("/".into())),
            ("/a/%2e%2e/b", PathError::EncodedDelimiter(".".into())),
            ("/a/%252F", PathError::EncodedDelimiter("%".into())),
            ("/a/%zz", PathError::BadCharacter),
            ("/a/%2", PathError::BadCharacter),
            ("/a b", PathError::BadCharacter),
            ("/a/%FF", PathError::InvalidUtf8),
            ("/a/%C3%28", PathError::InvalidUtf8),
        ];
        for (p, e) in bad {
            assert_eq!(check_normal(p).as_ref(), Err(e), "{p}");
        }
    }

    /// The character and segment passes this module used before the one
    /// pass, kept as the oracle (the escape check is unchanged and shared):
    /// same verdict, same error, on every input.
    fn three_passes(path: &str) -> Result<(), PathError> {
        let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
        if rest.is_empty() {
            return Ok(());
        }
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(PathError::BadCharacter);
        }
        for seg in rest.split('/') {
            match seg {
                "" => return Err(PathError::EmptySegment),
                "." | ".." => return Err(PathError::DotSegment(seg.to_owned())),
                _ => {}
            }
        }
        check_escapes(path)
    }

    proptest::proptest! {
        #[test]
        fn one_pass_agrees_with_three_passes(path in "/?([a-z./%0-9fFeE\\x01 é]{0,10})") {
            proptest::prop_assert_eq!(check_normal(&path), three_passes(&path));
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
