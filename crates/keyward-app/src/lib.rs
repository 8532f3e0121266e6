//! keyward's use cases, shared by the CLI and the HTTP server.
//!
//! Each administrative action (create, roll, revoke, import, org changes) is
//! one method of [`App`] that validates input, applies the core's rules
//! (grant resolution, broad access, no escalation), and hands storage one
//! atomic write that includes its audit record. The CLI and the server call
//! the same methods, so they cannot apply different rules or forget to audit.
//!
//! Does not know about HTTP, JSON bodies, terminals or flags; it does define
//! the serialisable views both front ends print (see [`views`]).

mod audit;
pub mod env;
mod error;
pub mod hashing;
mod keys;
pub mod leaks;
mod legacy;
pub mod limits;
pub mod people;
pub mod policy;
pub mod sessions;
pub mod snapshot;
pub mod usage;
pub mod views;
pub mod webhooks;

pub use audit::{
    BrokenLink, ChainReport, Refusal, RequestFacts, audit_resumed_entry, push_json_str,
    request_entry, tally_entry,
};
pub use error::AppError;
pub use keys::{CreateKey, ExplainSubject, Explanation, ImportReport, filter_status};
pub use legacy::{LegacyEntry, parse_legacy_file};

use env::{Clock, Rng};
use keyward_core::audit::AuditEntry;
use keyward_core::key::{self, RANDOM_BYTES};
use keyward_core::{Catalog, Digester, Environment, ScopeSet, SecretKey};
use keyward_store::Store;
/// The storage value types the layers above use, so they depend on the app
/// alone and never reach around it into storage (`keyward-server` has no
/// dependency on `keyward-store`).
pub use keyward_store::{
    AnyStore, Attempt, AuditQuery, AuditRecord, ChangeNotifier, KeyFilter, Org, PendingEvent,
    Revoked, StoreError, UsageRow, WebhookRecord,
};
pub use limits::{Exchanged, KeyLimits, Sharing};
use serde_json::json;
pub use snapshot::{KeyEntry, Snapshot};
use std::sync::Arc;

/// Longest key name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Longest key description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 1000;
/// Keys written per transaction by a legacy import.
pub const IMPORT_BATCH: usize = 500;

/// Who performs an action, and what they hold (for the no-escalation rule).
#[derive(Clone, Debug)]
pub struct Actor {
    /// `cli:<os user>`, `key:<id>` or `user:<id>`: recorded in the audit log.
    pub id: String,
    /// Effective scopes of the actor.
    pub effective: ScopeSet,
    /// Client address, for HTTP callers.
    pub client: Option<String>,
    /// Request id, for HTTP callers.
    pub request_id: Option<String>,
}

impl Actor {
    /// The local operator: whoever can run the CLI against the database holds
    /// everything the catalog offers.
    pub fn operator(id: impl Into<String>, catalog: &Catalog) -> Self {
        Actor {
            id: id.into(),
            effective: catalog.available_scopes(),
            client: None,
            request_id: None,
        }
    }
}

/// The use cases, over one store and one catalog.
pub struct App<S> {
    store: S,
    catalog: Arc<Catalog>,
    digester: Digester,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
    /// Organizations by id. Never stale: an organization is never renamed
    /// or removed, and an id not here is looked up in the store.
    orgs: papaya::HashMap<String, Org>,
    /// Password hashing, bounded for the whole process.
    hash_slots: hashing::HashSlots,
}

impl<S: Store> App<S> {
    /// Wires the use cases to their collaborators.
    pub fn new(
        store: S,
        catalog: Arc<Catalog>,
        digester: Digester,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
    ) -> Self {
        App {
            store,
            catalog,
            digester,
            clock,
            rng,
            orgs: papaya::HashMap::new(),
            hash_slots: hashing::HashSlots::per_core(),
        }
    }

    /// The catalog in force.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The store, for tests and tools that inspect what was written.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The digest function keys are stored under.
    pub fn digester(&self) -> &Digester {
        &self.digester
    }

