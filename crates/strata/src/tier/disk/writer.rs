//! The disk writer: fills queued for the disk tier, bounded in bytes and never waited
//! for (a full queue refuses the fill, and its owner remembers it to offer again),
//! gathered by one thread into group commits (`DiskTier::write_batch`), with the
//! tier's upkeep when idle. Jobs carry object ids, not the owner's objects: what a
//! fill means to the owner (its extent bits) it learns through [`FillListener`].

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::{DiskTier, FillBlock};
use crate::stats::{self, Stats};
use rustc_hash::FxHashMap;

use crate::sync::{Mutex, RwLock};
use crate::tier::BlockKey;

/// Most bytes one group commit gathers.
pub const FILL_BATCH_BYTES: u64 = 8 << 20;

/// Consecutive blocks of one object version, for the disk tier.
pub struct FillJob {
    pub id: u64,
    pub first: u64,
    pub blocks: Vec<Bytes>,
}

impl FillJob {
    pub fn bytes(&self) -> u64 {
        self.blocks.iter().map(|b| b.len() as u64).sum()
    }
}

/// What the writer tells the queue's owner.
pub trait FillListener: Send + Sync {
    /// A job is done: `done[i]` says whether its block `first + i` is on disk now
    /// (false: refused, failed, or its object dropped meanwhile).
    fn filled(&self, job: &FillJob, done: &[bool]);
    /// After each commit (`idle` false), and every 100 ms while there is nothing to
    /// write (`idle` true): the owner's upkeep.
    fn tick(&self, idle: bool);
}

pub struct FillQueue {
    tx: RwLock<Option<Sender<FillJob>>>,
    /// Blocks queued and not yet committed, served meanwhile (RAM may have let
    /// them go).
    on_way: Mutex<FxHashMap<BlockKey, Bytes>>,
    max_bytes: u64,
    commit_interval: Duration,
    stats: Arc<Stats>,
}

impl FillQueue {
    /// A queue of at most `max_bytes` waiting; the writer gathers fills for up to
    /// `commit_interval` before a commit (a full batch commits at once).
    pub fn new(max_bytes: u64, commit_interval: Duration, stats: Arc<Stats>) -> Self {
        Self {
            tx: RwLock::new(None),
            on_way: Mutex::new(FxHashMap::default()),
            max_bytes,
            commit_interval,
            stats,
        }
    }

    /// Opens the queue; the writer thread runs [`FillQueue::run`] on what it returns.
    pub fn open(&self) -> Receiver<FillJob> {
        let (tx, rx) = crossbeam_channel::unbounded();
        *self.tx.write() = Some(tx);
        rx
    }

    /// Closes the queue: the writer finishes what is queued and returns.
    pub fn close(&self) {
        self.tx.write().take();
    }

    pub fn is_open(&self) -> bool {
        self.tx.read().is_some()
    }

    /// Queues a job, or gives it back when the queue is full or closed (counted as
    /// dropped: the caller decides what to remember of it).
    pub fn queue(&self, job: FillJob) -> Result<(), FillJob> {
        let bytes = job.bytes();
        let n = job.blocks.len() as u64;
        let inflight = &self.stats.inflight_fill_bytes;
        let tx = self.tx.read().clone();
        let r = match tx {
            Some(tx) if inflight.load(Relaxed) + bytes <= self.max_bytes => {
                let now = inflight.fetch_add(bytes, Relaxed) + bytes;
                self.stats.inflight_fill_peak.fetch_max(now, Relaxed);
                self.hold(&job, true);
                tx.send(job).map_err(|e| {
                    let job = e.into_inner();
                    self.hold(&job, false);
                    inflight.fetch_sub(bytes, Relaxed);
                    job
                })
            }
            _ => Err(job),
        };
        match &r {
            Ok(()) => stats::add(&self.stats.fills_queued, n),
            Err(_) => stats::add(&self.stats.fills_dropped, n),
        }
        r
    }

    /// Marks a job's blocks as on their way (or no longer).
    fn hold(&self, job: &FillJob, on: bool) {
        let mut m = self.on_way.lock();
        for (j, b) in job.blocks.iter().enumerate() {
            let key = BlockKey {
                obj: job.id,
                blk: job.first + j as u64,
            };
            if on {
                m.insert(key, b.clone());
            } else {
                m.remove(&key);
            }
        }
    }

    /// A block queued for the disk and not yet committed.
    pub fn on_way(&self, key: &BlockKey) -> Option<Bytes> {
        self.on_way.lock().get(key).cloned()
    }

    /// Stops serving a block queued for the disk (its bytes changed since; the fill
    /// has landed, or is refused, by then).
    pub fn forget(&self, key: &BlockKey) {
        self.on_way.lock().remove(key);
    }

    /// True while a block is queued for the disk and not yet committed.
    pub fn holds(&self, key: &BlockKey) -> bool {
        self.on_way.lock().contains_key(key)
    }

    /// Bytes the queue can still take.
    pub fn room(&self) -> u64 {
        let inflight = self.stats.inflight_fill_bytes.load(Relaxed);
        self.max_bytes.saturating_sub(inflight)
    }

    /// The writer: batches queued fills into group commits until the queue is closed
    /// and empty; when idle, lets the disk tier do its upkeep.
    pub fn run(&self, disk: &DiskTier, rx: Receiver<FillJob>, l: &dyn FillListener) {
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(job) => {
                    let deadline = Instant::now() + self.commit_interval;
                    let mut bytes = job.bytes();
                    let mut batch = vec![job];
                    let mut closed = false;
                    while bytes < FILL_BATCH_BYTES {
                        let wait = deadline.saturating_duration_since(Instant::now());
                        match rx.recv_timeout(wait) {
                            Ok(j) => {
                                bytes += j.bytes();
                                batch.push(j);
                            }
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => {
                                closed = true;
                                break;
                            }
                        }
                    }
                    self.commit(disk, batch, l);
                    l.tick(false);
                    if closed {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    l.tick(true);
                    while disk.maintain() && rx.is_empty() {}
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    /// One group commit of a batch; blocks of objects dropped meanwhile are refused
    /// by the tier (it no longer knows them).
    fn commit(&self, disk: &DiskTier, batch: Vec<FillJob>, l: &dyn FillListener) {
        let fills: Vec<FillBlock> = batch
            .iter()
            .flat_map(|job| {
                job.blocks.iter().enumerate().map(|(j, b)| FillBlock {
                    key: BlockKey {
                        obj: job.id,
                        blk: job.first + j as u64,
                    },
                    data: b.clone(),
                })
            })
            .collect();
        let done = disk.write_batch(&fills);
        let mut k = 0;
        for job in &batch {
            let n = job.blocks.len();
            // The owner marks them on disk first, so they are never in neither place.
            l.filled(job, &done[k..k + n]);
            self.hold(job, false);
            k += n;
            self.stats
                .inflight_fill_bytes
                .fetch_sub(job.bytes(), Relaxed);
        }
    }
}
