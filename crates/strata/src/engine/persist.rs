//! How records are framed and how keys and values are written in the cache
//! directory's journals (`meta.log`, the write-back journal).
//!
//! A frame is `len:u32 crc:u32 payload`, the crc (crc32c) over the length and the
//! payload. Reading stops at the first frame that is torn or damaged, so nothing is
//! ever read that was not written whole.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::Arc;

use crate::origin::{Attr, DirEntry, FileKind, FsStats, Timestamp, Token};

/// A larger frame is damage, not a record.
const MAX_FRAME: usize = 16 << 20;

/// How a key or value is written in the journal.
pub(crate) trait Persist: Sized {
    fn put(&self, out: &mut Vec<u8>);
    fn take(r: &mut Reader<'_>) -> Option<Self>;
}

pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }
    pub(crate) fn blob(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.bytes(n)
    }
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_blob(out: &mut Vec<u8>, b: &[u8]) {
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

pub(crate) fn put_time(out: &mut Vec<u8>, t: Timestamp) {
    put_u64(out, t.secs as u64);
    put_u32(out, t.nanos);
}

pub(crate) fn take_time(r: &mut Reader<'_>) -> Option<Timestamp> {
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
fn frame(payload_start: usize, out: &mut [u8]) {
    let len = (out.len() - payload_start) as u32;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), &out[payload_start..]);
    out[payload_start - 8..payload_start - 4].copy_from_slice(&len.to_le_bytes());
    out[payload_start - 4..payload_start].copy_from_slice(&crc.to_le_bytes());
}

/// Appends one record: `write` puts the payload.
pub(crate) fn record(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(&[0u8; 8]);
    let start = out.len();
    write(out);
    frame(start, out);
}

/// The frames of a log, in order, until the first that is torn or damaged.
pub(crate) fn frames(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
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
