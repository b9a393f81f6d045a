//! Model checking of the engine's coordination (claims, waits, fills into RAM,
//! invalidation and version switches) with shuttle, which explores thread
//! interleavings of the engine's locks and condition variables.
//!
//! Run with: cargo test -p strata --features shuttle --test shuttle
#![cfg(feature = "shuttle")]

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::Path;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shuttle::thread;
use strata::origin::{Attr, DirEntry, FileKind, FsStats, Origin, OriginFile, Timestamp, Token};
use strata::sync::Arc;
use strata::{Config, Engine};

const BS: usize = 4096;

/// An in-memory origin with one file whose version can change. Version v holds
/// bytes of value v; its size varies with v.
struct MemOrigin {
    version: StdMutex<u64>,
    /// Bytes read from the origin.
    reads: Arc<AtomicU64>,
}

impl MemOrigin {
    fn new() -> Arc<Self> {
        Arc::new(MemOrigin {
            version: StdMutex::new(1),
            reads: Arc::new(AtomicU64::new(0)),
        })
    }
}

fn size_of(v: u64) -> u64 {
    (3 * BS as u64) - v * 100
}

fn attr(v: u64) -> Attr {
    let ts = Timestamp {
        secs: v as i64,
        nanos: 0,
    };
    Attr {
        kind: FileKind::File,
        size: size_of(v),
        perm: 0o644,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blocks: 0,
        blksize: 4096,
        atime: ts,
        mtime: ts,
        ctime: ts,
        ino: 1,
        dev: 1,
        token: Token::Stat {
            size: size_of(v),
            mtime_ns: v as i64,
            ctime_ns: v as i64,
            ino: 1,
        },
    }
}

