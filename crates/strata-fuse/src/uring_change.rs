//! The changes (write_ops.rs) as the io_uring queues receive them: each decoded from
//! its `fuse_*_in` struct (by offset, as fuse.h lays them out) and payload, answered
//! as the fuser session answers it.

use std::time::{Duration, SystemTime};

use fuser::{Errno, INodeNo};

use crate::StrataFs;
use crate::uring::*;

pub(crate) fn is_change(opcode: u32) -> bool {
    matches!(
        opcode,
        SETATTR
            | WRITE
            | SETXATTR
            | REMOVEXATTR
            | FALLOCATE
            | SYMLINK
            | MKNOD
            | MKDIR
            | UNLINK
            | RMDIR
            | RENAME
            | RENAME2
            | LINK
            | CREATE
            | FSYNC
    )
}

/// Two NUL-terminated names at the start of `b`.
fn two_names(b: &[u8]) -> (std::ffi::OsString, std::ffi::OsString) {
    let first = name_in(b);
    let rest = b.get(first.len() + 1..).unwrap_or(&[]);
    (first.to_os_string(), name_in(rest).to_os_string())
}

/// A time of `fuse_setattr_in` (seconds as a signed count).
fn time_at(secs: u64, nanos: u32) -> fuser::TimeOrNow {
    let secs = secs as i64;
    let t = if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        SystemTime::UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::new(0, nanos)
    };
    fuser::TimeOrNow::SpecificTime(t)
}

/// The operations that change the origin (write_ops.rs), decoded from their
/// `fuse_*_in` structs and payloads; the same answers as the fuser session gives.
pub(crate) fn change(
    fs: &StrataFs,
    opcode: u32,
    ino: INodeNo,
    op_in: &[u8],
    in_len: usize,
    payload: &mut [u8],
    (uid, gid): (u32, u32),
) -> Result<usize, Errno> {
    if opcode == WRITE {
        // The data is read where it lies; the reply (8 bytes) is written over it
        // only once the write is done.
        let (fh, off, size) = (u64_at(op_in, 0), u64_at(op_in, 8), u32_at(op_in, 16));
        let n = fs.do_write(fh, off, &payload[..(size as usize).min(in_len)])?;
        let mut out = Out::new(payload);
        out.u32(n);
        out.u32(0);
        return Ok(out.len);
    }
    // Names and values are small: copied out of the buffer the reply goes into.
    let input = payload[..in_len].to_vec();
    let mut out = Out::new(payload);
    match opcode {
        SETATTR => {
            let valid = u32_at(op_in, 0);
            let has = |bit: u32| valid & bit != 0;
            let atime = if has(128) {
                Some(fuser::TimeOrNow::Now)
            } else {
                has(16).then(|| time_at(u64_at(op_in, 32), u32_at(op_in, 56)))
            };
            let mtime = if has(256) {
                Some(fuser::TimeOrNow::Now)
            } else {
                has(32).then(|| time_at(u64_at(op_in, 40), u32_at(op_in, 60)))
            };
            let (attr, ttl) = fs.do_setattr(
                ino,
                has(1).then(|| u32_at(op_in, 68)),
                has(2).then(|| u32_at(op_in, 76)),
                has(4).then(|| u32_at(op_in, 80)),
                has(8).then(|| u64_at(op_in, 16)),
                atime,
                mtime,
                has(64).then(|| u64_at(op_in, 8)),
            )?;
            out.u64(ttl.as_secs());
            out.u32(ttl.subsec_nanos());
            out.u32(0);
            put_attr(&mut out, &attr);
        }
        CREATE => {
            let (flags, mode) = (u32_at(op_in, 0) as i32, u32_at(op_in, 4));
            let name = name_in(&input).to_os_string();
            let (attr, generation, ttl, fh) = fs.do_create(ino, &name, mode, flags, uid, gid)?;
            entry_out(&mut out, &attr, generation, ttl);
            open_out(&mut out, fh, fs.open_flags(fh).bits(), 0);
        }
        MKNOD | MKDIR => {
            let name = name_in(&input).to_os_string();
            let mode = u32_at(op_in, 0);
            let (attr, generation, ttl) = if opcode == MKNOD {
                fs.do_mknod(ino, &name, mode, u32_at(op_in, 4), uid, gid)?
            } else {
                fs.do_mkdir(ino, &name, mode, uid, gid)?
            };
            entry_out(&mut out, &attr, generation, ttl);
        }
        SYMLINK => {
            let (name, target) = two_names(&input);
            let (attr, generation, ttl) = fs.do_symlink(ino, &name, &target, uid, gid)?;
            entry_out(&mut out, &attr, generation, ttl);
        }
        LINK => {
            let name = name_in(&input).to_os_string();
            let (attr, generation, ttl) = fs.do_link(INodeNo(u64_at(op_in, 0)), ino, &name)?;
            entry_out(&mut out, &attr, generation, ttl);
        }
        UNLINK | RMDIR => {
            let name = name_in(&input).to_os_string();
            fs.do_remove(ino, &name, opcode == RMDIR)?;
        }
        RENAME | RENAME2 => {
            let flags = if opcode == RENAME2 {
                u32_at(op_in, 8)
            } else {
                0
            };
            let (name, newname) = two_names(&input);
            fs.do_rename(ino, &name, INodeNo(u64_at(op_in, 0)), &newname, flags)?;
        }
        FSYNC => fs.do_fsync(u64_at(op_in, 0), u32_at(op_in, 8) & 1 != 0)?,
        FALLOCATE => fs.do_fallocate(
            u64_at(op_in, 0),
            u64_at(op_in, 8),
            u64_at(op_in, 16),
            u32_at(op_in, 24) as i32,
        )?,
        SETXATTR => {
            let (size, flags) = (u32_at(op_in, 0) as usize, u32_at(op_in, 4) as i32);
            let name = name_in(&input).to_os_string();
            let at = name.len() + 1;
            let value = input.get(at..at + size).ok_or(Errno::EINVAL)?;
            fs.do_setxattr(ino, &name, value, flags)?;
        }
        REMOVEXATTR => {
            let name = name_in(&input).to_os_string();
            fs.do_removexattr(ino, &name)?;
        }
        _ => return Err(Errno::ENOSYS),
    }
    Ok(out.len)
}
