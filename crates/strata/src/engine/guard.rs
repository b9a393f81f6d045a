//! Every origin request goes through here: run on a pool of worker threads with a
//! deadline, so a hung origin (a hard NFS mount, a frozen sshfs connection) can never
//! hold the threads that serve what is cached; and a circuit breaker, so that while
//! the origin is unreachable nobody waits for it more than once per backoff period.

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

type Job = Box<dyn FnOnce() + Send>;

/// One origin request for [`OriginGuard::call_all`].
pub(crate) type Call<T> = Box<dyn FnOnce() -> io::Result<T> + Send>;

pub use crate::origin::unreachable;

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

    /// Runs several origin requests on the pool, at most `width` at a time, all under
    /// one deadline; the answers come back in the order of `calls`. Listing a cold
    /// directory asks for every entry this way: no thread is spawned and each request
    /// costs one hand-off, where a helper thread per request cost two.
    pub fn call_all<T: Send + 'static>(
        &self,
        calls: Vec<Call<T>>,
        width: usize,
    ) -> Vec<io::Result<T>> {
        let (tx, timeout) = match (&self.tx, self.timeout) {
            (Some(tx), Some(timeout)) if calls.len() > 1 => (tx, timeout),
            (None, _) if calls.len() > 1 && width > 1 => return self.call_all_inline(calls, width),
            _ => return calls.into_iter().map(|f| self.call(f)).collect(),
        };
        let deadline = Instant::now() + timeout;
        let n = calls.len();
        let (rtx, rrx) = crossbeam_channel::bounded::<(usize, io::Result<T>)>(n);
        let mut slots: Vec<Option<io::Result<T>>> = (0..n).map(|_| None).collect();
        let mut todo = calls.into_iter().enumerate();
        // Hands the next request to the pool; false when none is left.
        let mut send_next = |slots: &mut Vec<Option<io::Result<T>>>| {
            for (i, f) in todo.by_ref() {
                let rtx = rtx.clone();
                let job: Job = Box::new(move || {
                    let _ = rtx.send((i, f()));
                });
                if tx.send(job).is_ok() {
                    return true;
                }
                slots[i] = Some(Err(io::Error::other("origin worker pool stopped")));
            }
            false
        };
        let mut in_flight = 0;
        while in_flight < width.max(1) && send_next(&mut slots) {
            in_flight += 1;
        }
        while in_flight > 0 {
            match rrx.recv_deadline(deadline) {
                Ok((i, r)) => {
                    self.note(&r);
                    slots[i] = Some(r);
                    in_flight -= 1;
                    if send_next(&mut slots) {
                        in_flight += 1;
                    }
                }
                // Past the deadline: what has not answered times out, and what was
                // never handed out is not asked.
                Err(_) => break,
            }
        }
        if slots.iter().any(Option::is_none) {
            self.note::<()>(&Err(io::Error::from_raw_os_error(110)));
        }
        slots
            .into_iter()
            .map(|s| s.unwrap_or_else(|| Err(io::Error::from_raw_os_error(110)))) // ETIMEDOUT
            .collect()
    }

    /// `call_all` without a pool (no deadline): on helper threads, `width` at a time.
    fn call_all_inline<T: Send + 'static>(
        &self,
        calls: Vec<Call<T>>,
        width: usize,
    ) -> Vec<io::Result<T>> {
        let n = calls.len();
        let todo = Mutex::new(calls.into_iter().enumerate());
        let done = Mutex::new(Vec::with_capacity(n));
        std::thread::scope(|s| {
            for _ in 0..width.min(n) {
                s.spawn(|| {
                    loop {
                        let next = todo.lock().unwrap_or_else(|e| e.into_inner()).next();
                        let Some((i, f)) = next else { break };
                        let r = f();
                        done.lock().unwrap_or_else(|e| e.into_inner()).push((i, r));
                    }
                });
            }
        });
        let mut done = done.into_inner().unwrap_or_else(|e| e.into_inner());
        done.sort_by_key(|(i, _)| *i);
        done.into_iter()
            .map(|(_, r)| {
                self.note(&r);
                r
            })
            .collect()
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
