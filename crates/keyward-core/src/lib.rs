//! keyward's pure domain.
//!
//! Owns the rules every other crate applies: the catalog and its validation,
//! scope closure, the route table, [`Catalog::authorize`], the key format,
//! digests, grant rules and audit chain links.
//!
//! Deliberately has no IO, no clock and no RNG (callers pass `now` and random
//! bytes) and depends on no runtime, database or HTTP crate, so every rule is
//! testable in microseconds and cannot drift between the CLI and the server.

pub mod audit;
pub mod catalog;
pub mod decision;
pub mod digest;
pub mod duration;
#[doc(hidden)]
pub mod fuzzing;
pub mod grant;
pub mod key;
pub mod limits;
pub mod path;
pub mod policy;
pub mod route;
pub mod scope;
pub mod suggest;
pub mod text;
pub mod webhook;

pub use catalog::{
    Catalog, CatalogError, CatalogErrors, Location, PermissionSet, Preset, Route, Scope,
};
pub use decision::{AuthFailure, Decision, KeyAccess, Outcome, check_key_state};
pub use digest::{Digester, KeyDigest};
pub use duration::{DurationError, parse_duration_ms};
pub use grant::{GrantErrors, GrantProblem, GrantRequest, ResolvedGrants, check_no_escalation};
pub use key::{Environment, KeyFormatError, SecretKey};
pub use scope::{ScopeId, ScopeSet, ScopeStatus};
