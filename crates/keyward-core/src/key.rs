//! The key format: `<prefix>_<env>_<random><checksum>`.
//!
//! 32 base62 characters of randomness (≈ 190 bits) followed by 6 base62
//! characters of CRC32 over everything before them. The checksum lets the
//! gateway reject mistyped or invented keys without a lookup, lets secret
//! scanners recognise leaked keys, and, because the prefix and environment are
//! covered, relabelling a `test` key as `live` fails. `_` is not a base62
//! character, so a double-click selects the whole key.
//!
//! This module never sees the OS RNG: callers pass random bytes in, so tests
//! are deterministic and the core stays pure.

use std::fmt;
use thiserror::Error;

/// Base62 characters of randomness in a key.
pub const RANDOM_LEN: usize = 32;
/// Base62 characters of checksum at the end of a key.
pub const CHECKSUM_LEN: usize = 6;
/// Random characters kept in the display prefix.
pub const DISPLAY_RANDOM_LEN: usize = 4;
/// Random bytes [`generate`] asks for: rejection sampling discards bytes ≥ 248,
/// so 64 bytes give 32 characters except with probability below 2^-100.
pub const RANDOM_BYTES: usize = 64;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Which deployment a key belongs to, part of the key text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Environment {
    /// Production traffic.
    Live,
    /// Test and staging traffic.
    Test,
}

impl Environment {
    /// The spelling inside keys and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Live => "live",
            Environment::Test => "test",
        }
    }

    /// Reads `live` or `test`.
    ///
    /// # Errors
    /// [`KeyFormatError::Environment`] naming the value otherwise.
    pub fn parse(s: &str) -> Result<Self, KeyFormatError> {
        match s {
            "live" => Ok(Environment::Live),
            "test" => Ok(Environment::Test),
            other => Err(KeyFormatError::Environment(other.to_owned())),
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a text is not a keyward key, or a key could not be made.
///
/// Messages never include the key itself: it may be a real secret mistyped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyFormatError {
    /// The text does not have the `<prefix>_<env>_<body>` shape.
    #[error("malformed key: expected `<prefix>_<live|test>_<38 base62 characters>`")]
    Shape,
    /// The checksum does not match: a typo or an invented key.
    #[error("malformed key: checksum mismatch")]
    Checksum,
    /// Unknown environment label.
    #[error("unknown environment `{0}`: expected `live` or `test`")]
    Environment(String),
    /// A key prefix that is not 2 to 16 lowercase letters and digits.
    #[error(
        "invalid key prefix `{0}`: expected 2 to 16 lowercase letters or digits, starting with a letter"
    )]
    Prefix(String),
    /// Too few usable random bytes were supplied.
    #[error("not enough random bytes to generate a key")]
    NotEnoughRandomness,
}

/// Whether `prefix` may start keys: `^[a-z][a-z0-9]{1,15}$`.
pub fn is_valid_key_prefix(prefix: &str) -> bool {
    let b = prefix.as_bytes();
    (2..=16).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// A full key: the secret an integration sends as `Bearer`.
///
/// `Debug` and `Display` are redacted to the display prefix, so the secret
/// cannot reach a log line through formatting; [`SecretKey::expose`] is the
/// one deliberate way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    /// The full key text. Call only to hand it to its owner, once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The short, non-secret prefix that identifies the key in lists.
    pub fn display_prefix(&self) -> String {
        // INVARIANT: a SecretKey is only built by `generate`, so it parses.
        parse(&self.0)
            .map(|p| p.display_prefix())
            .unwrap_or_default()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}…)", self.display_prefix())
    }
}

