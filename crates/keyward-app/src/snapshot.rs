//! The gateway's in-memory view of every key, so a request needs no database.
//!
//! Keys are held by digest in a lock-free map (papaya: readers never block
//! each other or writers). Keys with equal grants share one interned
//! [`Grants`] value (scope sets and the `X-Keyward-Scopes` text computed
//! once), and keys of one organization share its id, which is what keeps a
//! million keys within a few hundred bytes each. Revoked and expired keys stay
//! in the map so a refusal can say why from memory.
//!
//! The snapshot follows the store's versioned change log ([`Snapshot::sync`]).
//! Syncs are serialised, so an older read can never overwrite a newer one. A
//! key created elsewhere and not yet synced is found by [`Snapshot::catch_up`],
//! which coalesces concurrent callers into one change-log read: the guarded
//! lookup that keeps unknown-key floods from multiplying database queries.
//!
//! Only server-generated digests are inserted (never a negative cache of
//! attacker-chosen ones), which is what makes the digest-prefix hasher safe.
//!
//! Last-use times live in each entry as atomics; the first use of a key since
//! the last flush queues it once, so the per-request cost is two relaxed
//! atomic operations and no shared lock.

use crate::AppError;
use crate::limits::{KeyLimits, Sharing};
use keyward_core::{Catalog, KeyAccess, KeyDigest, ScopeSet};
use keyward_store::{SnapshotKey, Store};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Keys read per query while loading.
pub const LOAD_PAGE: u32 = 10_000;
/// Change-log entries applied per page while syncing: a large import is
/// replayed in a few dozen bulk reads, not one read per key.
pub const SYNC_PAGE: u32 = 5_000;
/// Uses of one key closer together than this are recorded once.
pub const USE_RESOLUTION_MS: i64 = 1_000;

/// Scopes of every key granted the same thing, computed once.
#[derive(Debug, PartialEq, Eq)]
pub struct Grants {
    /// As granted (permission sets expanded, not the hierarchy).
    pub granted: ScopeSet,
    /// Closure under `implies`.
    pub effective: ScopeSet,
    /// Effective scope names, space-separated (the `X-Keyward-Scopes`
    /// header), as shared bytes so a request can send them without copying.
    pub effective_text: bytes::Bytes,
}

/// What the gateway knows about one key.
#[derive(Debug)]
pub struct KeyEntry {
    /// `key_…`
    pub key_id: Box<str>,
    /// Owning organization (shared by its keys).
    pub org_id: Arc<str>,
    /// Imported legacy key (full access).
    pub legacy: bool,
    /// The key's identity when counting its use
    /// ([`crate::usage::usage_id`]), computed once.
    pub usage_id: u64,
    /// Scopes, shared with every key granted the same.
    pub grants: Arc<Grants>,
    /// Unix milliseconds.
    pub expires_at: Option<i64>,
    /// Unix milliseconds.
    pub revoked_at: Option<i64>,
    last_used: AtomicI64,
    queued: AtomicBool,
    /// Its limits and networks, for the few keys that have any (one pointer
    /// on the others).
    pub limits: Option<Box<KeyLimits>>,
}

impl KeyEntry {
    /// What a decision needs.
    pub fn access(&self) -> KeyAccess {
        KeyAccess {
            granted: self.grants.granted,
            effective: self.grants.effective,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
        }
    }

