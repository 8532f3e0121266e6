//! The gateway's in-memory view of every key, so a request needs no database.
//!
//! Keys are held by digest in a lock-free map (papaya: readers never block
//! each other or writers), each with its [`KeyAccess`] precomputed under the
//! catalog. Revoked and expired keys stay in the map so a refusal can say
//! why from memory. The snapshot follows the store's versioned change log
//! ([`Snapshot::sync`]); a key created elsewhere and not yet synced is found
//! by one guarded lookup ([`Snapshot::fetch_missing`]), never refused.
//!
//! Only server-generated digests are inserted (never a negative cache of
//! attacker-chosen ones), which is what makes the digest-prefix hasher safe.

use crate::AppError;
use crate::views::access_sets;
use keyward_core::{Catalog, KeyAccess, KeyDigest};
use keyward_store::{KeyRecord, Store};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// What the gateway knows about one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    /// `key_…`
    pub key_id: String,
    /// Owning organization.
    pub org_id: String,
    /// Imported legacy key (full access).
    pub legacy: bool,
    /// Granted and effective scopes, expiry, revocation.
    pub access: KeyAccess,
}

impl KeyEntry {
    fn new(catalog: &Catalog, r: &KeyRecord) -> Self {
        let (granted, effective, _) = access_sets(catalog, r);
        KeyEntry {
            key_id: r.id.clone(),
            org_id: r.org_id.clone(),
            legacy: r.legacy,
            access: KeyAccess {
                granted,
                effective,
                expires_at: r.expires_at,
                revoked_at: r.revoked_at,
            },
        }
    }
}

/// Hashes a [`KeyDigest`] by its first 8 bytes (digests are uniform).
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type DigestMap<V> = papaya::HashMap<KeyDigest, V, BuildHasherDefault<DigestHasher>>;

/// Every key of every organization, by digest, following the change log.
pub struct Snapshot {
    by_digest: DigestMap<Arc<KeyEntry>>,
    digest_of: papaya::HashMap<String, KeyDigest>,
    version: AtomicI64,
}

impl Snapshot {
    /// Loads every key. The change-log version is read first, so anything
    /// committed while loading is replayed by the next [`Snapshot::sync`].
    ///
    /// # Errors
    /// Storage failures.
    pub async fn load<S: Store>(store: &S, catalog: &Catalog) -> Result<Self, AppError> {
        let (_, version) = store.changes_since(i64::MAX).await?;
        let snapshot = Snapshot {
            by_digest: papaya::HashMap::with_hasher(BuildHasherDefault::default()),
            digest_of: papaya::HashMap::new(),
            version: AtomicI64::new(version),
        };
        for r in store.all_keys().await? {
            snapshot.put(catalog, &r);
        }
        Ok(snapshot)
    }

    fn put(&self, catalog: &Catalog, r: &KeyRecord) -> Arc<KeyEntry> {
        let entry = Arc::new(KeyEntry::new(catalog, r));
        self.by_digest.pin().insert(r.digest, entry.clone());
        self.digest_of.pin().insert(r.id.clone(), r.digest);
        entry
    }

    /// The key with this digest, if the snapshot holds it. The hot path:
    /// no lock, no allocation beyond an `Arc` clone.
    pub fn get(&self, digest: &KeyDigest) -> Option<Arc<KeyEntry>> {
        self.by_digest.pin().get(digest).cloned()
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The change-log version the snapshot reflects.
    pub fn version(&self) -> i64 {
        self.version.load(Ordering::Acquire)
    }

    /// Applies every change committed since the last sync; returns how many.
    ///
    /// # Errors
    /// Storage failures (the version does not advance; the next sync retries).
    pub async fn sync<S: Store>(&self, store: &S, catalog: &Catalog) -> Result<usize, AppError> {
        let from = self.version();
        let (changes, current) = store.changes_since(from).await?;
        for change in &changes {
            let Some(key_id) = &change.key_id else {
                continue;
            };
            match store.get_key(&change.org_id, key_id).await? {
                Some(r) => {
                    self.put(catalog, &r);
                }
                None => {
                    if let Some(d) = self.digest_of.pin().remove(key_id) {
                        self.by_digest.pin().remove(d);
                    }
                }
            }
        }
        self.version.fetch_max(current, Ordering::AcqRel);
        Ok(changes.len())
    }

    /// Looks a digest up in storage when the snapshot does not hold it: a key
    /// created on another node moments ago. Callers must only ask for keys
    /// whose checksum is valid, and should bound concurrent calls.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn fetch_missing<S: Store>(
        &self,
        store: &S,
        catalog: &Catalog,
        digest: &KeyDigest,
    ) -> Result<Option<Arc<KeyEntry>>, AppError> {
        if let Some(e) = self.get(digest) {
            return Ok(Some(e));
        }
        Ok(store
            .key_by_digest(digest)
            .await?
            .map(|r| self.put(catalog, &r)))
    }
}
