//! The legacy import file: keys issued before scopes existed.
//!
//! One key per line, optionally followed by whitespace and a name; blank
//! lines and lines starting with `#` are ignored. The whole file is checked
//! before anything is written, and every bad line is reported, so a bad file
//! writes nothing. Error messages never repeat a key.

/// Shortest legacy key accepted: shorter secrets are guessable.
pub const MIN_LEGACY_KEY_CHARS: usize = 20;
/// Longest legacy key accepted.
pub const MAX_LEGACY_KEY_CHARS: usize = 512;

/// One key to import.
#[derive(Clone, PartialEq, Eq)]
pub struct LegacyEntry {
    /// 1-based line in the file.
    pub line: usize,
    /// The key text (secret; only its digest is stored).
    pub key: String,
    /// Name given in the file, or `Legacy key (line N)`.
    pub name: String,
}

impl std::fmt::Debug for LegacyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyEntry")
            .field("line", &self.line)
            .field("key", &"<redacted>")
            .field("name", &self.name)
            .finish()
    }
}

impl LegacyEntry {
    /// First 6 characters: enough to recognise the key in a list, 6 of at
    /// least 20 characters of a secret. The `legacy` flag marks it as such.
    pub fn display_prefix(&self) -> String {
        self.key.chars().take(6).collect()
    }
}

/// Parses an import file.
///
/// # Errors
/// Every bad line as `line N: message`, in order.
pub fn parse_legacy_file(text: &str) -> Result<Vec<LegacyEntry>, Vec<String>> {
    let mut entries: Vec<LegacyEntry> = Vec::new();
    let mut errors = Vec::new();
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (key, name) = match trimmed.split_once(char::is_whitespace) {
            Some((k, n)) => (k, n.trim()),
            None => (trimmed, ""),
        };
        let n = key.chars().count();
        if n < MIN_LEGACY_KEY_CHARS {
            errors.push(format!(
                "line {line}: key is {n} characters, at least {MIN_LEGACY_KEY_CHARS} are required"
            ));
            continue;
        }
        if n > MAX_LEGACY_KEY_CHARS {
            errors.push(format!(
                "line {line}: key is longer than {MAX_LEGACY_KEY_CHARS} characters"
            ));
            continue;
        }
        if key.chars().any(char::is_control) {
            errors.push(format!("line {line}: key contains control characters"));
            continue;
        }
        if name.chars().count() > crate::MAX_NAME_CHARS {
            errors.push(format!(
                "line {line}: name must be at most {} characters",
                crate::MAX_NAME_CHARS
            ));
            continue;
        }
        if name.chars().any(char::is_control) {
            errors.push(format!("line {line}: name contains control characters"));
            continue;
        }
        if let Some(first) = seen.insert(key, line) {
            errors.push(format!("line {line}: same key as line {first}"));
            continue;
        }
        let name = if name.is_empty() {
            format!("Legacy key (line {line})")
        } else {
            name.to_owned()
        };
        entries.push(LegacyEntry {
            line,
            key: key.to_owned(),
            name,
        });
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_reports_every_bad_line() {
        let good = "# exported from the old system\n\nsk_old_0123456789abcdefghij  Billing sync\nsk_old_abcdefghij0123456789\n";
        let e = parse_legacy_file(good).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].line, e[0].name.as_str()), (3, "Billing sync"));
        assert_eq!(e[1].name, "Legacy key (line 4)");
        assert_eq!(e[0].display_prefix(), "sk_old");
        assert!(!format!("{:?}", e[0]).contains("0123456789"));

        let bad = "short\nsk_old_0123456789abcdefghij\nsk_old_0123456789abcdefghij dup\n";
        assert_eq!(
            parse_legacy_file(bad).unwrap_err(),
            [
                "line 1: key is 5 characters, at least 20 are required",
                "line 3: same key as line 2"
            ]
        );
    }
}