    /// Last use known to this node (unix milliseconds), if any.
    pub fn last_used(&self) -> Option<i64> {
        Some(self.last_used.load(Ordering::Relaxed)).filter(|t| *t > 0)
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

/// Interning tables, used only while loading and syncing.
#[derive(Default)]
struct Interner {
    grants: HashMap<String, Arc<Grants>>,
    /// Every legacy key holds the same: everything available.
    legacy: Option<Arc<Grants>>,
    orgs: HashMap<String, Arc<str>>,
}

impl Interner {
    /// `kept`: the entry the snapshot held for this key, whose limit
    /// counts carry over.
    fn entry(&mut self, catalog: &Catalog, k: &SnapshotKey, kept: Option<&KeyEntry>) -> KeyEntry {
        // Look up before inserting: cloning the strings for every key would
        // cost two allocations per key on a million-key load.
        let grants = if k.legacy {
            self.legacy
                .get_or_insert_with(|| Arc::new(grants_of(catalog, k)))
                .clone()
        } else if let Some(g) = self.grants.get(k.grants.as_str()) {
            g.clone()
        } else {
            let g = Arc::new(grants_of(catalog, k));
            self.grants.insert(k.grants.clone(), g.clone());
            g
        };
        let org_id = match self.orgs.get(k.org_id.as_str()) {
            Some(o) => o.clone(),
            None => {
                let o: Arc<str> = Arc::from(k.org_id.as_str());
                self.orgs.insert(k.org_id.clone(), o.clone());
                o
            }
        };
        KeyEntry {
            key_id: k.id.as_str().into(),
            org_id,
            legacy: k.legacy,
            usage_id: crate::usage::usage_id(&k.id),
            grants,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            last_used: AtomicI64::new(k.last_used_at.unwrap_or(0)),
            queued: AtomicBool::new(false),
            limits: KeyLimits::of(
                &k.id,
                &k.limits,
                &k.allowed_cidrs,
                kept.and_then(|e| e.limits.as_deref()),
            ),
        }
    }
}

/// What a key holds, by the core's rule (`Catalog::key_holdings`).
fn grants_of(catalog: &Catalog, k: &SnapshotKey) -> Grants {
    let (scopes, sets) = SnapshotKey::grant_names(&k.grants);
    let (granted, effective, _unknown) = catalog.key_holdings(k.legacy, scopes, sets);
    Grants {
        granted,
        effective,
        effective_text: bytes::Bytes::from(catalog.names(effective).join(" ")),
    }
}

/// Every key of every organization, by digest, following the change log.
pub struct Snapshot {
    by_digest: DigestMap<Arc<KeyEntry>>,
    version: AtomicI64,
    interner: Mutex<Interner>,
    /// Serialises syncs; counts them for [`Snapshot::catch_up`].
    sync_lock: tokio::sync::Mutex<()>,
    syncs_started: AtomicU64,
    last_ok_sync: AtomicU64,
    /// Change-log reads answered so far: a sync that runs long while this
    /// moves is working through a backlog, not waiting for a silent database.
    answers: AtomicU64,
    used: Mutex<Vec<Arc<KeyEntry>>>,
    sharing: Sharing,
}

impl Snapshot {
    /// A snapshot of `keys` at change-log `version`, without a store: for
    /// benchmarks and tests of the hot path. Servers use [`Snapshot::load`].
    pub fn from_keys(
        catalog: &Catalog,
        version: i64,
        keys: impl IntoIterator<Item = SnapshotKey>,
    ) -> Self {
        let snapshot = Snapshot::empty(version, 0);
        let mut page = Vec::with_capacity(LOAD_PAGE as usize);
        for k in keys {
            page.push(k);
            if page.len() == LOAD_PAGE as usize {
                snapshot.put_all(catalog, &page);
                page.clear();
            }
        }
        snapshot.put_all(catalog, &page);
        snapshot
    }

    fn empty(version: i64, capacity: usize) -> Self {
        Snapshot {
            by_digest: papaya::HashMap::builder()
                .hasher(BuildHasherDefault::default())
                .capacity(capacity)
                .build(),
            version: AtomicI64::new(version),
            interner: Mutex::new(Interner::default()),
            sync_lock: tokio::sync::Mutex::new(()),
            syncs_started: AtomicU64::new(0),
            last_ok_sync: AtomicU64::new(0),
            answers: AtomicU64::new(0),
            used: Mutex::new(Vec::new()),
            sharing: Sharing::default(),
        }
    }

    /// Loads every key, [`LOAD_PAGE`] at a time; `progress` receives the
    /// number loaded so far. The change-log version is read first, so anything
    /// committed while loading is replayed by the next [`Snapshot::sync`].
    ///
    /// # Errors
    /// Storage failures.
    pub async fn load<S: Store>(
        store: &S,
        catalog: &Catalog,
        progress: &mut (dyn FnMut(usize) + Send),
    ) -> Result<Self, AppError> {
        let (_, version) = store.changes_since(i64::MAX, 0).await?;
        // Headroom for keys created while serving, before the first resize.
        let expected = usize::try_from(store.count_keys().await?).unwrap_or(0);
        let snapshot = Snapshot::empty(version, expected + expected / 4 + 1024);
        let mut after = String::new();
        let mut loaded = 0;
        loop {
            let page = store.snapshot_keys(&after, LOAD_PAGE).await?;
            let Some(last) = page.last() else { break };
            after.clone_from(&last.id);
            snapshot.put_all(catalog, &page);
            loaded += page.len();
            progress(loaded);
        }
        Ok(snapshot)
    }

    fn put_all(&self, catalog: &Catalog, keys: &[SnapshotKey]) {
        let mut interner = self.interner.lock().unwrap_or_else(PoisonError::into_inner);
        let map = self.by_digest.pin();
        for k in keys {
            let kept = map.get(&k.digest).cloned();
            map.insert(
                k.digest,
                Arc::new(interner.entry(catalog, k, kept.as_deref())),
            );
        }
    }

    /// How this node shares limits with others (limits of the keys held
    /// here are counted against it).
    pub fn sharing(&self) -> &Sharing {
        &self.sharing
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

    /// How many change-log reads have been answered since the start.
    pub fn answers(&self) -> u64 {
        self.answers.load(Ordering::Relaxed)
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
        let _serial = self.sync_lock.lock().await;
        self.sync_locked(store, catalog).await
    }

    async fn sync_locked<S: Store>(&self, store: &S, catalog: &Catalog) -> Result<usize, AppError> {
        let ticket = self.syncs_started.fetch_add(1, Ordering::AcqRel) + 1;
        let mut applied = 0;
        loop {
            let from = self.version();
            let (changes, current) = store.changes_since(from, SYNC_PAGE).await?;
            self.answers.fetch_add(1, Ordering::Relaxed);
            let Some(last) = changes.last().map(|c| c.version) else {
                self.version.fetch_max(current, Ordering::AcqRel);
                break;
            };
            let mut ids: Vec<String> = changes.iter().filter_map(|c| c.key_id.clone()).collect();
            ids.sort_unstable();
            ids.dedup();
            let fresh = store.snapshot_keys_by_id(&ids).await?;
            if fresh.len() < ids.len() {
                // Keys are never deleted by keyward; if one vanished, drop it.
                let found: std::collections::HashSet<&str> =
                    fresh.iter().map(|k| k.id.as_str()).collect();
                let vanished: std::collections::HashSet<&str> = ids
                    .iter()
                    .map(String::as_str)
                    .filter(|id| !found.contains(id))
                    .collect();
                let map = self.by_digest.pin();
                let gone: Vec<KeyDigest> = map
                    .iter()
                    .filter(|(_, e)| vanished.contains(&*e.key_id))
                    .map(|(d, _)| *d)
                    .collect();
                for d in gone {
                    map.remove(&d);
                }
            }
            self.put_all(catalog, &fresh);
            // Page by page: what is applied stays applied if a later page
            // fails, and the next sync starts after it.
            self.version.fetch_max(last, Ordering::AcqRel);
            applied += changes.len();
            if last >= current {
                break;
            }
        }
        self.last_ok_sync.fetch_max(ticket, Ordering::AcqRel);
        Ok(applied)
    }

    /// Brings the snapshot up to date with everything committed before this
    /// call, for a key that is not (yet) in the snapshot. Concurrent callers
    /// share one change-log read: whoever waits while a sync that started
    /// after their arrival completes does not query again.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn catch_up<S: Store>(&self, store: &S, catalog: &Catalog) -> Result<(), AppError> {
        let arrived = self.syncs_started.load(Ordering::Acquire);
        let _serial = self.sync_lock.lock().await;
        if self.last_ok_sync.load(Ordering::Acquire) > arrived {
            return Ok(());
        }
        self.sync_locked(store, catalog).await.map(drop)
    }

    /// Records that `entry` was used at `now_ms`. Costs two relaxed atomics
    /// unless this is the key's first use since the last
    /// [`Snapshot::take_uses`], which queues it once.
    pub fn record_use(&self, entry: &Arc<KeyEntry>, now_ms: i64) {
        let last = entry.last_used.load(Ordering::Relaxed);
        if now_ms < last.saturating_add(USE_RESOLUTION_MS) {
            return;
        }
        entry.last_used.fetch_max(now_ms, Ordering::Relaxed);
        if !entry.queued.swap(true, Ordering::AcqRel) {
            self.used
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(entry.clone());
        }
    }

    /// Every (key id, last use) recorded since the previous call.
    pub fn take_uses(&self) -> Vec<(String, i64)> {
        let queued = std::mem::take(&mut *self.used.lock().unwrap_or_else(PoisonError::into_inner));
        queued
            .into_iter()
            .map(|e| {
                e.queued.store(false, Ordering::Release);
                (e.key_id.to_string(), e.last_used.load(Ordering::Relaxed))
            })
            .collect()
    }
}
