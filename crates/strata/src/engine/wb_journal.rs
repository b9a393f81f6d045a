//! The write-back journal: every data write answered before the origin has it is
//! first appended here, in `CACHE_DIR/writeback/NNNNNNNNNNNN.log`, so that nothing
//! acknowledged is lost to a crash, a `kill -9` or a power cut.
//!
//! Records are framed as in `meta.log` (`len:u32 crc:u32 payload`, crc32c over both).
//! A record carries its data inline: the checksum covers the bytes it names, so a
//! record is whole or it is not read at all — the index's rule (data durable before
//! the record naming it) holds by construction. Payloads:
//! - `0 magic version` opens a segment;
//! - `1 seq path base off data`: bytes written at `off` over the origin file whose
//!   token was `base`;
//! - `2 seq path base has [atime] [mtime] [mode] [uid] [gid]`: attributes set while
//!   the file was dirty (all of them since it became dirty; `has` says which are
//!   there), applied after its data;
//! - `3 seq path upto now`: every record of `path` up to `upto` is on the origin
//!   (synced there), whose file is at token `now` since: the base of the records
//!   after `upto`, even those written during the flush over the token before it;
//! - `4 seq path`: a flush of `path` may change the origin file from here on, with
//!   the records before it (appended under the file's lock with the flush's
//!   snapshot, so exactly those; its `3` names this seq as `upto`). It is synced
//!   before the flush's first origin write, so a replay that finds it with no `3`
//!   after it knows the origin may hold any part of them (a flush cut short, or one
//!   whose `3` was lost with later records already synced over the token before
//!   it): their base says nothing then, and they are written again.
//!
//! `sync` makes every record appended so far durable (one `fdatasync` of the current
//! segment; a segment is synced before the next one is started, so only the last
//! can have a torn tail). A segment is deleted once every file with records in it
//! was flushed past them; when nothing is dirty the current one is cut back to its
//! header. At open the segments are read oldest first and what is still dirty is
//! handed back, to be sent to the origin before the file is served.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rustc_hash::FxHashMap;

use super::persist::{
    Persist, Reader, frames, put_blob, put_time, put_u32, put_u64, record, take_time,
};
use crate::origin::{Timestamp, Token};
use crate::storage::{Storage, StorageFile};
use crate::sync::Mutex;

pub(crate) const DIR: &str = "writeback";
const MAGIC: &[u8; 8] = b"STRATAWB";
const VERSION: u32 = 1;
/// A segment past this size is closed and a new one started.
const SEGMENT_BYTES: u64 = 64 << 20;

const OPEN: u8 = 0;
const DATA: u8 = 1;
const TIMES: u8 = 2;
const DONE: u8 = 3;
const FLUSH: u8 = 4;

/// Attributes set on a dirty file (times, mode, owner), applied at the origin after
/// its data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LaterAttrs {
    pub atime: Option<Timestamp>,
    pub mtime: Option<Timestamp>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl LaterAttrs {
    /// `later` set over `self`: its fields win.
    pub fn then(self, later: LaterAttrs) -> LaterAttrs {
        LaterAttrs {
            atime: later.atime.or(self.atime),
            mtime: later.mtime.or(self.mtime),
            mode: later.mode.or(self.mode),
            uid: later.uid.or(self.uid),
            gid: later.gid.or(self.gid),
        }
    }
}

/// What a replay found still dirty of one file.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    /// The origin's token the newest record was written over.
    pub base: Option<Token>,
    /// Writes in the order they were made: (seq, offset, bytes).
    pub writes: Vec<(u64, u64, Bytes)>,
    pub times: Option<(u64, LaterAttrs)>,
    /// The newest record's sequence number.
    pub seq: u64,
    /// A flush was under way at the cut (a `4` with no `3` after it): the origin may
    /// hold part of the writes, so its token is not compared with `base`.
    pub flushing: bool,
}

impl Replayed {
    /// Forgets what is on the origin: the records up to `seq`.
    fn done(&mut self, seq: u64) {
        self.writes.retain(|w| w.0 > seq);
        if self.times.is_some_and(|t| t.0 <= seq) {
            self.times = None;
        }
    }

    fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.times.is_none()
    }
}

struct Segment {
    file: Arc<dyn StorageFile>,
    /// Files with records here not yet flushed, with their newest record's seq.
    live: FxHashMap<PathBuf, u64>,
}

struct State {
    segments: BTreeMap<u64, Segment>,
    /// Number of the segment appended to.
    cur: u64,
    len: u64,
    header_len: u64,
    next_seq: u64,
    /// Appended but perhaps not yet durable: the newest seq written.
    written_seq: u64,
}

pub(crate) struct Journal {
    storage: Arc<dyn Storage>,
    st: Mutex<State>,
    /// Highest seq known durable; syncs are serialized here.
    synced: Mutex<u64>,
}

fn seg_path(no: u64) -> PathBuf {
    Path::new(DIR).join(format!("{no:012}.log"))
}

