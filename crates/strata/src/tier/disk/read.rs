//! Reading blocks back: runs of blocks checked against their crc32c, damage
//! dropped from the index, and the cache of open data files.

use super::*;

impl DiskTier {
    /// Reads blocks `first..first + count` of an object. Each is returned only if it
    /// is on disk and its checksum matches; damage is counted and dropped.
    pub fn read(&self, id: u64, first: u64, count: u64) -> Vec<Option<Bytes>> {
        self.read_whole(id, first, count).0
    }

    /// As `read`; when the range is one run longer than `LONG_RUN` blocks and every
    /// block checked out, also all of it as one buffer (the blocks are slices of it).
    pub fn read_whole(
        &self,
        id: u64,
        first: u64,
        count: u64,
    ) -> (Vec<Option<Bytes>>, Option<Bytes>) {
        let mut out: Vec<Option<Bytes>> = vec![None; count as usize];
        let (size, crcs) = {
            let idx = self.index.read();
            let Some((slot, o)) = idx.obj(id) else {
                return (out, None);
            };
            let crcs: Vec<Option<u32>> = (first..first + count)
                .map(|b| key(slot, b).and_then(|k| idx.blocks.get(&k).copied()))
                .collect();
            (o.token.size(), crcs)
        };
        let mut i = 0usize;
        let mut whole = None;
        while i < crcs.len() {
            if crcs[i].is_none() {
                i += 1;
                continue;
            }
            let start = i;
            while i < crcs.len() && crcs[i].is_some() {
                i += 1;
            }
            let one = self.read_run(id, first, size, &crcs, start..i, &mut out);
            if start == 0 && i == crcs.len() {
                whole = one;
            }
        }
        (out, whole)
    }

    /// Reads one run of blocks that the index holds. A run longer than `LONG_RUN`
    /// goes into one buffer, returned whole if every block checked out; a shorter
    /// one into a buffer per block (the RAM tier keeps those: a slice would keep
    /// its whole run alive). One buffer, a lone block's included, is read unzeroed.
    pub(super) fn read_run(
        &self,
        id: u64,
        first: u64,
        size: u64,
        crcs: &[Option<u32>],
        run: Range<usize>,
        out: &mut [Option<Bytes>],
    ) -> Option<Bytes> {
        let lens: Vec<usize> = run
            .clone()
            .map(|i| block_len(size, self.bs, first + i as u64))
            .collect();
        let at = (first + run.start as u64) * self.bs;
        let (pieces, one, read) = if run.len() > LONG_RUN || run.len() == 1 {
            // One buffer, read unzeroed; a short read (the file was cut) leaves the
            // blocks past its end short, and they fail the check below.
            let total = lens.iter().sum();
            let (buf, read) = match self.file(id, false).and_then(|f| f.read_new(total, at)) {
                Ok(v) => {
                    let n = v.len();
                    (Bytes::from(v), Ok(n))
                }
                Err(e) => (Bytes::new(), Err(e)),
            };
            let n = buf.len();
            let mut o = 0;
            let pieces: Vec<Bytes> = lens
                .iter()
                .map(|&l| {
                    o += l;
                    buf.slice((o - l).min(n)..o.min(n))
                })
                .collect();
            (pieces, (run.len() > LONG_RUN).then_some(buf), read)
        } else {
            let mut bufs: Vec<BytesMut> = lens.iter().map(|&l| BytesMut::zeroed(l)).collect();
            let read = self.file(id, false).and_then(|f| {
                let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
                f.read_vectored_at(&mut slices, at)
            });
            (bufs.into_iter().map(BytesMut::freeze).collect(), None, read)
        };
        let got = match read {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    stats::inc(&self.stats.disk_read_errors);
                    tracing::debug!(id, error = %e, "disk tier read failed");
                    return None;
                }
                0
            }
        };
        let mut offset = 0usize;
        let mut bad = Vec::new();
        for (j, piece) in pieces.into_iter().enumerate() {
            let i = run.start + j;
            let len = lens[j];
            let complete = offset + len <= got;
            offset += len;
            let want = crcs[i].expect("run of present blocks");
            if complete && crc32c::crc32c(&piece) == want {
                out[i] = Some(piece);
            } else {
                bad.push((first + i as u64, want));
            }
        }
        if !bad.is_empty() {
            self.drop_damaged(id, &bad);
            return None;
        }
        one
    }

    /// Drops blocks that failed their check, unless they left the index meanwhile
    /// (evicted or replaced while we read: a race, not damage).
    pub(super) fn drop_damaged(&self, id: u64, bad: &[(u64, u32)]) {
        let mut dropped = Vec::new();
        {
            let mut idx = self.index.write();
            let Some(&slot) = idx.by_id.get(&id) else {
                return;
            };
            for &(blk, crc) in bad {
                let same = key(slot, blk).and_then(|k| idx.blocks.peek(&k).copied()) == Some(crc);
                if same && idx.remove_block(slot, blk) {
                    dropped.push((id, blk));
                }
            }
        }
        if !dropped.is_empty() {
            stats::add(&self.stats.checksum_failures, dropped.len() as u64);
            tracing::warn!(
                id,
                blocks = dropped.len(),
                "cache blocks failed their checksum; dropped and refetching from the origin"
            );
            self.pending.lock().dels.extend(dropped);
            self.update_gauges();
        }
    }

    pub(super) fn file(&self, id: u64, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        self.open_file(id, create).map(|(f, _)| f)
    }

    /// Opens an object's data file; with `create`, makes it if missing and says so
    /// (its directory then needs a sync before records may name it).
    pub(super) fn open_file(
        &self,
        id: u64,
        create: bool,
    ) -> io::Result<(Arc<dyn StorageFile>, bool)> {
        let mut fc = self.files.lock();
        if let Some(f) = fc.open.get(&id) {
            return Ok((f.clone(), false));
        }
        let path = object_path(id);
        let (f, created) = match self.storage.open(&path, false) {
            Ok(f) => (f, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                (self.storage.open(&path, true)?, true)
            }
            Err(e) => return Err(e),
        };
        if fc.open.len() >= MAX_OPEN_FILES
            && let Some(&k) = fc.open.keys().next()
        {
            fc.open.remove(&k);
        }
        fc.open.insert(id, f.clone());
        Ok((f, created))
    }

    pub(super) fn remove_file(&self, id: u64) {
        let mut fc = self.files.lock();
        fc.open.remove(&id);
        match self.storage.remove_file(&object_path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::debug!(id, error = %e, "could not remove cache file"),
        }
    }
}
