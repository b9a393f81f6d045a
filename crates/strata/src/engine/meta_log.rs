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

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::storage::{Storage, StorageFile};
use crate::sync::Mutex;

pub(crate) use super::persist::{Persist, Reader};
use super::persist::{frames, put_blob, put_u32, put_u64, record};

pub(crate) const FILE: &str = "meta.log";
const TMP: &str = "meta.log.tmp";
const MAGIC: &[u8; 8] = b"STRATAMD";
const VERSION: u32 = 1;
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

/// One journaled answer, as read back.
pub(crate) struct Entry<'a> {
    pub kind: u8,
    pub forget: bool,
    pub at_ns: u64,
    pub rest: Reader<'a>,
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
    use crate::origin::{Attr, Timestamp, Token};
    use crate::storage::SimStorage;
    use crate::storage::sim::SplitMix;
    use std::collections::BTreeMap;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    use std::path::PathBuf;

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
