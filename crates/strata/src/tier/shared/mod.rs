//! The shared tier: blocks kept in memcached or Redis, where every machine that
//! mounts the same origin finds what another one fetched (cleancache's tmem and
//! RAMster, on servers operators already run). Below the disk, inclusive: filled
//! from origin fetches, after the reader is answered.
//!
//! - **Keys name versions.** A block's key is a hash of the namespace (by default the
//!   origin's identity; `--shared-namespace` names it the same on machines that
//!   mount it under other paths), the path, the version's token and the block size,
//!   with the block number. Two machines agree on it when their origins agree on the
//!   token (an NFS server gives every client the same size, times and inode; sshfs
//!   renumbers inodes, so an origin whose inodes are not stable leaves the inode out).
//!   A changed file has another token, so another key: no version ever reads
//!   another's blocks, and nothing needs deleting on the servers.
//! - **Nothing from the network is trusted** (`value`): a value carries its key and
//!   a crc32c, with a secret also a keyed MAC; a value that fails is a miss, counted.
//! - **Never slower than the origin**: every request has a deadline and each server a
//!   breaker (`store`); puts go through a bounded queue on their own threads and are
//!   dropped when it is full.
//! - **One fetch for the fleet**: before fetching a run from the origin a machine
//!   takes a short lease on it in the shared tier (memcached `add`, Redis
//!   `SET NX PX`); a machine that finds the lease taken waits briefly for the
//!   holder's put and fetches itself if it does not come.

mod store;
mod value;

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use rustc_hash::{FxHashMap, FxHashSet};

use super::{BlockKey, Refusal, Tier};
use crate::origin::Token;
use crate::stats::{self, Stats};
use crate::sync::Mutex;
pub use store::Store;

/// The shared tier's settings (`Config::shared`).
#[derive(Clone, Debug)]
pub struct SharedConfig {
    /// `memcached://host:port`, `redis://host:port` or `redis+cluster://host:port`.
    pub urls: Vec<String>,
    /// What names the origin on every machine (keys start with it).
    pub namespace: String,
    /// The secret values are authenticated with (a keyed MAC), from
    /// `--shared-secret-file`. Without it, everyone who can write to the servers is
    /// trusted.
    pub secret: Option<Vec<u8>>,
    /// Deadline of one request to a server.
    pub timeout: Duration,
    /// How long a machine fetching a run from the origin holds its lease (others
    /// wait at most this long for its put).
    pub lease: Duration,
    /// Puts waiting to be sent, at most (bytes); past it they are dropped.
    pub queue_bytes: usize,
}

impl SharedConfig {
    pub fn new(urls: Vec<String>, namespace: String) -> Self {
        Self {
            urls,
            namespace,
            secret: None,
            timeout: Duration::from_millis(50),
            lease: Duration::from_secs(5),
            queue_bytes: 64 << 20,
        }
    }
}

/// What `lease` found.
pub enum Lease {
    /// Ours: fetch from the origin, then `put_run` with it.
    Mine(String),
    /// Another machine holds it: `wait_for` its put.
    Theirs(String),
    /// No lease (servers not answering, version not named): fetch alone.
    None,
}

/// A run of blocks to store, in order, then a lease to give back: a machine waiting
/// on the lease finds every block stored once it is gone.
struct Put {
    blocks: Vec<(String, Vec<u8>)>,
    release: Option<String>,
    bytes: u64,
}

pub struct SharedTier {
    store: Arc<Store>,
    /// The name of each object version the tier may serve: a hash of what makes
    /// keys agree across machines. An id with no name misses.
    names: Mutex<FxHashMap<u64, String>>,
    namespace: String,
    block_size: u64,
    secret: Option<[u8; 32]>,
    lease: Duration,
    puts: Sender<Put>,
    /// Leases this machine holds: another fetch here of the same chunk (other blocks:
    /// claims are exclusive within a machine) goes on without waiting for its own.
    held: Arc<Mutex<FxHashSet<String>>>,
    /// Bytes queued for the servers, and at most how many.
    queued: Arc<AtomicU64>,
    queue_bytes: u64,
    stats: Arc<Stats>,
}

