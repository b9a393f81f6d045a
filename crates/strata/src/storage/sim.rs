//! A simulated medium for crash tests.
//!
//! Every file keeps two copies of its contents: what is durable and what programs see.
//! Writes, truncations and hole punches change only the visible copy and are queued;
//! `sync_data` makes the visible copy durable. Names work the same way with one
//! ordered journal of creates, removes and renames, made durable by `sync_dir`.
//!
//! [`SimStorage::power_cut`] builds the medium as it could look after power is lost:
//! the durable state plus an arbitrary selection of the queued changes: each queued
//! data change is independently kept, lost or (for writes) torn at a random byte, and
//! a random prefix of the name journal survives. [`SimStorage::cut_after`] arms a cut
//! at the n-th mutating call, after which every call fails as a dead device would.
//!
//! Faults for other tests: writes that fail with EIO, a capacity that gives ENOSPC,
//! and a slow device (every sync takes a while).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Space, Storage, StorageFile};
use crate::extent::ExtentTree;

#[derive(Clone, Debug)]
enum DataOp {
    Write { off: u64, data: Vec<u8> },
    SetLen(u64),
    Punch { off: u64, len: u64 },
}

/// A file's bytes and which ranges are allocated (the rest are holes).
#[derive(Clone, Debug, Default)]
struct Content {
    data: Vec<u8>,
    alloc: ExtentTree,
}

#[derive(Clone, Debug, Default)]
struct Inode {
    durable: Content,
    current: Content,
    pending: Vec<DataOp>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    File(u64),
    Dir,
}

#[derive(Clone, Debug)]
enum MetaOp {
    Put(PathBuf, Node),
    Remove(PathBuf),
    Rename(PathBuf, PathBuf),
}

impl MetaOp {
    fn touches(&self, dir: &Path) -> bool {
        let parent_is = |p: &Path| p.parent().unwrap_or(Path::new("")) == dir;
        match self {
            MetaOp::Put(p, _) | MetaOp::Remove(p) => parent_is(p),
            MetaOp::Rename(a, b) => parent_is(a) || parent_is(b),
        }
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, Node>) {
        match self {
            MetaOp::Put(p, n) => {
                names.insert(p.clone(), *n);
            }
            MetaOp::Remove(p) => {
                names.remove(p);
            }
            MetaOp::Rename(a, b) => {
                if let Some(n) = names.remove(a) {
                    names.insert(b.clone(), n);
                }
            }
        }
    }
}

/// Small deterministic generator (SplitMix64), so a seed replays a crash exactly.
#[derive(Clone, Debug)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[derive(Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    names: BTreeMap<PathBuf, Node>,
    durable_names: BTreeMap<PathBuf, Node>,
    journal: Vec<MetaOp>,
    mutations: u64,
    cut_at: Option<u64>,
    dead: bool,
    fail_writes: bool,
    capacity: Option<u64>,
    /// How long each `sync_data` takes: a slow device.
    sync_delay: std::time::Duration,
    locked: bool,
}

impl State {
    fn used(&self) -> u64 {
        // Allocated bytes: punching a hole frees space, as on a real filesystem.
        self.inodes
            .values()
            .flat_map(|i| i.current.alloc.iter().map(|(r, _)| r.end - r.start))
            .sum()
    }

    /// Counts a mutating call; fails once the armed cut is reached.
    fn mutate(&mut self) -> io::Result<()> {
        self.check_alive()?;
        self.mutations += 1;
        if self.cut_at.is_some_and(|c| self.mutations >= c) {
            self.dead = true;
            return Err(dead());
        }
        Ok(())
    }

    fn check_alive(&self) -> io::Result<()> {
        if self.dead { Err(dead()) } else { Ok(()) }
    }

