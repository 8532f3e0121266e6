//! GitHub secret scanning (SPEC §11): the keys GitHub signs its reports
//! with, and the check of a report's signature. A report is believed only
//! when `Github-Public-Key-Signature` (base64 of a DER ECDSA P-256 /
//! SHA-256 signature) verifies over the raw body with the key that
//! `Github-Public-Key-Identifier` names in the key file GitHub publishes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{DerSignature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

/// GitHub's published key file: `{"public_keys": [{"key_identifier",
/// "key" (PEM), "is_current"}]}`.
#[derive(Deserialize)]
struct KeyFile {
    public_keys: Vec<PublishedKey>,
}

#[derive(Deserialize)]
struct PublishedKey {
    key_identifier: String,
    key: String,
}

/// The verifying keys by identifier.
#[derive(Clone, Debug, Default)]
pub(crate) struct GithubKeys {
    keys: HashMap<String, VerifyingKey>,
}

/// Why a report is not believed (each a 401; the words are for the log and
/// the error message, never holding the body).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unsigned {
    /// A header is missing.
    #[error("the report has no `{0}` header")]
    Missing(&'static str),
    /// The identifier names no key of the file.
    #[error("`Github-Public-Key-Identifier` names no key GitHub published")]
    UnknownKey,
    /// The signature is not base64, or not DER.
    #[error("`Github-Public-Key-Signature` is not a base64 DER ECDSA signature")]
    Malformed,
    /// It does not verify over the body.
    #[error("the signature does not verify over the body")]
    Invalid,
}

impl GithubKeys {
    /// The keys of a key file's text.
    ///
    /// # Errors
    /// What is wrong with the file, naming the key that is.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let file: KeyFile = serde_json::from_str(text)
            .map_err(|e| format!("not GitHub's public key document: {e}"))?;
        let mut keys = HashMap::with_capacity(file.public_keys.len());
        for k in file.public_keys {
            let key = VerifyingKey::from_public_key_pem(&k.key).map_err(|e| {
                format!(
                    "key `{}` is not a PEM ECDSA P-256 public key: {e}",
                    k.key_identifier
                )
            })?;
            keys.insert(k.key_identifier, key);
        }
        if keys.is_empty() {
            return Err("the document lists no key".into());
        }
        Ok(GithubKeys { keys })
    }

    /// Whether `body` is signed by the key `identifier` names.
    ///
    /// # Errors
    /// [`Unsigned`], saying why not.
    pub(crate) fn verify(
        &self,
        identifier: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), Unsigned> {
        let identifier = identifier.ok_or(Unsigned::Missing("Github-Public-Key-Identifier"))?;
        let signature = signature.ok_or(Unsigned::Missing("Github-Public-Key-Signature"))?;
        let key = self.keys.get(identifier).ok_or(Unsigned::UnknownKey)?;
        let der = STANDARD
            .decode(signature.trim())
            .map_err(|_| Unsigned::Malformed)?;
        let signature = DerSignature::try_from(der.as_slice()).map_err(|_| Unsigned::Malformed)?;
        key.verify(body, &signature).map_err(|_| Unsigned::Invalid)
    }
}

/// The key file given by `--github-scanning-keys`, read at start and again
/// whenever it changes (its modification time or length), so that an
/// operator's job fetching GitHub's current document takes effect without
/// a restart. A changed file that does not parse is logged and the keys
/// read before are kept: a half-written download does not turn every
/// report away.
pub(crate) struct GithubKeyFile {
    path: PathBuf,
    loaded: Mutex<Loaded>,
    /// When a refused report was last logged (unix ms): once a minute at
    /// most, since anyone can send one.
    last_refusal_logged: AtomicI64,
}

struct Loaded {
    stamp: Stamp,
    keys: Arc<GithubKeys>,
}

/// What tells a changed file from the one read: modification time and size.
type Stamp = (Option<SystemTime>, u64);

fn stamp_of(meta: &std::fs::Metadata) -> Stamp {
    (meta.modified().ok(), meta.len())
}

impl GithubKeyFile {
    /// Reads the file at start: the server does not start with a file it
    /// cannot use.
    ///
    /// # Errors
    /// What is wrong with the file, naming it.
    pub(crate) fn open(path: &Path) -> Result<Self, String> {
        let named = |e: String| format!("--github-scanning-keys `{}`: {e}", path.display());
        let meta = std::fs::metadata(path).map_err(|e| named(e.to_string()))?;
        let text = std::fs::read_to_string(path).map_err(|e| named(e.to_string()))?;
        let keys = GithubKeys::parse(&text).map_err(named)?;
        Ok(GithubKeyFile {
            path: path.to_owned(),
            loaded: Mutex::new(Loaded {
                stamp: stamp_of(&meta),
                keys: Arc::new(keys),
            }),
            last_refusal_logged: AtomicI64::new(i64::MIN),
        })
    }

    /// Whether a refusal at `now` is logged: the first in a minute is (the
    /// metric counts them all).
    pub(crate) fn log_refusal(&self, now: i64) -> bool {
        let last = self.last_refusal_logged.load(Ordering::Relaxed);
        now.saturating_sub(last) >= 60_000
            && self
                .last_refusal_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// The keys now: the file is read again when it changed since the last
    /// read. No lock is held while the file is read.
    pub(crate) async fn keys(&self) -> Arc<GithubKeys> {
        let (stamp, keys) = {
            let loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
            (loaded.stamp, loaded.keys.clone())
        };
        let Ok(meta) = tokio::fs::metadata(&self.path).await else {
            // Moved away for a moment (a download replacing it): keep the
            // keys read before.
            return keys;
        };
        let now = stamp_of(&meta);
        if now == stamp {
            return keys;
        }
        let read = match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => GithubKeys::parse(&text),
            Err(e) => Err(e.to_string()),
        };
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        match read {
            Ok(fresh) => {
                tracing::info!(path = %self.path.display(), keys = fresh.keys.len(), "read GitHub's secret scanning keys again");
                loaded.keys = Arc::new(fresh);
            }
            Err(e) => {
                // Once per change of the file, not per report.
                tracing::warn!(path = %self.path.display(), error = %e, "the changed GitHub secret scanning key file is not usable; keeping the keys read before");
            }
        }
        loaded.stamp = now;
        loaded.keys.clone()
    }
}

#[cfg(test)]
mod tests;
