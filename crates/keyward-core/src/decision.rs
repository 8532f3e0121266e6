//! `authorize()`: one decision value for the gateway, `/v1/verify` and
//! `keyward explain`.
//!
//! Deny is a value, not an error: a [`Decision`] carries the outcome, the
//! matched route, the required, missing, granted and effective scopes, so
//! every consumer renders the same facts. Order of checks is the contract's:
//! authentication, then route, then scopes.

use crate::catalog::Catalog;
use crate::route::RouteId;
use crate::scope::ScopeSet;

/// What the gateway knows about a key once its digest was found: enough to
/// decide without storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyAccess {
    /// Scopes as granted (direct scopes and those of granted permission sets).
    pub granted: ScopeSet,
    /// Closure of `granted` under `implies`, precomputed.
    pub effective: ScopeSet,
    /// Unix milliseconds after which the key no longer works.
    pub expires_at: Option<i64>,
    /// Set once the key is revoked.
    pub revoked_at: Option<i64>,
}

impl KeyAccess {
    /// Access computed from granted scopes.
    pub fn new(catalog: &Catalog, granted: ScopeSet) -> Self {
        KeyAccess {
            granted,
            effective: catalog.closure(granted),
            expires_at: None,
            revoked_at: None,
        }
    }
}

/// Why a request could not be authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` credential.
    Missing,
    /// Not a key: wrong shape, checksum mismatch, several credentials.
    Malformed,
    /// Well-formed but no such key.
    Unknown,
    /// Revoked.
    Revoked,
    /// Past its expiry (including the end of a roll's grace period).
    Expired,
}

impl AuthFailure {
    /// The `details.reason` of a 401.
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Unknown => "unknown",
            AuthFailure::Revoked => "revoked",
            AuthFailure::Expired => "expired",
        }
    }
}

/// The outcome of one decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Forward / answer the request.
    Allowed,
    /// 401: the credential is not a usable key.
    Unauthenticated(AuthFailure),
    /// 404: the catalog has no route for this method and path.
    NoRoute,
    /// 403: the route needs scopes the key lacks.
    MissingScopes,
}

/// The one value every consumer renders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Allowed or why not.
    pub outcome: Outcome,
    /// The matched route, once authentication passed and one matched.
    pub route: Option<RouteId>,
    /// Everything the route requires.
    pub required: ScopeSet,
    /// Required scopes the key lacks (after closure).
    pub missing: ScopeSet,
    /// Scopes granted to the key, not expanded.
    pub granted: ScopeSet,
    /// Scopes the key holds after closure.
    pub effective: ScopeSet,
}

impl Decision {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        self.outcome == Outcome::Allowed
    }

    /// HTTP status of the outcome.
    pub fn status(&self) -> u16 {
        match self.outcome {
            Outcome::Allowed => 200,
            Outcome::Unauthenticated(_) => 401,
            Outcome::NoRoute => 404,
            Outcome::MissingScopes => 403,
        }
    }

    /// Error `code` of the outcome; `None` when allowed.
    pub fn code(&self) -> Option<&'static str> {
        match self.outcome {
            Outcome::Allowed => None,
            Outcome::Unauthenticated(_) => Some("UNAUTHORIZED"),
            Outcome::NoRoute => Some("NOT_FOUND"),
            Outcome::MissingScopes => Some("FORBIDDEN"),
        }
    }

    /// A short machine reason: `allowed`, `no_route`, `missing_scopes` or the
    /// authentication failure's reason.
    pub fn reason(&self) -> &'static str {
        match self.outcome {
            Outcome::Allowed => "allowed",
            Outcome::Unauthenticated(f) => f.reason(),
            Outcome::NoRoute => "no_route",
            Outcome::MissingScopes => "missing_scopes",
        }
    }

    fn unauthenticated(failure: AuthFailure) -> Self {
        Decision {
            outcome: Outcome::Unauthenticated(failure),
            route: None,
            required: ScopeSet::EMPTY,
            missing: ScopeSet::EMPTY,
            granted: ScopeSet::EMPTY,
            effective: ScopeSet::EMPTY,
        }
    }
}

/// Authentication half: is this key usable at `now`?
///
/// # Errors
/// [`AuthFailure::Revoked`] or [`AuthFailure::Expired`].
pub fn check_key_state(key: &KeyAccess, now_ms: i64) -> Result<(), AuthFailure> {
    if key.revoked_at.is_some() {
        return Err(AuthFailure::Revoked);
    }
    if key.expires_at.is_some_and(|at| at <= now_ms) {
        return Err(AuthFailure::Expired);
    }
    Ok(())
}

impl Catalog {
    /// Decides one gateway request. `path` is normalised and has the gateway
    /// prefix removed. Never fails: every refusal is a [`Decision`].
    pub fn authorize(
        &self,
        key: Result<&KeyAccess, AuthFailure>,
        now_ms: i64,
        method: &str,
        path: &str,
    ) -> Decision {
        let key = match key.and_then(|k| check_key_state(k, now_ms).map(|()| k)) {
            Ok(k) => k,
            Err(f) => return Decision::unauthenticated(f),
        };
        let Some(route) = self.match_route(method, path) else {
            return Decision {
                outcome: Outcome::NoRoute,
                route: None,
                required: ScopeSet::EMPTY,
                missing: ScopeSet::EMPTY,
                granted: key.granted,
                effective: key.effective,
            };
        };
        let required = self.route(route).required();
        self.decide_scopes(key, required, Some(route))
    }

    /// Decides whether `key` holds every scope in `required`, for
    /// `/v1/verify` with a scope list and for keyward's own admin API.
    pub fn authorize_scopes(
        &self,
        key: Result<&KeyAccess, AuthFailure>,
        now_ms: i64,
        required: ScopeSet,
    ) -> Decision {
        match key.and_then(|k| check_key_state(k, now_ms).map(|()| k)) {
            Ok(k) => self.decide_scopes(k, required, None),
            Err(f) => Decision::unauthenticated(f),
        }
    }

    fn decide_scopes(
        &self,
        key: &KeyAccess,
        required: ScopeSet,
        route: Option<RouteId>,
    ) -> Decision {
        let missing = required.difference(&key.effective);
        Decision {
            outcome: if missing.is_empty() {
                Outcome::Allowed
            } else {
                Outcome::MissingScopes
            },
            route,
            required,
            missing,
            granted: key.granted,
            effective: key.effective,
        }
    }
}
