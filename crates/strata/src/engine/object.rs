//! One object version as the engine tracks it: its identity, its coherency token, and
//! the extent state tree that coordinates fetches and fills on it.

use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::extent::{ExtentTree, bits};
use crate::origin::{OriginFile, Token};
use crate::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};

pub(crate) struct ObjState {
    /// Byte ranges (block aligned) with RAM / DISK hints and FETCHING / FILLING state.
    /// (The blocks on their way to disk are the disk writer's: `FillQueue::on_way`.)
    pub tree: ExtentTree,
}

/// An object version: `id` is its generation, never reused, so a fill started for
/// one version can never land in another.
pub struct Object {
    pub(crate) path: PathBuf,
    pub(crate) id: u64,
    /// The origin's token for this version. It changes only when a write through
    /// this cache changed the file (`retoken`): the cached blocks were brought to
    /// the new bytes first.
    token: RwLock<Token>,
    /// The token's size, read on every block's bounds.
    size: AtomicU64,
    /// Origin I/O on this version: fetches (and the tier work between a lookup and
    /// its refills) take it shared, a write through the cache takes it alone, so no
    /// fetch reads bytes from before a write and caches them after it.
    pub(crate) io: RwLock<()>,
    pub(crate) bs: u64,
    /// When the token was last confirmed with the origin (ns since engine start); 0:
    /// ask the origin before the next read.
    pub(crate) validated_ns: AtomicU64,
    /// A fetch saw the origin file differ from the token (or could not open it):
    /// confirmations of the token do not clear `validated_ns` any more, so every read
    /// asks until the version is replaced. A version made with 0 for want of a
    /// confirmation (`revive`) is not suspect: its first confirmation counts.
    pub(crate) suspect: AtomicBool,
    /// How long that confirmation is trusted (ns), worked out when it is made, so a
    /// read only compares.
    pub(crate) trust_ns: AtomicU64,
    /// Set when a newer version replaced this one or the file vanished.
    pub(crate) dead: AtomicBool,
    /// No name has this version (a file unlinked while a handle writes it): it is
    /// read through the origin file that handle holds.
    pub(crate) detached: AtomicBool,
    pub(crate) st: Mutex<ObjState>,
    pub(crate) cond: Condvar,
    /// The origin file, kept open while handles are open on this version.
    pub(crate) file: Mutex<Option<Arc<dyn OriginFile>>>,
    /// Engine handles reading this version.
    pub(crate) handles: AtomicUsize,
    /// Writes through this cache whose token the origin was not asked for yet
    /// (`Inner::settle`); `token` is the cache's estimate until then.
    pub(crate) pending: Mutex<Option<Pending>>,
    /// True while `pending` holds one: checked without its lock.
    pub(crate) unsettled: AtomicBool,
}

/// The origin file that wrote a version last, and since when its token is unknown.
pub(crate) struct Pending {
    pub file: Arc<dyn OriginFile>,
    pub since: std::time::Instant,
}

impl Object {
    pub(crate) fn new(path: PathBuf, id: u64, token: Token, bs: u64, now_ns: u64) -> Self {
        Self {
            path,
            id,
            size: AtomicU64::new(token.size()),
            token: RwLock::new(token),
            io: RwLock::new(()),
            bs,
            validated_ns: AtomicU64::new(now_ns),
            suspect: AtomicBool::new(false),
            trust_ns: AtomicU64::new(0),
            dead: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            st: Mutex::new(ObjState {
                tree: ExtentTree::new(),
            }),
            cond: Condvar::new(),
            file: Mutex::new(None),
            handles: AtomicUsize::new(0),
            pending: Mutex::new(None),
            unsettled: AtomicBool::new(false),
        }
    }

