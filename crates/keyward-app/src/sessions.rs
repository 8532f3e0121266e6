//! Console sign-in: sessions, throttling, password changes, form nonces.
//!
//! A session is a random token in an `HttpOnly` cookie; the database keeps
//! only its SHA-256, so sessions work across nodes and a copy of the
//! database signs nobody in. Failed attempts are counted in the database
//! too (per user and per client address), so throttling holds across nodes.
//! Every sign-in, failure and sign-out is audited.

use crate::audit::Refusal;
use crate::hashing::HashSlot;
use crate::{Actor, App, AppError};
use keyward_core::Digester;
use keyward_store::{Org, SessionRecord, Store, UserRecord};
use serde_json::json;

/// A session unused this long ends.
pub const SESSION_IDLE_MS: i64 = 30 * 60 * 1000;
/// No session lives longer than this, active or not.
pub const SESSION_MAX_MS: i64 = 12 * 60 * 60 * 1000;
/// Window in which failed sign-ins are counted.
pub const THROTTLE_WINDOW_MS: i64 = 15 * 60 * 1000;
/// Failed sign-ins for one user within the window before refusing.
pub const MAX_FAILURES_PER_USER: u32 = 5;
/// Failed sign-ins from one client address within the window before refusing.
pub const MAX_FAILURES_PER_CLIENT: u32 = 20;
/// Shortest password a user may choose (NIST SP 800-63B asks at least 8).
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password accepted (argon2 input stays bounded).
pub const MAX_PASSWORD_CHARS: usize = 128;
/// Activity is written back at most this often per session.
const TOUCH_EVERY_MS: i64 = 60 * 1000;

/// A signed-in user, as a request sees them.
#[derive(Clone, Debug)]
pub struct Session {
    /// The stored session.
    pub record: SessionRecord,
    /// The user, as now.
    pub user: UserRecord,
    /// Their organization.
    pub org: Org,
}

/// What a successful sign-in hands the browser, once.
pub struct SignedIn {
    /// The cookie value. Never stored; never logged.
    pub token: String,
    /// The new session.
    pub session: Session,
}

impl std::fmt::Debug for SignedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedIn")
            .field("token", &"<redacted>")
            .field("session", &self.session)
            .finish()
    }
}

/// The stored form of a session token.
pub fn token_hash(token: &str) -> [u8; 32] {
    *Digester::sha256().digest(token).as_bytes()
}

/// A sign-in that fails for any reason reads the same to the client.
fn sign_in_failed() -> AppError {
    AppError::SignInFailed
}

impl<S: Store> App<S> {
    fn random_token(&self) -> Result<String, AppError> {
        loop {
            let mut bytes = [0u8; 64];
            self.rng.fill(&mut bytes)?;
            if let Some(s) = keyward_core::key::base62_from_random(&bytes, 32) {
                return Ok(s);
            }
        }
    }

