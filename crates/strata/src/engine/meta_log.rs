//! The metadata journal: what the origin confirmed (attributes, "no such file",
//! listings, symlink targets, extended attributes), kept in `CACHE_DIR/meta.log` so
//! that a restarted mount knows it, with when each answer was given.
//!
//! Every record stands alone: `len:u32 crc:u32 payload`, the crc (crc32c) over the
//! length and payload, as in the disk index. Payload: `kind:u8 op:u8 at_ns:u64 key
//! [value]`, where kind names the map, op is 0 (the origin said this at `at_ns`, wall
//! clock) or 1 (forget it), key and value as [`Persist`] writes them. The first record
//! is a header (kind 0): magic `STRATAMD`, version, and the origin's description; a
//! log of another origin or version is started anew. A torn or damaged frame ends the
//! log: what follows it is dropped, and nothing is ever read that was not written.
//!
//! No ordering against the data is needed: an entry is only ever a confirmation the
//! origin gave at its time, served under the same rules as in the process that heard
//! it (trusted for the TTL from then, or as "last confirmed" while the origin cannot
//! be reached). A crash loses what was not flushed; an entry replaced in the lost part
//! comes back as it was before, with its own, older time. Appends are written (and
//! synced) once a second by the disk writer; the log is rewritten from the live
//! entries when it grows past four times their size.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::origin::{Attr, DirEntry, FileKind, FsStats, Timestamp, Token};
use crate::storage::{Storage, StorageFile};
use crate::sync::Mutex;

pub(crate) const FILE: &str = "meta.log";
const TMP: &str = "meta.log.tmp";
const MAGIC: &[u8; 8] = b"STRATAMD";
const VERSION: u32 = 1;
/// A larger frame is damage, not a record.
const MAX_FRAME: usize = 16 << 20;
/// Appends waiting to be written past this are dropped (a cache may forget).
const MAX_BUFFERED: usize = crate::config::META_JOURNAL_BUFFER as usize;

/// The maps that are journaled (the `kind` of a record).
pub(crate) mod kind {
    pub const ATTRS: u8 = 1;
    pub const DIRS: u8 = 2;
    pub const LINKS: u8 = 3;
    pub const XATTRS: u8 = 4;
    pub const XATTR_LISTS: u8 = 5;
}

/// Wall-clock nanoseconds now.
pub(crate) fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The instant that was `wall` (wall-clock ns) in this process's clock; None if it
/// is before the monotonic clock began (an answer from before a reboot) or in the
/// future (the clock was set back).
pub(crate) fn instant_of(wall: u64) -> Option<Instant> {
    let age = Duration::from_nanos(wall_ns().checked_sub(wall)?);
    Instant::now().checked_sub(age)
}

/// How a key or value is written in the journal.
pub(crate) trait Persist: Sized {
    fn put(&self, out: &mut Vec<u8>);
    fn take(r: &mut Reader<'_>) -> Option<Self>;
}

pub(crate) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }
    fn blob(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.bytes(n)
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_blob(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

impl Persist for PathBuf {
    fn put(&self, out: &mut Vec<u8>) {
        put_blob(out, self.as_os_str().as_bytes());
    }
    fn take(r: &mut Reader<'_>) -> Option<Self> {
        Some(PathBuf::from(OsString::from_vec(r.blob()?.to_vec())))
    }
}

impl Persist for OsString {
    fn put(&self, out: &mut Vec<u8>) {
        put_blob(out, self.as_bytes());
    }
    fn take(r: &mut Reader<'_>) -> Option<Self> {
        Some(OsString::from_vec(r.blob()?.to_vec()))
    }
}

impl Persist for () {
    fn put(&self, _: &mut Vec<u8>) {}
    fn take(_: &mut Reader<'_>) -> Option<Self> {
        Some(())
    }
}

impl<A: Persist, B: Persist> Persist for (A, B) {
    fn put(&self, out: &mut Vec<u8>) {
        self.0.put(out);
        self.1.put(out);
    }
    fn take(r: &mut Reader<'_>) -> Option<Self> {
        Some((A::take(r)?, B::take(r)?))
    }
}

impl<T: Persist> Persist for Result<T, i32> {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Ok(v) => {
                out.push(0);
                v.put(out);
            }
            Err(e) => {
                out.push(1);
                put_u32(out, *e as u32);
            }
        }
    }
    fn take(r: &mut Reader<'_>) -> Option<Self> {
        match r.u8()? {
            0 => Some(Ok(T::take(r)?)),
            1 => Some(Err(r.u32()? as i32)),
            _ => None,
        }
    }
}

