//! A fixed number of password-hashing slots, shared by every sign-in and
//! password change of a process.
//!
//! argon2id at the OWASP minimum costs about 19 MiB and 40 ms of one core per
//! hash. Without a bound, a burst of sign-ins with made-up emails runs one
//! hash per request on tokio's blocking pool (up to 512 threads): a review
//! took a server from 13 MB to 1.9 GB with 100 of them. Here at most
//! [`slots`](HashSlots::new) hashes run at once (about the core count), at
//! most [`MAX_WAITING`] more wait for [`MAX_WAIT`]; anyone beyond is refused
//! at once with [`AppError::Busy`], before any database work, so memory
//! stays bounded whatever the burst.
//!
//! The hashes run on dedicated threads, one per slot, each verifying in one
//! argon2 buffer of its own that it keeps and reuses ([`verify_password`]).
//! Letting argon2 allocate its 19 MiB per hash, as `password_auth` does,
//! leaves it resident: the first such buffer freed raises glibc's dynamic
//! mmap threshold above its size, and every later one comes from, and stays
//! in, a malloc arena (measured: resident memory grew by 19.5 MB with each
//! of the first eleven sign-ins, to 239 MB, even on two threads).

use crate::AppError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Callers allowed to wait for a slot, beyond those hashing.
pub const MAX_WAITING: usize = 16;
/// Longest wait for a slot.
pub const MAX_WAIT: Duration = Duration::from_secs(2);
/// What a refused caller is told to wait, in seconds.
pub const RETRY_AFTER_S: i64 = 1;

type Job = Box<dyn FnOnce() + Send>;

/// The slots.
pub struct HashSlots {
    /// To the hashing threads; they end when it is dropped.
    jobs: Mutex<mpsc::Sender<Job>>,
    permits: Arc<Semaphore>,
    /// Callers hashing or waiting to.
    admitted: AtomicUsize,
    limit: usize,
}

/// One caller's right to hash: held from before the first database read of
/// a sign-in to the end of its one hash.
pub struct HashSlot<'a> {
    _permit: OwnedSemaphorePermit,
    slots: &'a HashSlots,
}

impl HashSlots {
    /// `slots` concurrent hashes (at least one).
    pub fn new(slots: usize) -> Self {
        let slots = slots.max(1);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..slots {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("keyward-hash-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only to take the next job.
                        let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        match job {
                            // A panicking job drops its answer (its caller
                            // sees `None`); the thread stays for the next.
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                            }
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password-hashing thread");
            }
        }
        HashSlots {
            jobs: Mutex::new(tx),
            permits: Arc::new(Semaphore::new(slots)),
            admitted: AtomicUsize::new(0),
            limit: slots + MAX_WAITING,
        }
    }

    /// One slot per core this process may use.
    pub fn per_core() -> Self {
        Self::new(std::thread::available_parallelism().map_or(2, usize::from))
    }

    /// Waits (briefly, in a short queue) for a slot.
    ///
    /// # Errors
    /// [`AppError::Busy`] when the queue is full or the wait too long.
    pub async fn reserve(&self) -> Result<HashSlot<'_>, AppError> {
        let busy = || AppError::Busy {
            retry_after_s: RETRY_AFTER_S,
        };
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(busy());
        }
        let acquired = tokio::time::timeout(MAX_WAIT, self.permits.clone().acquire_owned()).await;
        match acquired {
            Ok(Ok(permit)) => Ok(HashSlot {
                _permit: permit,
                slots: self,
            }),
            _ => {
                self.admitted.fetch_sub(1, Ordering::AcqRel);
                Err(busy())
            }
        }
    }
}

impl HashSlot<'_> {
    /// Runs one hash (or verification) on a hashing thread, then frees the
    /// slot. `None` if it panicked or no hashing thread is running.
    pub async fn run<T: Send + 'static>(self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(f());
        });
        self.slots
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(job)
            .ok()?;
        result.await.ok()
    }
}