/// Versions named at most (each ~100 bytes).
const MAX_NAMES: usize = 1 << 18;
/// Threads sending puts. memcached takes one value per request, so puts are bound
/// by round trips: with two, a cold sequential read at 36-47 MiB/s over three
/// loopback servers dropped most of its puts for a full queue; with four about a
/// quarter, with eight about a fifth (bench/results/2026-12-08-shared-parallel-gets).
const PUTTERS: usize = 4;
/// Pause between looks for another machine's put while waiting on its lease.
const POLL: Duration = Duration::from_millis(5);

impl SharedTier {
    pub fn open(
        cfg: &SharedConfig,
        block_size: u64,
        stats: Arc<Stats>,
    ) -> Result<Arc<Self>, String> {
        let store = Arc::new(Store::open(&cfg.urls, cfg.timeout)?);
        let (tx, rx) = crossbeam_channel::unbounded::<Put>();
        let queued = Arc::new(AtomicU64::new(0));
        let held = Arc::new(Mutex::new(FxHashSet::default()));
        for i in 0..PUTTERS {
            let (store, rx, stats) = (store.clone(), rx.clone(), stats.clone());
            let (q, h) = (queued.clone(), held.clone());
            std::thread::Builder::new()
                .name(format!("strata-shared-put-{i}"))
                .spawn(move || put_loop(&store, &rx, &stats, &q, &h))
                .map_err(|e| format!("cannot start the shared tier's threads: {e}"))?;
        }
        Ok(Arc::new(Self {
            store,
            names: Mutex::new(FxHashMap::default()),
            namespace: cfg.namespace.clone(),
            block_size,
            secret: cfg
                .secret
                .as_ref()
                .map(|s| blake3::derive_key("strata shared tier 2026-12 value MAC", s)),
            lease: cfg.lease,
            puts: tx,
            held,
            queued,
            queue_bytes: cfg.queue_bytes as u64,
            stats,
        }))
    }

    /// Names object version `obj` (the file at `path` with `token`), so its blocks
    /// are found under the keys every machine computes for that version. With
    /// `stable_inodes` false (sshfs and other FUSE origins renumber inodes) the inode
    /// is left out of the name.
    pub fn name(&self, obj: u64, path: &Path, token: &Token, stable_inodes: bool) {
        let mut h = blake3::Hasher::new();
        let mut part = |b: &[u8]| {
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        };
        part(b"strata shared v1");
        part(self.namespace.as_bytes());
        part(path.as_os_str().as_encoded_bytes());
        match token {
            Token::Stat {
                size,
                mtime_ns,
                ctime_ns,
                ino,
            } => {
                part(b"stat");
                part(&size.to_le_bytes());
                part(&mtime_ns.to_le_bytes());
                part(&ctime_ns.to_le_bytes());
                part(&(if stable_inodes { *ino } else { 0 }).to_le_bytes());
            }
            Token::Etag { size, etag } => {
                part(b"etag");
                part(&size.to_le_bytes());
                part(etag.as_bytes());
            }
        }
        part(&self.block_size.to_le_bytes());
        let name = h.finalize().to_hex().to_string();
        let mut names = self.names.lock();
        if names.len() >= MAX_NAMES && !names.contains_key(&obj) {
            // Versions let go of without dying keep their names: past the bound the
            // older half (lower ids) goes. A live version that loses its name just
            // neither asks nor fills the shared tier from then on.
            let mut ids: Vec<u64> = names.keys().copied().collect();
            let mid = ids.len() / 2;
            let cut = *ids.select_nth_unstable(mid).1;
            names.retain(|&id, _| id > cut);
        }
        names.insert(obj, name);
    }

    /// Forgets `obj`'s name: its blocks miss until it is named again.
    pub fn unname(&self, obj: u64) {
        self.names.lock().remove(&obj);
    }

    fn key(name: &str, blk: u64) -> String {
        format!("strata1:{name}:{blk}")
    }

    fn keys(&self, obj: u64, first: u64, n: usize) -> Option<Vec<String>> {
        let names = self.names.lock();
        let name = names.get(&obj)?;
        Some(
            (first..first + n as u64)
                .map(|b| Self::key(name, b))
                .collect(),
        )
    }

