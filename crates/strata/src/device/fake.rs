//! A device in host memory, for tests and machines without a GPU. It keeps a
//! budget of "device memory", counts what it copies, and fails on request (a device
//! that is absent, full or failing), so the device tier's refusals can be tested.
//! Copies run when they are enqueued: a stream is always synchronized.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::*;
use crate::sync::Mutex;

#[derive(Default)]
struct Shared {
    capacity: usize,
    used: AtomicUsize,
    failing: AtomicBool,
    h2d_bytes: AtomicU64,
    d2d_bytes: AtomicU64,
    d2h_bytes: AtomicU64,
}

/// See the module's notes. Clones share one device.
#[derive(Clone)]
pub struct FakeDevice {
    s: Arc<Shared>,
}

impl FakeDevice {
    /// A device with `capacity` bytes of memory.
    pub fn new(capacity: usize) -> Self {
        Self {
            s: Arc::new(Shared {
                capacity,
                ..Shared::default()
            }),
        }
    }

    /// From now on every operation fails (or works again), as a device that fell
    /// off the bus would.
    pub fn set_failing(&self, failing: bool) {
        self.s.failing.store(failing, Ordering::Release);
    }

    /// Bytes copied so far: host to device, device to device, device to host.
    pub fn copied(&self) -> (u64, u64, u64) {
        (
            self.s.h2d_bytes.load(Ordering::Relaxed),
            self.s.d2d_bytes.load(Ordering::Relaxed),
            self.s.d2h_bytes.load(Ordering::Relaxed),
        )
    }

    fn check(&self) -> DeviceResult<()> {
        if self.s.failing.load(Ordering::Acquire) {
            return Err(DeviceError::Failed("fake device set to fail".into()));
        }
        Ok(())
    }
}

struct FakeBuffer {
    s: Arc<Shared>,
    mem: Mutex<Vec<u8>>,
    len: usize,
}

impl Drop for FakeBuffer {
    fn drop(&mut self) {
        self.s.used.fetch_sub(self.len, Ordering::AcqRel);
    }
}

impl DeviceBuffer for FakeBuffer {
    fn len(&self) -> usize {
        self.len
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct FakePinned(Vec<u8>);

impl PinnedBuffer for FakePinned {
    fn as_slice(&self) -> &[u8] {
        &self.0
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.0
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct FakeStream(FakeDevice);

struct Done;

impl Event for Done {
    fn wait(&self) -> DeviceResult<()> {
        Ok(())
    }
}

fn fake(b: &dyn DeviceBuffer) -> DeviceResult<&FakeBuffer> {
    b.as_any()
        .downcast_ref::<FakeBuffer>()
        .ok_or_else(|| DeviceError::Failed("not a buffer of the fake device".into()))
}

impl Device for FakeDevice {
    fn name(&self) -> String {
        "fake".into()
    }

    fn alloc(&self, len: usize) -> DeviceResult<Box<dyn DeviceBuffer>> {
        self.check()?;
        let cap = self.s.capacity;
        self.s
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(len).filter(|&n| n <= cap)
            })
            .map_err(|_| DeviceError::OutOfMemory(len))?;
        Ok(Box::new(FakeBuffer {
            s: self.s.clone(),
            mem: Mutex::new(vec![0xA5; len]),
            len,
        }))
    }

    fn alloc_pinned(&self, len: usize) -> DeviceResult<Box<dyn PinnedBuffer>> {
        self.check()?;
        Ok(Box::new(FakePinned(vec![0; len])))
    }

    fn stream(&self) -> DeviceResult<Box<dyn Stream>> {
        self.check()?;
        Ok(Box::new(FakeStream(self.clone())))
    }
}

impl Stream for FakeStream {
    fn copy_h2d(
        &self,
        src: &dyn PinnedBuffer,
        src_off: usize,
        dst: &dyn DeviceBuffer,
        dst_off: usize,
        len: usize,
    ) -> DeviceResult<()> {
        self.0.check()?;
        let d = fake(dst)?;
        check_bounds("h2d source", src_off, len, src.as_slice().len())?;
        check_bounds("h2d target", dst_off, len, d.len)?;
        d.mem.lock()[dst_off..dst_off + len]
            .copy_from_slice(&src.as_slice()[src_off..src_off + len]);
        self.0.s.h2d_bytes.fetch_add(len as u64, Ordering::Relaxed);
        Ok(())
    }

    fn copy_d2d(
        &self,
        src: &dyn DeviceBuffer,
        src_off: usize,
        dst: &dyn DeviceBuffer,
        dst_off: usize,
        len: usize,
    ) -> DeviceResult<()> {
        self.0.check()?;
        let (s, d) = (fake(src)?, fake(dst)?);
        check_bounds("d2d source", src_off, len, s.len)?;
        check_bounds("d2d target", dst_off, len, d.len)?;
        if std::ptr::eq(s, d) {
            d.mem.lock().copy_within(src_off..src_off + len, dst_off);
        } else {
            let from = s.mem.lock()[src_off..src_off + len].to_vec();
            d.mem.lock()[dst_off..dst_off + len].copy_from_slice(&from);
        }
        self.0.s.d2d_bytes.fetch_add(len as u64, Ordering::Relaxed);
        Ok(())
    }

    fn copy_d2h(
        &self,
        src: &dyn DeviceBuffer,
        src_off: usize,
        dst: &mut dyn PinnedBuffer,
        dst_off: usize,
        len: usize,
    ) -> DeviceResult<()> {
        self.0.check()?;
        let s = fake(src)?;
        check_bounds("d2h source", src_off, len, s.len)?;
        check_bounds("d2h target", dst_off, len, dst.as_slice().len())?;
        dst.as_mut_slice()[dst_off..dst_off + len]
            .copy_from_slice(&s.mem.lock()[src_off..src_off + len]);
        self.0.s.d2h_bytes.fetch_add(len as u64, Ordering::Relaxed);
        Ok(())
    }

    fn record(&self) -> DeviceResult<Box<dyn Event>> {
        self.0.check()?;
        Ok(Box::new(Done))
    }

    fn synchronize(&self) -> DeviceResult<()> {
        self.0.check()
    }
}
