//! Reads into device memory (the library's API; a FUSE mount cannot return device
//! memory). One read is of one version of the file, as a host read is:
//!
//! - blocks the device tier holds are copied device to device, each borrowed
//!   (`Loan`) until the copies are done, so no eviction or invalidation reuses its
//!   slot meanwhile;
//! - the rest is read as a host read would be (RAM, compressed, disk, shared tier,
//!   or the origin, with every check that path makes), a chunk at a time, and
//!   copied through two pinned staging buffers: a chunk's copy to the device runs
//!   while the next chunk is looked up or fetched;
//! - whole blocks that came from the host are then copied, device to device, into
//!   slots of the device tier, found from the moment the stream has finished.
//!
//! If the file's version changes during the read (a host read moved the handle to
//! a new version), the read starts over on the new one.

use super::*;
use crate::device::{DeviceBuffer, DeviceError, Event, PinnedBuffer, Stream};
use crate::tier::Tier;
use crate::tier::device::{DeviceTier, Loan, Reservation};

/// Bytes per staging buffer (and per host read of a chunk).
const STAGE: usize = 4 << 20;

/// Where the bytes of a device read came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceRead {
    /// Bytes written to the caller's buffer (short at the end of the file).
    pub bytes: u64,
    /// Of them, copied from the device tier.
    pub device_bytes: u64,
    /// Of them, read on the host (host tiers or the origin) and copied over.
    pub host_bytes: u64,
}

/// Blocks of a file lent in place from the device tier, read-only (see
/// `tier::device::Loan`): each block's slot is kept from reuse until this is dropped.
pub struct DeviceLoans {
    /// The file's bytes from the asked offset: per block, the loan and the range of
    /// the block's bytes that are part of the asked range.
    pub blocks: Vec<(Loan, Range<usize>)>,
}

fn device_error(e: DeviceError) -> io::Error {
    io::Error::other(e)
}

fn no_device() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "no device tier (Config::device / --gpu-memory)",
    )
}

/// A staging buffer and the event after its last copy.
struct Stage {
    buf: Box<dyn PinnedBuffer>,
    done: Option<Box<dyn Event>>,
}

impl Inner {
    fn staging(&self, dt: &DeviceTier) -> io::Result<Stage> {
        let buf = match self.stages.lock().pop() {
            Some(b) => b,
            None => dt.device().alloc_pinned(STAGE).map_err(device_error)?,
        };
        Ok(Stage { buf, done: None })
    }

    pub(super) fn read_device(
        &self,
        h: &Handle,
        off: u64,
        dst: &dyn DeviceBuffer,
        dst_off: usize,
        len: usize,
    ) -> io::Result<DeviceRead> {
        let dt = self.tiers.device.clone().ok_or_else(no_device)?;
        crate::device::check_bounds("read target", dst_off, len, dst.len())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let r = self.read_device_staged(h, off, dst, dst_off, len, &dt);
        if let Err(e) = &r
            && let Some(d) = e.get_ref().and_then(|x| x.downcast_ref::<DeviceError>())
        {
            // A device that fails is taken for gone: the tier turns itself off.
            dt.fail("a device read", d);
        }
        r
    }

    fn read_device_staged(
        &self,
        h: &Handle,
        off: u64,
        dst: &dyn DeviceBuffer,
        dst_off: usize,
        len: usize,
        dt: &Arc<DeviceTier>,
    ) -> io::Result<DeviceRead> {
        let stream = dt.device().stream().map_err(device_error)?;
        let mut stages = [self.staging(dt)?, self.staging(dt)?];
        let r = (|| {
            for _ in 0..3 {
                if let Some(r) =
                    self.read_device_once(h, off, dst, dst_off, len, dt, &*stream, &mut stages)?
                {
                    return Ok(r);
                }
            }
            Err(io::Error::from_raw_os_error(ESTALE))
        })();
        // Every copy from the staging buffers is done before they are reused.
        let synced = stream.synchronize();
        if r.is_ok() || synced.is_ok() {
            let mut pool = self.stages.lock();
            for s in stages {
                pool.push(s.buf);
            }
        }
        synced.map_err(device_error)?;
        r
    }

