//! The engine's side of the disk fill path (the queue and the writer are the disk
//! tier's, `tier/disk/writer.rs`): what a fill means to an object's extent bits,
//! fills dropped (never waited for) when the queue is full and offered again once
//! the writer is idle, and the metadata journal's upkeep.

use super::*;
use crate::tier::disk::writer::FillListener;

/// A run of blocks whose fill was dropped, remembered by the object version it
/// belongs to rather than by the object itself: holding each object would keep every
/// one of them (their extent trees, their place in the active table) alive while
/// thousands of small files wait, which is why at most 4,096 were remembered and a
/// second pass over a tree larger than RAM went back to the origin for the rest.
pub(super) struct Dropped {
    path: PathBuf,
    token: Token,
    id: u64,
    blocks: Range<u64>,
}

/// The metadata journal is rewritten from the live entries only past this size.
pub(super) const META_LOG_MIN: u64 = 8 << 20;

impl Inner {
    /// Offers the disk tier blocks found in RAM that it does not hold and that are
    /// not on their way (their first fill was dropped because the queue was full).
    pub(super) fn refill(&self, obj: &Arc<Object>, hits: Vec<(u64, Bytes)>) {
        if obj.is_dead() {
            return;
        }
        let mut runs: Vec<FillJob> = Vec::new();
        {
            let mut st = obj.lock();
            for (blk, b) in hits {
                let r = obj.bytes_of(blk..blk + 1);
                // On disk (a block from an older run, not yet VERIFIED, is kept by
                // the writer as it is).
                if st.tree.test_any(r.clone(), bits::VERIFIED | bits::FILLING) {
                    continue;
                }
                st.tree.set(r, bits::FILLING);
                match runs.last_mut() {
                    Some(j) if j.first + j.blocks.len() as u64 == blk => j.blocks.push(b),
                    _ => runs.push(FillJob {
                        id: obj.id,
                        first: blk,
                        blocks: vec![b],
                    }),
                }
            }
        }
        for job in runs {
            self.queue_fill(obj, job);
        }
    }

    /// Queues a fill of `obj`'s blocks (marked FILLING by the caller); a fill the
    /// queue cannot take is remembered, to be offered again once the writer is idle.
    pub(super) fn queue_fill(&self, obj: &Arc<Object>, job: FillJob) {
        let n = job.blocks.len() as u64;
        // Known before the writer can finish it.
        self.filling_objs
            .lock()
            .entry(obj.id)
            .or_insert_with(|| (Arc::downgrade(obj), 0))
            .1 += 1;
        let Err(job) = self.tiers.fills.queue(job) else {
            return;
        };
        self.unfilling(obj.id);
        self.fill_finished(obj, &job, &vec![false; job.blocks.len()]);
        let mut d = self.dropped.lock();
        if d.len() >= MAX_DROPPED_RUNS
            && let Some(old) = d.pop_front()
        {
            self.stats
                .dropped_fill_blocks
                .fetch_sub(old.blocks.end - old.blocks.start, Ordering::Relaxed);
        }
        match d.back_mut() {
            // The next run of the same version: one record.
            Some(last) if last.id == obj.id && last.blocks.end == job.first => {
                last.blocks.end = job.first + n;
            }
            _ => d.push_back(Dropped {
                path: obj.path.clone(),
                token: obj.token(),
                id: obj.id,
                blocks: job.first..job.first + n,
            }),
        }
        stats::add(&self.stats.dropped_fill_blocks, n);
    }

    /// One job of `id` is done: the object, while it still exists, and whether other
    /// jobs of it are still queued.
    fn unfilling(&self, id: u64) -> Option<Arc<Object>> {
        let mut m = self.filling_objs.lock();
        let e = m.get_mut(&id)?;
        e.1 -= 1;
        let obj = e.0.upgrade();
        if e.1 == 0 {
            m.remove(&id);
        }
        obj
    }

    /// Bytes the fill queue can still take; unbounded without a disk tier.
    pub(super) fn fill_room(&self) -> u64 {
        if self.tiers.disk.is_none() {
            return u64::MAX;
        }
        self.tiers.fills.room()
    }

