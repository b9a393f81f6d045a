//! Writing: a batch of fills (data written and synced before the records that name
//! it), group commits of the index log, and its compaction.

use super::*;

impl DiskTier {
    /// Stores blocks: writes and syncs their data, then logs them in one commit.
    /// Returns, per block, whether it is now on disk. Blocks of unknown objects and
    /// blocks that do not fit (tier stopped, device failing) are refused.
    pub fn write_batch(&self, blocks: &[FillBlock]) -> Vec<bool> {
        let mut done = vec![false; blocks.len()];
        let mut w = self.writer.lock();
        if self.is_closed() {
            stats::add(&self.stats.disk_refusals, blocks.len() as u64);
            return done;
        }
        if !self.may_fill(&mut w) {
            stats::add(&self.stats.disk_refusals, blocks.len() as u64);
            if self.fill_state() == FillState::Stopped {
                stats::add(&self.stats.disk_refused_space, blocks.len() as u64);
            }
            return done;
        }

        // 1. Decide what to write and make room for it.
        let mut accepted: Vec<usize> = Vec::new();
        let mut victims: Vec<(u64, u64)> = Vec::new();
        {
            let mut idx = self.index.write();
            let mut seen = std::collections::HashSet::new();
            for (i, b) in blocks.iter().enumerate() {
                let Some((slot, o)) = idx.obj(b.key.obj) else {
                    stats::inc(&self.stats.disk_refusals);
                    continue;
                };
                let Some(k) = key(slot, b.key.blk) else {
                    stats::inc(&self.stats.disk_refusals);
                    continue;
                };
                if b.data.len() != block_len(o.token.size(), self.bs, b.key.blk)
                    || b.data.is_empty()
                {
                    stats::inc(&self.stats.disk_refusals);
                    continue;
                }
                if idx.blocks.contains(&k) {
                    done[i] = true;
                    continue;
                }
                if seen.insert(k) {
                    accepted.push(i);
                }
            }
            // A batch (up to 8 MiB) must not carry the filesystem past the stop
            // threshold: take only what fits above it in the current estimate.
            if let Some((_, s)) = &w.space {
                let floor = (s.total_bytes as f64 * self.cfg.thresholds.bstop / 100.0) as u64;
                let room = (s.avail_bytes.saturating_sub(floor) / self.bs) as usize;
                if accepted.len() > room {
                    let over = (accepted.len() - room) as u64;
                    stats::add(&self.stats.disk_refusals, over);
                    stats::add(&self.stats.disk_refused_space, over);
                    accepted.truncate(room);
                }
            }
            let cap = idx
                .blocks
                .capacity()
                .min((self.cfg.capacity / self.bs) * self.bs);
            while !accepted.is_empty()
                && idx.blocks.weight() + accepted.len() as u64 * self.bs > cap
            {
                match idx.evict_one() {
                    Some(v) => victims.push(v),
                    None => {
                        // Nothing left to evict: the batch is larger than the tier.
                        let keep = (cap.saturating_sub(idx.blocks.weight()) / self.bs) as usize;
                        stats::add(&self.stats.disk_refusals, (accepted.len() - keep) as u64);
                        accepted.truncate(keep);
                        break;
                    }
                }
            }
        }
        stats::add(&self.stats.disk_evictions, victims.len() as u64);

        // 2. Write the data, 3. make it durable.
        let mut ok: Vec<usize> = Vec::new();
        let mut by_obj: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for &i in &accepted {
            by_obj.entry(blocks[i].key.obj).or_default().push(i);
        }
        let mut errors = 0u32;
        let mut new_files = 0u64;
        for (&id, idxs) in &by_obj {
            let res = self.open_file(id, true).and_then(|(f, created)| {
                if created {
                    new_files += 1;
                    w.dirty_dirs
                        .push(object_path(id).parent().expect("has parent").to_path_buf());
                }
                for &i in idxs {
                    let b = &blocks[i];
                    f.write_all_at(&b.data, b.key.blk * self.bs)?;
                }
                f.sync_data()
            });
            match res {
                Ok(()) => ok.extend_from_slice(idxs),
                Err(e) => {
                    errors += 1;
                    self.note_write_error(&mut w, &e);
                }
            }
        }
        // Keep the free-space reading current between statvfs calls, so a burst of
        // fills crosses the thresholds when it happens, not a second later.
        let written = ok.len() as u64 * self.bs;
        if let Some((_, sp)) = &mut w.space {
            sp.avail_bytes = sp.avail_bytes.saturating_sub(written);
            sp.avail_files = sp.avail_files.saturating_sub(new_files);
        }
        self.check_space(&mut w, false);
        w.dirty_dirs.sort();
        w.dirty_dirs.dedup();
        let dir_sync: io::Result<()> = w
            .dirty_dirs
            .iter()
            .try_for_each(|d| self.storage.sync_dir(d));
        if let Err(e) = dir_sync {
            self.note_write_error(&mut w, &e);
            ok.clear();
            errors += 1;
        } else {
            w.dirty_dirs.clear();
        }

        // 4. One log commit for the whole batch.
        let (drops, dels) = {
            let mut p = self.pending.lock();
            (std::mem::take(&mut p.drops), std::mem::take(&mut p.dels))
        };
        let mut recs: Vec<Record> = Vec::new();
        push_removals(&mut recs, &drops, &dels, &victims);
        // Objects whose Object record (with their current token) this commit logs.
        let mut objs_done: FxHashMap<u64, Token> = FxHashMap::default();
        {
            let idx = self.index.read();
            let mut run: Option<(u64, u64, Vec<u32>)> = None;
            let mut sorted = ok.clone();
            sorted.sort_by_key(|&i| blocks[i].key);
            for &i in &sorted {
                let b = &blocks[i];
                let Some((_, o)) = idx.obj(b.key.obj) else {
                    continue;
                };
                if (!o.persisted || o.retokened) && !objs_done.contains_key(&o.id) {
                    objs_done.insert(o.id, o.token.clone());
                    recs.push(Record::Object {
                        id: o.id,
                        token: o.token.clone(),
                        path: o.path.to_vec(),
                    });
                }
                let crc = crc32c::crc32c(&b.data);
                match &mut run {
                    Some((id, first, crcs))
                        if *id == b.key.obj
                            && *first + crcs.len() as u64 == b.key.blk
                            && crcs.len() < record::MAX_RUN =>
                    {
                        crcs.push(crc)
                    }
                    _ => {
                        if let Some((id, first, crcs)) = run.take() {
                            recs.push(Record::Add { id, first, crcs });
                        }
                        run = Some((b.key.obj, b.key.blk, vec![crc]));
                    }
                }
            }
            if let Some((id, first, crcs)) = run.take() {
                recs.push(Record::Add { id, first, crcs });
            }
        }
        if let Err(e) = self.append(&mut w, &recs) {
            self.note_write_error(&mut w, &e);
            // Nothing of this batch is known to be durable; removals are retried.
            let mut p = self.pending.lock();
            p.drops.extend(drops);
            p.dels.extend(dels);
            p.dels.extend(victims);
            return done;
        }
        stats::inc(&self.stats.index_commits);

        // 5. Publish the new blocks.
        {
            let mut idx = self.index.write();
            let mut extra = Vec::new();
            for &i in &ok {
                let b = &blocks[i];
                let Some(&slot) = idx.by_id.get(&b.key.obj) else {
                    continue; // dropped meanwhile; its Drop record follows in the log
                };
                let k = key(slot, b.key.blk).expect("checked in step 1");
                if let Ok(ev) = idx.blocks.insert(k, crc32c::crc32c(&b.data)) {
                    for (ek, _) in ev {
                        let (s, blk) = unkey(ek);
                        if let Some(o) = idx.slots[s as usize].as_mut() {
                            o.present.clear(blk..blk + 1, PRESENT);
                            extra.push((o.id, blk));
                        }
                    }
                }
                let o = idx.slots[slot as usize].as_mut().expect("live slot");
                o.present.set(b.key.blk..b.key.blk + 1, PRESENT);
                o.persisted = true;
                // Logged, unless its token changed again since the record was made.
                if objs_done.get(&o.id) == Some(&o.token) {
                    o.retokened = false;
                }
                done[i] = true;
            }
            if !extra.is_empty() {
                self.pending.lock().dels.extend(extra);
            }
        }
        if errors == 0 {
            w.failures = 0;
        }
        stats::add(
            &self.stats.fills_done,
            ok.iter().filter(|&&i| done[i]).count() as u64,
        );

        // 6. Reclaim the space of what was removed, now that its records are durable.
        self.reclaim(&drops, &dels, &victims);
        self.update_gauges();
        done
    }