    /// Checks a password in one of the process's hashing slots (on a
    /// blocking thread: argon2 takes tens of milliseconds of CPU, which must
    /// not stall the runtime's other tasks).
    async fn password_matches(slot: HashSlot<'_>, password: &str, hash: Option<&str>) -> bool {
        // A user without a hash (or no user) still costs one verification,
        // so timing does not tell which emails exist.
        static DUMMY: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| password_auth::generate_hash("not a password"));
        let password = password.to_owned();
        let (hash, real) = match hash {
            Some(h) => (h.to_owned(), true),
            None => (DUMMY.clone(), false),
        };
        let ok = slot
            .run(move || crate::hashing::verify_password(password.as_bytes(), &hash))
            .await
            .unwrap_or(false);
        ok && real
    }

    /// Signs a user in. Every failure is the same `SignInFailed` to the
    /// client (audited with its real reason); too many recent failures for
    /// the user or from the client address give [`AppError::Throttled`]
    /// before the password is even checked, carrying the refusal's record
    /// for the caller to count (the server counts them per client and
    /// minute) instead of chaining one each.
    ///
    /// # Errors
    /// [`AppError::SignInFailed`], [`AppError::Throttled`], storage failures.
    pub async fn sign_in(
        &self,
        org_slug: Option<&str>,
        email: &str,
        password: &str,
        client: &str,
        request_id: Option<String>,
    ) -> Result<SignedIn, AppError> {
        // Before anything else: a burst beyond the hashing slots is refused
        // here, without a database write or a hash.
        let slot = self.hash_slots.reserve().await?;
        let org = match self
            .resolve_org(org_slug.filter(|s| !s.trim().is_empty()))
            .await
        {
            Ok(o) => o,
            Err(AppError::NotFound { .. }) => {
                // As slow as a wrong password: timing must not tell which
                // organizations exist.
                Self::password_matches(slot, password, None).await;
                return Err(sign_in_failed());
            }
            Err(e) => return Err(e),
        };
        // Whatever was typed, what is recorded stays bounded, and a key
        // typed into the email field is redacted before lowercasing (a
        // lowercased key no longer checksums, yet its case is guessable).
        let email: String =
            keyward_core::text::redact_secrets(email.trim(), self.catalog().key_prefix())
                .to_lowercase()
                .chars()
                .take(crate::people::MAX_EMAIL_CHARS)
                .collect();
        let now = self.now();
        let actor = Actor {
            id: format!("anonymous:{email}"),
            effective: keyward_core::ScopeSet::EMPTY,
            client: Some(client.to_owned()),
            request_id,
        };
        // The attempt counts as a failure from before the password is
        // checked, so parallel guesses cannot outrun the limit.
        let attempt = self.random_token()?;
        let (by_user, by_client) = self
            .store
            .begin_sign_in(
                &attempt,
                &org.id,
                &email,
                client,
                now,
                now - THROTTLE_WINDOW_MS,
            )
            .await?;
        if by_user >= MAX_FAILURES_PER_USER || by_client >= MAX_FAILURES_PER_CLIENT {
            // Refused unchecked: not a guess, so it does not extend the wait.
            self.store.clear_sign_in_attempt(&attempt).await?;
            let mut entry = self.audit(
                &actor,
                &org,
                "console.sign_in_failed",
                None,
                json!({"email": email, "reason": "throttled"}),
            );
            entry.status = Some(429);
            return Err(AppError::Throttled {
                retry_after_s: THROTTLE_WINDOW_MS / 1000,
                record: Some(Box::new(entry)),
            });
        }
        let user = self.store.user_by_email(&org.id, &email).await?;
        let matches = Self::password_matches(
            slot,
            password,
            user.as_ref().and_then(|u| u.password_hash.as_deref()),
        )
        .await;
        let reason = match &user {
            None => Some("unknown_user"),
            Some(_) if !matches => Some("wrong_password"),
            Some(u) if u.disabled_at.is_some() => Some("disabled"),
            Some(_) => None,
        };
        let (Some(user), None) = (user, reason) else {
            let refusal = Refusal {
                action: "console.sign_in_failed",
                key_id: None,
                status: 401,
                required: Vec::new(),
                details: json!({"email": email, "reason": reason}),
                ..Refusal::default()
            };
            return Err(self.refuse(&actor, &org, refusal, sign_in_failed()).await);
        };
        self.store.clear_sign_in_attempt(&attempt).await?;
        let token = self.random_token()?;
        let record = SessionRecord {
            token_hash: token_hash(&token),
            org_id: org.id.clone(),
            user_id: user.id.clone(),
            csrf: self.random_token()?,
            created_at: now,
            last_seen_at: now,
        };
        let actor = Actor {
            id: keyward_core::audit::actor::user(&user.id),
            ..actor
        };
        let entry = self.audit(
            &actor,
            &org,
            "console.signed_in",
            None,
            json!({"email": user.email}),
        );
        self.store
            .create_session(&record, now - SESSION_IDLE_MS, now - SESSION_MAX_MS, &entry)
            .await?;
        Ok(SignedIn {
            token,
            session: Session { record, user, org },
        })
    }

    /// The live session a cookie names, if any. Idle, expired or orphaned
    /// sessions end here; activity is written back at most once a minute.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn session(&self, token: &str) -> Result<Option<Session>, AppError> {
        if token.is_empty() || token.len() > 128 {
            return Ok(None);
        }
        let hash = token_hash(token);
        let Some(record) = self.store.session(&hash).await? else {
            return Ok(None);
        };
        let now = self.now();
        let user = self.store.get_user(&record.org_id, &record.user_id).await?;
        let expired =
            now - record.last_seen_at > SESSION_IDLE_MS || now - record.created_at > SESSION_MAX_MS;
        let user = match user {
            Some(u) if !expired && u.disabled_at.is_none() => u,
            _ => {
                self.store.end_session(&hash, None).await?;
                return Ok(None);
            }
        };
        if now - record.last_seen_at > TOUCH_EVERY_MS {
            self.store.touch_session(&hash, now).await?;
        }
        let org = self.org_by_id(&record.org_id).await?;
        Ok(Some(Session { record, user, org }))
    }

    /// Ends a session (audited).
    ///
    /// # Errors
    /// Storage failures.
    pub async fn sign_out(&self, session: &Session, actor: &Actor) -> Result<(), AppError> {
        let entry = self.audit(
            actor,
            &session.org,
            "console.signed_out",
            None,
            json!({"email": session.user.email}),
        );
        self.store
            .end_session(&session.record.token_hash, Some(&entry))
            .await?;
        Ok(())
    }

    /// Replaces the signed-in user's password after checking the current
    /// one (the one-time password, at first sign-in). Audited.
    ///
    /// # Errors
    /// [`AppError::Validation`] for a wrong current password or a new one
    /// that is too short, too long or unchanged.
    pub async fn change_password(
        &self,
        session: &Session,
        actor: &Actor,
        current: &str,
        new: &str,
    ) -> Result<(), AppError> {
        let n = new.chars().count();
        if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&n) {
            return Err(AppError::validation(
                "new_password",
                format!("must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters, got {n}"),
            ));
        }
        if new == current {
            return Err(AppError::validation(
                "new_password",
                "must differ from the current password",
            ));
        }
        let slot = self.hash_slots.reserve().await?;
        if !Self::password_matches(slot, current, session.user.password_hash.as_deref()).await {
            // Someone holding a session is guessing its password: on record.
            let refusal = Refusal {
                action: "user.password_change_refused",
                key_id: None,
                status: 422,
                required: Vec::new(),
                details: json!({"user_id": session.user.id, "reason": "wrong_password"}),
                ..Refusal::default()
            };
            let error = AppError::validation("current_password", "is not the current password");
            return Err(self.refuse(actor, &session.org, refusal, error).await);
        }
        let new = new.to_owned();
        let hash = self
            .hash_slots
            .reserve()
            .await?
            .run(move || password_auth::generate_hash(new))
            .await
            .ok_or_else(|| AppError::validation("new_password", "could not be hashed"))?;
        let entry = self.audit(
            actor,
            &session.org,
            "user.password_changed",
            None,
            json!({"user_id": session.user.id, "email": session.user.email}),
        );
        self.store
            .set_password(
                &session.org.id,
                &session.user.id,
                &hash,
                false,
                Some(&entry),
                Some(&session.record.token_hash),
            )
            .await?;
        Ok(())
    }

    /// A one-use nonce for a form of this session.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn form_nonce(&self, session: &Session) -> Result<String, AppError> {
        let nonce = self.random_token()?;
        self.store
            .create_nonce(&nonce, &session.record.token_hash, self.now())
            .await?;
        Ok(nonce)
    }

    /// Uses a form nonce: `true` the first time only.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn use_form_nonce(&self, session: &Session, nonce: &str) -> Result<bool, AppError> {
        Ok(self
            .store
            .use_nonce(nonce, &session.record.token_hash, self.now())
            .await?)
    }
}