impl Drop for HashSlot<'_> {
    fn drop(&mut self) {
        // The permit is released when its field drops, right after this.
        self.slots.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Largest argon2 memory a stored hash may ask for (the OWASP minimum is
/// 19 MiB); a hash asking more is treated as not matching.
const MAX_HASH_MEMORY_BLOCKS: usize = 256 * 1024;

thread_local! {
    /// This hashing thread's argon2 memory, grown once and reused.
    static MEMORY: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether `password` matches the PHC-format argon2 hash `phc` (as
/// `password_auth::verify_password` decides), computed in this thread's
/// reused memory. Run it on a hashing thread ([`HashSlot::run`]).
pub fn verify_password(password: &[u8], phc: &str) -> bool {
    use argon2::password_hash::PasswordHash;
    use subtle::ConstantTimeEq;
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        argon2::Algorithm::try_from(hash.algorithm),
        argon2::Params::try_from(&hash),
    ) else {
        return false;
    };
    let version = match hash.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let blocks = params.block_count();
    if blocks > MAX_HASH_MEMORY_BLOCKS {
        return false;
    }
    let mut out = vec![0u8; expected.len()];
    let hasher = argon2::Argon2::new(algorithm, version, params);
    let computed = MEMORY.with_borrow_mut(|memory| {
        if memory.len() < blocks {
            memory.resize(blocks, argon2::Block::default());
        }
        let slice = memory.get_mut(..blocks).unwrap_or_default();
        hasher.hash_password_into_with_memory(password, salt, &mut out, slice)
    });
    computed.is_ok() && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;

    /// Polls `f` once: registers a waiter without waiting.
    async fn poll_once<F: Future>(f: Pin<&mut F>) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| {
            Poll::Ready(match f.as_mut().poll(cx) {
                Poll::Ready(v) => Some(v),
                Poll::Pending => None,
            })
        })
        .await
    }

    #[test]
    fn verification_agrees_with_password_auth() {
        let hash = password_auth::generate_hash("correct horse");
        assert!(verify_password(b"correct horse", &hash));
        assert!(password_auth::verify_password("correct horse", &hash).is_ok());
        for wrong in ["correct hors", "", "correct horse ", "Correct horse"] {
            assert!(!verify_password(wrong.as_bytes(), &hash), "{wrong}");
        }
        for garbage in [
            "",
            "$argon2id$",
            "not a hash",
            "$argon2id$v=19$m=99999999,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
        ] {
            assert!(!verify_password(b"x", garbage), "{garbage}");
        }
        // The buffer is reused: a second verification allocates no more.
        let before = MEMORY.with_borrow(Vec::capacity);
        assert!(verify_password(b"correct horse", &hash));
        assert_eq!(MEMORY.with_borrow(Vec::capacity), before);
    }

    #[tokio::test]
    async fn beyond_slots_and_queue_callers_are_refused_at_once() {
        let slots = HashSlots::new(2);
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(slots.reserve().await.expect("a free slot"));
        }
        let mut waiters: Vec<_> = (0..MAX_WAITING)
            .map(|_| Box::pin(slots.reserve()))
            .collect();
        for w in &mut waiters {
            assert!(poll_once(w.as_mut()).await.is_none(), "slots are all held");
        }
        // Slots and queue full: the next caller is refused without waiting.
        let started = tokio::time::Instant::now();
        assert!(matches!(slots.reserve().await, Err(AppError::Busy { .. })));
        assert!(started.elapsed() < MAX_WAIT / 4);
        // A freed slot goes to the first waiter; the others give up after
        // `MAX_WAIT`, and then the queue is empty again.
        drop(held.pop());
        let mut results = Vec::new();
        for w in waiters {
            results.push(w.await);
        }
        assert!(results[0].is_ok());
        assert!(
            results[1..]
                .iter()
                .all(|r| matches!(r, Err(AppError::Busy { .. })))
        );
        drop(results);
        drop(held);
        assert_eq!(slots.admitted.load(Ordering::Acquire), 0);
        assert!(slots.reserve().await.is_ok());
    }
}
