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
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
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
    /// A header is sent more than once.
    #[error("the report has `{0}` more than once")]
    Repeated(&'static str),
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
            // p256's own words name the algorithm it expected, not the one
            // it found: say what GitHub's keys are instead.
            let key = VerifyingKey::from_public_key_pem(&k.key).map_err(|_| {
                format!(
                    "key `{}` is not an ECDSA P-256 public key in PEM (GitHub's keys are)",
                    k.key_identifier
                )
            })?;
            if keys.insert(k.key_identifier.clone(), key).is_some() {
                return Err(format!("key `{}` is listed twice", k.key_identifier));
            }
        }
        if keys.is_empty() {
            return Err("the document lists no key".into());
        }
        Ok(GithubKeys { keys })
    }

    /// Why a report with a header missing is not believed.
    pub(crate) fn unsigned(identifier: Option<&str>, signature: Option<&str>) -> Unsigned {
        match (identifier, signature) {
            (None, _) => Unsigned::Missing("Github-Public-Key-Identifier"),
            (_, None) | (Some(_), Some(_)) => Unsigned::Missing("Github-Public-Key-Signature"),
        }
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
/// a restart. A changed file that cannot be used (not parsed, gone, not a
/// regular file, larger than [`MAX_KEY_FILE`], or not read within
/// [`RELOAD_DEADLINE`]) is logged once and the keys read before are kept:
/// a half-written download does not turn every report away, and a file
/// swapped for a pipe or a device cannot hang or exhaust the node.
pub(crate) struct GithubKeyFile {
    path: PathBuf,
    loaded: Mutex<Loaded>,
    /// A re-read is under way: the others use the keys read before.
    reading: AtomicBool,
    /// When a refused report was last logged (unix ms): once a minute at
    /// most, since anyone can send one.
    last_refusal_logged: AtomicI64,
    /// Reports being read before their signature is checked: each holds up
    /// to a report's size in memory, for anyone who asks.
    unverified: tokio::sync::Semaphore,
    /// The same, per client address: one sender cannot take every slot.
    by_client: Mutex<HashMap<std::net::IpAddr, usize>>,
}

/// A report being read: its slot, given back when dropped.
pub(crate) struct Reading<'a> {
    file: &'a GithubKeyFile,
    client: std::net::IpAddr,
    _slot: tokio::sync::SemaphorePermit<'a>,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        let mut by = self
            .file
            .by_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = by.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by.remove(&self.client);
            }
        }
    }
}

struct Loaded {
    /// `None`: the file was not there at the last look.
    stamp: Option<Stamp>,
    keys: Arc<GithubKeys>,
}

/// What tells a changed file from the one read: modification time and size.
type Stamp = (Option<SystemTime>, u64);

/// GitHub's document is about a kilobyte; anything near this is not it.
pub(crate) const MAX_KEY_FILE: u64 = 1024 * 1024;

/// How long a re-read may take before the keys read before are used.
const RELOAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// Reports read at once before their signature is checked (503 beyond).
pub(crate) const MAX_UNVERIFIED: usize = 8;

/// The same, from one client address.
pub(crate) const MAX_UNVERIFIED_PER_CLIENT: usize = 2;

fn stamp_of(meta: &std::fs::Metadata) -> Stamp {
    (meta.modified().ok(), meta.len())
}

/// The file's text, if it is a regular file of at most [`MAX_KEY_FILE`]
/// bytes: a device (`/dev/zero`) or a pipe is refused before it is opened,
/// and checked again once open.
fn read_key_file(path: &Path) -> Result<(Stamp, String), String> {
    use std::io::Read as _;
    let regular = |meta: &std::fs::Metadata| -> Result<(), String> {
        if !meta.is_file() {
            return Err("not a regular file".into());
        }
        if meta.len() > MAX_KEY_FILE {
            return Err(format!(
                "{} bytes: GitHub's key document is a few kilobytes, at most {MAX_KEY_FILE} are read",
                meta.len()
            ));
        }
        Ok(())
    };
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    regular(&meta)?;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    regular(&meta)?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(format!("longer than {MAX_KEY_FILE} bytes"));
    }
    Ok((stamp_of(&meta), text))
}

