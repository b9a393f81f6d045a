//! The scrubber and fsck: every cached block checked against its checksum, every
//! record against the data, stray files reclaimed.

use super::*;

impl DiskTier {
    /// Removes data files of unknown objects and punches data no record names.
    pub(super) fn scrub_dir(&self, n: u32, repair_only_report: bool, report: &mut FsckReport) {
        let dir = subdir(n);
        let Ok(names) = self.storage.list_dir(&dir) else {
            return;
        };
        for name in names {
            let Ok(id) = u64::from_str_radix(&name, 16) else {
                continue;
            };
            if name.len() != 16 || (id & 0xff) as u32 != n {
                continue;
            }
            let present: Option<ExtentTree> = {
                let idx = self.index.read();
                if idx.pinned.contains_key(&id) {
                    continue; // the kernel reads this file directly right now
                }
                idx.obj(id).map(|(_, o)| o.present.clone())
            };
            let Some(present) = present else {
                let pending_drop = self.pending.lock().drops.iter().any(|&(d, _)| d == id);
                if pending_drop {
                    continue;
                }
                report.orphan_files += 1;
                if !repair_only_report {
                    let len = self.file(id, false).and_then(|f| f.len()).unwrap_or(0);
                    self.remove_file(id);
                    stats::add(&self.stats.scrubbed_bytes, len);
                }
                continue;
            };
            let Ok(f) = self.file(id, false) else {
                continue;
            };
            let Ok(ranges) = f.data_ranges() else {
                continue;
            };
            for r in ranges {
                let first = r.start / self.bs;
                let end = r.end.div_ceil(self.bs);
                for blk in first..end {
                    if present.test_any(blk..blk + 1, PRESENT) {
                        continue;
                    }
                    let s = (blk * self.bs).max(r.start);
                    let e = ((blk + 1) * self.bs).min(r.end);
                    report.stray_bytes += e - s;
                    if !repair_only_report {
                        let _ = f.punch_hole(blk * self.bs, self.bs);
                        stats::add(&self.stats.scrubbed_bytes, e - s);
                    }
                }
            }
        }
    }

    /// Checks every block against its checksum and every file against the index.
    /// With `repair`, drops what is damaged and reclaims what is stray.
    pub fn fsck(&self, repair: bool) -> FsckReport {
        let mut report = FsckReport {
            log_tail_dropped: self.report.log_tail_dropped,
            records_dropped: self.report.records_dropped,
            index_reset: self.report.index_reset,
            repaired: repair,
            ..FsckReport::default()
        };
        let objects: Vec<(u64, Vec<Range<u64>>)> = {
            let idx = self.index.read();
            idx.slots
                .iter()
                .flatten()
                .map(|o| (o.id, o.present.iter().map(|(r, _)| r).collect()))
                .collect()
        };
        report.objects = objects.len() as u64;
        let before = self.stats.checksum_failures.load(Ordering::Relaxed);
        for (id, ranges) in objects {
            if !ranges.is_empty() && self.storage.open(&object_path(id), false).is_err() {
                report.missing_files += 1;
            }
            for r in ranges {
                let mut blk = r.start;
                while blk < r.end {
                    let n = (r.end - blk).min(256);
                    // `read` verifies and drops what is damaged from the index.
                    let got = self.read(id, blk, n);
                    report.blocks_checked += n;
                    report.blocks_bad += got.iter().filter(|b| b.is_none()).count() as u64;
                    blk += n;
                }
            }
        }
        debug_assert!(self.stats.checksum_failures.load(Ordering::Relaxed) >= before);
        for n in 0..256 {
            self.scrub_dir(n, !repair, &mut report);
        }
        let mut w = self.writer.lock();
        if repair {
            if let Err(e) = self
                .flush_pending(&mut w)
                .and_then(|_| self.compact(&mut w))
            {
                tracing::error!(error = %e, "could not write the repaired index");
            }
        } else {
            // Without repair, damaged blocks are only reported; put nothing on disk.
            let mut p = self.pending.lock();
            p.dels.clear();
        }
        report
    }
}