    fn file(&self, path: &Path) -> io::Result<u64> {
        match self.names.get(path) {
            Some(Node::File(ino)) => Ok(*ino),
            Some(Node::Dir) => Err(io::Error::from_raw_os_error(21)), // EISDIR
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    fn parent_exists(&self, path: &Path) -> bool {
        match path.parent() {
            None => true,
            Some(p) if p.as_os_str().is_empty() => true,
            Some(p) => self.names.get(p) == Some(&Node::Dir),
        }
    }
}

fn dead() -> io::Error {
    io::Error::other("simulated power cut: device gone")
}

fn apply(c: &mut Content, op: &DataOp) {
    let buf = &mut c.data;
    match op {
        DataOp::Write { off, data } => {
            let end = *off as usize + data.len();
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[*off as usize..end].copy_from_slice(data);
            c.alloc.set(*off..end as u64, 1);
        }
        DataOp::SetLen(n) => {
            buf.resize(*n as usize, 0);
            c.alloc.clear(*n..u64::MAX, 1);
        }
        DataOp::Punch { off, len } => {
            let s = (*off as usize).min(buf.len());
            let e = (*off as usize).saturating_add(*len as usize).min(buf.len());
            buf[s..e].fill(0);
            c.alloc.clear(s as u64..e as u64, 1);
        }
    }
}

/// The simulated medium. Cloning gives another handle to the same medium.
#[derive(Clone, Default)]
pub struct SimStorage {
    state: Arc<Mutex<State>>,
}

impl SimStorage {
    pub fn new() -> Self {
        Self::default()
    }

    fn st(&self) -> MutexGuard<'_, State> {
        // A panic in a test thread must not hide the medium from the others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Arms a power cut at the `n`-th mutating call from now (1 = the next one).
    pub fn cut_after(&self, n: u64) {
        let mut s = self.st();
        s.cut_at = Some(s.mutations + n.max(1));
    }

    /// Mutating calls so far (to size the range of cut points).
    pub fn mutations(&self) -> u64 {
        self.st().mutations
    }

    /// True once an armed cut has happened.
    pub fn is_dead(&self) -> bool {
        self.st().dead
    }

    /// Makes writes fail with EIO (`true`) or succeed again.
    pub fn set_fail_writes(&self, fail: bool) {
        self.st().fail_writes = fail;
    }

    /// Limits the bytes the medium holds; writes past it fail with ENOSPC.
    pub fn set_capacity(&self, cap: Option<u64>) {
        self.st().capacity = cap;
    }

    /// Makes every `sync_data` take `d` (the medium stays usable meanwhile).
    pub fn set_sync_delay(&self, d: std::time::Duration) {
        self.st().sync_delay = d;
    }

    /// The medium as it could be found after losing power now. The old handle keeps
    /// failing; the new one has everything it holds durable.
    pub fn power_cut(&self, seed: u64) -> SimStorage {
        let mut rng = SplitMix::new(seed);
        let mut s = self.st();
        s.dead = true;
        let mut names = s.durable_names.clone();
        let keep = rng.below(s.journal.len() as u64 + 1) as usize;
        for op in &s.journal[..keep] {
            op.apply(&mut names);
        }
        let mut inodes = HashMap::new();
        for node in names.values() {
            if let Node::File(ino) = node {
                if inodes.contains_key(ino) {
                    continue;
                }
                let old = s.inodes.get(ino).cloned().unwrap_or_default();
                let mut data = old.durable.clone();
                for op in &old.pending {
                    match rng.below(3) {
                        0 => {}
                        1 => apply(&mut data, op),
                        _ => {
                            if let DataOp::Write { off, data: d } = op {
                                let keep = rng.below(d.len() as u64 + 1) as usize;
                                apply(
                                    &mut data,
                                    &DataOp::Write {
                                        off: *off,
                                        data: d[..keep].to_vec(),
                                    },
                                );
                            }
                        }
                    }
                }
                inodes.insert(
                    *ino,
                    Inode {
                        durable: data.clone(),
                        current: data,
                        pending: Vec::new(),
                    },
                );
            }
        }
        let next_ino = s.next_ino;
        drop(s);
        SimStorage {
            state: Arc::new(Mutex::new(State {
                inodes,
                next_ino,
                durable_names: names.clone(),
                names,
                ..State::default()
            })),
        }
    }

    /// Visible contents of a file (for tests that damage or inspect the medium).
    pub fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.st();
        let ino = s.file(path)?;
        Ok(s.inodes[&ino].current.data.clone())
    }

    /// Replaces a file's contents, durably (a test's way to damage the medium).
    pub fn write_file(&self, path: &Path, data: Vec<u8>) -> io::Result<()> {
        let mut s = self.st();
        let ino = s.file(path)?;
        let i = s.inodes.get_mut(&ino).expect("inode of a name");
        let mut alloc = ExtentTree::new();
        alloc.set(0..data.len() as u64, 1);
        i.current = Content { data, alloc };
        i.durable = i.current.clone();
        i.pending.clear();
        Ok(())
    }

    /// Every file name, for tests.
    pub fn files(&self) -> Vec<PathBuf> {
        self.st()
            .names
            .iter()
            .filter(|(_, n)| matches!(n, Node::File(_)))
            .map(|(p, _)| p.clone())
            .collect()
    }
}

impl Storage for SimStorage {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let mut s = self.st();
        s.check_alive()?;
        let ino = match s.file(path) {
            Ok(ino) => ino,
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                if !s.parent_exists(path) {
                    return Err(io::ErrorKind::NotFound.into());
                }
                s.mutate()?;
                s.next_ino += 1;
                let ino = s.next_ino;
                s.inodes.insert(ino, Inode::default());
                s.names.insert(path.to_path_buf(), Node::File(ino));
                s.journal
                    .push(MetaOp::Put(path.to_path_buf(), Node::File(ino)));
                ino
            }
            Err(e) => return Err(e),
        };
        Ok(Arc::new(SimFile {
            state: self.state.clone(),
            ino,
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.st();
        s.file(path)?;
        s.mutate()?;
        s.names.remove(path);
        s.journal.push(MetaOp::Remove(path.to_path_buf()));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.st();
        s.file(from)?;
        if !s.parent_exists(to) {
            return Err(io::ErrorKind::NotFound.into());
        }
        s.mutate()?;
        let n = s.names.remove(from).expect("checked");
        s.names.insert(to.to_path_buf(), n);
        s.journal
            .push(MetaOp::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut s = self.st();
        s.check_alive()?;
        let mut cur = PathBuf::new();
        for c in path.components() {
            cur.push(c);
            match s.names.get(&cur) {
                Some(Node::Dir) => {}
                Some(Node::File(_)) => return Err(io::ErrorKind::AlreadyExists.into()),
                None => {
                    s.mutate()?;
                    s.names.insert(cur.clone(), Node::Dir);
                    s.journal.push(MetaOp::Put(cur.clone(), Node::Dir));
                }
            }
        }
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.st();
        s.mutate()?;
        // The journal is ordered: making one entry durable makes all before it durable.
        if let Some(last) = s.journal.iter().rposition(|op| op.touches(path)) {
            let done: Vec<MetaOp> = s.journal.drain(..=last).collect();
            for op in &done {
                op.apply(&mut s.durable_names);
            }
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let s = self.st();
        s.check_alive()?;
        if !path.as_os_str().is_empty() && s.names.get(path) != Some(&Node::Dir) {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn space(&self) -> io::Result<Space> {
        let s = self.st();
        s.check_alive()?;
        let total = s.capacity.unwrap_or(1 << 40);
        Ok(Space {
            total_bytes: total,
            avail_bytes: total.saturating_sub(s.used()),
            total_files: 1 << 20,
            avail_files: (1u64 << 20).saturating_sub(s.names.len() as u64),
        })
    }

    fn lock(&self) -> io::Result<Box<dyn std::any::Any + Send + Sync>> {
        let mut s = self.st();
        s.check_alive()?;
        if s.locked {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "simulated cache directory is in use",
            ));
        }
        s.locked = true;
        Ok(Box::new(SimLock(self.state.clone())))
    }
}

struct SimLock(Arc<Mutex<State>>);

impl Drop for SimLock {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).locked = false;
    }
}

struct SimFile {
    state: Arc<Mutex<State>>,
    ino: u64,
}

impl SimFile {
    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn change(&self, op: DataOp) -> io::Result<()> {
        let mut s = self.st();
        s.mutate()?;
        if s.fail_writes {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        if let (Some(cap), DataOp::Write { off, data }) = (s.capacity, &op) {
            let cur = s.inodes[&self.ino].current.data.len() as u64;
            let grow = (off + data.len() as u64).saturating_sub(cur);
            if s.used() + grow > cap {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
        }
        let i = s.inodes.get_mut(&self.ino).expect("open inode");
        apply(&mut i.current, &op);
        i.pending.push(op);
        Ok(())
    }
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        let s = self.st();
        s.check_alive()?;
        let cur = &s.inodes[&self.ino].current.data;
        let start = (off as usize).min(cur.len());
        let n = buf.len().min(cur.len() - start);
        buf[..n].copy_from_slice(&cur[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.change(DataOp::Write {
            off,
            data: buf.to_vec(),
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        let delay = self.st().sync_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut s = self.st();
        s.mutate()?;
        let i = s.inodes.get_mut(&self.ino).expect("open inode");
        i.durable = i.current.clone();
        i.pending.clear();
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let s = self.st();
        s.check_alive()?;
        Ok(s.inodes[&self.ino].current.data.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.change(DataOp::SetLen(len))
    }

    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        self.change(DataOp::Punch { off, len })
    }

    fn data_ranges(&self) -> io::Result<Vec<Range<u64>>> {
        let s = self.st();
        s.check_alive()?;
        Ok(s.inodes[&self.ino]
            .current
            .alloc
            .iter()
            .map(|(r, _)| r)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_data_and_names_can_be_lost_synced_cannot() {
        let st = SimStorage::new();
        st.create_dir_all(Path::new("d")).unwrap();
        st.sync_dir(Path::new("")).unwrap();
        let f = st.open(Path::new("d/a"), true).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        st.sync_dir(Path::new("d")).unwrap();
        f.write_all_at(b"world", 5).unwrap();
        let mut saw_lost = false;
        let mut saw_kept = false;
        for seed in 0..64 {
            let after = st.power_cut(seed);
            let data = after.read_file(Path::new("d/a")).unwrap();
            assert_eq!(&data[..5], b"hello", "synced data must survive");
            match data.len() {
                5 => saw_lost = true,
                10 => saw_kept |= &data[5..] == b"world",
                _ => {}
            }
        }
        assert!(saw_lost && saw_kept);
        // The old handle is dead.
        assert!(f.write_all_at(b"x", 0).is_err());
    }

    #[test]
    fn cut_after_kills_the_device() {
        let st = SimStorage::new();
        st.cut_after(2);
        let f = st.open(Path::new("a"), true).unwrap(); // 1
        assert!(f.write_all_at(b"x", 0).is_err()); // 2: the cut
        assert!(st.is_dead());
        let after = st.power_cut(1);
        // The name was never synced, so it may or may not exist; never an error else.
        let _ = after.read_file(Path::new("a"));
    }
}
