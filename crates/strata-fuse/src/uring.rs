//! FUSE over io_uring (Linux 6.14 and later, with the fuse module's `enable_uring`
//! parameter on).
//!
//! The kernel keeps one request queue per possible CPU and hands a request to the
//! queue of the CPU its caller runs on. Each queue is served here by threads of its
//! own, each with an io_uring and one ring entry (a header buffer and a payload buffer
//! registered with `FUSE_IO_URING_CMD_REGISTER`). A request arrives as the completion
//! of the entry's command; the answer goes back, and the next request is asked for,
//! with one `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`.
//!
//! The threads are not pinned to their queue's CPU. Pinned, a sequential reader's
//! read-ahead was served on the reader's own CPU while the other one idled: pinned
//! threads read 0.72 to 0.93 × as fast as unpinned ones (warm 1 MiB reads), and 0.84 ×
//! (random 4 KiB), in bench/results/2026-12-01-uring-unpinned. Unpinned, the scheduler
//! still wakes a thread on its caller's CPU when that CPU is free.
//!
//! The fuser session keeps /dev/fuse: INIT goes through it (which is where the kernel
//! is told `FUSE_OVER_IO_URING`), as do requests sent before every queue has an entry,
//! forgets and interrupts. Until then, or if the kernel refuses, nothing changes.
//!
//! The layouts below are the kernel's (`include/uapi/linux/fuse.h`, protocol 7.42).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fuser::{Errno, FileAttr, FileType, FopenFlags, INodeNo};
use io_uring::{IoUring, cqueue, opcode, squeue, types};

use crate::{MAX_READ, StrataFs, Xattr};

pub(crate) const CMD_REGISTER: u32 = 1;
pub(crate) const CMD_COMMIT_AND_FETCH: u32 = 2;

/// `struct fuse_uring_req_header`: the request's (then the reply's) header, the
/// operation's own arguments, and `struct fuse_uring_ent_in_out`.
const HEADER_LEN: usize = 128 + 128 + 32;
const OP_IN: usize = 128;
const ENT: usize = 256;

/// Room for the largest read or write the session allows (max_pages × page size).
const PAYLOAD_LEN: usize = MAX_READ as usize;

/// The kernel's answer to INIT, as far as io_uring goes: whether the queues may be
/// registered at all.
#[derive(Default)]
pub(crate) struct Gate {
    granted: Mutex<Option<bool>>,
    cv: Condvar,
}

impl Gate {
    pub(crate) fn decide(&self, granted: bool) {
        *self.granted.lock().unwrap_or_else(|e| e.into_inner()) = Some(granted);
        self.cv.notify_all();
    }

    /// Decides "no" unless decided already.
    pub(crate) fn close(&self) {
        self.granted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(false);
        self.cv.notify_all();
    }

    fn wait(&self) -> bool {
        let mut g = self.granted.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = *g {
                return v;
            }
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The threads serving the kernel's io_uring queues. They end when the session does
/// (their commands then complete with ENOTCONN), or at once if INIT did not agree.
pub struct UringQueues {
    started: usize,
    /// Threads still serving, and a signal when one ends.
    live: Arc<(Mutex<usize>, Condvar)>,
}

/// Counts a serving thread out however it ends.
struct Leaving(Arc<(Mutex<usize>, Condvar)>);

impl Drop for Leaving {
    fn drop(&mut self) {
        let (n, cv) = &*self.0;
        *n.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        cv.notify_all();
    }
}

impl UringQueues {
    /// Starts `threads` threads (spread over the CPUs, at least one per queue) that
    /// wait for INIT and then serve the queues. `dev` is the session's /dev/fuse.
    pub fn start(fs: Arc<StrataFs>, dev: BorrowedFd<'_>, threads: usize) -> io::Result<Self> {
        let mut out = UringQueues {
            started: 0,
            live: Arc::new((Mutex::new(0), Condvar::new())),
        };
        if !fs.opts.uring {
            return Ok(out);
        }
        let possible = cpu_list("/sys/devices/system/cpu/possible")?;
        let online = cpu_list("/sys/devices/system/cpu/online").unwrap_or_default();
        // One queue per possible CPU; queue ids are CPU numbers.
        let queues = possible.iter().max().map_or(1, |m| m + 1);
        let per_cpu = (threads / online.len().max(1)).max(1);
        for qid in 0..queues {
            let on = online.contains(&qid);
            for i in 0..if on { per_cpu } else { 1 } {
                let dev = dev.try_clone_to_owned()?;
                let fs = fs.clone();
                *out.live.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                let leaving = Leaving(out.live.clone());
                std::thread::Builder::new()
                    .name(format!("strata-uring-{qid}.{i}"))
                    .spawn(move || {
                        let _leaving = leaving;
                        serve(&fs, dev, qid as u16)
                    })?;
                out.started += 1;
            }
        }
        Ok(out)
    }

    /// How many threads serve the queues.
    pub fn threads(&self) -> usize {
        self.started
    }

    /// After the session: waits up to `limit` for the threads to finish the requests
    /// they hold (their next command fails once the connection is gone), so the engine
    /// is not shut down under them. Returns whether they all ended.
    pub fn wait_ended(&self, limit: Duration) -> bool {
        let (n, cv) = &*self.live;
        let g = n.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = cv
            .wait_timeout_while(g, limit, |n| *n > 0)
            .unwrap_or_else(|e| e.into_inner());
        *g == 0
    }
}

/// CPU numbers from a sysfs list such as "0-3,8".
fn cpu_list(path: &str) -> io::Result<Vec<usize>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("cannot parse {path}"));
    let mut v = Vec::new();
    for part in std::fs::read_to_string(path)?.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: usize = a.parse().map_err(|_| bad())?;
        let b: usize = b.parse().map_err(|_| bad())?;
        v.extend(a..=b);
    }
    Ok(v)
}