    fn count_errors(&self, errors: &[store::StoreError]) {
        for e in errors {
            match e {
                store::StoreError::Timeout => stats::inc(&self.stats.shared_timeouts),
                store::StoreError::Failed(_) => stats::inc(&self.stats.shared_errors),
                store::StoreError::Open => {}
            }
        }
    }

    /// Blocks `first..first + n` of `obj`, each verified, without counting hits and
    /// misses.
    fn fetch(&self, obj: u64, first: u64, n: usize) -> Vec<Option<Bytes>> {
        let Some(keys) = self.keys(obj, first, n) else {
            return vec![None; n];
        };
        let (vals, errors) = self.store.get_many(&keys);
        self.count_errors(&errors);
        keys.iter()
            .zip(vals)
            .map(|(k, v)| self.check(k, v?))
            .collect()
    }

    /// The block in a value got under `key`, if it passes its checks; else counted,
    /// logged and dropped from the server.
    fn check(&self, key: &str, v: Vec<u8>) -> Option<Bytes> {
        match value::decode(key, v, self.secret.as_ref()) {
            Ok(b) => Some(b),
            Err(bad) => {
                stats::inc(&self.stats.shared_verify_failures);
                tracing::warn!(key = %key, problem = ?bad, "a shared cache value failed its check: taken for a miss and dropped");
                let _ = self.store.delete(key);
                None
            }
        }
    }

    /// Queues blocks `first..` of `obj` (just fetched from the origin) for the
    /// servers; `lease` is released once they are stored. Dropped, counted, when the
    /// queue is full. False if any was dropped.
    pub fn put_run(&self, obj: u64, first: u64, blocks: &[Bytes], lease: Option<String>) -> bool {
        let Some(keys) = self.keys(obj, first, blocks.len()) else {
            return false;
        };
        let blocks: Vec<(String, Vec<u8>)> = keys
            .into_iter()
            .zip(blocks)
            .map(|(k, b)| {
                let v = value::encode(&k, b, self.secret.as_ref());
                (k, v)
            })
            .collect();
        let bytes: u64 = blocks.iter().map(|(_, v)| v.len() as u64).sum();
        if self.queued.load(Ordering::Relaxed) + bytes > self.queue_bytes {
            stats::add(&self.stats.shared_refused, blocks.len() as u64);
            if let Some(l) = lease {
                self.release(&l);
            }
            return false;
        }
        self.queued.fetch_add(bytes, Ordering::Relaxed);
        let put = Put {
            blocks,
            release: lease,
            bytes,
        };
        if let Err(e) = self.puts.send(put) {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
            if let Some(l) = e.0.release {
                self.release(&l);
            }
            return false;
        }
        true
    }

    /// Takes the lease on fetching the chunk of `obj` that starts at block `chunk`
    /// (runs are fetched in aligned chunks when the shared tier is on, so machines
    /// missing the same blocks ask for the same lease).
    pub fn lease(&self, obj: u64, chunk: u64) -> Lease {
        let Some(key) = self
            .keys(obj, chunk, 1)
            .and_then(|mut k| k.pop())
            .map(|k| k + ":lease")
        else {
            return Lease::None;
        };
        if self.held.lock().contains(&key) {
            return Lease::None;
        }
        match self.store.add(&key, b"1", self.lease) {
            Ok(true) => {
                self.held.lock().insert(key.clone());
                Lease::Mine(key)
            }
            Ok(false) => Lease::Theirs(key),
            Err(e) => {
                self.count_errors(std::slice::from_ref(&e));
                Lease::None
            }
        }
    }

