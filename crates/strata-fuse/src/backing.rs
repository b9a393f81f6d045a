//! Passthrough backing files.

use crate::*;

/// A backing file registered with the kernel for passthrough. Registered on the
/// session's /dev/fuse file itself rather than through fuser's reply, so that the
/// io_uring queues, which answer opens without fuser, can hand it out too.
pub(crate) struct Backing {
    dev: Arc<OwnedFd>,
    pub(crate) id: u32,
}

/// `FUSE_DEV_IOC_BACKING_CLOSE`: `_IOW(229, 2, uint32_t)`.
const BACKING_CLOSE: rustix::ioctl::Opcode = rustix::ioctl::opcode::write::<u32>(229, 2);

impl Backing {
    pub(crate) fn open(dev: &Arc<OwnedFd>, file: &std::fs::File) -> io::Result<Self> {
        let id = fuser::BackingId::create_raw(dev.as_fd(), file)?;
        Ok(Backing {
            dev: dev.clone(),
            id,
        })
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        // SAFETY: the opcode is the kernel's, and it reads a u32 backing id.
        let close = unsafe { rustix::ioctl::Setter::<BACKING_CLOSE, u32>::new(self.id) };
        // SAFETY: `dev` is the /dev/fuse file the id was registered on.
        if let Err(e) = unsafe { rustix::ioctl::ioctl(self.dev.as_fd(), close) } {
            // After unmount the connection is gone, and with it the id.
            tracing::debug!(error = %e, id = self.id, "closing a passthrough backing id");
        }
    }
}