    /// True while writes through this cache wait for the origin's token.
    pub(crate) fn is_unsettled(&self) -> bool {
        self.unsettled.load(Ordering::Acquire)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    pub fn token(&self) -> Token {
        self.token.read().clone()
    }

    pub(crate) fn has_token(&self, t: &Token) -> bool {
        *self.token.read() == *t
    }

    /// The version's bytes are now those of the origin file at token `t` (a write
    /// through this cache, with the object's I/O lock held alone).
    pub(crate) fn retoken(&self, t: Token) {
        let mut tok = self.token.write();
        self.size.store(t.size(), Ordering::Release);
        *tok = t;
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Number of blocks.
    pub fn blocks(&self) -> u64 {
        self.size().div_ceil(self.bs)
    }

    /// Byte range of a block run, clipped to the object's size.
    pub(crate) fn bytes_of(&self, blocks: Range<u64>) -> Range<u64> {
        (blocks.start * self.bs).min(self.size())..(blocks.end * self.bs).min(self.size())
    }

    /// Length of one block.
    pub(crate) fn block_len(&self, blk: u64) -> usize {
        crate::tier::disk::block_len(self.size(), self.bs, blk)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ObjState> {
        self.st.lock()
    }

    /// The origin file, opened on first use and kept while handles are open (a fetch
    /// for nobody's handle, a directory prefetch, closes it when done): an origin
    /// file open per cached object would run out of descriptors, here and on the
    /// origin's server.
    pub(crate) fn origin_file(
        &self,
        open: impl FnOnce() -> io::Result<Box<dyn OriginFile>>,
    ) -> io::Result<Arc<dyn OriginFile>> {
        let mut f = self.file.lock();
        if let Some(f) = &*f {
            return Ok(f.clone());
        }
        let opened: Arc<dyn OriginFile> = Arc::from(open()?);
        if self.handles.load(Ordering::Acquire) > 0 {
            *f = Some(opened.clone());
        }
        Ok(opened)
    }

    pub(crate) fn handle_opened(&self) {
        self.handles.fetch_add(1, Ordering::AcqRel);
    }

    /// The last handle closes the origin file (fetches in flight hold their own
    /// reference to it).
    pub(crate) fn handle_closed(&self) {
        if self.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut f = self.file.lock();
            if self.handles.load(Ordering::Acquire) == 0 {
                *f = None;
            }
        }
    }

    /// Sorts missing blocks, under the object's lock: those nobody fetches are claimed
    /// for the caller (marked FETCHING); those another reader fetches are to be waited
    /// for; those that arrived since the caller looked (a fetch finished in between:
    /// `in_ram`, a fill in flight, or on disk) are to be looked up again.
    pub(crate) fn claim(
        self: &Arc<Self>,
        st: &mut ObjState,
        blocks: &[u64],
        cached: impl Fn(u64) -> bool,
    ) -> Claimed {
        let mut mine: Vec<Range<u64>> = Vec::new();
        let mut theirs = Vec::new();
        let mut arrived = Vec::new();
        for &b in blocks {
            let r = self.bytes_of(b..b + 1);
            if st.tree.test_any(r.clone(), bits::FETCHING) {
                theirs.push(b);
                continue;
            }
            if st.tree.test_any(r, bits::VERIFIED) || cached(b) {
                arrived.push(b);
                continue;
            }
            match mine.last_mut() {
                Some(last) if last.end == b => last.end = b + 1,
                _ => mine.push(b..b + 1),
            }
        }
        let claims = mine
            .into_iter()
            .map(|r| {
                st.tree.set(self.bytes_of(r.clone()), bits::FETCHING);
                Claim {
                    obj: self.clone(),
                    blocks: r,
                }
            })
            .collect();
        Claimed {
            mine: claims,
            theirs,
            arrived,
        }
    }

    /// Waits until none of `blocks` has any of `state` (e.g. FETCHING). Whoever
    /// clears such a state notifies the object's condition variable.
    pub(crate) fn wait_clear(&self, blocks: &[u64], state: u32) {
        let mut st = self.lock();
        loop {
            let busy = blocks
                .iter()
                .any(|&b| st.tree.test_any(self.bytes_of(b..b + 1), state));
            if !busy {
                return;
            }
            st = self.cond.wait(st);
        }
    }
}

/// What [`Object::claim`] decided.
pub(crate) struct Claimed {
    pub mine: Vec<Claim>,
    pub theirs: Vec<u64>,
    pub arrived: Vec<u64>,
}

/// The right to fetch a block run. Dropping it, on every path (success, error,
/// a dropped read-ahead job), clears FETCHING and wakes the waiters.
pub struct Claim {
    pub(crate) obj: Arc<Object>,
    pub(crate) blocks: Range<u64>,
}

impl Claim {
    /// Keeps the first `n` blocks of the claim and releases the rest; returns how
    /// many were released.
    pub(crate) fn keep_first(&mut self, n: u64) -> u64 {
        let cut = self.blocks.start + n;
        if cut >= self.blocks.end {
            return 0;
        }
        let tail = Claim {
            obj: self.obj.clone(),
            blocks: cut..self.blocks.end,
        };
        self.blocks.end = cut;
        tail.blocks.end - cut // `tail` is dropped here, which releases it
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let r = self.obj.bytes_of(self.blocks.clone());
        self.obj.lock().tree.clear(r, bits::FETCHING);
        self.obj.cond.notify_all();
    }
}
