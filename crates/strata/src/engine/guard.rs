//! Every origin request goes through here: run on a pool of worker threads with a
//! deadline, so a hung origin (a hard NFS mount, a frozen sshfs connection) can never
//! hold the threads that serve what is cached; and a circuit breaker, so that while
//! the origin is unreachable nobody waits for it more than once per backoff period.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

type Job = Box<dyn FnOnce() + Send>;

/// Errors that say "the origin could not be asked", as opposed to "the origin
/// answered: no". ETIMEDOUT is also what a call past its deadline gets. These trip
/// the circuit breaker. EIO does not: one damaged file must not make every file
/// unreadable.
pub fn unreachable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            100 // ENETDOWN
                | 101 // ENETUNREACH
                | 103 // ECONNABORTED
                | 104 // ECONNRESET
                | 107 // ENOTCONN
                | 108 // ESHUTDOWN
                | 110 // ETIMEDOUT
                | 111 // ECONNREFUSED
                | 112 // EHOSTDOWN
                | 113 // EHOSTUNREACH
        )
    )
}

pub(crate) struct OriginGuard {
    timeout: Option<Duration>,
    tx: Option<Sender<Job>>,
    epoch: Instant,
    /// While now < this (ns since epoch), the origin is considered unreachable.
    down_until: AtomicU64,
    backoff_ms: AtomicU64,
}

const MIN_BACKOFF_MS: u64 = 1000;
const MAX_BACKOFF_MS: u64 = 30_000;

impl OriginGuard {
    /// `timeout` None runs calls inline, without deadlines (for tests and origins that
    /// cannot hang).
    pub fn new(timeout: Option<Duration>, threads: usize) -> io::Result<Self> {
        let tx = match timeout {
            None => None,
            Some(_) => {
                let (tx, rx) = crossbeam_channel::unbounded::<Job>();
                for n in 0..threads.max(1) {
                    let rx: Receiver<Job> = rx.clone();
                    std::thread::Builder::new()
                        .name(format!("strata-origin-{n}"))
                        .spawn(move || {
                            for job in rx {
                                job();
                            }
                        })?;
                }
                Some(tx)
            }
        };
        Ok(Self {
            timeout,
            tx,
            epoch: Instant::now(),
            down_until: AtomicU64::new(0),
            backoff_ms: AtomicU64::new(MIN_BACKOFF_MS),
        })
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// True while the origin is known to be unreachable and not yet due for a probe.
    pub fn is_down(&self) -> bool {
        self.now_ns() < self.down_until.load(Ordering::Relaxed)
    }

    /// Runs one origin request, waiting at most the timeout. A call abandoned at its
    /// deadline keeps its worker until the origin answers; its result is dropped.
    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let r = match (&self.tx, self.timeout) {
            (Some(tx), Some(timeout)) => {
                let (rtx, rrx) = crossbeam_channel::bounded(1);
                let job: Job = Box::new(move || {
                    let _ = rtx.send(f());
                });
                if tx.send(job).is_err() {
                    return Err(io::Error::other("origin worker pool stopped"));
                }
                match rrx.recv_timeout(timeout) {
                    Ok(r) => r,
                    Err(_) => Err(io::Error::from_raw_os_error(110)), // ETIMEDOUT
                }
            }
            _ => f(),
        };
        self.note(&r);
        r
    }

    /// Updates the circuit breaker from a result.
    fn note<T>(&self, r: &io::Result<T>) {
        match r {
            Err(e) if unreachable(e) => {
                let b = self.backoff_ms.load(Ordering::Relaxed);
                self.down_until
                    .store(self.now_ns() + b * 1_000_000, Ordering::Relaxed);
                self.backoff_ms
                    .store((b * 2).min(MAX_BACKOFF_MS), Ordering::Relaxed);
            }
            Err(_) => {}
            Ok(_) => {
                if self.down_until.load(Ordering::Relaxed) != 0 {
                    self.down_until.store(0, Ordering::Relaxed);
                    self.backoff_ms.store(MIN_BACKOFF_MS, Ordering::Relaxed);
                    tracing::info!("the origin answers again");
                }
            }
        }
    }

    /// The error returned without asking while the origin is down.
    pub fn down_error() -> io::Error {
        io::Error::from_raw_os_error(107) // ENOTCONN
    }
}

/// Errors after which the version the origin last confirmed is still served: the
/// unreachable ones, and EIO (the origin could not tell us anything better).
pub fn stale_ok(e: &io::Error) -> bool {
    unreachable(e) || e.raw_os_error() == Some(5)
}
