//! A CUDA GPU through the driver API, loaded at run time (`cudarc` with dynamic
//! loading): the build needs no CUDA toolkit, and a machine without a driver gets
//! `DeviceError::Absent` from `CudaDevice::open`, never a crash.
//!
//! One primary context per device, made current on whichever thread calls; device
//! memory from `cuMemAlloc`, staging from `cuMemHostAlloc` (page-locked, so copies
//! from it are asynchronous DMA), non-blocking streams, events without timing.

use std::any::Any;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::result;
use cudarc::driver::sys;

use super::*;

fn failed(e: result::DriverError) -> DeviceError {
    DeviceError::Failed(format!("{e:?}"))
}

struct Ctx {
    ctx: sys::CUcontext,
    dev: sys::CUdevice,
}

// The context handle is a process-wide driver object; CUDA allows its use from any
// thread once made current there.
unsafe impl Send for Ctx {}
unsafe impl Sync for Ctx {}

impl Ctx {
    fn current(&self) -> DeviceResult<()> {
        unsafe { result::ctx::set_current(self.ctx) }.map_err(failed)
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        let _ = unsafe { result::primary_ctx::release(self.dev) };
    }
}

/// See the module's notes.
#[derive(Clone)]
pub struct CudaDevice {
    ctx: Arc<Ctx>,
    name: String,
}

impl CudaDevice {
    /// The GPU with this ordinal, or why there is none.
    pub fn open(ordinal: usize) -> DeviceResult<Self> {
        if !unsafe { sys::is_culib_present() } {
            return Err(DeviceError::Absent(
                "the CUDA driver (libcuda) is not installed".into(),
            ));
        }
        result::init().map_err(|e| DeviceError::Absent(format!("cuInit: {e:?}")))?;
        let count = result::device::get_count().map_err(failed)?;
        if ordinal as i32 >= count {
            return Err(DeviceError::Absent(format!(
                "no GPU {ordinal} ({count} found)"
            )));
        }
        let dev = result::device::get(ordinal as i32).map_err(failed)?;
        let ctx = unsafe { result::primary_ctx::retain(dev) }.map_err(failed)?;
        let ctx = Arc::new(Ctx { ctx, dev });
        ctx.current()?;
        let name = result::device::get_name(dev).map_err(failed)?;
        Ok(Self { ctx, name })
    }
}

struct CudaBuffer {
    ctx: Arc<Ctx>,
    ptr: sys::CUdeviceptr,
    len: usize,
}

// A device address: the memory is the device's, reached only through the driver.
unsafe impl Send for CudaBuffer {}
unsafe impl Sync for CudaBuffer {}

