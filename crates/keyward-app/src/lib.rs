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

pub mod env;
mod error;
pub mod hashing;
mod legacy;
pub mod people;
pub mod sessions;
pub mod snapshot;
pub mod views;

pub use error::AppError;
pub use legacy::{LegacyEntry, parse_legacy_file};

use env::{Clock, Rng};
use keyward_core::audit::{AuditEntry, GENESIS, chain_link};
use keyward_core::key::{self, RANDOM_BYTES};
use keyward_core::{
    AuthFailure, Catalog, Digester, Environment, GrantRequest, KeyAccess, ScopeSet, SecretKey,
    check_no_escalation, path,
};
use keyward_store::{KeyRecord, Store};
use serde_json::json;
pub use snapshot::{KeyEntry, Snapshot};
/// The storage value types the layers above use, so they depend on the app
/// alone and never reach around it into storage (`keyward-server` has no
/// dependency on `keyward-store`).
pub use keyward_store::{
    AnyStore, AuditQuery, AuditRecord, ChangeNotifier, KeyFilter, Org, Revoked, StoreError,
};
use std::sync::Arc;
use views::{CreatedKey, DecisionView, KeyView, access_sets, names};

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

/// Input of [`App::create_key`].
#[derive(Clone, Debug, Default)]
pub struct CreateKey {
    /// Required; trimmed; at most 100 characters.
    pub name: String,
    /// Optional free text.
    pub description: String,
    /// `live` unless asked otherwise.
    pub environment: Option<Environment>,
    /// Scopes, permission sets, presets.
    pub grants: GrantRequest,
    /// Unix milliseconds; must be in the future.
    pub expires_at: Option<i64>,
    /// Required when more than 10 write-capable sets are selected.
    pub acknowledge_broad_access: bool,
}

/// Who `explain` reasons about.
#[derive(Clone, Debug)]
pub enum ExplainSubject {
    /// A stored key, by id.
    KeyId(String),
    /// A hypothetical key holding these scopes (or permission sets).
    Scopes(Vec<String>),
}

/// The answer of [`App::explain`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct Explanation {
    /// Method as asked.
    pub method: String,
    /// Path as asked.
    pub path: String,
    /// Path matched against the routes (gateway prefix removed).
    pub route_path: String,
    /// The key explained, when one was named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyView>,
    /// The decision.
    pub decision: DecisionView,
}

/// Outcome of a legacy import.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImportReport {
    /// Keys newly imported.
    pub imported: usize,
    /// Keys skipped because they were already imported.
    pub skipped: usize,
}

/// Outcome of verifying the audit chain.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChainReport {
    /// Records checked.
    pub records: u64,
    /// The first record whose link does not hold, if any.
    pub first_broken: Option<BrokenLink>,
}