impl Journal {
    /// Opens the journal in `storage`, returning what is still dirty, by path.
    pub fn open(storage: Arc<dyn Storage>) -> io::Result<(Journal, BTreeMap<PathBuf, Replayed>)> {
        storage.create_dir_all(Path::new(DIR))?;
        let mut nos: Vec<u64> = storage
            .list_dir(Path::new(DIR))?
            .iter()
            .filter_map(|n| n.strip_suffix(".log")?.parse().ok())
            .collect();
        nos.sort_unstable();
        let mut found: BTreeMap<PathBuf, Replayed> = BTreeMap::new();
        let mut segments = BTreeMap::new();
        let mut max_seq = 0;
        let last = nos.last().copied();
        for no in nos {
            let file = storage.open(&seg_path(no), false)?;
            let len = file.len()?;
            let mut bytes = vec![0u8; len as usize];
            let n = crate::storage::read_full_at(&*file, &mut bytes, 0)?;
            bytes.truncate(n);
            let mut live: FxHashMap<PathBuf, u64> = FxHashMap::default();
            let mut good = 0u64;
            let mut it = frames(&bytes);
            let ours = it.next().is_some_and(|h| {
                good = 8 + h.len() as u64;
                let mut r = Reader(h);
                r.u8() == Some(OPEN) && r.bytes(8) == Some(&MAGIC[..]) && r.u32() == Some(VERSION)
            });
            if ours {
                for p in it {
                    good += 8 + p.len() as u64;
                    let mut r = Reader(p);
                    if let Some(seq) =
                        Self::replay_one(&mut r, &mut found, &mut live, &mut segments)
                    {
                        max_seq = max_seq.max(seq);
                    }
                }
            }
            if !ours || (good < len && Some(no) != last) {
                // Older segments were synced whole before the next was started.
                tracing::warn!(
                    segment = no,
                    "write-back journal segment damaged: read up to the damage"
                );
            }
            segments.insert(no, Segment { file, live });
        }
        found.retain(|_, f| !f.is_empty());
        let cur = segments.keys().next_back().map_or(1, |n| n + 1);
        let j = Journal {
            storage,
            st: Mutex::new(State {
                segments,
                cur: 0,
                len: 0,
                header_len: 0,
                next_seq: max_seq + 1,
                written_seq: max_seq,
            }),
            synced: Mutex::new(max_seq),
        };
        {
            let mut st = j.st.lock();
            j.start_segment(&mut st, cur)?;
            j.drop_flushed(&mut st);
        }
        Ok((j, found))
    }

    /// Applies one record read back, returning its seq; None if it is not one.
    fn replay_one(
        r: &mut Reader<'_>,
        found: &mut BTreeMap<PathBuf, Replayed>,
        live: &mut FxHashMap<PathBuf, u64>,
        segments: &mut BTreeMap<u64, Segment>,
    ) -> Option<u64> {
        let kind = r.u8()?;
        let seq = r.u64()?;
        let path = PathBuf::take(r)?;
        match kind {
            DATA | TIMES => {
                let base = Token::take(r)?;
                let f = found.entry(path.clone()).or_default();
                if kind == DATA {
                    let off = r.u64()?;
                    let data = Bytes::copy_from_slice(r.blob()?);
                    f.writes.push((seq, off, data));
                } else {
                    let has = r.u8()?;
                    let mut t = LaterAttrs::default();
                    if has & 1 != 0 {
                        t.atime = Some(take_time(r)?);
                    }
                    if has & 2 != 0 {
                        t.mtime = Some(take_time(r)?);
                    }
                    if has & 4 != 0 {
                        t.mode = Some(r.u32()?);
                    }
                    if has & 8 != 0 {
                        t.uid = Some(r.u32()?);
                    }
                    if has & 16 != 0 {
                        t.gid = Some(r.u32()?);
                    }
                    f.times = Some((seq, t));
                }
                f.base = Some(base);
                f.seq = seq;
                live.insert(path, seq);
            }
            DONE => {
                let upto = r.u64()?;
                let now = Token::take(r)?;
                if let Some(f) = found.get_mut(&path) {
                    f.done(upto);
                    f.flushing = false;
                    // Records after `upto` written during that flush name the token
                    // from before it; the origin is at `now` since.
                    f.base = Some(now);
                }
                if live.get(&path).is_some_and(|&s| s <= upto) {
                    live.remove(&path);
                }
                for s in segments.values_mut() {
                    if s.live.get(&path).is_some_and(|&s| s <= upto) {
                        s.live.remove(&path);
                    }
                }
            }
            FLUSH => {
                if let Some(f) = found.get_mut(&path) {
                    f.flushing = true;
                }
                live.insert(path, seq);
            }
            _ => return None,
        }
        Some(seq)
    }

    fn start_segment(&self, st: &mut State, no: u64) -> io::Result<()> {
        let file = self.storage.open(&seg_path(no), true)?;
        let mut head = Vec::new();
        record(&mut head, |o| {
            o.push(OPEN);
            o.extend_from_slice(MAGIC);
            put_u32(o, VERSION);
        });
        file.set_len(0)?;
        file.write_all_at(&head, 0)?;
        file.sync_data()?;
        // The name must be durable before a record in it is acknowledged.
        self.storage.sync_dir(Path::new(DIR))?;
        st.segments.insert(
            no,
            Segment {
                file,
                live: FxHashMap::default(),
            },
        );
        st.cur = no;
        st.len = head.len() as u64;
        st.header_len = st.len;
        Ok(())
    }

