//! Keys: create, show, list, revoke, roll, import and explain. Every
//! refusal of a key action is audited through [`App::refuse`].

use crate::audit::Refusal;
use crate::views::{CreatedKey, DecisionView, KeyView, access_sets, names};
use crate::{
    Actor, App, AppError, IMPORT_BATCH, LegacyEntry, MAX_DESCRIPTION_CHARS, validate_name,
};
use keyward_core::limits::{Limit, MAX_NETWORKS, Network};
use keyward_core::{AuthFailure, Environment, GrantRequest, KeyAccess, check_no_escalation, path};
use keyward_store::{KeyFilter, KeyRecord, Org, Revoked, Store, StoreError};
use serde_json::json;

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
    /// Named rate limits and quotas, each checked when it was read; at most
    /// 10, names unique.
    pub limits: Vec<Limit>,
    /// Networks the key may be used from; empty: anywhere.
    pub allowed_cidrs: Vec<Network>,
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

impl<S: Store> App<S> {
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
        keyward_core::limits::check_limits(&req.limits)
            .map_err(|e| AppError::validation(e.field, e.message))?;
        if req.allowed_cidrs.len() > MAX_NETWORKS {
            return Err(AppError::validation(
                "allowed_cidrs",
                format!("at most {MAX_NETWORKS} networks per key"),
            ));
        }
        let resolved = self
            .catalog
            .resolve_grants(&req.grants)
            .map_err(AppError::Grants)?;
        // A refused creation names what was asked, never a secret.
        let refused = |status: u16, required: Vec<String>, error: &AppError| Refusal {
            action: "key.create_refused",
            key_id: None,
            status,
            required,
            details: json!({"name": name, "error": refusal_text(error)}),
            ..Refusal::default()
        };
        if let Err(lacking) = check_no_escalation(actor.effective, resolved.effective) {
            let lacking = names(&self.catalog, lacking);
            let error = AppError::Escalation {
                lacking: lacking.clone(),
            };
            let refusal = refused(403, lacking, &error);
            return Err(self.refuse(actor, org, refusal, error).await);
        }
        if resolved.is_broad() && !req.acknowledge_broad_access {
            let error = AppError::BroadAccessUnacknowledged {
                sets: resolved.write_capable_sets.clone(),
            };
            let refusal = refused(422, Vec::new(), &error);
            return Err(self.refuse(actor, org, refusal, error).await);
        }
        let (policy_text, policy, _) = self.read_policy(org).await?;
        let expires_at = match policy.expiry_for(req.expires_at, now) {
            Ok(at) => at,
            Err(e) => {
                let error = AppError::ExpiryExceedsPolicy {
                    latest: e.latest,
                    lifetime: policy_text.max_key_lifetime.unwrap_or_default(),
                };
                let refusal = refused(422, Vec::new(), &error);
                return Err(self.refuse(actor, org, refusal, error).await);
            }
        };
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
            expires_at,
            revoked_at: None,
            rolled_to: None,
            last_used_at: None,
            flagged_unused_at: None,
            leaked_at: None,
            scopes: resolved.scopes.clone(),
            permission_sets: resolved.permission_sets.clone(),
            limits: req.limits.clone(),
            allowed_cidrs: req.allowed_cidrs.clone(),
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
            "limits": record.limits.iter().map(|l| format!("{}={}/{}", l.name, l.requests, l.per())).collect::<Vec<_>>(),
            "allowed_cidrs": record.allowed_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
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
        self.revoke_key_because(actor, org, key_id, json!({})).await
    }

    /// [`App::revoke_key`], its audit record carrying `details` (the
    /// policy's `{"reason": "unused"}`).
    pub(crate) async fn revoke_key_because(
        &self,
        actor: &Actor,
        org: &Org,
        key_id: &str,
        details: serde_json::Value,
    ) -> Result<(KeyView, Revoked), AppError> {
        let now = self.now();
        let entry = self.audit(actor, org, "key.revoked", Some(key_id), details);
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
        self.roll_key_narrowing(actor, org, key_id, grace_ms, None)
            .await
    }

    /// [`App::roll_key`], the new key holding `narrower` grants instead of
    /// the old key's (SPEC §9): their effective scopes must be among the old
    /// key's. A legacy key is rolled this way into a scoped key.
    ///
    /// # Errors
    /// As [`App::roll_key`]; [`AppError::Grants`] for unknown grants or none;
    /// [`AppError::RollWouldBroaden`] naming the scopes the old key lacks.
    pub async fn roll_key_narrowing(
        &self,
        actor: &Actor,
        org: &Org,
        key_id: &str,
        grace_ms: i64,
        narrower: Option<&keyward_core::GrantRequest>,
    ) -> Result<CreatedKey, AppError> {
        let now = self.now();
        let old = self
            .store
            .get_key(&org.id, key_id)
            .await?
            .ok_or_else(|| not_found_key(key_id))?;
        // Refused rolls are audited like refused creations.
        let refused = |status: u16, required: Vec<String>, error: &AppError| Refusal {
            action: "key.roll_refused",
            key_id: Some(key_id),
            status,
            required,
            details: json!({"error": refusal_text(error)}),
            ..Refusal::default()
        };
        let stale = if let Some(to) = &old.rolled_to {
            Some(format!(
                "was already rolled to `{to}`: roll that key instead"
            ))
        } else if old.revoked_at.is_some() {
            Some("is revoked: create a new key instead".to_owned())
        } else if old.expires_at.is_some_and(|e| e <= now) {
            Some("has expired: create a new key instead".to_owned())
        } else {
            None
        };
        if let Some(why) = stale {
            let error = AppError::Conflict(format!("key `{key_id}` {why}"));
            let refusal = refused(409, Vec::new(), &error);
            return Err(self.refuse(actor, org, refusal, error).await);
        }
        if !(0..=MAX_GRACE_MS).contains(&grace_ms) {
            return Err(AppError::validation(
                "grace",
                "must be between 0s and 30d: a longer grace keeps the old key working as if never rolled",
            ));
        }
        let (_, effective, _) = access_sets(&self.catalog, &old);
        let narrowed = match narrower {
            None => None,
            Some(req) => {
                let resolved = match self.catalog.resolve_grants(req) {
                    Ok(r) => r,
                    Err(e) => {
                        let error = AppError::Grants(e);
                        let refusal = refused(422, Vec::new(), &error);
                        return Err(self.refuse(actor, org, refusal, error).await);
                    }
                };
                let extra = resolved.effective.difference(&effective);
                if !extra.is_empty() {
                    let extra = names(&self.catalog, extra);
                    let error = AppError::RollWouldBroaden {
                        extra: extra.clone(),
                    };
                    let refusal = refused(422, extra, &error);
                    return Err(self.refuse(actor, org, refusal, error).await);
                }
                Some(resolved)
            }
        };
        // No one hands out a key holding more than they hold (SPEC §2): the
        // new key's scopes, the old key's when not narrowed.
        let new_effective = narrowed.as_ref().map_or(effective, |r| r.effective);
        if let Err(lacking) = check_no_escalation(actor.effective, new_effective) {
            let lacking = names(&self.catalog, lacking);
            let error = AppError::Escalation {
                lacking: lacking.clone(),
            };
            let refusal = refused(403, lacking, &error);
            return Err(self.refuse(actor, org, refusal, error).await);
        }
        // The successor is a new key: it lives no longer than the policy
        // allows from now (an old key's later expiry is cut down, never a
        // reason to refuse the roll).
        let policy = self.policy(org).await?;
        let expires_at = match policy.expiry_for(None, now) {
            Ok(Some(latest)) => Some(old.expires_at.map_or(latest, |at| at.min(latest))),
            _ => old.expires_at,
        };
        let env = Environment::parse(&old.environment).unwrap_or(Environment::Live);
        let secret = self.new_secret(env)?;
        let new = KeyRecord {
            id: self.random_id("key", 16)?,
            expires_at,
            digest: self.digester.digest(secret.expose()),
            display_prefix: secret.display_prefix(),
            created_at: now,
            created_by: actor.id.clone(),
            revoked_at: None,
            rolled_to: None,
            last_used_at: None,
            flagged_unused_at: None,
            leaked_at: None,
            ..old.clone()
        };
        let new = match &narrowed {
            Some(r) => KeyRecord {
                legacy: false,
                scopes: r.scopes.clone(),
                permission_sets: r.permission_sets.clone(),
                ..new
            },
            None => new,
        };
        let old_expires = now.saturating_add(grace_ms.max(0));
        let mut details =
            json!({"new_key_id": new.id, "grace_ms": grace_ms, "old_expires_at": old_expires});
        if narrowed.is_some() {
            details["narrowed_to"] = json!({
                "scopes": new.scopes,
                "permission_sets": new.permission_sets,
            });
        }
        let entry = self.audit(actor, org, "key.rolled", Some(key_id), details);
        match self
            .store
            .roll_key(&org.id, key_id, old_expires, &new, &entry)
            .await
        {
            Ok(()) => {}
            Err(StoreError::NotFound) => return Err(not_found_key(key_id)),
            // Rolled by someone else meanwhile: refused like any other
            // roll of a rolled key, and audited the same.
            Err(StoreError::Conflict(m)) => {
                let error = AppError::Conflict(m);
                let refusal = refused(409, Vec::new(), &error);
                return Err(self.refuse(actor, org, refusal, error).await);
            }
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
                    flagged_unused_at: None,
                    leaked_at: None,
                    scopes: Vec::new(),
                    permission_sets: Vec::new(),
                    limits: Vec::new(),
                    allowed_cidrs: Vec::new(),
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

/// The longest grace a roll may give the old key.
pub const MAX_GRACE_MS: i64 = 30 * 24 * 3_600_000;

/// An error as a refusal's audit record keeps it: its first 500 characters,
/// so a request naming thousands of unknown grants cannot grow the
/// append-only log by its own size.
fn refusal_text(error: &AppError) -> String {
    const MAX: usize = 500;
    let text = error.to_string();
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}