#[repr(C, align(8))]
struct Header([u8; HEADER_LEN]);

#[repr(C)]
struct Iovec {
    base: *mut u8,
    len: usize,
}

/// One ring entry of queue `qid`, served until the connection ends.
fn serve(fs: &StrataFs, dev: OwnedFd, qid: u16) {
    if !fs.uring.wait() {
        return;
    }
    let mut ring = match IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(2) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, qid, "cannot set up an io_uring for a FUSE queue");
            return;
        }
    };
    let mut header = Box::new(Header([0; HEADER_LEN]));
    let mut payload = vec![0u8; PAYLOAD_LEN];
    let iov = [
        Iovec {
            base: header.0.as_mut_ptr(),
            len: HEADER_LEN,
        },
        Iovec {
            base: payload.as_mut_ptr(),
            len: PAYLOAD_LEN,
        },
    ];
    let fd = types::Fd(dev.as_raw_fd());
    // INIT's reply may still be on its way: the kernel answers EAGAIN until it is in.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut op, mut commit_id) = (CMD_REGISTER, 0u64);
    loop {
        let sqe = command(fd, op, commit_id, qid, iov.as_ptr() as u64);
        // SAFETY: the buffers the command points to (`iov`, `header`, `payload`) live
        // until this function returns, and it returns only once no command is pending
        // (or leaks them: see below).
        if unsafe { ring.submission().push(&sqe) }.is_err() {
            break;
        }
        let res = loop {
            match ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INTR.raw_os_error()) => {
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, qid, "io_uring wait failed; leaving the FUSE queue");
                    // The command may still be pending: its buffers must outlive it.
                    std::mem::forget((header, payload, ring));
                    return;
                }
            }
            if let Some(c) = ring.completion().next() {
                break c.result();
            }
        };
        if res == -rustix::io::Errno::AGAIN.raw_os_error()
            && op == CMD_REGISTER
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        if res < 0 {
            let e = io::Error::from_raw_os_error(-res);
            let ended = [
                rustix::io::Errno::NOTCONN,
                rustix::io::Errno::CONNABORTED,
                rustix::io::Errno::NODEV,
                rustix::io::Errno::CANCELED,
            ]
            .iter()
            .any(|x| x.raw_os_error() == -res);
            if !ended {
                tracing::warn!(error = %e, qid, register = op == CMD_REGISTER, "FUSE io_uring queue stopped");
            }
            break;
        }
        commit_id = u64_at(&header.0, ENT + 8);
        let n = answer(fs, &mut header.0, &mut payload);
        header.0[ENT + 16..ENT + 20].copy_from_slice(&(n as u32).to_ne_bytes());
        op = CMD_COMMIT_AND_FETCH;
    }
}