impl Persist for Arc<[u8]> {
    fn put(&self, out: &mut Vec<u8>) {
        put_blob(out, self);
    }
    fn take(r: &mut Reader<'_>) -> Option<Self> {
        Some(Arc::from(r.blob()?))
    }
}

fn kind_code(k: FileKind) -> u8 {
    match k {
        FileKind::File => 0,
        FileKind::Dir => 1,
        FileKind::Symlink => 2,
        FileKind::Fifo => 3,
        FileKind::Socket => 4,
        FileKind::CharDevice => 5,
        FileKind::BlockDevice => 6,
        FileKind::Unknown => 7,
    }
}

fn kind_of(c: u8) -> Option<FileKind> {
    Some(match c {
        0 => FileKind::File,
        1 => FileKind::Dir,
        2 => FileKind::Symlink,
        3 => FileKind::Fifo,
        4 => FileKind::Socket,
        5 => FileKind::CharDevice,
        6 => FileKind::BlockDevice,
        7 => FileKind::Unknown,
        _ => return None,
    })
}

fn put_time(out: &mut Vec<u8>, t: Timestamp) {
    put_u64(out, t.secs as u64);
    put_u32(out, t.nanos);
}

fn take_time(r: &mut Reader<'_>) -> Option<Timestamp> {
    Some(Timestamp {
        secs: r.u64()? as i64,
        nanos: r.u32()?.min(999_999_999),
    })
}

impl Persist for Token {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Token::Stat {
                size,
                mtime_ns,
                ctime_ns,
                ino,
            } => {
                out.push(0);
                put_u64(out, *size);
                put_u64(out, *mtime_ns as u64);
                put_u64(out, *ctime_ns as u64);
                put_u64(out, *ino);
            }
            Token::Etag { size, etag } => {
                out.push(1);
                put_u64(out, *size);
                put_blob(out, etag.as_bytes());
            }
        }
    }
    fn take(r: &mut Reader<'_>) -> Option<Self> {
        match r.u8()? {
            0 => Some(Token::Stat {
                size: r.u64()?,
                mtime_ns: r.u64()? as i64,
                ctime_ns: r.u64()? as i64,
                ino: r.u64()?,
            }),
            1 => {
                let size = r.u64()?;
                let etag = std::str::from_utf8(r.blob()?).ok()?;
                Some(Token::Etag {
                    size,
                    etag: Arc::from(etag),
                })
            }
            _ => None,
        }
    }
}

impl Persist for Attr {
    fn put(&self, out: &mut Vec<u8>) {
        out.push(kind_code(self.kind));
        put_u64(out, self.size);
        put_u32(out, self.perm);
        put_u32(out, self.nlink);
        put_u32(out, self.uid);
        put_u32(out, self.gid);
        put_u64(out, self.rdev);
        put_u64(out, self.blocks);
        put_u32(out, self.blksize);
        put_time(out, self.atime);
        put_time(out, self.mtime);
        put_time(out, self.ctime);
        put_u64(out, self.ino);
        put_u64(out, self.dev);
        self.token.put(out);
    }
    fn take(r: &mut Reader<'_>) -> Option<Self> {
        Some(Attr {
            kind: kind_of(r.u8()?)?,
            size: r.u64()?,
            perm: r.u32()?,
            nlink: r.u32()?,
            uid: r.u32()?,
            gid: r.u32()?,
            rdev: r.u64()?,
            blocks: r.u64()?,
            blksize: r.u32()?,
            atime: take_time(r)?,
            mtime: take_time(r)?,
            ctime: take_time(r)?,
            ino: r.u64()?,
            dev: r.u64()?,
            token: Token::take(r)?,
        })
    }
}

