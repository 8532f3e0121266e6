//! The edges where time and randomness enter keyward.
//!
//! Everything else takes `now` and random bytes as parameters; these two
//! traits are how the app layer gets them, so tests can move the clock and
//! fix the bytes. The real implementations are the only code allowed to read
//! the system clock and the OS RNG (see `clippy.toml`).

use std::sync::atomic::{AtomicI64, Ordering};

/// Current time in unix milliseconds.
pub trait Clock: Send + Sync + 'static {
    /// Now, in unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// Fills buffers with cryptographically secure random bytes.
pub trait Rng: Send + Sync + 'static {
    /// Fills `buf`.
    ///
    /// # Errors
    /// When the OS cannot provide randomness; callers must not fall back.
    fn fill(&self, buf: &mut [u8]) -> Result<(), RngError>;
}

/// The OS refused to provide random bytes.
#[derive(Debug, thiserror::Error)]
#[error("the operating system could not provide random bytes: {0}")]
pub struct RngError(pub String);

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[expect(
        clippy::disallowed_methods,
        reason = "the one edge that reads the system clock"
    )]
    fn now_ms(&self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
    }
}

/// The OS CSPRNG.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsRng;

impl Rng for OsRng {
    #[expect(
        clippy::disallowed_methods,
        reason = "the one edge that reads the OS RNG"
    )]
    fn fill(&self, buf: &mut [u8]) -> Result<(), RngError> {
        getrandom::fill(buf).map_err(|e| RngError(e.to_string()))
    }
}

/// A clock tests can set and move.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock reading `ms`.
    pub fn new(ms: i64) -> Self {
        ManualClock(AtomicI64::new(ms))
    }
    /// Moves the clock forward.
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// How keys are digested in this deployment: HMAC-SHA-256 under
/// `KEYWARD_DIGEST_SECRET` when it is set (even empty: keys stored under
/// it must stay found), plain SHA-256 otherwise. Every process sharing a
/// database (the binary, an embedded verifier) reads it here, so they
/// agree.
pub fn digester_from_env() -> keyward_core::Digester {
    match std::env::var("KEYWARD_DIGEST_SECRET") {
        Ok(secret) => keyward_core::Digester::hmac(secret.as_bytes()),
        Err(_) => keyward_core::Digester::sha256(),
    }
}

/// A short random id for a node (a server, or an embedded verifier):
/// request ids are `<node>-<counter>`, and it is what the other nodes see
/// sharing limits.
///
/// # Errors
/// When the OS cannot provide randomness.
pub fn node_id(rng: &dyn Rng) -> Result<String, RngError> {
    loop {
        let mut bytes = [0u8; 16];
        rng.fill(&mut bytes)?;
        if let Some(id) = keyward_core::key::base62_from_random(&bytes, 6) {
            return Ok(id);
        }
    }
}
