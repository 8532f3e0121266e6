//! The app layer's one error type. The HTTP layer maps each variant once to
//! a status and `code`; the CLI maps it to a message and exit code.

use keyward_core::{CatalogErrors, GrantErrors};
use keyward_store::StoreError;
use thiserror::Error;

/// Why a use case refused or failed. Messages are product text: lowercase,
/// specific, user input in backticks.
#[derive(Debug, Error)]
pub enum AppError {
    /// 422 `VALIDATION_FAILED`: a field is invalid.
    #[error("{field}: {message}")]
    Validation {
        /// The offending field, e.g. `name` or `limits[1].per`.
        field: std::borrow::Cow<'static, str>,
        /// What is wrong with it.
        message: String,
    },
    /// 422 `VALIDATION_FAILED`: unknown or unavailable grants.
    #[error("{0}")]
    Grants(GrantErrors),
    /// 422 `BROAD_ACCESS_UNACKNOWLEDGED`: more than 10 write-capable sets.
    #[error(
        "broad access not acknowledged: {} write-capable permission sets selected ({}); more than 10 needs explicit acknowledgement",
        .sets.len(), .sets.join(", ")
    )]
    BroadAccessUnacknowledged {
        /// The write-capable sets selected.
        sets: Vec<String>,
    },
    /// 403 `FORBIDDEN`: the actor would grant scopes it does not hold.
    #[error("you cannot grant scopes you do not hold: {}", .lacking.join(", "))]
    Escalation {
        /// The scopes the actor lacks.
        lacking: Vec<String>,
    },
    /// 422 `ROLL_WOULD_BROADEN`: a narrowing roll names grants whose
    /// scopes the old key does not hold.
    #[error("the new key would hold scopes the old one does not: {}", .extra.join(", "))]
    RollWouldBroaden {
        /// The scopes beyond the old key's.
        extra: Vec<String>,
    },
    /// 422 `VALIDATION_FAILED`: a policy with bad fields, each named.
    #[error("{}", .0.iter().map(|p| format!("{}: {}", p.field, p.message)).collect::<Vec<_>>().join("; "))]
    Policy(Vec<keyward_core::policy::PolicyProblem>),
    /// 422 `EXPIRY_EXCEEDS_POLICY`: a key asked to live longer than the
    /// organization's `max_key_lifetime`.
    #[error("expires_at: the organization's policy lets a key live at most {lifetime}, so it must expire by {}", crate::views::human_time(Some(*.latest)))]
    ExpiryExceedsPolicy {
        /// The latest expiry allowed (unix ms).
        latest: i64,
        /// The policy's `max_key_lifetime`, as written.
        lifetime: String,
    },
    /// 404 `NOT_FOUND`.
    #[error("{what} `{id}` not found")]
    NotFound {
        /// `key`, `organization`, …
        what: &'static str,
        /// The id or slug looked for.
        id: String,
    },
    /// 401: the email, password or organization is wrong (which one is
    /// audited, never told).
    #[error("the email or password is not right")]
    SignInFailed,
    /// 429: too many failed sign-ins for this user or from this address.
    #[error("too many failed sign-ins: try again in {} minutes", .retry_after_s / 60)]
    Throttled {
        /// Seconds until the window has passed.
        retry_after_s: i64,
        /// The record of this refusal, for the caller to count rather than
        /// chain: a throttled attempt costs the client nothing, so one
        /// chained record each would let anyone grow the log at will.
        record: Option<Box<keyward_core::audit::AuditEntry>>,
    },
    /// 503 `BUSY` with `Retry-After`: every password-hashing slot is taken
    /// and the short queue for them is full ([`crate::hashing`]).
    #[error("too many sign-ins at once: try again in {retry_after_s} seconds")]
    Busy {
        /// Seconds to wait before trying again.
        retry_after_s: i64,
    },
    /// 409 `CONFLICT`: the action contradicts current state.
    #[error("{0}")]
    Conflict(String),
    /// The catalog is invalid (server refuses to start, CLI prints all).
    #[error("{0}")]
    Catalog(CatalogErrors),
    /// 500: storage failed; details are logged, not shown to API clients.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// 500: no randomness.
    #[error("{0}")]
    Rng(#[from] crate::env::RngError),
}

impl AppError {
    pub(crate) fn validation(
        field: impl Into<std::borrow::Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        AppError::Validation {
            field: field.into(),
            message: message.into(),
        }
    }
}