    /// Clears the FILLING state of a job's blocks; marks those stored as on disk.
    pub(super) fn fill_finished(&self, o: &Object, job: &FillJob, done: &[bool]) {
        let mut st = o.lock();
        // A write waiting for these fills to land goes on once they have.
        o.cond.notify_all();
        for (j, ok) in done.iter().enumerate() {
            let blk = job.first + j as u64;
            let r = o.bytes_of(blk..blk + 1);
            st.tree.clear(r.clone(), bits::FILLING);
            if *ok {
                // Written by us from bytes checked against the origin's token.
                st.tree.set(r, bits::CACHED | bits::VERIFIED);
            }
        }
    }

    /// Writes the metadata journal (once a second, or `now`), and rewrites it from
    /// the live entries when it is mostly history.
    pub(super) fn keep_meta(&self, now: bool) {
        let Some(log) = &self.meta_log else { return };
        let every = if now {
            Duration::ZERO
        } else {
            Duration::from_secs(1)
        };
        if let Err(e) = log.flush(every) {
            tracing::debug!(error = %e, "cannot write the metadata journal");
            return;
        }
        // The size first: the maps are only weighed when the journal is large.
        if log.len() > META_LOG_MIN && log.len() > 4 * self.journaled_bytes() {
            let mut out = Vec::new();
            self.attrs.records(&mut out);
            self.dirs.records(&mut out);
            self.links.records(&mut out);
            self.xattrs.records(&mut out);
            self.xattr_lists.records(&mut out);
            if let Err(e) = log.rewrite(out) {
                tracing::debug!(error = %e, "cannot rewrite the metadata journal");
            }
        }
    }

    /// The object a dropped run belongs to, if that version is still the one cached:
    /// the active one, or (forgotten since) made again from the disk index, where it
    /// was registered when first read. Never confirmed with the origin here: a fetch
    /// checks the origin file's token before anything is cached.
    pub(super) fn revive(&self, run: &Dropped) -> Option<Arc<Object>> {
        let mut objs = self.objects.lock();
        if let Some(o) = objs.get(&run.path) {
            return (o.id == run.id && !o.is_dead()).then(|| o.clone());
        }
        let d = self.tiers.disk.as_ref()?;
        if !self.catalog.holds(&run.path, run.id, &run.token) {
            return None;
        }
        // validated 0: whoever opens it asks the origin first.
        let o = self.new_object(&run.path, run.id, run.token.clone(), d.present(run.id), 0);
        if objs.len() >= MAX_ACTIVE {
            objs.retain(|_, o| Arc::strong_count(o) > 1);
        }
        objs.insert(run.path.clone(), o.clone());
        Some(o)
    }

    /// Offers the disk again the runs whose fill was dropped, as much as the queue
    /// takes, in pieces that fit it: the blocks still in RAM from there, the others
    /// (evicted meanwhile: a file larger than RAM read while the writer was behind)
    /// fetched again from the origin. One read of a file then caches all of it.
    pub(super) fn retry_dropped(&self) {
        let per = (self.cfg.fill_queue_bytes / self.cfg.block_size as u64).max(1);
        let pending = &self.stats.dropped_fill_blocks;
        // Each run at most once per idle moment: a run whose fill is dropped again
        // (the queue closed at shutdown) goes to the back of the list, and must not
        // be taken again in the same pass.
        let runs = self.dropped.lock().len();
        for _ in 0..runs {
            if !self.tiers.fills.is_open() {
                return; // shutting down: nothing more can be queued
            }
            let Some(run) = self.dropped.lock().pop_front() else {
                return;
            };
            let (start, end) = (run.blocks.start, run.blocks.end);
            let blocks = run.blocks.clone();
            let Some(obj) = self.revive(&run) else {
                // That version is gone (changed at the origin, or evicted).
                pending.fetch_sub(end - start, Ordering::Relaxed);
                continue;
            };
            // The run stays counted in `pending` until what replaces it (queued
            // fills, refetches, the part put back) is counted, so the gauge never
            // reads 0 while something is still on its way.
            let put_back = |from: u64| {
                if from < end {
                    self.dropped.lock().push_front(Dropped {
                        blocks: from..end,
                        path: run.path.clone(),
                        token: run.token.clone(),
                        ..run
                    });
                }
                pending.fetch_sub(from.min(end) - start, Ordering::Relaxed);
            };
            if obj.is_dead() {
                put_back(end);
                continue;
            }
            // A write to it is under way (and may wait for this thread's commits):
            // the run waits for the next idle moment.
            let Some(_io) = obj.io.try_read() else {
                put_back(start);
                return;
            };
            let hits: Vec<(u64, Bytes)> = blocks
                .filter_map(|blk| {
                    let key = BlockKey { obj: obj.id, blk };
                    self.tiers.memory.get(&key).map(|b| (blk, b))
                })
                .collect();
            for part in hits.chunks(per as usize) {
                let bytes: u64 = part.iter().map(|(_, b)| b.len() as u64).sum();
                if self.fill_room() < bytes {
                    // The queue is full again: the run waits for the next idle
                    // moment whole (what went out is skipped then; what RAM lost
                    // is still to be fetched).
                    put_back(start);
                    return;
                }
                self.refill(&obj, part.to_vec());
            }
            // What RAM no longer holds: the blocks just offered are FILLING now,
            // so only those go to the origin.
            match self.refetch(&obj, start..end) {
                // The prefetch queue or the fill queue is full: the rest waits for
                // the next idle moment, after these fills are written.
                Some(at) => {
                    put_back(at);
                    return;
                }
                None => put_back(end),
            }
        }
    }

