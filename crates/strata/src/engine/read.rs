//! The read path: a handle's current version (revalidated after the TTL), blocks
//! gathered from RAM, blocks on their way to disk, and the disk tier, what is missing
//! claimed (single flight) and fetched from the origin in runs, checked against the
//! open file's token, and handed to the reader before its fills are queued.

use super::*;

impl Inner {
    /// The handle's object, revalidated with the origin if its TTL has passed.
    pub(super) fn current(&self, h: &Handle) -> io::Result<Arc<Object>> {
        let obj = h.cur.lock().clone();
        // 0 means "ask the origin now" (a fetch saw the file change, or the version
        // was never confirmed).
        let validated = obj.validated_ns.load(Ordering::Acquire);
        let age = self.now_ns().saturating_sub(validated);
        if !obj.is_dead() && validated != 0 && age < obj.trust_ns.load(Ordering::Acquire) {
            return Ok(obj);
        }
        let attr = match self.stat_origin(&obj.path) {
            // An open handle stays with its file: if another file now has its name
            // (replaced by rename), the handle is stale, as on NFS, unless the handle
            // holds the origin file open (then that file is what it reads).
            Ok(a) if a.kind == FileKind::File && a.same_file(&obj.token()) => a,
            Ok(_) => return Err(io::Error::from_raw_os_error(ESTALE)),
            Err(e) if e.raw_os_error() == Some(ENOENT) => return self.still_open(h, obj),
            Err(e) => return Err(e),
        };
        let fresh = self.object_for(&obj.path, &attr, self.now_ns())?;
        h.switch(fresh.clone());
        Ok(fresh)
    }

    /// A handle opened to write whose file's name is gone: it reads on through the
    /// origin file it holds open (unlinked but open, as POSIX keeps it). Other
    /// handles get ESTALE, as on NFS.
    fn still_open(&self, h: &Handle, obj: Arc<Object>) -> io::Result<Arc<Object>> {
        let stale = || io::Error::from_raw_os_error(ESTALE);
        let Some(file) = h.wfile.clone() else {
            return Err(stale());
        };
        self.settle(&obj);
        let f = file.clone();
        let token = self.guard.call(move || f.token()).map_err(|_| stale())?;
        let now = self.now_ns().max(1);
        if obj.has_token(&token) && !obj.is_dead() {
            // Trusted again for its trust time: the descriptor said so.
            obj.validated_ns.store(now, Ordering::Release);
            return Ok(obj);
        }
        // The file changed since (written through this handle after its name went):
        // a version of its own, which no path names, cached under a fresh id.
        let o = self.new_object(&obj.path, self.catalog.fresh_id(), token, Vec::new(), now);
        o.trust_ns
            .store(obj.trust_ns.load(Ordering::Acquire), Ordering::Release);
        o.detached.store(true, Ordering::Release);
        *o.file.lock() = Some(file);
        h.switch(o.clone());
        Ok(o)
    }