/// An SQE128 carrying `struct fuse_uring_cmd_req` with the iovec pair.
fn command(fd: types::Fd, op: u32, commit_id: u64, qid: u16, iov: u64) -> squeue::Entry128 {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    let sqe = opcode::UringCmd80::new(fd, op)
        .cmd(cmd)
        .addr(Some(iov))
        .build();
    // The kernel wants the iovec count in the SQE's `len` (offset 24 of struct
    // io_uring_sqe), which the builder has no setter for.
    // SAFETY: Entry128 is repr(C), the 128 bytes of the SQE128 with no padding.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
    unsafe { std::mem::transmute(raw) }
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A NUL-terminated name at the start of `b`.
pub(crate) fn name_in(b: &[u8]) -> &OsStr {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    OsStr::from_bytes(&b[..end])
}

/// Answers the request in `header` (and `payload`): writes the reply's header in
/// place and its body into `payload`; returns the body's length.
fn answer(fs: &StrataFs, header: &mut [u8; HEADER_LEN], payload: &mut [u8]) -> usize {
    let opcode = u32_at(header, 4);
    let unique = u64_at(header, 8);
    let nodeid = u64_at(header, 16);
    let in_len = (u32_at(header, ENT + 16) as usize).min(payload.len());
    strata::stats::inc(&fs.engine.counters().fuse_uring_requests);
    let uid = u32_at(header, 24);
    let r = if !fs.opts.allow_other && uid != fs.owner && !MAY_COME_WITHOUT_UID.contains(&opcode) {
        Err(Errno::EACCES)
    } else {
        let who = (uid, u32_at(header, 28));
        dispatch(
            fs,
            opcode,
            INodeNo(nodeid),
            &header[OP_IN..ENT],
            in_len,
            payload,
            who,
        )
    };
    let (error, n) = match r {
        Ok(n) => (0i32, n),
        Err(e) => (-e.code(), 0),
    };
    header[0..4].copy_from_slice(&(16 + n as u32).to_ne_bytes());
    header[4..8].copy_from_slice(&error.to_ne_bytes());
    header[8..16].copy_from_slice(&unique.to_ne_bytes());
    n
}

// Opcodes (enum fuse_opcode).
pub(crate) const LOOKUP: u32 = 1;
pub(crate) const GETATTR: u32 = 3;
pub(crate) const SETATTR: u32 = 4;
pub(crate) const READLINK: u32 = 5;
pub(crate) const SYMLINK: u32 = 6;
pub(crate) const MKNOD: u32 = 8;
pub(crate) const MKDIR: u32 = 9;
pub(crate) const UNLINK: u32 = 10;
pub(crate) const RMDIR: u32 = 11;
pub(crate) const RENAME: u32 = 12;
pub(crate) const LINK: u32 = 13;
pub(crate) const OPEN: u32 = 14;
pub(crate) const READ: u32 = 15;
pub(crate) const WRITE: u32 = 16;
pub(crate) const STATFS: u32 = 17;
pub(crate) const RELEASE: u32 = 18;
pub(crate) const FSYNC: u32 = 20;
pub(crate) const SETXATTR: u32 = 21;
pub(crate) const GETXATTR: u32 = 22;
pub(crate) const LISTXATTR: u32 = 23;
pub(crate) const REMOVEXATTR: u32 = 24;
pub(crate) const FLUSH: u32 = 25;
pub(crate) const OPENDIR: u32 = 27;
pub(crate) const FSYNCDIR: u32 = 30;
pub(crate) const READDIR: u32 = 28;
pub(crate) const RELEASEDIR: u32 = 29;
pub(crate) const IOCTL: u32 = 39;
pub(crate) const ACCESS: u32 = 34;
pub(crate) const CREATE: u32 = 35;
pub(crate) const DESTROY: u32 = 38;
pub(crate) const FALLOCATE: u32 = 43;
pub(crate) const READDIRPLUS: u32 = 44;
pub(crate) const RENAME2: u32 = 45;

/// What the kernel may send on behalf of no particular user; the rest is refused to
/// users other than the mounting one, without allow_other.
const MAY_COME_WITHOUT_UID: [u32; 9] = [
    READ,
    WRITE,
    READDIR,
    READDIRPLUS,
    RELEASE,
    RELEASEDIR,
    DESTROY,
    FSYNC,
    FSYNCDIR,
];

/// Runs one operation; the same answers as the fuser session gives (see lib.rs),
/// ENOSYS where that one has none.
fn dispatch(
    fs: &StrataFs,
    opcode: u32,
    ino: INodeNo,
    op_in: &[u8],
    in_len: usize,
    payload: &mut [u8],
    (uid, gid): (u32, u32),
) -> Result<usize, Errno> {
    if crate::uring_change::is_change(opcode) {
        return crate::uring_change::change(fs, opcode, ino, op_in, in_len, payload, (uid, gid));
    }
    let mut out = Out::new(payload);
    match opcode {
        LOOKUP => {
            let name = name_in(&out.buf[..in_len]).to_os_string();
            let (attr, generation, ttl) = fs.do_lookup(ino, &name)?;
            entry_out(&mut out, &attr, generation, ttl);
        }
        GETATTR => {
            // fuse_getattr_in: getattr_flags (FUSE_GETATTR_FH: 1), dummy, fh.
            let fh = (u32_at(op_in, 0) & 1 != 0).then(|| u64_at(op_in, 8));
            let (attr, ttl) = fs.do_getattr(ino, fh)?;
            out.u64(ttl.as_secs());
            out.u32(ttl.subsec_nanos());
            out.u32(0);
            put_attr(&mut out, &attr);
        }
        READLINK => {
            let t = fs.do_readlink(ino)?;
            out.put(&t);
        }
        OPEN => match fs.do_open(ino, u32_at(op_in, 0) as i32)? {
            (fh, None) => open_out(&mut out, fh, fs.open_flags(fh).bits(), 0),
            (fh, Some(id)) => {
                let flags = FopenFlags::FOPEN_PASSTHROUGH | FopenFlags::FOPEN_NOFLUSH;
                open_out(&mut out, fh, flags.bits(), id)
            }
        },
        READ => {
            let (fh, off, size) = (u64_at(op_in, 0), u64_at(op_in, 8), u32_at(op_in, 16));
            let t0 = Instant::now();
            let read = fs.do_read(fh, off, size);
            if let Ok(b) = &read {
                for p in b.parts() {
                    out.put(p);
                }
            }
            // Counted as on /dev/fuse, failed reads included.
            fs.note_read_time(t0);
            read?;
        }
        STATFS => {
            let s = fs.do_statfs()?;
            for v in [s.blocks, s.bfree, s.bavail, s.files, s.ffree] {
                out.u64(v);
            }
            for v in [s.bsize, s.namelen, s.frsize, 0, 0, 0, 0, 0, 0, 0] {
                out.u32(v);
            }
        }
        RELEASE => fs.do_release(u64_at(op_in, 0)),
        FLUSH | DESTROY => {}
        GETXATTR | LISTXATTR => {
            let size = u32_at(op_in, 0);
            let x = if opcode == GETXATTR {
                let name = name_in(&out.buf[..in_len]).to_os_string();
                fs.do_getxattr(ino, &name, size)?
            } else {
                fs.do_listxattr(ino, size)?
            };
            match x {
                Xattr::Size(n) => {
                    out.u32(n);
                    out.u32(0);
                }
                Xattr::Data(v) => {
                    out.put(&v);
                }
            }
        }
        OPENDIR => {
            let fh = fs.do_opendir(ino)?;
            open_out(&mut out, fh, 0, 0);
        }
        READDIR | READDIRPLUS => {
            let (fh, off, size) = (u64_at(op_in, 0), u64_at(op_in, 8), u32_at(op_in, 16));
            out.cap = (size as usize).min(out.buf.len());
            if opcode == READDIR {
                fs.do_readdir(ino, fh, off, &mut |e_ino, next, kind, name| {
                    !dirent(&mut out, e_ino, next, kind, name, None)
                })?;
            } else {
                fs.do_readdirplus(ino, fh, off, &mut |next, name, attr, generation, ttl| {
                    !dirent(
                        &mut out,
                        attr.ino.0,
                        next,
                        attr.kind,
                        name,
                        Some((attr, generation, ttl)),
                    )
                })?;
            }
        }
        RELEASEDIR => fs.do_releasedir(u64_at(op_in, 0)),
        ACCESS => fs.do_access(ino, u32_at(op_in, 0) as i32)?,
        // What a file without ioctls answers (isatty asks every open file).
        IOCTL => return Err(Errno::ENOTTY),
        _ => return Err(Errno::ENOSYS),
    }
    Ok(out.len)
}

/// The reply body, written into the payload buffer.
pub(crate) struct Out<'a> {
    buf: &'a mut [u8],
    pub(crate) len: usize,
    cap: usize,
}

