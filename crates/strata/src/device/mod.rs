//! Device memory (a GPU's) as the engine sees it: allocations, pinned host staging
//! buffers, and streams that order copies between them.
//!
//! Two implementations: [`fake::FakeDevice`], in host memory, for the tests (CI has
//! no GPU), and, with the `cuda` feature, `cuda::CudaDevice`, which loads the CUDA
//! driver at run time (no toolkit needed to build).
//!
//! The rules every user follows, as with CUDA itself: a copy is enqueued on a stream
//! and runs after the copies before it on that stream; its source and destination
//! must stay allocated and unchanged until the stream is synchronized or an event
//! recorded after it has completed.

use std::any::Any;

pub mod fake;

#[cfg(feature = "cuda")]
pub mod cuda;

/// What a device operation failed with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// No device (no driver, or no GPU).
    #[error("no device: {0}")]
    Absent(String),
    /// The device has no memory left for the allocation.
    #[error("device memory exhausted ({0} bytes asked)")]
    OutOfMemory(usize),
    /// A range outside its buffer.
    #[error("copy out of bounds: {0}")]
    Bounds(String),
    /// Anything else the device or its driver reported.
    #[error("device error: {0}")]
    Failed(String),
}

pub type DeviceResult<T> = Result<T, DeviceError>;

/// A device that holds and copies bytes.
pub trait Device: Send + Sync + 'static {
    /// For logs and statistics ("fake", "NVIDIA H100 80GB HBM3").
    fn name(&self) -> String;
    /// `len` bytes of device memory (contents unspecified).
    fn alloc(&self, len: usize) -> DeviceResult<Box<dyn DeviceBuffer>>;
    /// `len` bytes of page-locked host memory, the source and target of fast copies.
    fn alloc_pinned(&self, len: usize) -> DeviceResult<Box<dyn PinnedBuffer>>;
    /// A new stream.
    fn stream(&self) -> DeviceResult<Box<dyn Stream>>;
}

/// An allocation in device memory. Copies name it by reference; the memory is
/// written by the device, so a shared reference is enough to be a destination.
pub trait DeviceBuffer: Send + Sync + Any {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn as_any(&self) -> &dyn Any;
}

/// Page-locked host memory.
pub trait PinnedBuffer: Send + Any {
    fn as_slice(&self) -> &[u8];
    fn as_mut_slice(&mut self) -> &mut [u8];
    fn as_any(&self) -> &dyn Any;
}

/// A queue of copies, run in order.
pub trait Stream: Send {
    fn copy_h2d(
        &self,
        src: &dyn PinnedBuffer,
        src_off: usize,
        dst: &dyn DeviceBuffer,
        dst_off: usize,
        len: usize,
    ) -> DeviceResult<()>;
    fn copy_d2d(
        &self,
        src: &dyn DeviceBuffer,
        src_off: usize,
        dst: &dyn DeviceBuffer,
        dst_off: usize,
        len: usize,
    ) -> DeviceResult<()>;
    fn copy_d2h(
        &self,
        src: &dyn DeviceBuffer,
        src_off: usize,
        dst: &mut dyn PinnedBuffer,
        dst_off: usize,
        len: usize,
    ) -> DeviceResult<()>;
    /// An event that completes when every copy enqueued so far has.
    fn record(&self) -> DeviceResult<Box<dyn Event>>;
    /// Waits for every copy enqueued so far.
    fn synchronize(&self) -> DeviceResult<()>;
}

/// A point in a stream.
pub trait Event: Send {
    /// Waits until it is reached.
    fn wait(&self) -> DeviceResult<()>;
}

/// Checks a copy's bounds, in the words every implementation uses.
pub(crate) fn check_bounds(what: &str, off: usize, len: usize, size: usize) -> DeviceResult<()> {
    match off.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(DeviceError::Bounds(format!(
            "{what}: {off}+{len} past {size}"
        ))),
    }
}

/// Copies the bytes of a device buffer range to the host (a test's or a
/// tool's check; the read path never needs it).
pub fn read_back(
    dev: &dyn Device,
    src: &dyn DeviceBuffer,
    off: usize,
    len: usize,
) -> DeviceResult<Vec<u8>> {
    let mut pinned = dev.alloc_pinned(len)?;
    let s = dev.stream()?;
    s.copy_d2h(src, off, pinned.as_mut(), 0, len)?;
    s.synchronize()?;
    Ok(pinned.as_slice()[..len].to_vec())
}