impl Persist for FsStats {
    fn put(&self, out: &mut Vec<u8>) {
        for v in [self.blocks, self.bfree, self.bavail, self.files, self.ffree] {
            put_u64(out, v);
        }
        for v in [self.bsize, self.namelen, self.frsize] {
            put_u32(out, v);
        }
    }
    fn take(r: &mut Reader<'_>) -> Option<Self> {
        Some(FsStats {
            blocks: r.u64()?,
            bfree: r.u64()?,
            bavail: r.u64()?,
            files: r.u64()?,
            ffree: r.u64()?,
            bsize: r.u32()?,
            namelen: r.u32()?,
            frsize: r.u32()?,
        })
    }
}

impl Persist for Arc<Vec<DirEntry>> {
    fn put(&self, out: &mut Vec<u8>) {
        put_u32(out, self.len() as u32);
        for e in self.iter() {
            put_blob(out, e.name.as_bytes());
            out.push(kind_code(e.kind));
            put_u64(out, e.ino);
        }
    }
    fn take(r: &mut Reader<'_>) -> Option<Self> {
        let n = r.u32()? as usize;
        let mut v = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            v.push(DirEntry {
                name: OsString::from_vec(r.blob()?.to_vec()),
                kind: kind_of(r.u8()?)?,
                ino: r.u64()?,
            });
        }
        Some(Arc::new(v))
    }
}

impl Persist for Arc<Vec<OsString>> {
    fn put(&self, out: &mut Vec<u8>) {
        put_u32(out, self.len() as u32);
        for n in self.iter() {
            n.put(out);
        }
    }
    fn take(r: &mut Reader<'_>) -> Option<Self> {
        let n = r.u32()? as usize;
        let mut v = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            v.push(OsString::take(r)?);
        }
        Some(Arc::new(v))
    }
}

/// One journaled answer, as read back.
pub(crate) struct Entry<'a> {
    pub kind: u8,
    pub forget: bool,
    pub at_ns: u64,
    pub rest: Reader<'a>,
}

fn frame(payload_start: usize, out: &mut [u8]) {
    let len = (out.len() - payload_start) as u32;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), &out[payload_start..]);
    out[payload_start - 8..payload_start - 4].copy_from_slice(&len.to_le_bytes());
    out[payload_start - 4..payload_start].copy_from_slice(&crc.to_le_bytes());
}

/// Appends one record: `write` puts the payload.
fn record(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(&[0u8; 8]);
    let start = out.len();
    write(out);
    frame(start, out);
}

/// The frames of a log, in order, until the first that is torn or damaged.
fn frames(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let head = bytes.get(at..at + 8)?;
        let len = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().ok()?);
        if len == 0 || len > MAX_FRAME {
            return None;
        }
        let payload = bytes.get(at + 8..at + 8 + len)?;
        if crc32c::crc32c_append(crc32c::crc32c(&(len as u32).to_le_bytes()), payload) != crc {
            return None;
        }
        at += 8 + len;
        Some(payload)
    })
}

struct State {
    file: Arc<dyn StorageFile>,
    len: u64,
    buf: Vec<u8>,
    last_flush: Instant,
    /// Records were dropped since the last flush (the buffer was full).
    overflowed: bool,
}

pub(crate) struct MetaLog {
    storage: Arc<dyn Storage>,
    origin: String,
    st: Mutex<State>,
}

