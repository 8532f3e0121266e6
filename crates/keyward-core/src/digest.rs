//! Key digests: what storage keeps instead of keys.
//!
//! SHA-256 of the key, or HMAC-SHA-256 under a server secret so a stolen
//! database alone cannot confirm guesses. A single fast hash is right for
//! random secrets of ≥ 112 bits (NIST SP 800-63B); a password hash would add
//! ~40 ms per request and no security. Comparisons are constant-time.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fmt;

/// SHA-256 or HMAC-SHA-256 of a key: 32 bytes, uniform, never reversible.
#[derive(Clone, Copy, Eq)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// Wraps stored digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        KeyDigest(bytes)
    }

    /// Reads digest bytes coming back from storage.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(KeyDigest)
    }

    /// The raw bytes, for storage.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 8 bytes as an integer. Digests are uniform, so this is a
    /// perfectly good hash for maps holding server-generated keys only.
    pub fn prefix_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(b)
    }
}

impl PartialEq for KeyDigest {
    /// Constant-time: every byte is compared, with no branch on the data.
    /// Four 64-bit lanes are OR-ed together and the result hidden from the
    /// optimizer, so it cannot stop at the first difference; this runs on
    /// every map probe, where `subtle`'s byte-at-a-time barrier cost more
    /// than the rest of the probe.
    fn eq(&self, other: &Self) -> bool {
        let mut diff = 0u64;
        for (a, b) in self.0.chunks_exact(8).zip(other.0.chunks_exact(8)) {
            let a = u64::from_ne_bytes(a.try_into().unwrap_or_default());
            let b = u64::from_ne_bytes(b.try_into().unwrap_or_default());
            diff |= a ^ b;
        }
        std::hint::black_box(diff) == 0
    }
}

impl std::hash::Hash for KeyDigest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.prefix_u64());
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyDigest(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// Computes key digests, optionally keyed by a server secret.
///
/// The HMAC state is keyed once and cloned per digest, which costs about as
/// much as a plain SHA-256.
#[derive(Clone)]
pub struct Digester {
    mac: Option<Hmac<Sha256>>,
}

impl fmt::Debug for Digester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.mac.is_some() {
            "hmac-sha256"
        } else {
            "sha256"
        };
        write!(f, "Digester({kind})")
    }
}

impl Digester {
    /// Plain SHA-256 digests.
    pub fn sha256() -> Self {
        Digester { mac: None }
    }

    /// HMAC-SHA-256 digests under `secret`. An empty secret means plain
    /// SHA-256, so an unset environment variable cannot silently weaken it.
    pub fn hmac(secret: &[u8]) -> Self {
        if secret.is_empty() {
            return Self::sha256();
        }
        Digester {
            mac: Hmac::<Sha256>::new_from_slice(secret).ok(),
        }
    }

    /// The digest of one key text.
    pub fn digest(&self, key: &str) -> KeyDigest {
        match &self.mac {
            Some(mac) => {
                let mut m = mac.clone();
                m.update(key.as_bytes());
                KeyDigest(m.finalize().into_bytes().into())
            }
            None => KeyDigest(Sha256::digest(key.as_bytes()).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_reference() {
        // sha256("abc")
        let d = Digester::sha256().digest("abc");
        assert_eq!(format!("{d:?}"), "KeyDigest(ba7816bf…)",);
    }

    #[test]
    fn hmac_differs_and_is_stable() {
        let plain = Digester::sha256().digest("k");
        let a = Digester::hmac(b"secret").digest("k");
        let b = Digester::hmac(b"secret").digest("k");
        let c = Digester::hmac(b"other").digest("k");
        assert_eq!(a, b);
        assert_ne!(a, plain);
        assert_ne!(a, c);
        assert_eq!(Digester::hmac(b"").digest("k"), plain);
        assert_eq!(KeyDigest::from_slice(a.as_bytes()), Some(a));
        assert_eq!(KeyDigest::from_slice(&[0; 31]), None);
    }

    #[test]
    fn a_difference_in_any_bit_is_seen() {
        let base = *Digester::sha256().digest("k").as_bytes();
        assert_eq!(KeyDigest(base), KeyDigest(base));
        for byte in 0..32 {
            for bit in 0..8 {
                let mut other = base;
                other[byte] ^= 1 << bit;
                assert_ne!(KeyDigest(base), KeyDigest(other), "byte {byte} bit {bit}");
            }
        }
    }
}