    /// Checks the fill state before a batch.
    pub(super) fn may_fill(&self, w: &mut Writer) -> bool {
        if let Some(until) = w.failed_until {
            if Instant::now() < until {
                return false;
            }
            w.failed_until = None;
            w.failures = 0;
            self.set_state(FillState::Normal);
        }
        self.check_space(w, false);
        self.fill_state() != FillState::Stopped
    }

    pub(super) fn note_write_error(&self, w: &mut Writer, e: &io::Error) {
        stats::inc(&self.stats.disk_write_errors);
        if e.raw_os_error() == Some(28) {
            // ENOSPC: the filesystem is fuller than our thresholds knew; look again.
            self.check_space(w, true);
            if self.fill_state() != FillState::Stopped {
                self.set_state(FillState::Stopped);
            }
            tracing::warn!("cache filesystem is full; filling stopped until space is freed");
            return;
        }
        w.failures += 1;
        if w.failures >= FAIL_LIMIT && w.failed_until.is_none() {
            w.failed_until = Some(Instant::now() + FAIL_BACKOFF);
            self.set_state(FillState::Failed);
            tracing::error!(
                error = %e,
                "cache device keeps failing writes; filling paused for {FAIL_BACKOFF:?} \
                 (reads are served from the origin and what is already cached)"
            );
        } else {
            tracing::warn!(error = %e, "cache device write failed");
        }
    }