impl Origin for MemOrigin {
    fn stat(&self, _: &Path) -> io::Result<Attr> {
        Ok(attr(*self.version.lock().unwrap()))
    }
    fn open(&self, _: &Path) -> io::Result<Box<dyn OriginFile>> {
        Ok(Box::new(MemFile {
            // Like a replaced file: an open file keeps the version it opened.
            v: *self.version.lock().unwrap(),
            reads: self.reads.clone(),
        }))
    }
    fn read_dir(&self, _: &Path) -> io::Result<Vec<DirEntry>> {
        Ok(Vec::new())
    }
    fn read_link(&self, _: &Path) -> io::Result<Vec<u8>> {
        Err(io::Error::from_raw_os_error(22))
    }
    fn get_xattr(&self, _: &Path, _: &OsStr) -> io::Result<Vec<u8>> {
        Err(io::Error::from_raw_os_error(61))
    }
    fn list_xattr(&self, _: &Path) -> io::Result<Vec<OsString>> {
        Ok(Vec::new())
    }
    fn statfs(&self) -> io::Result<FsStats> {
        Ok(FsStats::default())
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

struct MemFile {
    v: u64,
    reads: Arc<AtomicU64>,
}

impl OriginFile for MemFile {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        thread::yield_now();
        let size = size_of(self.v);
        let n = (size.saturating_sub(off) as usize).min(buf.len());
        self.reads.fetch_add(n as u64, Ordering::Relaxed);
        buf[..n].fill(self.v as u8);
        Ok(n)
    }
    fn token(&self) -> io::Result<Token> {
        Ok(attr(self.v).token)
    }
}

fn engine(origin: Arc<MemOrigin>, ttl: Duration, ram: u64) -> Arc<Engine> {
    let cfg = Config {
        block_size: BS as u32,
        ram_capacity: ram,
        disk: None,
        attr_ttl: ttl,
        prefetch_threads: 0,
        origin_timeout: None, // no worker threads under the model checker
        max_fetch: BS as u64,
        ..Config::default()
    };
    Arc::new(Engine::new(cfg, origin).unwrap())
}

/// A read is all of one version: every byte has that version's value, and a short
/// read ends exactly at that version's size.
fn check(off: u64, asked: usize, got: &[u8]) {
    if got.is_empty() {
        return;
    }
    let v = got[0] as u64;
    assert!(
        got.iter().all(|&b| b as u64 == v),
        "mixed versions in one read"
    );
    if got.len() < asked {
        assert_eq!(
            off + got.len() as u64,
            size_of(v),
            "short read not at version {v}'s end"
        );
    }
}

/// Readers of overlapping ranges share fetches; with the file stable, each block is
/// fetched from the origin once and everybody gets correct bytes.
#[test]
fn single_flight() {
    shuttle::check_pct(
        || {
            let origin = MemOrigin::new();
            let e = engine(origin.clone(), Duration::from_secs(3600), 1 << 20);
            let h = Arc::new(e.open(Path::new("f")).unwrap());
            let ts: Vec<_> = [(0u64, 2 * BS), (BS as u64, 2 * BS), (0, 3 * BS)]
                .into_iter()
                .map(|(off, len)| {
                    let (e, h) = (e.clone(), h.clone());
                    thread::spawn(move || {
                        let got = e.read(&h, off, len).unwrap().to_vec();
                        check(off, len, &got);
                        assert_eq!(got.len(), len.min((size_of(1) - off) as usize));
                    })
                })
                .collect();
            for t in ts {
                t.join().unwrap();
            }
            // Every byte fetched once: runs may merge, never repeat.
            assert_eq!(origin.reads.load(Ordering::Relaxed), size_of(1));
        },
        2000,
        3,
    );
}

/// The origin changes while readers read through one handle and another thread
/// revalidates: no read mixes versions, and nothing deadlocks.
#[test]
fn version_switch_under_readers() {
    shuttle::check_pct(
        || {
            let origin = MemOrigin::new();
            // TTL 0: every read revalidates, exercising invalidation on every step.
            let e = engine(origin.clone(), Duration::ZERO, 1 << 20);
            let h = Arc::new(e.open(Path::new("f")).unwrap());
            let readers: Vec<_> = (0..2u64)
                .map(|i| {
                    let (e, h) = (e.clone(), h.clone());
                    thread::spawn(move || {
                        for k in 0..2u64 {
                            let off = (i + k) * 1000;
                            let got = e.read(&h, off, 2 * BS).unwrap().to_vec();
                            check(off, 2 * BS, &got);
                        }
                    })
                })
                .collect();
            let changer = {
                let (e, origin) = (e.clone(), origin.clone());
                thread::spawn(move || {
                    *origin.version.lock().unwrap() = 2;
                    let _ = e.stat(Path::new("f"));
                    *origin.version.lock().unwrap() = 3;
                })
            };
            for t in readers {
                t.join().unwrap();
            }
            changer.join().unwrap();
            // After the change, a read sees the last version.
            let got = e.read(&h, 0, 3 * BS).unwrap().to_vec();
            assert_eq!(got.len() as u64, size_of(3));
            assert!(got.iter().all(|&b| b == 3));
        },
        2000,
        3,
    );
}

/// A RAM tier too small to hold what was fetched: waiters that find nothing after a
/// fetch claim and fetch themselves, and still get correct bytes.
#[test]
fn tiny_ram_tier_still_correct() {
    shuttle::check_pct(
        || {
            let origin = MemOrigin::new();
            let e = engine(origin, Duration::from_secs(3600), 1);
            let h = Arc::new(e.open(Path::new("f")).unwrap());
            let ts: Vec<_> = (0..3)
                .map(|_| {
                    let (e, h) = (e.clone(), h.clone());
                    thread::spawn(move || {
                        let got = e.read(&h, 0, 2 * BS).unwrap().to_vec();
                        assert_eq!(got, vec![1u8; 2 * BS]);
                    })
                })
                .collect();
            for t in ts {
                t.join().unwrap();
            }
        },
        1000,
        3,
    );
}

/// Promotion (a hit in compressed RAM moves the block up to RAM) and demotion (what
/// RAM evicts goes down) racing with the drop of a version: once the drop and the
/// moves are done, no tier holds any block of the dropped version, and every block
/// served is the bytes that were put.
#[test]
fn tier_moves_racing_a_version_drop() {
    use bytes::Bytes;
    use strata::stats::Stats;
    use strata::tier::BlockKey;
    use strata::tier::chain::MemoryChain;
    use strata::tier::compressed::CompressedTier;
    use strata::tier::ram::RamTier;
    let block = |obj: u64, blk: u64| Bytes::from(vec![(obj * 16 + blk) as u8; 1024]);
    let key = |obj: u64, blk: u64| BlockKey { obj, blk };
    shuttle::check_pct(
        move || {
            let stats = std::sync::Arc::new(Stats::default());
            let below = CompressedTier::inline(8 << 10, stats.clone());
            let top = RamTier::sharing(3 * 1152 + (8 << 10), below.used(), stats);
            let chain = Arc::new(MemoryChain::of(vec![Box::new(top), Box::new(below)]));
            // Blocks of version 1, each read again (so RAM hands them down when it
            // needs room), then enough of version 3 to push most of them down.
            for obj in [1, 3] {
                for blk in 0..8 {
                    chain.put(key(obj, blk), block(obj, blk));
                    chain.get(&key(obj, blk));
                }
            }
            let mover = {
                let chain = chain.clone();
                thread::spawn(move || {
                    for blk in 0..4 {
                        // Promotions of version 1, demotions of version 3.
                        if let Some(b) = chain.get(&key(1, blk)) {
                            assert_eq!(b, block(1, blk));
                        }
                        chain.put(key(2, blk), block(2, blk));
                        chain.get(&key(2, blk));
                    }
                })
            };
            let dropper = {
                let chain = chain.clone();
                thread::spawn(move || chain.remove_range(1, 0, 8))
            };
            mover.join().unwrap();
            dropper.join().unwrap();
            for blk in 0..8 {
                assert!(
                    !chain.contains(&key(1, blk)),
                    "block {blk} of the dropped version is still held"
                );
            }
            for obj in [2, 3] {
                for blk in 0..8 {
                    if let Some(b) = chain.get(&key(obj, blk)) {
                        assert_eq!(b, block(obj, blk));
                    }
                }
            }
        },
        2000,
        3,
    );
}

/// A file written in place whose token does not move (a filesystem with coarse
/// timestamps: two versions, one token). Only the version's I/O lock keeps a fetch
/// that read the bytes before a write from caching them after it.
struct InPlace {
    data: std::sync::Arc<StdMutex<Vec<u8>>>,
}

impl Origin for InPlace {
    fn stat(&self, _: &Path) -> io::Result<Attr> {
        Ok(attr(1))
    }
    fn open(&self, _: &Path) -> io::Result<Box<dyn OriginFile>> {
        Ok(Box::new(InPlaceFile(self.data.clone())))
    }
    fn read_dir(&self, _: &Path) -> io::Result<Vec<DirEntry>> {
        Ok(Vec::new())
    }
    fn read_link(&self, _: &Path) -> io::Result<Vec<u8>> {
        Err(io::Error::from_raw_os_error(22))
    }
    fn get_xattr(&self, _: &Path, _: &OsStr) -> io::Result<Vec<u8>> {
        Err(io::Error::from_raw_os_error(61))
    }
    fn list_xattr(&self, _: &Path) -> io::Result<Vec<OsString>> {
        Ok(Vec::new())
    }
    fn statfs(&self) -> io::Result<FsStats> {
        Ok(FsStats::default())
    }
    fn describe(&self) -> String {
        "memory, written in place".into()
    }
    fn writable(&self) -> bool {
        true
    }
    fn open_rw(&self, p: &Path, _: bool) -> io::Result<Box<dyn OriginFile>> {
        self.open(p)
    }
}

/// An open `InPlace` file: its bytes.
struct InPlaceFile(std::sync::Arc<StdMutex<Vec<u8>>>);

impl OriginFile for InPlaceFile {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        thread::yield_now();
        let d = self.0.lock().unwrap();
        let n = (d.len().saturating_sub(off as usize)).min(buf.len());
        buf[..n].copy_from_slice(&d[off as usize..off as usize + n]);
        Ok(n)
    }
    fn token(&self) -> io::Result<Token> {
        thread::yield_now();
        Ok(attr(1).token)
    }
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        thread::yield_now();
        let mut d = self.0.lock().unwrap();
        d[off as usize..off as usize + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn attr(&self) -> io::Result<Attr> {
        Ok(attr(1))
    }
}

/// FS-Cache's rule for fetches: a write racing a reader's fetch of the same block
/// never leaves the bytes from before the write cached after it.
#[test]
fn a_write_racing_a_fetch_leaves_no_older_bytes_cached() {
    shuttle::check_pct(
        || {
            let origin = Arc::new(InPlace {
                data: std::sync::Arc::new(StdMutex::new(vec![1u8; size_of(1) as usize])),
            });
            let cfg = Config {
                block_size: BS as u32,
                ram_capacity: 1 << 20,
                disk: None,
                attr_ttl: Duration::from_secs(3600),
                prefetch_threads: 0,
                origin_timeout: None,
                max_fetch: BS as u64,
                ..Config::default()
            };
            let e = Arc::new(Engine::new(cfg, origin.clone()).unwrap());
            let reader = {
                let e = e.clone();
                thread::spawn(move || {
                    let h = e.open(Path::new("f")).unwrap();
                    let got = e.read(&h, 0, BS).unwrap().to_vec();
                    // One block, before the write or after it.
                    assert!(got.iter().all(|&b| b == got[0]), "a torn block");
                })
            };
            let writer = {
                let e = e.clone();
                thread::spawn(move || {
                    let h = e.open_write(Path::new("f"), false).unwrap();
                    e.write(&h, 0, &[2u8; BS]).unwrap();
                })
            };
            reader.join().unwrap();
            writer.join().unwrap();
            let h = e.open(Path::new("f")).unwrap();
            let got = e.read(&h, 0, BS).unwrap().to_vec();
            assert_eq!(
                got,
                vec![2u8; BS],
                "bytes from before the write stayed cached"
            );
        },
        2000,
        3,
    );
}