impl<'a> Out<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        let cap = buf.len();
        Out { buf, len: 0, cap }
    }

    /// Appends what fits (the buffer holds any whole reply; a read or a listing is
    /// bounded by the request's own size).
    fn put(&mut self, b: &[u8]) {
        let n = b.len().min(self.cap - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.put(&v.to_ne_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.put(&v.to_ne_bytes());
    }
}

fn time_parts(t: SystemTime) -> (u64, u32) {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => (d.as_secs(), d.subsec_nanos()),
        // Before 1970: a negative second count with a positive nanosecond part.
        Err(e) => {
            let d = e.duration();
            let (s, ns) = (d.as_secs() as i64, d.subsec_nanos());
            if ns == 0 {
                ((-s) as u64, 0)
            } else {
                ((-s - 1) as u64, 1_000_000_000 - ns)
            }
        }
    }
}

fn mode_bits(kind: FileType) -> u32 {
    match kind {
        FileType::NamedPipe => 0o010000,
        FileType::CharDevice => 0o020000,
        FileType::Directory => 0o040000,
        FileType::BlockDevice => 0o060000,
        FileType::RegularFile => 0o100000,
        FileType::Symlink => 0o120000,
        FileType::Socket => 0o140000,
    }
}

/// `struct fuse_attr` (88 bytes).
pub(crate) fn put_attr(out: &mut Out, a: &FileAttr) {
    let (at, atn) = time_parts(a.atime);
    let (mt, mtn) = time_parts(a.mtime);
    let (ct, ctn) = time_parts(a.ctime);
    for v in [a.ino.0, a.size, a.blocks, at, mt, ct] {
        out.u64(v);
    }
    let mode = mode_bits(a.kind) | u32::from(a.perm);
    for v in [
        atn, mtn, ctn, mode, a.nlink, a.uid, a.gid, a.rdev, a.blksize, 0,
    ] {
        out.u32(v);
    }
}