    fn append(&self, path: &Path, kind: u8, body: impl FnOnce(&mut Vec<u8>)) -> io::Result<u64> {
        let mut st = self.st.lock();
        let seq = st.next_seq;
        let mut out = Vec::new();
        record(&mut out, |o| {
            o.push(kind);
            put_u64(o, seq);
            path.to_path_buf().put(o);
            body(o);
        });
        if st.len + out.len() as u64 > SEGMENT_BYTES && st.len > st.header_len {
            // Closed whole (synced) before the next one opens: only the last segment
            // may have a torn tail.
            let old = st.segments.get(&st.cur).map(|s| s.file.clone());
            if let Some(f) = old {
                f.sync_data()?;
            }
            let next = st.cur + 1;
            self.start_segment(&mut st, next)?;
        }
        let cur = st.cur;
        let file = st.segments.get(&cur).map(|s| s.file.clone());
        let Some(file) = file else {
            return Err(io::Error::other("write-back journal has no open segment"));
        };
        let at = st.len;
        if let Err(e) = file.write_all_at(&out, at) {
            // Whatever part of it landed is cut, so the next record follows the last
            // good one.
            let _ = file.set_len(at);
            return Err(e);
        }
        st.len += out.len() as u64;
        st.next_seq += 1;
        st.written_seq = seq;
        // A start is live too: its segment must outlive it until its DONE.
        if matches!(kind, DATA | TIMES | FLUSH)
            && let Some(s) = st.segments.get_mut(&cur)
        {
            s.live.insert(path.to_path_buf(), seq);
        }
        Ok(seq)
    }

    /// Appends a write of `data` at `off` over the origin file at `base`.
    pub fn write(&self, path: &Path, base: &Token, off: u64, data: &[u8]) -> io::Result<u64> {
        self.append(path, DATA, |o| {
            base.put(o);
            put_u64(o, off);
            put_blob(o, data);
        })
    }

    /// Appends the attributes set while `path` was dirty (all of them so far).
    pub fn times(&self, path: &Path, base: &Token, t: LaterAttrs) -> io::Result<u64> {
        self.append(path, TIMES, |o| {
            base.put(o);
            let has = t.atime.is_some() as u8
                | (t.mtime.is_some() as u8) << 1
                | (t.mode.is_some() as u8) << 2
                | (t.uid.is_some() as u8) << 3
                | (t.gid.is_some() as u8) << 4;
            o.push(has);
            for x in [t.atime, t.mtime].into_iter().flatten() {
                put_time(o, x);
            }
            for x in [t.mode, t.uid, t.gid].into_iter().flatten() {
                put_u32(o, x);
            }
        })
    }

    /// Appends the start of a flush of `path` (not yet durable: the flush syncs it
    /// before the origin sees the first byte).
    pub fn flush_start(&self, path: &Path) -> io::Result<u64> {
        self.append(path, FLUSH, |_| {})
    }

    /// Records that `path`'s records up to `seq` are on the origin (durable there),
    /// whose file is at `now` since, and drops the segments nothing live is left in.
    pub fn done(&self, path: &Path, seq: u64, now: &Token) -> io::Result<()> {
        self.append(path, DONE, |o| {
            put_u64(o, seq);
            now.put(o);
        })?;
        let mut st = self.st.lock();
        for s in st.segments.values_mut() {
            if s.live.get(path).is_some_and(|&s| s <= seq) {
                s.live.remove(path);
            }
        }
        self.drop_flushed(&mut st);
        Ok(())
    }

    /// Deletes the older segments nothing live is left in, and cuts the current one
    /// back to its header when nothing anywhere is live.
    fn drop_flushed(&self, st: &mut State) {
        let cur = st.cur;
        let dead: Vec<u64> = st
            .segments
            .iter()
            .filter(|(no, s)| **no != cur && s.live.is_empty())
            .map(|(no, _)| *no)
            .collect();
        for no in dead {
            if self.storage.remove_file(&seg_path(no)).is_ok() {
                st.segments.remove(&no);
            }
        }
        let idle = st.segments.values().all(|s| s.live.is_empty());
        if idle && st.len > st.header_len + (1 << 20) {
            let file = st.segments.get(&cur).map(|s| s.file.clone());
            if let Some(f) = file
                && f.set_len(st.header_len).is_ok()
            {
                st.len = st.header_len;
            }
        }
    }

    /// Makes every record appended so far durable.
    pub fn sync(&self) -> io::Result<()> {
        let mut synced = self.synced.lock();
        let (seq, file) = {
            let st = self.st.lock();
            (
                st.written_seq,
                st.segments.get(&st.cur).map(|s| s.file.clone()),
            )
        };
        if seq <= *synced {
            return Ok(());
        }
        if let Some(f) = file {
            f.sync_data()?;
        }
        *synced = seq;
        Ok(())
    }
}