impl MetaLog {
    /// Opens the journal of `origin` (its description) and hands every record it
    /// holds, oldest first, to `load`. A journal of another origin, or one that cannot
    /// be read, is started anew.
    pub fn open(
        storage: Arc<dyn Storage>,
        origin: &str,
        load: &mut dyn FnMut(Entry<'_>),
    ) -> io::Result<MetaLog> {
        let _ = storage.remove_file(Path::new(TMP));
        let file = storage.open(Path::new(FILE), true)?;
        let len = file.len()?;
        let mut bytes = vec![0u8; len.min(1 << 30) as usize];
        let n = crate::storage::read_full_at(&*file, &mut bytes, 0)?;
        bytes.truncate(n);
        let mut it = frames(&bytes);
        let mut good = 0u64;
        let ours = it.next().is_some_and(|h| {
            good = 8 + h.len() as u64;
            let mut r = Reader(h);
            r.u8() == Some(0)
                && r.bytes(8) == Some(&MAGIC[..])
                && r.u32() == Some(VERSION)
                && r.blob() == Some(origin.as_bytes())
        });
        if !ours {
            good = 0;
        } else {
            for p in it {
                good += 8 + p.len() as u64;
                let mut r = Reader(p);
                let (Some(kind), Some(op), Some(at_ns)) = (r.u8(), r.u8(), r.u64()) else {
                    continue;
                };
                load(Entry {
                    kind,
                    forget: op == 1,
                    at_ns,
                    rest: r,
                });
            }
        }
        let log = MetaLog {
            storage,
            origin: origin.to_string(),
            st: Mutex::new(State {
                file,
                len: good,
                buf: Vec::new(),
                last_flush: Instant::now(),
                overflowed: false,
            }),
        };
        if !ours {
            log.rewrite(Vec::new())?;
        } else if good < len {
            // A torn or damaged tail: cut, so appends follow the last good record.
            log.st.lock().file.set_len(good)?;
        }
        Ok(log)
    }

    fn header(&self) -> Vec<u8> {
        let mut out = Vec::new();
        record(&mut out, |o| {
            o.push(0);
            o.extend_from_slice(MAGIC);
            put_u32(o, VERSION);
            put_blob(o, self.origin.as_bytes());
        });
        out
    }

    /// Journals that the origin said `value` of `key` at `at_ns`.
    pub fn put<K: Persist, V: Persist>(&self, kind: u8, at_ns: u64, key: &K, value: &V) {
        self.append(|o| Self::encode(o, kind, at_ns, key, value));
    }

    /// Journals that `key` is no longer known.
    pub fn forget<K: Persist>(&self, kind: u8, key: &K) {
        self.append(|o| {
            record(o, |o| {
                o.push(kind);
                o.push(1);
                put_u64(o, wall_ns());
                key.put(o);
            })
        });
    }

    /// Adds records to what waits to be written; past `MAX_BUFFERED` they are dropped
    /// and the next flush says so.
    fn append(&self, write: impl FnOnce(&mut Vec<u8>)) {
        let mut st = self.st.lock();
        if st.buf.len() >= MAX_BUFFERED {
            st.overflowed = true;
        } else {
            write(&mut st.buf);
        }
    }

    /// A record of what the origin said, in `out` (appended, or for a `rewrite`).
    pub fn encode<K: Persist, V: Persist>(out: &mut Vec<u8>, kind: u8, at_ns: u64, k: &K, v: &V) {
        record(out, |o| {
            o.push(kind);
            o.push(0);
            put_u64(o, at_ns);
            k.put(o);
            v.put(o);
        });
    }

    /// Writes and syncs what was journaled, if `every` has passed since the last time
    /// (zero: now).
    pub fn flush(&self, every: Duration) -> io::Result<()> {
        let mut st = self.st.lock();
        if st.buf.is_empty() || st.last_flush.elapsed() < every {
            return Ok(());
        }
        let buf = std::mem::take(&mut st.buf);
        let at = st.len;
        st.last_flush = Instant::now();
        let r = st
            .file
            .write_all_at(&buf, at)
            .and_then(|()| st.file.sync_data());
        match r {
            Ok(()) => {
                st.len += buf.len() as u64;
                if std::mem::take(&mut st.overflowed) {
                    return Err(io::Error::other(
                        "journal records were dropped (writes too slow)",
                    ));
                }
                Ok(())
            }
            Err(e) => {
                // Kept for the next try: an Ok must mean all of it is durable.
                st.buf = buf;
                Err(e)
            }
        }
    }

    /// Bytes in the journal file.
    pub fn len(&self) -> u64 {
        self.st.lock().len
    }

    /// Replaces the journal with `records` (the live entries, from `encode`): written
    /// to a new file, synced, renamed over. What was journaled meanwhile and not
    /// flushed is dropped (the records hold everything live).
    pub fn rewrite(&self, records: Vec<u8>) -> io::Result<()> {
        let mut all = self.header();
        all.extend_from_slice(&records);
        let tmp = self.storage.open(Path::new(TMP), true)?;
        tmp.set_len(0)?;
        tmp.write_all_at(&all, 0)?;
        tmp.sync_data()?;
        self.storage.rename(Path::new(TMP), Path::new(FILE))?;
        self.storage.sync_dir(Path::new(""))?;
        let mut st = self.st.lock();
        st.file = tmp;
        st.len = all.len() as u64;
        st.buf.clear();
        st.overflowed = false;
        Ok(())
    }
}

impl Entry<'_> {
    pub fn take<T: Persist>(&mut self) -> Option<T> {
        T::take(&mut self.rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::SimStorage;
    use crate::storage::sim::SplitMix;
    use std::collections::BTreeMap;

    type V = Result<Arc<[u8]>, i32>;

    fn value(n: u64) -> V {
        if n.is_multiple_of(5) {
            Err(2)
        } else {
            Ok(Arc::from(format!("value {n}").into_bytes()))
        }
    }

    /// The state the journal gives back: key -> value, replaying puts and forgets.
    fn replay(st: &SimStorage, origin: &str) -> BTreeMap<PathBuf, V> {
        let mut m = BTreeMap::new();
        MetaLog::open(Arc::new(st.clone()), origin, &mut |mut e| {
            let k: PathBuf = e.take().expect("a key");
            if e.forget {
                m.remove(&k);
            } else {
                m.insert(k, e.take::<V>().expect("a value"));
            }
        })
        .unwrap();
        m
    }

    /// Power cuts at seeded points while answers are journaled, forgotten, flushed
    /// and the journal rewritten: what comes back was journaled (never invented), and
    /// no key is older than the last flush acknowledged.
    #[test]
    fn power_cuts_never_invent_or_lose_acknowledged_entries() {
        for seed in 0..400u64 {
            let mut rng = SplitMix::new(seed);
            let st = SimStorage::new();
            let log = MetaLog::open(Arc::new(st.clone()), "origin A", &mut |_| {}).unwrap();
            st.cut_after(1 + rng.below(60));
            // Per key, every state it had, in order (None: forgotten).
            let mut states: BTreeMap<PathBuf, Vec<Option<V>>> = BTreeMap::new();
            let mut now: BTreeMap<PathBuf, Option<V>> = BTreeMap::new();
            // Per key, the index in `states` when the last flush was acknowledged.
            let mut acked: BTreeMap<PathBuf, usize> = BTreeMap::new();
            for step in 0..200u64 {
                let k = PathBuf::from(format!("d/{}", rng.below(12)));
                match rng.below(10) {
                    0 => {
                        log.forget(kind::ATTRS, &k);
                        now.insert(k.clone(), None);
                    }
                    1 | 2 => {
                        if log.flush(Duration::ZERO).is_ok() {
                            for (k, s) in &states {
                                acked.insert(k.clone(), s.len() - 1);
                            }
                        }
                        continue;
                    }
                    3 => {
                        // A rewrite from the live entries, as the engine does.
                        let mut out = Vec::new();
                        for (k, v) in now.iter().filter_map(|(k, v)| Some((k, v.as_ref()?))) {
                            MetaLog::encode(&mut out, kind::ATTRS, step, k, v);
                        }
                        if log.rewrite(out).is_ok() {
                            for (k, s) in &states {
                                acked.insert(k.clone(), s.len() - 1);
                            }
                        }
                        continue;
                    }
                    _ => {
                        let v = value(step);
                        log.put(kind::ATTRS, step, &k, &v);
                        now.insert(k.clone(), Some(v));
                    }
                }
                states
                    .entry(k.clone())
                    .or_insert_with(|| vec![None])
                    .push(now[&k].clone());
            }
            let after = st.power_cut(seed);
            let got = replay(&after, "origin A");
            for (k, s) in &states {
                let g = got.get(k).cloned();
                let from = acked.get(k).copied().unwrap_or(0);
                assert!(
                    s[from..].contains(&g),
                    "seed {seed}: {k:?} came back as {g:?}, not a state since the last flush"
                );
            }
            for k in got.keys() {
                assert!(
                    states.contains_key(k),
                    "seed {seed}: {k:?} was never journaled"
                );
            }
            // Another origin's journal is not ours: it starts empty.
            assert!(replay(&after, "origin B").is_empty());
        }
    }

    #[test]
    fn every_kind_of_answer_reads_back_as_written() {
        use crate::origin::{DirEntry, FileKind};
        let st = SimStorage::new();
        let attr = Attr {
            kind: FileKind::Symlink,
            size: 12,
            perm: 0o755,
            nlink: 3,
            uid: 1000,
            gid: 100,
            rdev: 7,
            blocks: 8,
            blksize: 4096,
            atime: Timestamp { secs: -5, nanos: 9 },
            mtime: Timestamp {
                secs: 1_700_000_000,
                nanos: 999_999_999,
            },
            ctime: Timestamp { secs: 1, nanos: 0 },
            ino: u64::MAX,
            dev: 42,
            token: Token::Etag {
                size: 12,
                etag: Arc::from("\"abc\""),
            },
        };
        let list: Arc<Vec<DirEntry>> = Arc::new(vec![
            DirEntry {
                name: OsString::from_vec(b"a\xff\n".to_vec()),
                kind: FileKind::Dir,
                ino: 5,
            },
            DirEntry {
                name: OsString::from("b"),
                kind: FileKind::Unknown,
                ino: 0,
            },
        ]);
        let names: Arc<Vec<OsString>> = Arc::new(vec![OsString::from("user.x")]);
        let key = (PathBuf::from("p"), OsString::from("user.x"));
        {
            let log = MetaLog::open(Arc::new(st.clone()), "o", &mut |_| {}).unwrap();
            log.put(
                kind::ATTRS,
                1,
                &PathBuf::from("p"),
                &Ok::<_, i32>(attr.clone()),
            );
            log.put(
                kind::DIRS,
                2,
                &PathBuf::from("d"),
                &Ok::<_, i32>(list.clone()),
            );
            log.put(
                kind::XATTRS,
                4,
                &key,
                &Ok::<Arc<[u8]>, i32>(Arc::from(&b"v"[..])),
            );
            log.put(
                kind::XATTR_LISTS,
                5,
                &PathBuf::from("p"),
                &Ok::<_, i32>(names.clone()),
            );
            log.put(
                kind::LINKS,
                3,
                &PathBuf::from("gone"),
                &Err::<Arc<[u8]>, i32>(2),
            );
            log.flush(Duration::ZERO).unwrap();
        }
        let mut seen = 0;
        MetaLog::open(Arc::new(st.clone()), "o", &mut |mut e| {
            seen += 1;
            assert!(!e.forget);
            assert_eq!(e.at_ns, e.kind as u64);
            match e.kind {
                kind::ATTRS => {
                    assert_eq!(e.take::<PathBuf>().unwrap(), PathBuf::from("p"));
                    assert_eq!(e.take::<Result<Attr, i32>>().unwrap(), Ok(attr.clone()));
                }
                kind::DIRS => {
                    let _: PathBuf = e.take().unwrap();
                    assert_eq!(
                        e.take::<Result<Arc<Vec<DirEntry>>, i32>>().unwrap(),
                        Ok(list.clone())
                    );
                }
                kind::XATTRS => {
                    assert_eq!(e.take::<(PathBuf, OsString)>().unwrap(), key);
                    assert_eq!(e.take::<V>().unwrap(), Ok(Arc::from(&b"v"[..])));
                }
                kind::XATTR_LISTS => {
                    let _: PathBuf = e.take().unwrap();
                    assert_eq!(
                        e.take::<Result<Arc<Vec<OsString>>, i32>>().unwrap(),
                        Ok(names.clone())
                    );
                }
                _ => {
                    let _: PathBuf = e.take().unwrap();
                    assert_eq!(e.take::<V>().unwrap(), Err(2));
                }
            }
        })
        .unwrap();
        assert_eq!(seen, 5);
    }
}