/// Makes a new key from caller-supplied random bytes.
///
/// The random part comes from [`base62_from_random`].
///
/// # Errors
/// [`KeyFormatError::Prefix`] for an invalid prefix,
/// [`KeyFormatError::NotEnoughRandomness`] when fewer than 32 bytes were usable
/// (pass [`RANDOM_BYTES`] bytes and this practically never happens; retry).
///
/// # Example
/// ```
/// use keyward_core::key::{generate, parse, Environment, RANDOM_BYTES};
/// let key = generate("insp", Environment::Live, &[7u8; RANDOM_BYTES]).unwrap();
/// assert!(key.expose().starts_with("insp_live_"));
/// assert!(parse(key.expose()).is_ok());
/// ```
pub fn generate(
    prefix: &str,
    env: Environment,
    random: &[u8],
) -> Result<SecretKey, KeyFormatError> {
    if !is_valid_key_prefix(prefix) {
        return Err(KeyFormatError::Prefix(prefix.to_owned()));
    }
    let mut text = String::with_capacity(prefix.len() + 6 + RANDOM_LEN + CHECKSUM_LEN);
    text.push_str(prefix);
    text.push('_');
    text.push_str(env.as_str());
    text.push('_');
    let random =
        base62_from_random(random, RANDOM_LEN).ok_or(KeyFormatError::NotEnoughRandomness)?;
    text.push_str(&random);
    let sum = crc32fast::hash(text.as_bytes());
    text.push_str(std::str::from_utf8(&encode_checksum(sum)).unwrap_or_default());
    Ok(SecretKey(text))
}

/// `len` unbiased base62 characters from caller-supplied random bytes, or
/// `None` when too few bytes were usable (retry with fresh bytes).
///
/// Each byte below 248 yields one character (`byte % 62`, unbiased because
/// 248 = 4 × 62); larger bytes are skipped. Used for keys and record ids.
pub fn base62_from_random(random: &[u8], len: usize) -> Option<String> {
    let out: String = random
        .iter()
        .filter(|&&b| b < 248)
        .take(len)
        .map(|&b| char::from(ALPHABET[usize::from(b % 62)]))
        .collect();
    (out.len() == len).then_some(out)
}

/// A key text whose shape and checksum are valid, borrowed from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    prefix: &'a str,
    env: Environment,
    random: &'a str,
}

impl<'a> ParsedKey<'a> {
    /// The catalog's key prefix the key claims, e.g. `insp`.
    pub fn prefix(&self) -> &'a str {
        self.prefix
    }

    /// The environment label.
    pub fn environment(&self) -> Environment {
        self.env
    }

    /// `insp_live_AbC1`: prefix, environment and four random characters.
    /// 24 bits of the key's 190: enough to tell keys apart, useless to guess.
    pub fn display_prefix(&self) -> String {
        format!(
            "{}_{}_{}",
            self.prefix,
            self.env.as_str(),
            &self.random[..DISPLAY_RANDOM_LEN]
        )
    }
}

/// Checks a key's shape and checksum without touching storage.
///
/// Allocation-free: this runs on every gateway request.
///
/// # Errors
/// [`KeyFormatError::Shape`] or [`KeyFormatError::Checksum`]; neither message
/// repeats the key.
pub fn parse(text: &str) -> Result<ParsedKey<'_>, KeyFormatError> {
    let (prefix, rest) = text.split_once('_').ok_or(KeyFormatError::Shape)?;
    let (env, body) = rest.split_once('_').ok_or(KeyFormatError::Shape)?;
    if !is_valid_key_prefix(prefix) || body.len() != RANDOM_LEN + CHECKSUM_LEN {
        return Err(KeyFormatError::Shape);
    }
    let env = match env {
        "live" => Environment::Live,
        "test" => Environment::Test,
        _ => return Err(KeyFormatError::Shape),
    };
    if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(KeyFormatError::Shape);
    }
    let split = text.len() - CHECKSUM_LEN;
    let sum = crc32fast::hash(&text.as_bytes()[..split]);
    if encode_checksum(sum) != text.as_bytes()[split..] {
        return Err(KeyFormatError::Checksum);
    }
    Ok(ParsedKey {
        prefix,
        env,
        random: &body[..RANDOM_LEN],
    })
}