    /// One try on the handle's current version; None: the version changed. The
    /// stream is synchronized before the slots it lent or reserved are given back,
    /// whatever happened: a copy still in flight into a slot given to another block
    /// would land over that block's bytes.
    #[allow(clippy::too_many_arguments)]
    fn read_device_once(
        &self,
        h: &Handle,
        off: u64,
        dst: &dyn DeviceBuffer,
        dst_off: usize,
        len: usize,
        dt: &DeviceTier,
        stream: &dyn Stream,
        stages: &mut [Stage; 2],
    ) -> io::Result<Option<DeviceRead>> {
        let mut loans: Vec<Loan> = Vec::new();
        let mut puts: Vec<Reservation<'_>> = Vec::new();
        let r = self.enqueue_device_read(
            h, off, dst, dst_off, len, dt, stream, stages, &mut loans, &mut puts,
        );
        let synced = stream.synchronize().map_err(device_error);
        match (r, synced) {
            (Ok(Some(out)), Ok(())) => {
                for p in puts {
                    p.commit();
                }
                Ok(Some(out))
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
            (Ok(None), Ok(())) => Ok(None),
        }
    }

    /// Enqueues the copies of one try (see `read_device_once`).
    #[allow(clippy::too_many_arguments)]
    fn enqueue_device_read<'t>(
        &self,
        h: &Handle,
        off: u64,
        dst: &dyn DeviceBuffer,
        dst_off: usize,
        len: usize,
        dt: &'t DeviceTier,
        stream: &dyn Stream,
        stages: &mut [Stage; 2],
        loans: &mut Vec<Loan>,
        puts: &mut Vec<Reservation<'t>>,
    ) -> io::Result<Option<DeviceRead>> {
        let obj = self.current(h)?;
        let size = obj.size();
        let mut out = DeviceRead::default();
        if len == 0 || off >= size {
            return Ok(Some(out));
        }
        let end = (off + len as u64).min(size);
        let bs = obj.bs;
        let at = |pos: u64| dst_off + (pos - off) as usize;
        let mut missing: Vec<u64> = Vec::new();
        for blk in off / bs..end.div_ceil(bs) {
            let key = BlockKey { obj: obj.id, blk };
            match dt.lend(&key) {
                Some(l) if l.len() == obj.block_len(blk) => {
                    let (s, e) = ((blk * bs).max(off), ((blk + 1) * bs).min(end));
                    stream
                        .copy_d2d(
                            l.memory(),
                            l.offset() + (s - blk * bs) as usize,
                            dst,
                            at(s),
                            (e - s) as usize,
                        )
                        .map_err(device_error)?;
                    out.device_bytes += e - s;
                    stats::inc(&self.stats.device_hits);
                    stats::add(&self.stats.device_hit_bytes, e - s);
                    loans.push(l);
                }
                _ => missing.push(blk),
            }
        }
        // The whole range is known now: what is missing everywhere is fetched by the
        // read-ahead threads, several requests at once, while the chunks below are
        // read in order (each waits only for its own blocks).
        for run in missing.chunk_by(|a, b| a + 1 == *b) {
            self.start_readahead(&obj, run[0]..run[run.len() - 1] + 1);
        }
        let per_chunk = (STAGE as u64 / bs).max(1) as usize;
        let mut k = 0;
        for run in missing.chunk_by(|a, b| a + 1 == *b) {
            for chunk in run.chunks(per_chunk) {
                let s = (chunk[0] * bs).max(off);
                let e = ((chunk[chunk.len() - 1] + 1) * bs).min(end);
                let got = self.read(h, s, (e - s) as usize)?;
                if !Arc::ptr_eq(&*h.cur.lock(), &obj) || got.len as u64 != e - s {
                    return Ok(None);
                }
                let stage = &mut stages[k % 2];
                k += 1;
                if let Some(ev) = stage.done.take() {
                    ev.wait().map_err(device_error)?;
                }
                let mut pos = 0;
                for p in &got.parts {
                    stage.buf.as_mut_slice()[pos..pos + p.len()].copy_from_slice(p);
                    pos += p.len();
                }
                stream
                    .copy_h2d(stage.buf.as_ref(), 0, dst, at(s), pos)
                    .map_err(device_error)?;
                stage.done = Some(stream.record().map_err(device_error)?);
                out.host_bytes += e - s;
                // Whole blocks of this chunk go to the device tier, from the
                // caller's buffer (after the copy above, on the same stream).
                for &blk in chunk {
                    let (bs0, be) = (blk * bs, ((blk + 1) * bs).min(size));
                    if bs0 < off || be > end {
                        continue;
                    }
                    let key = BlockKey { obj: obj.id, blk };
                    if let Some(r) = dt.reserve(key, (be - bs0) as usize) {
                        stream
                            .copy_d2d(dst, at(bs0), dt.memory(), r.offset(), (be - bs0) as usize)
                            .map_err(device_error)?;
                        puts.push(r);
                    }
                }
            }
        }
        out.bytes = end - off;
        Ok(Some(out))
    }