    /// Logs and reclaims removals other threads queued.
    pub(super) fn flush_pending(&self, w: &mut Writer) -> io::Result<()> {
        let (drops, dels) = {
            let mut p = self.pending.lock();
            (std::mem::take(&mut p.drops), std::mem::take(&mut p.dels))
        };
        if drops.is_empty() && dels.is_empty() {
            return Ok(());
        }
        let mut recs = Vec::new();
        push_removals(&mut recs, &drops, &dels, &[]);
        if let Err(e) = self.append(w, &recs) {
            let mut p = self.pending.lock();
            p.drops.extend(drops);
            p.dels.extend(dels);
            return Err(e);
        }
        self.reclaim(&drops, &dels, &[]);
        Ok(())
    }

    /// Appends records and makes them durable.
    pub(super) fn append(&self, w: &mut Writer, recs: &[Record]) -> io::Result<()> {
        if recs.is_empty() {
            return Ok(());
        }
        w.buf.clear();
        for r in recs {
            record::encode(r, &mut w.buf);
        }
        let at = w.log_len;
        w.log.write_all_at(&w.buf, at)?;
        w.log.sync_data()?;
        w.log_len += w.buf.len() as u64;
        Ok(())
    }

    /// Rewrites the log from the index when most of it is history.
    pub(super) fn maybe_compact(&self, w: &mut Writer) -> io::Result<()> {
        let live_estimate = {
            let idx = self.index.read();
            idx.blocks.len() as u64 * 8 + idx.by_id.len() as u64 * 96 + 64
        };
        if w.log_len < self.cfg.compact_min_bytes || w.log_len < 2 * live_estimate {
            return Ok(());
        }
        self.compact(w)
    }

    pub(super) fn compact(&self, w: &mut Writer) -> io::Result<()> {
        // Removals still pending are part of the history being rewritten.
        self.flush_pending(w)?;
        let mut buf = Vec::new();
        {
            let idx = self.index.read();
            record::encode(
                &Record::Header {
                    version: record::VERSION,
                    block_size: self.cfg.block_size,
                },
                &mut buf,
            );
            record::encode(
                &Record::NextId {
                    next: self.ids.load(Ordering::Relaxed),
                },
                &mut buf,
            );
            for path in &idx.user_pins {
                record::encode(&Record::Pin { path: path.clone() }, &mut buf);
            }
            for o in idx.slots.iter().flatten() {
                if o.persisted || o.retokened {
                    record::encode(
                        &Record::Object {
                            id: o.id,
                            token: o.token.clone(),
                            path: o.path.to_vec(),
                        },
                        &mut buf,
                    );
                }
            }
            // Blocks in eviction order, so the order survives a restart.
            let mut run: Option<(u64, u64, Vec<u32>)> = None;
            for (k, &crc) in idx.blocks.keys_in_order() {
                let (slot, blk) = unkey(k);
                let Some(o) = idx.slots[slot as usize].as_ref() else {
                    continue;
                };
                match &mut run {
                    Some((id, first, crcs))
                        if *id == o.id
                            && *first + crcs.len() as u64 == blk
                            && crcs.len() < record::MAX_RUN =>
                    {
                        crcs.push(crc)
                    }
                    _ => {
                        if let Some((id, first, crcs)) = run.take() {
                            record::encode(&Record::Add { id, first, crcs }, &mut buf);
                        }
                        run = Some((o.id, blk, vec![crc]));
                    }
                }
            }
            if let Some((id, first, crcs)) = run.take() {
                record::encode(&Record::Add { id, first, crcs }, &mut buf);
            }
        }
        let tmp = self.storage.open(Path::new(LOG_TMP), true)?;
        tmp.set_len(0)?;
        tmp.write_all_at(&buf, 0)?;
        tmp.sync_data()?;
        self.storage.rename(Path::new(LOG_TMP), Path::new(LOG))?;
        // The new log must be the durable one before anything is appended to it.
        self.storage.sync_dir(Path::new(""))?;
        w.log = tmp;
        w.log_len = buf.len() as u64;
        stats::inc(&self.stats.index_compactions);
        Ok(())
    }
}
