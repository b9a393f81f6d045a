//! Invalidations from the engine to the kernel.

use crate::*;

/// Delivers the engine's invalidations to the kernel: when the engine drops an
/// object, the kernel's page cache of its inode is dropped too; if the kernel reads
/// the inode by passthrough, the inode is retired (see `StrataFs::gens`).
pub struct Invalidator {
    pub(crate) engine: Arc<Engine>,
    pub(crate) nodes: Arc<RwLock<Nodes>>,
    pub(crate) io: Arc<Mutex<FxHashMap<(u64, u64), InodeIo>>>,
    pub(crate) gens: Arc<Mutex<FxHashMap<u64, u64>>>,
}

pub(crate) enum Notice {
    Inode(u64),
    Entry(u64, std::ffi::OsString),
}

impl Invalidator {
    /// Starts delivering. Notifications go out from their own thread: sending one
    /// from a request handler can deadlock against the kernel.
    pub fn connect(self, notifier: fuser::Notifier) -> io::Result<()> {
        let (tx, rx) = crossbeam_channel::unbounded::<Notice>();
        std::thread::Builder::new()
            .name("strata-inval".into())
            .spawn(move || {
                for n in rx {
                    // ENOENT: the kernel no longer knows it; nothing to drop.
                    let _ = match n {
                        Notice::Inode(ino) => notifier.inval_inode(INodeNo(ino), 0, 0),
                        Notice::Entry(parent, name) => notifier.inval_entry(INodeNo(parent), &name),
                    };
                }
            })?;
        let Invalidator {
            engine,
            nodes,
            io,
            gens,
        } = self;
        let tx: Mutex<Sender<Notice>> = Mutex::new(tx);
        engine.set_invalidation_listener(move |path| {
            let (ino, parent) = {
                let n = nodes.read().unwrap_or_else(|e| e.into_inner());
                let parent = path
                    .parent()
                    .and_then(|p| n.by_path.get(p).copied())
                    .unwrap_or(1);
                (n.by_path.get(path).copied(), parent)
            };
            let Some(ino) = ino else { return };
            let tx = tx.lock().unwrap_or_else(|e| e.into_inner());
            let _ = tx.send(Notice::Inode(ino));
            let mut g = gens.lock().unwrap_or_else(|e| e.into_inner());
            let cur = g.get(&ino).copied().unwrap_or(0);
            let in_passthrough = io
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&(ino, cur))
                .is_some_and(|st| st.passthrough.is_some());
            if in_passthrough {
                g.insert(ino, cur + 1);
                if let Some(name) = path.file_name() {
                    let _ = tx.send(Notice::Entry(parent, name.to_os_string()));
                }
            }
        });
        Ok(())
    }
}