    pub(super) fn read(&self, h: &Handle, off: u64, len: usize) -> io::Result<ReadBuf> {
        stats::inc(&self.stats.reads);
        // A fetch that sees the file change makes the read start over on the new
        // version, so one read never mixes two versions. If the file keeps changing,
        // the last try reads the range from the origin in one request, uncached.
        for attempt in 0..3 {
            let obj = self.current(h)?;
            let size = obj.size();
            if len == 0 || off >= size {
                return Ok(ReadBuf::default());
            }
            let end = (off + len as u64).min(size);
            if attempt == 2 {
                return self.read_direct(&obj, off, end);
            }
            let ra = if attempt == 0 {
                self.plan_readahead(h, &obj, off, end)
            } else {
                None
            };
            let b0 = off / obj.bs;
            let mut got: Vec<Option<Bytes>> = vec![None; (end.div_ceil(obj.bs) - b0) as usize];
            let mut whole = None;
            let gathered = self.gather(&obj, b0, &mut got, &mut whole)?;
            // Read-ahead goes out after the reader's own fetch: on an origin with
            // one connection (sshfs) its bytes would otherwise arrive first.
            if let Some(ra) = ra {
                self.start_readahead(&obj, ra);
            }
            match gathered {
                Gathered::Complete => return Ok(self.assemble(&obj, off, end, got, whole)),
                Gathered::Changed => continue,
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Counts a reader's wait for an origin request that began at `t0` and the part
    /// of it the origin itself took.
    pub(super) fn note_origin_time(&self, t0: Instant, took: Duration) {
        stats::add(&self.stats.origin_wait_us, t0.elapsed().as_micros() as u64);
        stats::add(&self.stats.origin_read_us, took.as_micros() as u64);
    }

    /// An O_DIRECT read: the origin file as it is now, whatever the cache holds or
    /// the version's size says; nothing is cached.
    pub(super) fn read_bypass(&self, h: &Handle, off: u64, len: usize) -> io::Result<ReadBuf> {
        stats::inc(&self.stats.reads);
        let obj = h.cur.lock().clone();
        self.read_direct(&obj, off, off + len as u64)
    }

    /// Reads a range straight from a freshly opened origin file, uncached.
    pub(super) fn read_direct(&self, obj: &Object, off: u64, end: u64) -> io::Result<ReadBuf> {
        if self.guard.is_down() {
            stats::inc(&self.stats.origin_unreachable);
            return Err(OriginGuard::down_error());
        }
        let (o, p) = (self.origin.clone(), obj.path.clone());
        let len = (end - off) as usize;
        // Not across a write through this cache (a reader never sees one torn).
        let _io = obj.io.read();
        // A version no name has reads its own open file.
        let held = if obj.detached.load(Ordering::Acquire) {
            obj.file.lock().clone()
        } else {
            None
        };
        stats::inc(&self.stats.origin_requests);
        let t0 = Instant::now();
        let (buf, took) = self
            .guard
            .call(move || {
                let t1 = Instant::now();
                let file: Arc<dyn OriginFile> = match held {
                    Some(f) => f,
                    None => Arc::from(o.open(&p)?),
                };
                let mut buf = BytesMut::zeroed(len);
                let n = crate::origin::read_vectored_by(&mut [&mut buf[..]], off, |b, at| {
                    file.read_at(b, at)
                })?;
                buf.truncate(n);
                Ok((buf, t1.elapsed()))
            })
            .inspect_err(|_| stats::inc(&self.stats.origin_errors))?;
        self.note_origin_time(t0, took);
        let n = buf.len();
        stats::add(&self.stats.origin_bytes, n as u64);
        stats::add(&self.stats.read_bytes, n as u64);
        Ok(ReadBuf {
            len: n,
            parts: vec![buf.freeze()],
        })
    }

    /// Joins the blocks of a read, stopping at the first gap or short block (the
    /// file shrank). Blocks that came as one buffer go out as one slice of it (a
    /// reply in one piece: no copy to join them).
    pub(super) fn assemble(
        &self,
        obj: &Object,
        off: u64,
        end: u64,
        got: Vec<Option<Bytes>>,
        whole: Option<Bytes>,
    ) -> ReadBuf {
        let bs = obj.bs;
        let b0 = off / bs;
        if let Some(w) = whole {
            let start = (off - b0 * bs) as usize;
            let stop = ((end - b0 * bs) as usize).min(w.len());
            let len = stop.saturating_sub(start);
            stats::add(&self.stats.read_bytes, len as u64);
            return ReadBuf {
                parts: if len > 0 {
                    vec![w.slice(start..stop)]
                } else {
                    Vec::new()
                },
                len,
            };
        }

        let mut buf = ReadBuf::default();
        let mut pos = off;
        for (i, b) in got.into_iter().enumerate() {
            let blk = b0 + i as u64;
            let Some(b) = b else { break };
            let start = (pos - blk * bs) as usize;
            let stop = ((end - blk * bs) as usize).min(b.len());
            if start >= stop {
                break;
            }
            buf.len += stop - start;
            pos += (stop - start) as u64;
            let full = b.len() == obj.block_len(blk);
            buf.parts.push(b.slice(start..stop));
            if !full {
                break;
            }
        }
        stats::add(&self.stats.read_bytes, buf.len as u64);
        buf
    }

    /// Fills `got` (blocks b0.. of `obj`) from the tiers and, for what is missing,
    /// from the origin, with one fetch in flight per block. `whole` gets all of
    /// `got` as one buffer when a single disk read supplied every block.
    pub(super) fn gather(
        &self,
        obj: &Arc<Object>,
        b0: u64,
        got: &mut [Option<Bytes>],
        whole: &mut Option<Bytes>,
    ) -> io::Result<Gathered> {
        let mut round = 0;
        loop {
            round += 1;
            // Memory, blocks on their way to disk, the disk; memory hits the disk
            // lacks are offered to it again, and short disk runs promoted, before
            // any write can change them (memory alone needs no lock: a hit there is
            // only a read racing the write).
            let found = {
                let _io = self.tiers.has_below().then(|| obj.io.read());
                let mut found = self.tiers.lookup(obj.id, b0, got, admission::promotes);
                if !found.memory.is_empty() {
                    self.refill(obj, std::mem::take(&mut found.memory));
                }
                // Another machine's fetch: cached here as ours would be.
                for run in found.shared.chunk_by(|a, b| a + 1 == *b) {
                    let blocks = run
                        .iter()
                        .map(|&blk| got[(blk - b0) as usize].clone().expect("found"))
                        .collect();
                    self.cache_fetched(obj, run[0], blocks);
                }
                found
            };
            if found.memory_missed.is_empty() {
                return Ok(Gathered::Complete);
            }
            if found.whole.is_some() {
                *whole = found.whole;
            }
            if !found.below.is_empty() || !found.durable_absent.is_empty() {
                let mut st = obj.lock();
                for &blk in &found.below {
                    st.tree.set(obj.bytes_of(blk..blk + 1), bits::CACHED);
                }
                for &blk in &found.durable {
                    st.tree.set(obj.bytes_of(blk..blk + 1), bits::VERIFIED);
                }
                for &blk in &found.durable_absent {
                    st.tree.clear(obj.bytes_of(blk..blk + 1), bits::VERIFIED);
                }
            }
            let missing: Vec<u64> = got
                .iter()
                .enumerate()
                .filter(|(_, b)| b.is_none())
                .map(|(i, _)| b0 + i as u64)
                .collect();
            if missing.is_empty() {
                return Ok(Gathered::Complete);
            }
            // Origin: claim what nobody fetches, wait for the rest.
            let Claimed {
                mine: claims,
                theirs,
                arrived,
            } = if round > 3 {
                // Others keep losing these blocks (a tiny RAM tier, failing fetches):
                // stop waiting and fetch them ourselves, uncoordinated.
                Claimed {
                    mine: Vec::new(),
                    theirs: missing.clone(),
                    arrived: Vec::new(),
                }
            } else {
                let mut st = obj.lock();
                obj.claim(&mut st, &missing, |blk| {
                    let key = BlockKey { obj: obj.id, blk };
                    self.tiers.memory.contains(&key) || self.tiers.fills.holds(&key)
                })
            };
            for claim in claims {
                for c in self.split(claim) {
                    let first = c.blocks.start;
                    stats::add(&self.stats.misses, c.blocks.end - c.blocks.start);
                    let count = (c.blocks.end - c.blocks.start) as usize;
                    let Fetched { data, cached } = self.fetch(obj, c, false)?;
                    if !cached {
                        return Ok(Gathered::Changed);
                    }
                    let short = data.len() < count
                        || data
                            .iter()
                            .enumerate()
                            .any(|(j, b)| b.len() != obj.block_len(first + j as u64));
                    for (j, b) in data.into_iter().enumerate() {
                        got[(first - b0) as usize + j] = Some(b);
                    }
                    if short {
                        // The file is shorter than its token said: what follows is
                        // past its end now.
                        return Ok(Gathered::Complete);
                    }
                }
            }
            if theirs.is_empty() {
                if arrived.is_empty() {
                    return Ok(Gathered::Complete);
                }
                continue;
            }
            if round > 3 {
                let first = theirs[0];
                let last = *theirs.last().expect("non-empty");
                let (data, same) = self.read_origin(obj, first..last + 1, false)?;
                if !same {
                    return Ok(Gathered::Changed);
                }
                for (j, b) in data.into_iter().enumerate() {
                    let i = (first - b0) as usize + j;
                    if got[i].is_none() {
                        got[i] = Some(b);
                    }
                }
                return Ok(Gathered::Complete);
            }
            stats::inc(&self.stats.fetch_waits);
            obj.wait_clear(&theirs, bits::FETCHING);
        }
    }

    /// Splits a claim into runs of at most `max_fetch` bytes; with a shared tier,
    /// at multiples of it, so that machines missing the same blocks fetch the same
    /// chunks (and ask for the same lease).
    pub(super) fn split(&self, claim: Claim) -> Vec<Claim> {
        let per = self.fetch_chunk(&claim.obj);
        let aligned = self.tiers.shared.is_some();
        let len = claim.blocks.end - claim.blocks.start;
        if len <= per && (!aligned || claim.blocks.start / per == (claim.blocks.end - 1) / per) {
            return vec![claim];
        }
        let mut out = Vec::new();
        let mut s = claim.blocks.start;
        while s < claim.blocks.end {
            let e = if aligned {
                (s / per + 1) * per
            } else {
                s + per
            }
            .min(claim.blocks.end);
            out.push(Claim {
                obj: claim.obj.clone(),
                blocks: s..e,
            });
            s = e;
        }
        // The parts now hold the FETCHING marks; the emptied whole clears nothing.
        let mut whole = claim;
        whole.blocks = whole.blocks.start..whole.blocks.start;
        out
    }

    /// Blocks in one origin request at most.
    pub(super) fn fetch_chunk(&self, obj: &Object) -> u64 {
        (self.cfg.max_fetch / obj.bs).max(1)
    }

    /// Fetches a claimed run from the origin in one request, caches it unless the file
    /// changed meanwhile, and returns the blocks (possibly fewer or shorter at EOF).
    pub(super) fn fetch(
        &self,
        obj: &Arc<Object>,
        claim: Claim,
        readahead: bool,
    ) -> io::Result<Fetched> {
        let blocks = claim.blocks.clone();
        // No write between reading the origin and caching what it gave.
        let _io = obj.io.read();
        // Its token is compared with the origin's after the read.
        self.settle(obj);
        if let Some(s) = &self.tiers.shared {
            return self.fetch_shared(obj, claim, readahead, s);
        }
        let (data, cached) = self.read_origin(obj, blocks.clone(), readahead)?;
        if !cached {
            return Ok(Fetched { data, cached });
        }
        self.cache_fetched(obj, blocks.start, data.clone());
        // Waiters wake now and find the blocks in RAM or on their way to disk.
        drop(claim);
        Ok(Fetched { data, cached })
    }

    /// Caches blocks `first..` of `obj` that are its bytes (fetched, or just written
    /// through): in memory, and queued for the disk.
    pub(super) fn cache_fetched(&self, obj: &Arc<Object>, first: u64, data: Vec<Bytes>) {
        let blocks = first..first + data.len() as u64;
        // The device tier, where there is one, takes whole blocks too (device reads
        // fill it device to device themselves).
        if let Some(d) = self.tiers.device.as_ref().filter(|d| d.usable()) {
            use crate::tier::Tier;
            for (blk, b) in blocks.clone().zip(&data) {
                if b.len() == obj.block_len(blk) {
                    let _ = d.put(BlockKey { obj: obj.id, blk }, b.clone());
                }
            }
        }
        let in_memory = self.tiers.store(obj.id, first, &data);
        let fill = self.tiers.disk.is_some() && !obj.is_dead();
        {
            let mut st = obj.lock();
            if fill {
                st.tree
                    .set(obj.bytes_of(blocks.clone()), bits::FILLING | bits::CACHED);
            } else {
                for &blk in &in_memory {
                    st.tree.set(obj.bytes_of(blk..blk + 1), bits::CACHED);
                }
            }
        }
        if fill {
            self.queue_fill(
                obj,
                FillJob {
                    id: obj.id,
                    first,
                    blocks: data,
                },
            );
        }
    }

    /// One origin request for a block run. Returns the blocks read (the last may be
    /// short, some may be missing at EOF) and whether they are of the object's version
    /// and complete, so that they may be cached.
    pub(super) fn read_origin(
        &self,
        obj: &Arc<Object>,
        blocks: Range<u64>,
        readahead: bool,
    ) -> io::Result<(Vec<Bytes>, bool)> {
        if self.guard.is_down() {
            stats::inc(&self.stats.origin_unreachable);
            return Err(OriginGuard::down_error());
        }
        let file = obj
            .origin_file(|| {
                let (o, p) = (self.origin.clone(), obj.path.clone());
                self.guard.call(move || o.open(&p))
            })
            .inspect_err(|e| {
                stats::inc(&self.stats.origin_errors);
                if unreachable(e) {
                    stats::inc(&self.stats.origin_unreachable);
                }
                // Probably gone or replaced: make the next read ask the origin.
                obj.suspect.store(true, Ordering::Release);
                obj.validated_ns.store(0, Ordering::Release);
            })
            .map_err(|e| {
                if e.raw_os_error() == Some(ENOENT) {
                    // The handle's file is gone from the origin.
                    io::Error::from_raw_os_error(ESTALE)
                } else {
                    e
                }
            })?;
        let bufs: Vec<BytesMut> = blocks
            .clone()
            .map(|b| BytesMut::zeroed(obj.block_len(b)))
            .collect();
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        stats::inc(&self.stats.origin_requests);
        if readahead {
            stats::inc(&self.stats.readahead_requests);
        }
        let off = blocks.start * obj.bs;
        // The buffers travel to the worker and back: a read abandoned at its deadline
        // still has somewhere to write.
        let t0 = Instant::now();
        let (bufs, n, token, took) = self
            .guard
            .call(move || {
                let t1 = Instant::now();
                let mut bufs = bufs;
                let n = {
                    let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
                    file.read_vectored_at(&mut slices, off)?
                };
                let token = if n == want { file.token().ok() } else { None };
                Ok((bufs, n, token, t1.elapsed()))
            })
            .inspect_err(|e| {
                stats::inc(&self.stats.origin_errors);
                if unreachable(e) {
                    stats::inc(&self.stats.origin_unreachable);
                }
            })?;
        stats::add(&self.stats.origin_bytes, n as u64);
        if readahead {
            stats::add(&self.stats.readahead_bytes, n as u64);
        } else {
            self.note_origin_time(t0, took);
        }
        let same = n == want && token.as_ref().is_some_and(|t| obj.has_token(t));
        if !same {
            stats::inc(&self.stats.origin_changed);
            obj.suspect.store(true, Ordering::Release);
            obj.validated_ns.store(0, Ordering::Release);
            // And the attributes that named that version: an open asks again.
            self.attrs.remove(&obj.path);
        }
        // Cut the buffers down to what was read.
        let mut left = n;
        let mut out = Vec::with_capacity(bufs.len());
        for mut b in bufs {
            if left == 0 {
                break;
            }
            let take = b.len().min(left);
            b.truncate(take);
            left -= take;
            out.push(b.freeze());
        }
        Ok((out, same))
    }
}