/// The CRC32 state after `<prefix>_<env>_`, to test many candidate secret
/// parts against one prefix cheaply ([`completes`]).
pub(crate) fn head_hasher(prefix: &str, env: Environment) -> crc32fast::Hasher {
    let mut h = crc32fast::Hasher::new();
    h.update(prefix.as_bytes());
    h.update(b"_");
    h.update(env.as_str().as_bytes());
    h.update(b"_");
    h
}

/// Whether `secret` (38 base62 characters: random part, then checksum)
/// completes a key whose text before it hashed to `head`.
pub(crate) fn completes(head: &crc32fast::Hasher, secret: &[u8]) -> bool {
    let Some((random, sum)) = secret.split_at_checked(RANDOM_LEN) else {
        return false;
    };
    let mut h = head.clone();
    h.update(random);
    sum.len() == CHECKSUM_LEN && encode_checksum(h.finalize()) == *sum
}

fn encode_checksum(mut sum: u32) -> [u8; CHECKSUM_LEN] {
    // 62^6 > 2^32, so six fixed-width digits hold every CRC32.
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(sum % 62) as usize];
        sum /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key_from(seed: &[u8]) -> SecretKey {
        let bytes: Vec<u8> = seed.iter().cycle().take(RANDOM_BYTES).copied().collect();
        generate("insp", Environment::Live, &bytes).unwrap()
    }

    #[test]
    fn known_shape() {
        let key = key_from(&[0, 1, 2, 61, 62, 247]);
        let text = key.expose();
        assert_eq!(text.len(), "insp_live_".len() + 38);
        assert!(text.starts_with("insp_live_012z0z"), "{text}");
        assert_eq!(key.display_prefix(), "insp_live_012z");
        assert_eq!(format!("{key:?}"), "SecretKey(insp_live_012z…)");
    }

    #[test]
    fn relabelled_environment_fails_checksum() {
        let key = key_from(&[9, 200, 31]);
        let relabelled = key.expose().replacen("_live_", "_test_", 1);
        assert_eq!(parse(&relabelled), Err(KeyFormatError::Checksum));
    }

    #[test]
    fn rejects_bad_shapes_and_randomness() {
        for bad in [
            "",
            "insp",
            "insp_live",
            "insp_live_abc",
            "INSP_live_x",
            "insp_prod_0123456789012345678901234567890123456789",
        ] {
            assert_eq!(parse(bad), Err(KeyFormatError::Shape), "{bad}");
        }
        assert_eq!(
            generate("insp", Environment::Live, &[255; 64]),
            Err(KeyFormatError::NotEnoughRandomness)
        );
        assert!(matches!(
            generate("Insp", Environment::Live, &[1; 64]),
            Err(KeyFormatError::Prefix(_))
        ));
    }

    proptest! {
        #[test]
        fn parse_inverts_generate(bytes in proptest::collection::vec(0u8..248, RANDOM_BYTES), test_env: bool) {
            let env = if test_env { Environment::Test } else { Environment::Live };
            let key = generate("trn", env, &bytes).unwrap();
            let parsed = parse(key.expose()).unwrap();
            prop_assert_eq!(parsed.prefix(), "trn");
            prop_assert_eq!(parsed.environment(), env);
            prop_assert_eq!(parsed.display_prefix(), key.display_prefix());
        }

        #[test]
        fn any_one_character_change_fails(bytes in proptest::collection::vec(0u8..248, RANDOM_BYTES), pos in 0usize..48, replacement in proptest::sample::select(ALPHABET.to_vec())) {
            let key = generate("insp", Environment::Live, &bytes).unwrap();
            let mut text = key.expose().as_bytes().to_vec();
            let pos = pos % text.len();
            prop_assume!(text[pos] != replacement);
            text[pos] = replacement;
            let changed = String::from_utf8(text).unwrap();
            prop_assert!(parse(&changed).is_err(), "{} accepted", changed);
        }
    }
}