    /// Waits up to `limit` for the puts queued so far to be sent.
    pub fn drain(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while self.queued.load(Ordering::Relaxed) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Gives a lease back without a put (the fetch failed or saw the file change).
    pub fn release(&self, key: &str) {
        let _ = self.store.delete(key);
        self.held.lock().remove(key);
    }

    /// Fills the empty slots of `got` (blocks `first..` of `obj`) with another
    /// machine's puts while it holds `lease`: returns when every slot is filled, the
    /// lease is gone (its holder is done: what is still missing, it did not fetch),
    /// or the lease time has passed. True when the lease was given back (the caller
    /// may take it for what is still missing); false when every slot is filled or
    /// waiting longer is pointless.
    pub fn wait_for(&self, obj: u64, first: u64, got: &mut [Option<Bytes>], lease: &str) -> bool {
        stats::inc(&self.stats.shared_lease_waits);
        let Some(keys) = self.keys(obj, first, got.len()) else {
            return false;
        };
        let until = Instant::now() + self.lease;
        let mut pause = POLL;
        while Instant::now() < until {
            std::thread::sleep(pause);
            pause = (pause * 2).min(POLL * 8);
            let want: Vec<usize> = (0..got.len()).filter(|&i| got[i].is_none()).collect();
            let mut ask: Vec<String> = want.iter().map(|&i| keys[i].clone()).collect();
            ask.push(lease.to_string());
            let (mut vals, errors) = self.store.get_many(&ask);
            self.count_errors(&errors);
            let held = vals.pop().flatten().is_some();
            for (&i, v) in want.iter().zip(vals) {
                if let Some(v) = v
                    && let Some(b) = self.check(&keys[i], v)
                {
                    stats::inc(&self.stats.shared_hits);
                    stats::add(&self.stats.shared_hit_bytes, b.len() as u64);
                    got[i] = Some(b);
                }
            }
            if got.iter().all(Option::is_some) {
                stats::inc(&self.stats.shared_lease_hits);
                return false;
            }
            if !errors.is_empty() {
                return false;
            }
            if !held {
                return true;
            }
        }
        false
    }
}

fn put_loop(
    store: &Store,
    rx: &Receiver<Put>,
    stats: &Stats,
    queued: &AtomicU64,
    held: &Mutex<FxHashSet<String>>,
) {
    while let Ok(p) = rx.recv() {
        // One request per server (a pipeline on Redis): a failed one counts once.
        let (stored, bytes, errors) = store.set_many(&p.blocks);
        stats::add(&stats.shared_puts, stored);
        stats::add(&stats.shared_put_bytes, bytes);
        for (e, n) in errors {
            match e {
                store::StoreError::Timeout => stats::inc(&stats.shared_timeouts),
                store::StoreError::Failed(_) => stats::inc(&stats.shared_errors),
                store::StoreError::Open => stats::add(&stats.shared_refused, n),
            }
        }
        if let Some(l) = p.release {
            let _ = store.delete(&l);
            held.lock().remove(&l);
        }
        queued.fetch_sub(p.bytes, Ordering::Relaxed);
    }
}

impl Tier for SharedTier {
    fn name(&self) -> &'static str {
        "shared"
    }

    fn get(&self, key: &BlockKey) -> Option<Bytes> {
        self.get_run(key.obj, key.blk, 1).0.pop().flatten()
    }

    fn get_run(&self, obj: u64, first: u64, n: usize) -> (Vec<Option<Bytes>>, Option<Bytes>) {
        let got = self.fetch(obj, first, n);
        let hits: Vec<&Bytes> = got.iter().flatten().collect();
        stats::add(&self.stats.shared_hits, hits.len() as u64);
        stats::add(
            &self.stats.shared_hit_bytes,
            hits.iter().map(|b| b.len() as u64).sum(),
        );
        stats::add(&self.stats.shared_misses, (n - hits.len()) as u64);
        (got, None)
    }

    /// Not known without asking the servers: the engine's hints never count on it.
    fn contains(&self, _key: &BlockKey) -> bool {
        false
    }

    fn put(&self, key: BlockKey, data: Bytes) -> Result<Vec<(BlockKey, Bytes)>, Refusal> {
        if self.put_run(key.obj, key.blk, &[data], None) {
            Ok(Vec::new())
        } else {
            Err(Refusal::Busy)
        }
    }

    /// The version's bytes changed here (a write): its blocks are not asked for under
    /// the old name again; the engine names the version anew with its new token.
    fn remove(&self, key: &BlockKey) {
        self.unname(key.obj);
    }

    fn remove_range(&self, obj: u64, _first: u64, _end: u64) {
        self.unname(obj);
    }

    fn drop_version(&self, obj: u64, _hint: &[Range<u64>]) {
        self.unname(obj);
    }

    fn bytes(&self) -> u64 {
        0
    }

    fn settle(&self) {
        self.drain(Duration::from_secs(10));
    }
}
