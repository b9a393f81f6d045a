//! Space: the free-space thresholds (culling and stopping, as cachefilesd), the
//! size limit, and reclaiming what culling and eviction let go.

use super::*;

impl DiskTier {
    /// Reads free space (at most once a second unless forced) and sets the state.
    pub(super) fn check_space(&self, w: &mut Writer, force: bool) {
        let fresh = w
            .space
            .is_some_and(|(at, _)| !force && at.elapsed() < SPACE_TTL);
        if !fresh {
            match self.storage.space() {
                Ok(s) => w.space = Some((Instant::now(), s)),
                Err(e) => {
                    tracing::debug!(error = %e, "statvfs of the cache directory failed");
                    return;
                }
            }
        }
        let Some((_, s)) = w.space else { return };
        let t = &self.cfg.thresholds;
        let pct = |avail: u64, total: u64| {
            if total == 0 {
                100.0
            } else {
                avail as f64 * 100.0 / total as f64
            }
        };
        let b = pct(s.avail_bytes, s.total_bytes);
        let f = pct(s.avail_files, s.total_files);
        if b < t.bcull || f < t.fcull {
            w.culling = true;
        } else if b >= t.brun && f >= t.frun {
            w.culling = false;
        }
        let state = if w.failed_until.is_some() {
            FillState::Failed
        } else if b < t.bstop || f < t.fstop {
            FillState::Stopped
        } else if w.culling {
            FillState::Culling
        } else {
            FillState::Normal
        };
        if state != self.fill_state() {
            tracing::info!(
                ?state,
                free_bytes_pct = format!("{b:.1}"),
                free_files_pct = format!("{f:.1}"),
                "disk tier fill state changed"
            );
        }
        self.set_state(state);
    }

    /// Background upkeep, called by the writer thread when idle: logs and reclaims
    /// what readers dropped, culls when free space is low, rewrites a bloated log and
    /// scrubs one object directory. Returns true if more work is waiting.
    pub fn maintain(&self) -> bool {
        let mut w = self.writer.lock();
        if self.is_closed() {
            return false;
        }
        let mut more = false;
        if let Err(e) = self.flush_pending(&mut w) {
            self.note_write_error(&mut w, &e);
        }
        self.check_space(&mut w, false);
        if w.culling {
            more |= self.cull(&mut w);
        }
        if let Err(e) = self.maybe_compact(&mut w) {
            tracing::warn!(error = %e, "could not rewrite the cache index");
        }
        if let Some(n) = w.scrub_todo.pop() {
            self.scrub_dir(n, false, &mut FsckReport::default());
            more |= !w.scrub_todo.is_empty();
        }
        self.update_gauges();
        more
    }

    /// Evicts toward the free-space run threshold. True if it should run again.
    pub(super) fn cull(&self, w: &mut Writer) -> bool {
        let Some((_, s)) = w.space else { return false };
        let t = &self.cfg.thresholds;
        let want_bytes = ((t.brun / 100.0) * s.total_bytes as f64) as u64;
        let short = want_bytes.saturating_sub(s.avail_bytes);
        let mut n = short.div_ceil(self.bs).clamp(1, 4096);
        let want_files = ((t.frun / 100.0) * s.total_files as f64) as u64;
        if s.avail_files < want_files {
            n = n.max(256);
        }
        let victims: Vec<(u64, u64)> = {
            let mut idx = self.index.write();
            (0..n).map_while(|_| idx.evict_one()).collect()
        };
        if victims.is_empty() {
            return false;
        }
        stats::add(&self.stats.disk_culled, victims.len() as u64);
        if let Err(e) = self.retire(w, &victims, &[]) {
            self.note_write_error(w, &e);
            return false;
        }
        self.check_space(w, true);
        w.culling
    }

    /// Logs the removal of blocks and reclaims their space.
    pub(super) fn retire(
        &self,
        w: &mut Writer,
        victims: &[(u64, u64)],
        drops: &[(u64, bool)],
    ) -> io::Result<()> {
        let mut recs = Vec::new();
        push_removals(&mut recs, drops, &[], victims);
        self.append(w, &recs)?;
        self.reclaim(drops, &[], victims);
        Ok(())
    }

    /// Punches the holes of removed blocks and removes files of dropped or emptied
    /// objects. Runs after the records saying so are durable. A pinned object's file
    /// is left whole (the kernel may be reading it); the scrubber tidies it later.
    pub(super) fn reclaim(
        &self,
        drops: &[(u64, bool)],
        dels: &[(u64, u64)],
        victims: &[(u64, u64)],
    ) {
        for &(id, _) in drops {
            self.remove_file(id);
        }
        let mut touched: Vec<u64> = Vec::new();
        for &(id, blk) in dels.iter().chain(victims) {
            // The block may have been stored again since; then its data is live.
            let live = {
                let idx = self.index.read();
                if idx.pinned.contains_key(&id) {
                    continue;
                }
                match idx.obj(id) {
                    Some((_, o)) => o.present.test_any(blk..blk + 1, PRESENT),
                    None => {
                        // The object is gone; its file goes with its Drop.
                        continue;
                    }
                }
            };
            if live {
                continue;
            }
            if let Ok(f) = self.file(id, false) {
                let _ = f.punch_hole(blk * self.bs, self.bs);
            }
            touched.push(id);
        }
        touched.sort_unstable();
        touched.dedup();
        for id in touched {
            let empty = self
                .index
                .read()
                .obj(id)
                .is_some_and(|(_, o)| o.present.is_empty());
            if empty {
                // An object with nothing cached keeps its record but not its file, so
                // culling frees inodes too.
                self.remove_file(id);
            }
        }
    }
}