impl GithubKeyFile {
    /// Reads the file at start: the server does not start with a file it
    /// cannot use.
    ///
    /// # Errors
    /// What is wrong with the file, naming it.
    pub(crate) fn open(path: &Path) -> Result<Self, String> {
        let named = |e: String| format!("--github-scanning-keys `{}`: {e}", path.display());
        let (stamp, text) = read_key_file(path).map_err(named)?;
        let keys = GithubKeys::parse(&text).map_err(named)?;
        Ok(GithubKeyFile {
            path: path.to_owned(),
            loaded: Mutex::new(Loaded {
                stamp: Some(stamp),
                keys: Arc::new(keys),
            }),
            reading: AtomicBool::new(false),
            last_refusal_logged: AtomicI64::new(i64::MIN),
            unverified: tokio::sync::Semaphore::new(MAX_UNVERIFIED),
            by_client: Mutex::new(HashMap::new()),
        })
    }

    /// A slot to read one report from `client` in, if one is free (at most
    /// [`MAX_UNVERIFIED`] in all, [`MAX_UNVERIFIED_PER_CLIENT`] per client).
    pub(crate) fn start_reading(&self, client: std::net::IpAddr) -> Option<Reading<'_>> {
        let slot = self.unverified.try_acquire().ok()?;
        let mut by = self
            .by_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = by.entry(client).or_insert(0);
        if *n >= MAX_UNVERIFIED_PER_CLIENT {
            return None;
        }
        *n += 1;
        Some(Reading {
            file: self,
            client,
            _slot: slot,
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
    /// look. No lock is held while the file is read, one request reads it
    /// at a time, and a read that does not end within [`RELOAD_DEADLINE`]
    /// leaves the keys as they were.
    pub(crate) async fn keys(&self) -> Arc<GithubKeys> {
        let (stamp, keys) = {
            let loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
            (loaded.stamp, loaded.keys.clone())
        };
        let now = tokio::fs::metadata(&self.path)
            .await
            .ok()
            .map(|m| stamp_of(&m));
        if now == stamp {
            return keys;
        }
        let Some(now) = now else {
            self.note(None, None);
            tracing::warn!(path = %self.path.display(), "the GitHub secret scanning key file is gone; keeping the keys read before");
            return keys;
        };
        if self.reading.swap(true, Ordering::AcqRel) {
            return keys;
        }
        let path = self.path.clone();
        let read = tokio::time::timeout(
            RELOAD_DEADLINE,
            tokio::task::spawn_blocking(move || read_key_file(&path)),
        )
        .await;
        self.reading.store(false, Ordering::Release);
        let fresh = match read {
            Ok(Ok(Ok((_, text)))) => GithubKeys::parse(&text),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("not read within {RELOAD_DEADLINE:?}")),
        };
        match fresh {
            Ok(fresh) => {
                tracing::info!(path = %self.path.display(), keys = fresh.keys.len(), "read GitHub's secret scanning keys again");
                self.note(Some(now), Some(Arc::new(fresh)))
            }
            Err(e) => {
                // Once per change of the file, not per report.
                tracing::warn!(path = %self.path.display(), error = %e, "the changed GitHub secret scanning key file is not usable; keeping the keys read before");
                self.note(Some(now), None)
            }
        }
    }

    /// Records the file's state as seen, and its keys when they were read;
    /// the keys in force.
    fn note(&self, stamp: Option<Stamp>, keys: Option<Arc<GithubKeys>>) -> Arc<GithubKeys> {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        loaded.stamp = stamp;
        if let Some(keys) = keys {
            loaded.keys = keys;
        }
        loaded.keys.clone()
    }
}

#[cfg(test)]
mod tests;
