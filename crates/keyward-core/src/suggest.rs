//! Least privilege (SPEC §9): from what a key was seen doing, the smallest
//! grant list that still allows all of it.
//!
//! The input is the required scopes of every request the key was *allowed*
//! in a window (the app reads them from usage counts by route); the answer
//! is computed from the catalog alone:
//!
//! 1. `used`: the union of those required scopes, never more than the key
//!    holds (a route that now requires more, after a catalog change, is
//!    cut to what the key has).
//! 2. A permission set the key was granted is kept by name when all of its
//!    scopes were used.
//! 3. The other used scopes, less those a kept set already implies, and less
//!    each scope implied by another of them (the minimal antichain under
//!    `implies`): the suggested scopes.
//!
//! So the suggestion allows every observed request (its closure contains
//! `used`) and never holds what the key does not (`used` is within the
//! key's effective scopes, which are closed under `implies`). A legacy key
//! is suggested the scoped key that would replace it: the scopes it used.

use crate::{Catalog, ScopeSet};

/// What to do with a key, judged from its use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The suggestion holds less than the key: a narrowing roll would take
    /// something away (for a legacy key, always).
    Narrow,
    /// The suggestion holds exactly what the key holds.
    AlreadyMinimal,
    /// No request of the key was allowed in the window.
    Unused,
}

impl Verdict {
    /// As the API spells it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Narrow => "narrow",
            Verdict::AlreadyMinimal => "already_minimal",
            Verdict::Unused => "unused",
        }
    }
}

/// The least-privilege suggestion for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suggestion {
    /// Scopes the allowed requests required.
    pub used: ScopeSet,
    /// Suggested scopes, outside the kept permission sets.
    pub scopes: ScopeSet,
    /// Permission sets kept by name, in the order the key holds them.
    pub permission_sets: Vec<String>,
    /// What the suggestion holds (the closure of the above).
    pub effective: ScopeSet,
    /// The key's grants the suggestion does not carry: its scopes whose own
    /// privilege was never used, and the permission sets not kept; for a
    /// legacy key, every scope it holds and never used.
    pub unused_grants: Vec<String>,
    /// What to do.
    pub verdict: Verdict,
}

impl Catalog {
    /// The suggestion for a key granted `scopes` and permission `sets` (or a
    /// legacy key), whose allowed requests in the window required
    /// `observed` (one set per request, or per route: repeats change
    /// nothing).
    pub fn suggest<'a>(
        &self,
        legacy: bool,
        scopes: &'a [String],
        sets: &'a [String],
        observed: impl IntoIterator<Item = ScopeSet>,
    ) -> Suggestion {
        let (_, holds, _) = self.key_holdings(
            legacy,
            scopes.iter().map(String::as_str),
            sets.iter().map(String::as_str),
        );
        let mut used = ScopeSet::EMPTY;
        let mut seen = false;
        for required in observed {
            seen = true;
            // Within what the key holds: never suggest more.
            used = used.union(&required.difference(&required.difference(&holds)));
        }
        if !seen {
            let mut unused_grants: Vec<String> = if legacy {
                self.names(holds).into_iter().map(str::to_owned).collect()
            } else {
                scopes.to_vec()
            };
            if !legacy {
                unused_grants.extend(sets.iter().cloned());
            }
            return Suggestion {
                used,
                scopes: ScopeSet::EMPTY,
                permission_sets: Vec::new(),
                effective: ScopeSet::EMPTY,
                unused_grants,
                verdict: Verdict::Unused,
            };
        }
        let mut kept = Vec::new();
        let mut covered = ScopeSet::EMPTY;
        if !legacy {
            for name in sets {
                if let Some(set) = self.permission_set(name)
                    && set.scope_set().is_subset(&used)
                    && !kept.contains(name)
                {
                    kept.push(name.clone());
                    covered = covered.union(&self.closure(set.scope_set()));
                }
            }
        }
        let rest = used.difference(&covered);
        let mut chosen = ScopeSet::EMPTY;
        for s in rest.iter() {
            // Left out when another remaining scope implies it (of two that
            // imply each other, the first in catalog order stays).
            let implied = rest.iter().any(|t| {
                t != s
                    && self.scope(t).closure().contains(s)
                    && (!self.scope(s).closure().contains(t) || t.index() < s.index())
            });
            if !implied {
                chosen.insert(s);
            }
        }
        let effective = self.closure(chosen).union(&covered);
        let unused_grants = if legacy {
            self.names(holds.difference(&effective))
                .into_iter()
                .map(str::to_owned)
                .collect()
        } else {
            scopes
                .iter()
                .filter(|name| self.scope_id(name).is_none_or(|id| !effective.contains(id)))
                .chain(sets.iter().filter(|name| !kept.contains(name)))
                .cloned()
                .collect()
        };
        let verdict = if !legacy && effective == holds {
            Verdict::AlreadyMinimal
        } else {
            Verdict::Narrow
        };
        Suggestion {
            used,
            scopes: chosen,
            permission_sets: kept,
            effective,
            unused_grants,
            verdict,
        }
    }
}

#[cfg(test)]
mod tests;