    /// Fetches the blocks of a range that no tier holds and nobody fetches, by the
    /// read-ahead threads, as far as the fill queue has room for them. Returns where
    /// it stopped, if before the end.
    pub(super) fn refetch(&self, obj: &Arc<Object>, blocks: Range<u64>) -> Option<u64> {
        let Some(tx) = self.prefetch_tx.read().clone() else {
            return None; // no read-ahead threads: left to the next reader
        };
        let mut room = self.readahead_room(obj.bs);
        let claims = self.claim_uncached(obj, blocks);
        // Dropping a claim (the one refused, and the rest) releases its blocks.
        for mut c in claims.into_iter().flat_map(|c| self.split(c)) {
            let at = c.blocks.start;
            let n = (c.blocks.end - at).min(room);
            if n == 0 {
                return Some(at);
            }
            let stop = (c.keep_first(n) > 0).then_some(at + n);
            // Counted before the send: the worker takes it off when done.
            stats::add(&self.stats.dropped_fill_blocks, n);
            if tx.try_send(Prefetch::Refetch(c)).is_err() {
                self.stats
                    .dropped_fill_blocks
                    .fetch_sub(n, Ordering::Relaxed);
                return Some(at);
            }
            stats::add(&self.stats.fills_refetched, n);
            if stop.is_some() {
                return stop;
            }
            room -= n;
        }
        None
    }
}

impl FillListener for Inner {
    fn filled(&self, job: &FillJob, done: &[bool]) {
        if let Some(obj) = self.unfilling(job.id) {
            self.fill_finished(&obj, job, done);
        }
    }

    fn tick(&self, idle: bool) {
        self.keep_meta(false);
        if idle {
            self.retry_dropped();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DiskSetup;
    use crate::origin::LocalOrigin;
    use crate::storage::SimStorage;
    use crate::tier::disk::Thresholds;

    #[test]
    fn a_version_made_again_for_a_dropped_fill_is_confirmed_by_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![7u8; 40_000]).unwrap();
        let cfg = Config {
            disk: Some(DiskSetup {
                storage: Arc::new(SimStorage::new()),
                capacity: 64 << 20,
                thresholds: Thresholds::OFF,
            }),
            attr_ttl: Duration::from_secs(600),
            ..Config::default()
        };
        let origin: Arc<dyn Origin> = Arc::new(LocalOrigin::new(dir.path()).unwrap());
        let e = Engine::new(cfg, origin).unwrap();
        let read = |e: &Engine| {
            let h = e.open(Path::new("f")).unwrap();
            e.read(&h, 0, 40_000).unwrap().len()
        };
        assert_eq!(read(&e), 40_000);
        assert!(e.wait_fills(Duration::from_secs(30)));
        // Forgotten from the active table, then made again for a dropped run.
        let inner = &e.inner;
        inner.objects.lock().clear();
        let path = PathBuf::from("f");
        let (id, token) = inner.catalog.lookup(&path).unwrap();
        let run = Dropped {
            path,
            token,
            id,
            blocks: 0..1,
        };
        let o = inner.revive(&run).unwrap();
        assert_eq!(o.validated_ns.load(Ordering::Acquire), 0);
        // The open confirms it (its attributes are within the TTL): reads ask the
        // origin nothing.
        let before = e.stats();
        assert_eq!(read(&e), 40_000);
        assert_eq!(read(&e), 40_000);
        let after = e.stats();
        assert_eq!(after.revalidations, before.revalidations, "{after:?}");
        assert_eq!(after.origin_requests, before.origin_requests);
    }
}