/// `struct fuse_entry_out` (128 bytes).
pub(crate) fn entry_out(out: &mut Out, a: &FileAttr, generation: u64, ttl: Duration) {
    for v in [a.ino.0, generation, ttl.as_secs(), ttl.as_secs()] {
        out.u64(v);
    }
    out.u32(ttl.subsec_nanos());
    out.u32(ttl.subsec_nanos());
    put_attr(out, a);
}

/// `struct fuse_open_out` (16 bytes): the handle, FOPEN flags and backing id.
pub(crate) fn open_out(out: &mut Out, fh: u64, flags: u32, backing_id: u32) {
    out.u64(fh);
    out.u32(flags);
    out.u32(backing_id);
}

/// Appends a `struct fuse_dirent` (with a `fuse_entry_out` before it for
/// readdirplus), padded to 8 bytes. Returns false, writing nothing, when it does not
/// fit.
fn dirent(
    out: &mut Out,
    ino: u64,
    next: u64,
    kind: FileType,
    name: &OsStr,
    plus: Option<(&FileAttr, u64, Duration)>,
) -> bool {
    let name = name.as_bytes();
    let bare = 24 + name.len();
    let size = plus.map_or(0, |_| 128) + bare.next_multiple_of(8);
    if out.len + size > out.cap {
        return false;
    }
    if let Some((attr, generation, ttl)) = plus {
        entry_out(out, attr, generation, ttl);
    }
    out.u64(ino);
    out.u64(next);
    out.u32(name.len() as u32);
    out.u32(mode_bits(kind) >> 12);
    out.put(name);
    out.put(&[0u8; 7][..bare.next_multiple_of(8) - bare]);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        let dir = std::env::temp_dir().join(format!("strata-cpulist-{}", std::process::id()));
        std::fs::write(&dir, "0-3,8\n").unwrap();
        assert_eq!(
            cpu_list(dir.to_str().unwrap()).unwrap(),
            vec![0, 1, 2, 3, 8]
        );
        std::fs::write(&dir, "x").unwrap();
        assert!(cpu_list(dir.to_str().unwrap()).is_err());
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn dirents_are_padded_and_bounded() {
        let mut buf = vec![0u8; 64];
        let mut out = Out::new(&mut buf);
        assert!(dirent(
            &mut out,
            7,
            1,
            FileType::Directory,
            OsStr::new("."),
            None
        ));
        assert_eq!(out.len, 32);
        // 24 + 9 = 33 bytes, padded to 40: does not fit in the 32 left.
        assert!(!dirent(
            &mut out,
            8,
            2,
            FileType::RegularFile,
            OsStr::new("123456789"),
            None
        ));
        assert_eq!(out.len, 32);
        assert_eq!(u64_at(&buf, 0), 7);
        assert_eq!(u32_at(&buf, 16), 1);
        assert_eq!(u32_at(&buf, 20), 4);
        assert_eq!(buf[24], b'.');
    }

    #[test]
    fn times_before_1970_keep_positive_nanoseconds() {
        let t = SystemTime::UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(time_parts(t), ((-2i64) as u64, 500_000_000));
        let t = SystemTime::UNIX_EPOCH + Duration::new(5, 7);
        assert_eq!(time_parts(t), (5, 7));
    }
}