    /// Current time from the injected clock.
    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn random_id(&self, prefix: &str, len: usize) -> Result<String, AppError> {
        loop {
            let mut bytes = [0u8; 48];
            self.rng.fill(&mut bytes)?;
            if let Some(s) = key::base62_from_random(&bytes, len) {
                return Ok(format!("{prefix}_{s}"));
            }
        }
    }

    fn new_secret(&self, env: Environment) -> Result<SecretKey, AppError> {
        loop {
            let mut bytes = [0u8; RANDOM_BYTES];
            self.rng.fill(&mut bytes)?;
            match key::generate(self.catalog.key_prefix(), env, &bytes) {
                Ok(k) => return Ok(k),
                Err(keyward_core::KeyFormatError::NotEnoughRandomness) => continue,
                Err(e) => return Err(AppError::validation("key_prefix", e.to_string())),
            }
        }
    }

    // ---- organizations ------------------------------------------------

    /// Migrates the database and, on first start, creates the default
    /// organization with its owner. Safe to call on every start, from
    /// several nodes at once. The owner's one-time password is returned only
    /// to the call that created it.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn bootstrap(
        &self,
        actor: &Actor,
    ) -> Result<(Org, Option<people::OwnerCredentials>), AppError> {
        self.store.migrate().await?;
        if let Some(org) = self.store.default_org().await? {
            return Ok((org, None));
        }
        let (org, audits, owner, creds) = self.new_org(actor, "default", "Default", true)?;
        let stored = self.store.create_org(&org, Some(&owner), &audits).await?;
        let created = stored.id == org.id;
        Ok((stored, created.then_some(creds)))
    }

    /// A new organization row, its owner, their audit records, and the
    /// owner's one-time password.
    fn new_org(
        &self,
        actor: &Actor,
        slug: &str,
        name: &str,
        is_default: bool,
    ) -> Result<
        (
            Org,
            Vec<AuditEntry>,
            keyward_store::UserRecord,
            people::OwnerCredentials,
        ),
        AppError,
    > {
        let org = Org {
            id: self.random_id("org", 12)?,
            slug: slug.to_owned(),
            name: name.to_owned(),
            is_default,
            created_at: self.now(),
        };
        let audit = self.audit(
            actor,
            &org,
            "org.created",
            None,
            json!({"slug": slug, "name": name}),
        );
        let (owner, creds) = self.new_owner(&org.id)?;
        let owner_audit = self.audit(
            actor,
            &org,
            "user.created",
            None,
            json!({"email": owner.email, "name": owner.name, "groups": owner.groups, "owner": true}),
        );
        Ok((org, vec![audit, owner_audit], owner, creds))
    }

    /// The organization a command acts in: `slug`, or the default one.
    ///
    /// # Errors
    /// [`AppError::NotFound`] for an unknown slug.
    pub async fn resolve_org(&self, slug: Option<&str>) -> Result<Org, AppError> {
        let found = match slug {
            Some(s) => self.store.org_by_slug(s).await?,
            None => self.store.default_org().await?,
        };
        found.ok_or_else(|| AppError::NotFound {
            what: "organization",
            id: slug.unwrap_or("default").to_owned(),
        })
    }

    /// Creates an organization with its owner; its slug derives from the
    /// name. Returns the owner's one-time password, shown once.
    ///
    /// # Errors
    /// Invalid name, or [`AppError::Conflict`] when the slug is taken.
    pub async fn create_org(
        &self,
        actor: &Actor,
        name: &str,
    ) -> Result<(Org, people::OwnerCredentials), AppError> {
        let name = validate_name(name)?;
        let slug = slugify(&name);
        if slug.is_empty() {
            return Err(AppError::validation(
                "name",
                format!("`{name}` needs at least one letter or digit"),
            ));
        }
        let (org, audits, owner, creds) = self.new_org(actor, &slug, &name, false)?;
        match self.store.create_org(&org, Some(&owner), &audits).await {
            Ok(o) => Ok((o, creds)),
            Err(StoreError::Conflict(_)) => Err(AppError::Conflict(format!(
                "organization `{slug}` already exists"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// An organization by id (a request's key carries its organization's id).
    ///
    /// # Errors
    /// [`AppError::NotFound`].
    pub async fn org_by_id(&self, id: &str) -> Result<Org, AppError> {
        if let Some(org) = self.orgs.pin().get(id) {
            return Ok(org.clone());
        }
        let all = self.store.list_orgs().await?;
        let orgs = self.orgs.pin();
        for org in all {
            orgs.insert(org.id.clone(), org);
        }
        orgs.get(id).cloned().ok_or_else(|| AppError::NotFound {
            what: "organization",
            id: id.to_owned(),
        })
    }

    /// Every organization.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn list_orgs(&self) -> Result<Vec<Org>, AppError> {
        Ok(self.store.list_orgs().await?)
    }
}

/// What a serving node asks of storage: its key snapshot, audit records of
/// requests, and last-use times. Kept here so the server reaches storage only
/// through the app layer.
impl<S: Store> App<S> {
    /// Loads every key into a new [`Snapshot`].
    ///
    /// # Errors
    /// Storage failures.
    pub async fn load_snapshot(
        &self,
        progress: &mut (dyn FnMut(usize) + Send),
    ) -> Result<Snapshot, AppError> {
        Snapshot::load(&self.store, &self.catalog, progress).await
    }

    /// Applies the change log to `snapshot`; returns how many changes.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn sync_snapshot(&self, snapshot: &Snapshot) -> Result<usize, AppError> {
        snapshot.sync(&self.store, &self.catalog).await
    }

    /// [`Snapshot::catch_up`] for a key the snapshot does not hold.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn catch_up_snapshot(&self, snapshot: &Snapshot) -> Result<(), AppError> {
        snapshot.catch_up(&self.store, &self.catalog).await
    }

    /// A wake-up for changes committed elsewhere, where the backend has one
    /// (see [`keyward_store::ChangeNotifier`]).
    ///
    /// # Errors
    /// Storage failures.
    pub async fn change_notifier(&self) -> Result<Option<keyward_store::ChangeNotifier>, AppError> {
        Ok(self.store.change_notifier().await?)
    }

    /// Writes last-use times (key id, unix milliseconds) in one transaction.
    ///
    /// # Errors
    /// Storage failures: nothing was written.
    pub async fn flush_uses(&self, uses: &[(String, i64)]) -> Result<(), AppError> {
        Ok(self.store.touch_keys(uses).await?)
    }
}

/// Trims and checks a key or organization name.
pub(crate) fn validate_name(raw: &str) -> Result<String, AppError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(AppError::validation("name", "must not be empty"));
    }
    let n = name.chars().count();
    if n > MAX_NAME_CHARS {
        return Err(AppError::validation(
            "name",
            format!("must be at most {MAX_NAME_CHARS} characters, got {n}"),
        ));
    }
    keyward_core::text::check_label(name, false)
        .map_err(|e| AppError::validation("name", e.to_string()))?;
    Ok(name.to_owned())
}

/// `Acme Corp.` → `acme-corp`.
fn slugify(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_end_matches('-').chars().take(48).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_slugs() {
        assert_eq!(
            validate_name("  Production Server ").unwrap(),
            "Production Server"
        );
        assert_eq!(
            validate_name("   ").unwrap_err().to_string(),
            "name: must not be empty"
        );
        assert_eq!(
            validate_name(&"x".repeat(101)).unwrap_err().to_string(),
            "name: must be at most 100 characters, got 101"
        );
        assert!(validate_name(&"é".repeat(100)).is_ok());
        assert_eq!(slugify("Acme Corp."), "acme-corp");
        assert_eq!(slugify("  Ünïcode & Co "), "n-code-co");
        assert_eq!(slugify("!!!"), "");
    }
}
