//! Human durations on the command line and in the API: `90d`, `24h`, `30m`.
//!
//! Deliberately tiny: one number and one unit, no fractions, no combinations,
//! so `--unused-for 90d` and `--grace 24h` cannot be misread.

use thiserror::Error;

/// The longest duration accepted anywhere: a hundred years, well past any key
/// lifetime, and far from overflowing millisecond timestamps.
pub const MAX_DURATION_MS: i64 = 100 * 365 * 24 * 3600 * 1000;

/// A duration that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DurationError {
    /// Not a number followed by one unit.
    #[error(
        "malformed duration `{0}`: expected a whole number followed by ms, s, m, h, d or w, such as `90d`"
    )]
    Malformed(String),
    /// Longer than [`MAX_DURATION_MS`].
    #[error("duration `{0}` is too long: at most 100 years")]
    TooLong(String),
}

/// Parses `90d` into milliseconds.
///
/// # Errors
/// [`DurationError`] naming the input when it is not `<digits><unit>` with a
/// unit of `ms`, `s`, `m`, `h`, `d` or `w`, or when it exceeds a hundred years.
///
/// # Example
/// ```
/// assert_eq!(keyward_core::parse_duration_ms("24h"), Ok(86_400_000));
/// ```
pub fn parse_duration_ms(input: &str) -> Result<i64, DurationError> {
    let malformed = || DurationError::Malformed(input.to_owned());
    let s = input.trim();
    let unit_at = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(malformed)?;
    let (digits, unit) = s.split_at(unit_at);
    if digits.is_empty() {
        return Err(malformed());
    }
    let unit_ms: i64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60 * 1000,
        "h" => 3600 * 1000,
        "d" => 24 * 3600 * 1000,
        "w" => 7 * 24 * 3600 * 1000,
        _ => return Err(malformed()),
    };
    let too_long = || DurationError::TooLong(input.to_owned());
    let n: i64 = digits.parse().map_err(|_| too_long())?;
    let ms = n.checked_mul(unit_ms).ok_or_else(too_long)?;
    if ms > MAX_DURATION_MS {
        return Err(too_long());
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        let check = |s: &str, ms: i64| assert_eq!(parse_duration_ms(s), Ok(ms), "{s}");
        check("0s", 0);
        check("250ms", 250);
        check("45s", 45_000);
        check("30m", 1_800_000);
        check("24h", 86_400_000);
        check("90d", 90 * 86_400_000);
        check("2w", 14 * 86_400_000);
        check(" 1d ", 86_400_000);
    }

    #[test]
    fn refuses_bad_input_naming_it() {
        for bad in [
            "", "d", "90", "90 d", "1.5h", "-1d", "90days", "1y", "h1", "5mss",
        ] {
            let err = parse_duration_ms(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
        assert!(matches!(
            parse_duration_ms("99999999999999999999d"),
            Err(DurationError::TooLong(_))
        ));
        assert!(matches!(
            parse_duration_ms("40000d"),
            Err(DurationError::TooLong(_))
        ));
    }
}
