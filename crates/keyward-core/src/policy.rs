//! An organization's key policy (SPEC §10): how long keys may live, when an
//! unused key is flagged and then revoked, when expiry is warned of, and
//! what a leak report does. The rules of a valid policy live here, once,
//! for the admin API, the CLI and the console alike.

use crate::duration::parse_duration_ms;
use serde::{Deserialize, Serialize};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// The shortest and longest key lifetime a policy may set.
pub const LIFETIME_RANGE_MS: (i64, i64) = (HOUR_MS, 10 * 365 * DAY_MS);
/// The shortest and longest idle time before an unused key is flagged (and
/// the bounds of revoking it).
pub const UNUSED_RANGE_MS: (i64, i64) = (DAY_MS, 10 * 365 * DAY_MS);
/// The bounds of one expiry warning.
pub const WARNING_RANGE_MS: (i64, i64) = (HOUR_MS, 365 * DAY_MS);
/// Expiry warnings a policy may list.
pub const MAX_WARNINGS: usize = 5;

/// What a leaked-key report does to the key (SPEC §11).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLeak {
    /// Revoke it at once (the default).
    #[default]
    Revoke,
    /// Flag it and notify, leaving it working.
    Flag,
}

impl OnLeak {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            OnLeak::Revoke => "revoke",
            OnLeak::Flag => "flag",
        }
    }
}

/// A policy as written (`PUT /v1/policy`, `keyward policy set`), durations
/// in the operator's own spelling, which is what is stored and shown back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyText {
    /// Creation without expiry gets this expiry; a longer one is refused.
    #[serde(default)]
    pub max_key_lifetime: Option<String>,
    /// Keys unused this long are flagged `unused`.
    #[serde(default)]
    pub flag_unused_after: Option<String>,
    /// Keys unused this long are revoked (longer than the flag).
    #[serde(default)]
    pub revoke_unused_after: Option<String>,
    /// How long before expiry `key.expiring` is sent, once each.
    #[serde(default)]
    pub expiry_warning: Vec<String>,
    /// What a leak report does.
    #[serde(default)]
    pub on_leak: OnLeak,
}

/// A checked policy, durations in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// See [`PolicyText::max_key_lifetime`].
    pub max_key_lifetime_ms: Option<i64>,
    /// See [`PolicyText::flag_unused_after`].
    pub flag_unused_after_ms: Option<i64>,
    /// See [`PolicyText::revoke_unused_after`].
    pub revoke_unused_after_ms: Option<i64>,
    /// Longest first, no two alike.
    pub expiry_warning_ms: Vec<i64>,
    /// See [`PolicyText::on_leak`].
    pub on_leak: OnLeak,
}

/// One thing wrong with a policy: the field, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyProblem {
    /// The field, as written on the wire.
    pub field: &'static str,
    /// What is wrong, in words.
    pub message: String,
}

impl PolicyText {
    /// Checks every field; all problems at once, each naming its field.
    ///
    /// # Errors
    /// Every [`PolicyProblem`] found.
    pub fn check(&self) -> Result<Policy, Vec<PolicyProblem>> {
        let mut problems = Vec::new();
        let mut duration = |field: &'static str, text: &Option<String>, range: (i64, i64)| {
            let text = text.as_deref()?;
            match within(text, range) {
                Ok(ms) => Some(ms),
                Err(message) => {
                    problems.push(PolicyProblem { field, message });
                    None
                }
            }
        };
        let lifetime = duration(
            "max_key_lifetime",
            &self.max_key_lifetime,
            LIFETIME_RANGE_MS,
        );
        let flag = duration(
            "flag_unused_after",
            &self.flag_unused_after,
            UNUSED_RANGE_MS,
        );
        let revoke = duration(
            "revoke_unused_after",
            &self.revoke_unused_after,
            UNUSED_RANGE_MS,
        );
        match (self.flag_unused_after.is_some(), flag, revoke) {
            (false, _, Some(_)) => problems.push(PolicyProblem {
                field: "revoke_unused_after",
                message: "needs `flag_unused_after`: a key is flagged before it is revoked".into(),
            }),
            (_, Some(f), Some(r)) if r <= f => problems.push(PolicyProblem {
                field: "revoke_unused_after",
                message: format!(
                    "must be longer than `flag_unused_after` ({})",
                    self.flag_unused_after.as_deref().unwrap_or_default()
                ),
            }),
            _ => {}
        }
        let mut warnings = Vec::new();
        if self.expiry_warning.len() > MAX_WARNINGS {
            problems.push(PolicyProblem {
                field: "expiry_warning",
                message: format!("at most {MAX_WARNINGS} warnings"),
            });
        } else {
            for text in &self.expiry_warning {
                match within(text, WARNING_RANGE_MS) {
                    Ok(ms) if warnings.contains(&ms) => problems.push(PolicyProblem {
                        field: "expiry_warning",
                        message: format!("`{text}` is listed twice"),
                    }),
                    Ok(ms) => warnings.push(ms),
                    Err(message) => problems.push(PolicyProblem {
                        field: "expiry_warning",
                        message,
                    }),
                }
            }
        }
        warnings.sort_unstable_by(|a, b| b.cmp(a));
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Policy {
            max_key_lifetime_ms: lifetime,
            flag_unused_after_ms: flag,
            revoke_unused_after_ms: revoke,
            expiry_warning_ms: warnings,
            on_leak: self.on_leak,
        })
    }
}

/// `text` as milliseconds within `range`, or why not.
fn within(text: &str, (min, max): (i64, i64)) -> Result<i64, String> {
    let ms = parse_duration_ms(text).map_err(|e| e.to_string())?;
    if ms < min || ms > max {
        return Err(format!(
            "`{text}` is outside {} to {}",
            spell(min),
            spell(max)
        ));
    }
    Ok(ms)
}

/// A bound in words: whole days, else hours.
fn spell(ms: i64) -> String {
    if ms % DAY_MS == 0 {
        format!("{}d", ms / DAY_MS)
    } else {
        format!("{}h", ms / HOUR_MS)
    }
}

/// Why a key's expiry breaks the policy's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpiryExceedsPolicy {
    /// The latest expiry allowed (unix ms).
    pub latest: i64,
}

impl Policy {
    /// The expiry a key created at `now` gets: the one asked for, or the
    /// policy's lifetime when none is asked for.
    ///
    /// # Errors
    /// [`ExpiryExceedsPolicy`] when the asked expiry is later than the
    /// lifetime allows.
    pub fn expiry_for(
        &self,
        asked: Option<i64>,
        now: i64,
    ) -> Result<Option<i64>, ExpiryExceedsPolicy> {
        let Some(lifetime) = self.max_key_lifetime_ms else {
            return Ok(asked);
        };
        let latest = now.saturating_add(lifetime);
        match asked {
            None => Ok(Some(latest)),
            Some(at) if at > latest => Err(ExpiryExceedsPolicy { latest }),
            Some(at) => Ok(Some(at)),
        }
    }
}

#[cfg(test)]
mod tests;
