//! Grant rules: what a key may be given, and by whom.
//!
//! Resolves requested scopes, permission sets and presets against a catalog,
//! reporting every unknown or unavailable name at once; applies the
//! broad-access rule (more than [`BROAD_ACCESS_THRESHOLD`] write-capable sets
//! must be acknowledged) and the no-escalation rule (nobody grants what they
//! do not hold).

use crate::catalog::{BROAD_ACCESS_THRESHOLD, Catalog};
use crate::scope::{ScopeSet, ScopeStatus};
use thiserror::Error;

/// What a caller asks a new key to hold. Names as typed by the user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrantRequest {
    /// Scope names, each usable as a single-scope permission set.
    pub scopes: Vec<String>,
    /// Permission set ids.
    pub permission_sets: Vec<String>,
    /// Preset ids, expanded into their scopes and sets.
    pub presets: Vec<String>,
}

/// One problem with a [`GrantRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum GrantProblem {
    /// Nothing was requested.
    #[error("a key needs at least one grant: a scope, a permission set or a preset")]
    NoGrant,
    /// No such scope.
    #[error("unknown scope `{0}`")]
    UnknownScope(String),
    /// The scope exists but cannot be granted yet (or any more).
    #[error("scope `{0}` is {1}, not available")]
    UnavailableScope(String, ScopeStatus),
    /// No such permission set.
    #[error("unknown permission set `{0}`")]
    UnknownSet(String),
    /// No such preset.
    #[error("unknown preset `{0}`")]
    UnknownPreset(String),
}

/// Every problem of one request, in the order given.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct GrantErrors(pub Vec<GrantProblem>);

/// A request resolved against a catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedGrants {
    /// Scope names granted directly (presets expanded), deduplicated, in order.
    pub scopes: Vec<String>,
    /// Permission set ids granted (presets expanded), deduplicated, in order.
    pub permission_sets: Vec<String>,
    /// Union of the direct scopes and the sets' scopes.
    pub granted: ScopeSet,
    /// Closure of `granted`.
    pub effective: ScopeSet,
    /// The selected sets that can write (direct scopes count as sets).
    pub write_capable_sets: Vec<String>,
}

impl ResolvedGrants {
    /// More than [`BROAD_ACCESS_THRESHOLD`] write-capable sets: creation must
    /// be acknowledged.
    pub fn is_broad(&self) -> bool {
        self.write_capable_sets.len() > BROAD_ACCESS_THRESHOLD
    }
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !v.iter().any(|x| x == s) {
        v.push(s.to_owned());
    }
}

impl Catalog {
    /// Resolves a grant request.
    ///
    /// # Errors
    /// [`GrantErrors`] listing every unknown or unavailable name, or
    /// [`GrantProblem::NoGrant`] when nothing was asked.
    pub fn resolve_grants(&self, req: &GrantRequest) -> Result<ResolvedGrants, GrantErrors> {
        let mut problems = Vec::new();
        let mut scopes: Vec<String> = Vec::new();
        let mut sets: Vec<String> = Vec::new();
        for p in &req.presets {
            match self.preset(p.trim()) {
                Some(preset) => {
                    preset
                        .scopes()
                        .iter()
                        .for_each(|s| push_unique(&mut scopes, s));
                    preset
                        .permission_sets()
                        .iter()
                        .for_each(|s| push_unique(&mut sets, s));
                }
                None => problems.push(GrantProblem::UnknownPreset(p.clone())),
            }
        }
        req.scopes
            .iter()
            .for_each(|s| push_unique(&mut scopes, s.trim()));
        req.permission_sets
            .iter()
            .for_each(|s| push_unique(&mut sets, s.trim()));
        if scopes.is_empty() && sets.is_empty() && problems.is_empty() {
            return Err(GrantErrors(vec![GrantProblem::NoGrant]));
        }
        let mut granted = ScopeSet::EMPTY;
        let mut write_capable_sets = Vec::new();
        for name in &scopes {
            match self.scope_id(name) {
                None => problems.push(GrantProblem::UnknownScope(name.clone())),
                Some(id) => {
                    let scope = self.scope(id);
                    if scope.status() != ScopeStatus::Available {
                        problems.push(GrantProblem::UnavailableScope(name.clone(), scope.status()));
                    } else {
                        granted.insert(id);
                        if scope.is_write() {
                            push_unique(&mut write_capable_sets, name);
                        }
                    }
                }
            }
        }
        for id in &sets {
            match self.permission_set(id) {
                None => {
                    // A set id that names an unavailable scope says so.
                    match self.scope_id(id).map(|s| self.scope(s).status()) {
                        Some(status) if status != ScopeStatus::Available => {
                            problems.push(GrantProblem::UnavailableScope(id.clone(), status));
                        }
                        _ => problems.push(GrantProblem::UnknownSet(id.clone())),
                    }
                }
                Some(set) => {
                    granted = granted.union(&set.scope_set());
                    if set.is_write() {
                        push_unique(&mut write_capable_sets, id);
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(GrantErrors(problems));
        }
        Ok(ResolvedGrants {
            scopes,
            permission_sets: sets,
            granted,
            effective: self.closure(granted),
            write_capable_sets,
        })
    }

    /// Scopes as granted by stored grant names, skipping names the catalog no
    /// longer knows (they grant nothing: fail closed). Returns the unknown
    /// names so the caller can warn.
    pub fn granted_from_names<'a>(
        &self,
        scopes: impl IntoIterator<Item = &'a str>,
        sets: impl IntoIterator<Item = &'a str>,
    ) -> (ScopeSet, Vec<String>) {
        let mut granted = ScopeSet::EMPTY;
        let mut unknown = Vec::new();
        for s in scopes {
            match self.scope_id(s) {
                Some(id) => granted.insert(id),
                None => unknown.push(s.to_owned()),
            }
        }
        for s in sets {
            match self.permission_set(s) {
                Some(set) => granted = granted.union(&set.scope_set()),
                None => unknown.push(s.to_owned()),
            }
        }
        (granted, unknown)
    }

    /// What a stored key holds under this catalog: (granted, effective,
    /// unknown grant names). The one place the legacy rule is written:
    /// a legacy key holds every available scope, including scopes added to
    /// the catalog after it was imported.
    pub fn key_holdings<'a>(
        &self,
        legacy: bool,
        scopes: impl IntoIterator<Item = &'a str>,
        sets: impl IntoIterator<Item = &'a str>,
    ) -> (ScopeSet, ScopeSet, Vec<String>) {
        if legacy {
            let all = self.available_scopes();
            return (all, all, Vec::new());
        }
        let (granted, unknown) = self.granted_from_names(scopes, sets);
        (granted, self.closure(granted), unknown)
    }
}

/// The no-escalation rule: a new key's effective scopes must all be held by
/// whoever creates it.
///
/// # Errors
/// The scopes the actor lacks, when there are any.
pub fn check_no_escalation(
    actor_effective: ScopeSet,
    requested_effective: ScopeSet,
) -> Result<(), ScopeSet> {
    let lacking = requested_effective.difference(&actor_effective);
    if lacking.is_empty() {
        Ok(())
    } else {
        Err(lacking)
    }
}