    pub(super) fn lend_device(&self, h: &Handle, off: u64, len: usize) -> io::Result<DeviceLoans> {
        let dt = self.tiers.device.clone().ok_or_else(no_device)?;
        'again: for _ in 0..3 {
            let obj = self.current(h)?;
            let size = obj.size();
            let end = (off + len as u64).min(size);
            let bs = obj.bs;
            let mut blocks = Vec::new();
            if off >= end {
                return Ok(DeviceLoans { blocks });
            }
            for blk in off / bs..end.div_ceil(bs) {
                let key = BlockKey { obj: obj.id, blk };
                let loan = match dt.lend(&key) {
                    Some(l) => l,
                    None => {
                        // Read as a host read would, then into the tier.
                        let want = obj.block_len(blk);
                        let got = self.read(h, blk * bs, want)?;
                        if !Arc::ptr_eq(&*h.cur.lock(), &obj) || got.len != want {
                            continue 'again;
                        }
                        if dt.put(key, join(got.parts())).is_err() {
                            return Err(io::Error::new(
                                io::ErrorKind::OutOfMemory,
                                "the device tier has no slot to lend (too small, full of loans, or off)",
                            ));
                        }
                        match dt.lend(&key) {
                            Some(l) => l,
                            None => continue 'again,
                        }
                    }
                };
                let s = ((blk * bs).max(off) - blk * bs) as usize;
                let e = (((blk + 1) * bs).min(end) - blk * bs) as usize;
                blocks.push((loan, s..e));
            }
            stats::add(&self.stats.device_loans, blocks.len() as u64);
            return Ok(DeviceLoans { blocks });
        }
        Err(io::Error::from_raw_os_error(ESTALE))
    }
}

impl Engine {
    /// Reads `len` bytes of the file open as `h`, from `off`, into `dst` at
    /// `dst_off` (a buffer of the device tier's device); see the module's notes.
    /// Needs a device tier (`Config::device`).
    pub fn read_device(
        &self,
        h: &Handle,
        off: u64,
        dst: &dyn DeviceBuffer,
        dst_off: usize,
        len: usize,
    ) -> io::Result<DeviceRead> {
        self.inner.read_device(h, off, dst, dst_off, len)
    }

    /// The blocks of `off..off + len` of the file open as `h`, lent in place from
    /// the device tier (read there first where missing): zero copies. Read-only;
    /// each block's slot is kept (not evicted for reuse, not overwritten) until the
    /// loans are dropped, and an invalidation meanwhile only stops others from
    /// finding it. Hold loans briefly: a slot on loan is a slot the tier cannot use.
    pub fn lend_device(&self, h: &Handle, off: u64, len: usize) -> io::Result<DeviceLoans> {
        self.inner.lend_device(h, off, len)
    }

    /// The device tier's device, for allocating buffers to read into.
    pub fn device(&self) -> Option<Arc<dyn crate::device::Device>> {
        self.inner.tiers.device.as_ref().map(|d| d.device().clone())
    }
}