/// A record that breaks the chain.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BrokenLink {
    /// Its sequence number.
    pub seq: i64,
    /// What does not hold.
    pub reason: String,
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

    fn audit(
        &self,
        actor: &Actor,
        org: &Org,
        action: &str,
        key_id: Option<&str>,
        details: serde_json::Value,
    ) -> AuditEntry {
        AuditEntry {
            at_ms: self.now(),
            org_id: org.id.clone(),
            actor: actor.id.clone(),
            action: action.to_owned(),
            key_id: key_id.map(str::to_owned),
            client: actor.client.clone(),
            request_id: actor.request_id.clone(),
            // Client text (names, refused scope names, emails) may hold a
            // key pasted into the wrong field: never stored in full.
            details: keyward_core::text::redact_secrets(
                &details.to_string(),
                self.catalog.key_prefix(),
            )
            .into_owned(),
            ..AuditEntry::default()
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

    // ---- keys ---------------------------------------------------------

    /// Creates a key. Refusals for escalation or unacknowledged broad access
    /// are audited; nothing else is written unless the key is.
    ///
    /// # Errors
    /// [`AppError::Validation`], [`AppError::Grants`],
    /// [`AppError::BroadAccessUnacknowledged`], [`AppError::Escalation`].
    pub async fn create_key(
        &self,
        actor: &Actor,
        org: &Org,
        req: CreateKey,
    ) -> Result<CreatedKey, AppError> {
        let name = validate_name(&req.name)?;
        let description = req.description.trim().to_owned();
        if description.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(AppError::validation(
                "description",
                format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
            ));
        }
        keyward_core::text::check_label(&description, true)
            .map_err(|e| AppError::validation("description", e.to_string()))?;
        let now = self.now();
        if let Some(at) = req.expires_at
            && at <= now
        {
            return Err(AppError::validation("expires_at", "must be in the future"));
        }
        let resolved = self
            .catalog
            .resolve_grants(&req.grants)
            .map_err(AppError::Grants)?;
        let refuse = |error: AppError, status: u16| {
            let details = json!({"name": name, "error": error.to_string()});
            let mut entry = self.audit(actor, org, "key.create_refused", None, details);
            entry.status = Some(status);
            (error, entry)
        };
        if let Err(lacking) = check_no_escalation(actor.effective, resolved.effective) {
            let lacking = names(&self.catalog, lacking);
            let (error, mut entry) = refuse(
                AppError::Escalation {
                    lacking: lacking.clone(),
                },
                403,
            );
            entry.required = lacking;
            self.store.append_audit(&[entry]).await?;
            return Err(error);
        }
        if resolved.is_broad() && !req.acknowledge_broad_access {
            let (error, entry) = refuse(
                AppError::BroadAccessUnacknowledged {
                    sets: resolved.write_capable_sets.clone(),
                },
                422,
            );
            self.store.append_audit(&[entry]).await?;
            return Err(error);
        }
        let env = req.environment.unwrap_or(Environment::Live);
        let secret = self.new_secret(env)?;
        let record = KeyRecord {
            id: self.random_id("key", 16)?,
            org_id: org.id.clone(),
            name,
            description,
            environment: env.as_str().to_owned(),
            digest: self.digester.digest(secret.expose()),
            display_prefix: secret.display_prefix(),
            legacy: false,
            created_at: now,
            created_by: actor.id.clone(),
            expires_at: req.expires_at,
            revoked_at: None,
            rolled_to: None,
            last_used_at: None,
            scopes: resolved.scopes.clone(),
            permission_sets: resolved.permission_sets.clone(),
        };
        let warning = resolved.is_broad().then(|| {
            format!(
                "broad access: {} write-capable permission sets selected",
                resolved.write_capable_sets.len()
            )
        });
        let details = json!({
            "name": record.name,
            "scopes": record.scopes,
            "permission_sets": record.permission_sets,
            "expires_at": record.expires_at,
            "broad_access_acknowledged": resolved.is_broad(),
        });
        let entry = self.audit(actor, org, "key.created", Some(&record.id), details);
        self.store
            .insert_keys(&org.id, std::slice::from_ref(&record), &[entry], false)
            .await?;
        Ok(CreatedKey {
            record: KeyView::new(&self.catalog, record, now),
            key: secret.expose().to_owned(),
            broad_access_warning: warning,
        })
    }

    /// One key of the organization.
    ///
    /// # Errors
    /// [`AppError::NotFound`], also for another organization's key.
    pub async fn show_key(&self, org: &Org, key_id: &str) -> Result<KeyView, AppError> {
        let record = self
            .store
            .get_key(&org.id, key_id)
            .await?
            .ok_or_else(|| not_found_key(key_id))?;
        Ok(KeyView::new(&self.catalog, record, self.now()))
    }

    /// Keys of the organization, newest first.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn list_keys(&self, org: &Org, filter: &KeyFilter) -> Result<Vec<KeyView>, AppError> {
        let now = self.now();
        let rows = self.store.list_keys(&org.id, filter).await?;
        Ok(rows
            .into_iter()
            .map(|r| KeyView::new(&self.catalog, r, now))
            .collect())
    }

    /// Revokes a key. Revoking a revoked key changes nothing and says when.
    ///
    /// # Errors
    /// [`AppError::NotFound`].
    pub async fn revoke_key(
        &self,
        actor: &Actor,
        org: &Org,
        key_id: &str,
    ) -> Result<(KeyView, Revoked), AppError> {
        let now = self.now();
        let entry = self.audit(actor, org, "key.revoked", Some(key_id), json!({}));
        let outcome = match self.store.revoke_key(&org.id, key_id, now, &entry).await {
            Ok(o) => o,
            Err(StoreError::NotFound) => return Err(not_found_key(key_id)),
            Err(e) => return Err(e.into()),
        };
        Ok((self.show_key(org, key_id).await?, outcome))
    }

    /// Rolls a key: a new key with the same grants; the old one keeps working
    /// for `grace_ms`, then expires.
    ///
    /// # Errors
    /// [`AppError::NotFound`]; [`AppError::Conflict`] for a revoked or expired
    /// key; [`AppError::Escalation`] when the actor lacks the key's scopes.
    pub async fn roll_key(
        &self,
        actor: &Actor,
        org: &Org,
        key_id: &str,
        grace_ms: i64,
    ) -> Result<CreatedKey, AppError> {
        let now = self.now();
        let old = self
            .store
            .get_key(&org.id, key_id)
            .await?
            .ok_or_else(|| not_found_key(key_id))?;
        if old.revoked_at.is_some() {
            return Err(AppError::Conflict(format!(
                "key `{key_id}` is revoked: create a new key instead"
            )));
        }
        if old.expires_at.is_some_and(|e| e <= now) {
            return Err(AppError::Conflict(format!(
                "key `{key_id}` has expired: create a new key instead"
            )));
        }
        let (_, effective, _) = access_sets(&self.catalog, &old);
        if let Err(lacking) = check_no_escalation(actor.effective, effective) {
            return Err(AppError::Escalation {
                lacking: names(&self.catalog, lacking),
            });
        }
        let env = Environment::parse(&old.environment).unwrap_or(Environment::Live);
        let secret = self.new_secret(env)?;
        let new = KeyRecord {
            id: self.random_id("key", 16)?,
            digest: self.digester.digest(secret.expose()),
            display_prefix: secret.display_prefix(),
            created_at: now,
            created_by: actor.id.clone(),
            revoked_at: None,
            rolled_to: None,
            last_used_at: None,
            ..old.clone()
        };
        let old_expires = now.saturating_add(grace_ms.max(0));
        let details =
            json!({"new_key_id": new.id, "grace_ms": grace_ms, "old_expires_at": old_expires});
        let entry = self.audit(actor, org, "key.rolled", Some(key_id), details);
        match self
            .store
            .roll_key(&org.id, key_id, old_expires, &new, &entry)
            .await
        {
            Ok(()) => {}
            Err(StoreError::NotFound) => return Err(not_found_key(key_id)),
            Err(e) => return Err(e.into()),
        }
        Ok(CreatedKey {
            record: KeyView::new(&self.catalog, new, now),
            key: secret.expose().to_owned(),
            broad_access_warning: None,
        })
    }

    /// Imports keys created before scopes existed. They keep full access.
    /// Each batch of [`IMPORT_BATCH`] keys commits atomically, and keys
    /// already imported are skipped, so an interrupted import is simply run
    /// again. `progress` receives the number of entries processed so far.
    ///
    /// # Errors
    /// Storage failures (earlier batches stay imported).
    pub async fn import_legacy(
        &self,
        actor: &Actor,
        org: &Org,
        entries: &[LegacyEntry],
        progress: &mut (dyn FnMut(usize) + Send),
    ) -> Result<ImportReport, AppError> {
        let mut report = ImportReport::default();
        let mut done = 0;
        for batch in entries.chunks(IMPORT_BATCH) {
            let now = self.now();
            let mut records = Vec::with_capacity(batch.len());
            let mut audits = Vec::with_capacity(batch.len());
            for e in batch {
                let record = KeyRecord {
                    id: self.random_id("key", 16)?,
                    org_id: org.id.clone(),
                    name: e.name.clone(),
                    description: String::new(),
                    environment: "live".into(),
                    digest: self.digester.digest(&e.key),
                    display_prefix: e.display_prefix(),
                    legacy: true,
                    created_at: now,
                    created_by: actor.id.clone(),
                    expires_at: None,
                    revoked_at: None,
                    rolled_to: None,
                    last_used_at: None,
                    scopes: Vec::new(),
                    permission_sets: Vec::new(),
                };
                audits.push(self.audit(
                    actor,
                    org,
                    "key.imported",
                    Some(&record.id),
                    json!({"name": record.name, "legacy": true}),
                ));
                records.push(record);
            }
            let inserted = self
                .store
                .insert_keys(&org.id, &records, &audits, true)
                .await?;
            let n = inserted.iter().filter(|i| **i).count();
            report.imported += n;
            report.skipped += inserted.len() - n;
            done += batch.len();
            progress(done);
        }
        Ok(report)
    }

    /// Explains what the gateway would decide for `method` `path`.
    ///
    /// # Errors
    /// [`AppError::NotFound`] for an unknown key id, validation errors for
    /// unknown scopes or a path not in normal form.
    pub async fn explain(
        &self,
        org: &Org,
        subject: &ExplainSubject,
        method: &str,
        raw_path: &str,
    ) -> Result<Explanation, AppError> {
        // Decided as the gateway decides: as sent, case and all.
        path::check_method(method)
            .map_err(|e| AppError::validation("method", format!("`{method}`: {e}")))?;
        let path_only = raw_path.split('?').next().unwrap_or(raw_path);
        path::check_normal(path_only)
            .map_err(|e| AppError::validation("path", format!("`{raw_path}`: {e}")))?;
        let route_path = path::strip_gateway_prefix(self.catalog.gateway_prefix(), path_only)
            .unwrap_or(path_only);
        let now = self.now();
        let (access, key) = match subject {
            ExplainSubject::KeyId(id) => {
                let record = self
                    .store
                    .get_key(&org.id, id)
                    .await?
                    .ok_or_else(|| not_found_key(id))?;
                let (granted, effective, _) = access_sets(&self.catalog, &record);
                let access = KeyAccess {
                    granted,
                    effective,
                    expires_at: record.expires_at,
                    revoked_at: record.revoked_at,
                };
                (access, Some(KeyView::new(&self.catalog, record, now)))
            }
            ExplainSubject::Scopes(scopes) => {
                let (scopes, sets): (Vec<String>, Vec<String>) =
                    scopes.iter().cloned().partition(|s| s.contains(':'));
                let req = GrantRequest {
                    scopes,
                    permission_sets: sets,
                    presets: Vec::new(),
                };
                let resolved = self
                    .catalog
                    .resolve_grants(&req)
                    .map_err(AppError::Grants)?;
                (KeyAccess::new(&self.catalog, resolved.granted), None)
            }
        };
        let decision =
            self.catalog
                .authorize(Ok::<_, AuthFailure>(&access), now, method, route_path);
        Ok(Explanation {
            method: method.to_owned(),
            path: raw_path.to_owned(),
            route_path: route_path.to_owned(),
            key,
            decision: DecisionView::new(&self.catalog, &decision),
        })
    }

    /// The audit trail of one key, newest first.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn key_audit(
        &self,
        org: &Org,
        key_id: &str,
        limit: u32,
    ) -> Result<Vec<keyward_store::AuditRecord>, AppError> {
        Ok(self.store.audit_for_key(&org.id, key_id, limit).await?)
    }

    /// Recomputes every link of the audit chain; reports the first that fails.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn verify_audit(
        &self,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<ChainReport, AppError> {
        let mut prev = GENESIS;
        let mut expected = 1;
        let mut records = 0;
        loop {
            let page = self.store.audit_chain(expected - 1, 1000).await?;
            if page.is_empty() {
                // The head row is updated in every appending transaction: a
                // chain that ends before it lost its most recent records.
                let (head_seq, head_hash) = self.store.audit_head().await?;
                let first_broken = (head_seq != expected - 1 || head_hash != prev).then(|| BrokenLink {
                    seq: expected,
                    reason: format!(
                        "the chain ends at record {} but its head says {head_seq}: the most recent records were removed",
                        expected - 1
                    ),
                });
                return Ok(ChainReport {
                    records,
                    first_broken,
                });
            }
            for r in page {
                let reason = if r.seq != expected {
                    Some(format!(
                        "expected record {expected}, found {}: records are missing",
                        r.seq
                    ))
                } else if r.prev_hash != prev {
                    Some("its previous-hash does not match the record before it".to_owned())
                } else if r.hash != chain_link(&prev, r.seq, &r.entry) {
                    Some("its content does not match its hash: the record was altered".to_owned())
                } else {
                    None
                };
                if let Some(reason) = reason {
                    return Ok(ChainReport {
                        records,
                        first_broken: Some(BrokenLink {
                            seq: expected,
                            reason,
                        }),
                    });
                }
                prev = r.hash;
                expected += 1;
                records += 1;
            }
            progress(records);
        }
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

    /// The record of the key a request authenticated with (`/v1/whoami`).
    ///
    /// # Errors
    /// [`AppError::NotFound`] when it no longer exists.
    pub async fn key_of_request(&self, org_id: &str, key_id: &str) -> Result<KeyView, AppError> {
        let record = self
            .store
            .get_key(org_id, key_id)
            .await?
            .ok_or_else(|| not_found_key(key_id))?;
        Ok(KeyView::new(&self.catalog, record, self.now()))
    }

    /// A wake-up for changes committed elsewhere, where the backend has one
    /// (see [`keyward_store::ChangeNotifier`]).
    ///
    /// # Errors
    /// Storage failures.
    pub async fn change_notifier(&self) -> Result<Option<keyward_store::ChangeNotifier>, AppError> {
        Ok(self.store.change_notifier().await?)
    }

    /// Appends audit records of requests, in one transaction.
    ///
    /// # Errors
    /// Storage failures: nothing was recorded.
    pub async fn record(&self, entries: &[AuditEntry]) -> Result<(), AppError> {
        self.store.append_audit(entries).await?;
        Ok(())
    }

    /// Writes last-use times (key id, unix milliseconds) in one transaction.
    ///
    /// # Errors
    /// Storage failures: nothing was written.
    pub async fn flush_uses(&self, uses: &[(String, i64)]) -> Result<(), AppError> {
        Ok(self.store.touch_keys(uses).await?)
    }
}

fn not_found_key(id: &str) -> AppError {
    AppError::NotFound {
        what: "key",
        id: id.to_owned(),
    }
}

/// Narrows `filter` to keys whose status is `status` (`active`, `revoked`
/// or `expired`) at `now`: the one reading of key status shared by the CLI's
/// `--status`, the admin API's `?status=` and the console's filters.
///
/// # Errors
/// [`AppError::Validation`] for another word.
pub fn filter_status(filter: &mut KeyFilter, status: &str, now: i64) -> Result<(), AppError> {
    match status {
        "active" => filter.active_at = Some(now),
        "revoked" => filter.revoked = Some(true),
        "expired" => {
            filter.inactive_at = Some(now);
            filter.revoked = Some(false);
        }
        other => {
            return Err(AppError::validation(
                "status",
                format!("unknown status `{other}`: expected active, revoked or expired"),
            ));
        }
    }
    Ok(())
}

/// Trims and checks a key or organization name.
fn validate_name(raw: &str) -> Result<String, AppError> {
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