impl Drop for CudaBuffer {
    fn drop(&mut self) {
        if self.ctx.current().is_ok() {
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}

impl DeviceBuffer for CudaBuffer {
    fn len(&self) -> usize {
        self.len
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct CudaPinned {
    ctx: Arc<Ctx>,
    ptr: *mut u8,
    len: usize,
}

// Page-locked host memory owned by this value alone.
unsafe impl Send for CudaPinned {}

impl Drop for CudaPinned {
    fn drop(&mut self) {
        if self.ctx.current().is_ok() {
            let _ = unsafe { result::free_host(self.ptr as *mut c_void) };
        }
    }
}

impl PinnedBuffer for CudaPinned {
    fn as_slice(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct CudaStream {
    ctx: Arc<Ctx>,
    stream: sys::CUstream,
}

// A driver stream handle, used by one owner at a time (`Stream` is `Send` only).
unsafe impl Send for CudaStream {}

impl Drop for CudaStream {
    fn drop(&mut self) {
        if self.ctx.current().is_ok() {
            let _ = unsafe { result::stream::synchronize(self.stream) };
            let _ = unsafe { result::stream::destroy(self.stream) };
        }
    }
}

struct CudaEvent {
    ctx: Arc<Ctx>,
    event: sys::CUevent,
}

unsafe impl Send for CudaEvent {}

impl Drop for CudaEvent {
    fn drop(&mut self) {
        if self.ctx.current().is_ok() {
            let _ = unsafe { result::event::destroy(self.event) };
        }
    }
}

impl Event for CudaEvent {
    fn wait(&self) -> DeviceResult<()> {
        self.ctx.current()?;
        unsafe { result::event::synchronize(self.event) }.map_err(failed)
    }
}

fn cuda(b: &dyn DeviceBuffer) -> DeviceResult<&CudaBuffer> {
    b.as_any()
        .downcast_ref::<CudaBuffer>()
        .ok_or_else(|| DeviceError::Failed("not a buffer of this CUDA device".into()))
}

fn pinned(b: &dyn PinnedBuffer) -> DeviceResult<&CudaPinned> {
    b.as_any()
        .downcast_ref::<CudaPinned>()
        .ok_or_else(|| DeviceError::Failed("not pinned memory of this CUDA device".into()))
}

impl Device for CudaDevice {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn alloc(&self, len: usize) -> DeviceResult<Box<dyn DeviceBuffer>> {
        self.ctx.current()?;
        let ptr = unsafe { result::malloc_sync(len.max(1)) }.map_err(|e| {
            if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
                DeviceError::OutOfMemory(len)
            } else {
                failed(e)
            }
        })?;
        Ok(Box::new(CudaBuffer {
            ctx: self.ctx.clone(),
            ptr,
            len,
        }))
    }

    fn alloc_pinned(&self, len: usize) -> DeviceResult<Box<dyn PinnedBuffer>> {
        self.ctx.current()?;
        let ptr = unsafe { result::malloc_host(len.max(1), 0) }.map_err(failed)? as *mut u8;
        Ok(Box::new(CudaPinned {
            ctx: self.ctx.clone(),
            ptr,
            len,
        }))
    }

    fn stream(&self) -> DeviceResult<Box<dyn Stream>> {
        self.ctx.current()?;
        let stream =
            result::stream::create(result::stream::StreamKind::NonBlocking).map_err(failed)?;
        Ok(Box::new(CudaStream {
            ctx: self.ctx.clone(),
            stream,
        }))
    }
}

impl Stream for CudaStream {
    fn copy_h2d(
        &self,
        src: &dyn PinnedBuffer,
        src_off: usize,
        dst: &dyn DeviceBuffer,
        dst_off: usize,
        len: usize,
    ) -> DeviceResult<()> {
        let (s, d) = (pinned(src)?, cuda(dst)?);
        check_bounds("h2d source", src_off, len, s.len)?;
        check_bounds("h2d target", dst_off, len, d.len)?;
        self.ctx.current()?;
        let from = &s.as_slice()[src_off..src_off + len];
        unsafe { result::memcpy_htod_async(d.ptr + dst_off as u64, from, self.stream) }
            .map_err(failed)
    }

    fn copy_d2d(
        &self,
        src: &dyn DeviceBuffer,
        src_off: usize,
        dst: &dyn DeviceBuffer,
        dst_off: usize,
        len: usize,
    ) -> DeviceResult<()> {
        let (s, d) = (cuda(src)?, cuda(dst)?);
        check_bounds("d2d source", src_off, len, s.len)?;
        check_bounds("d2d target", dst_off, len, d.len)?;
        self.ctx.current()?;
        unsafe {
            result::memcpy_dtod_async(
                d.ptr + dst_off as u64,
                s.ptr + src_off as u64,
                len,
                self.stream,
            )
        }
        .map_err(failed)
    }

    fn copy_d2h(
        &self,
        src: &dyn DeviceBuffer,
        src_off: usize,
        dst: &mut dyn PinnedBuffer,
        dst_off: usize,
        len: usize,
    ) -> DeviceResult<()> {
        let s = cuda(src)?;
        check_bounds("d2h source", src_off, len, s.len)?;
        check_bounds("d2h target", dst_off, len, dst.as_slice().len())?;
        pinned(dst)?;
        self.ctx.current()?;
        let to = &mut dst.as_mut_slice()[dst_off..dst_off + len];
        unsafe { result::memcpy_dtoh_async(to, s.ptr + src_off as u64, self.stream) }
            .map_err(failed)
    }

    fn record(&self) -> DeviceResult<Box<dyn Event>> {
        self.ctx.current()?;
        let event =
            result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING).map_err(failed)?;
        unsafe { result::event::record(event, self.stream) }.map_err(failed)?;
        Ok(Box::new(CudaEvent {
            ctx: self.ctx.clone(),
            event,
        }))
    }

    fn synchronize(&self) -> DeviceResult<()> {
        self.ctx.current()?;
        unsafe { result::stream::synchronize(self.stream) }.map_err(failed)
    }
}
