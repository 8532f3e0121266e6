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
