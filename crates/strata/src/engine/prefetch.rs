//! Fetching ahead of readers: the read-ahead window of a sequential reader, and
//! directory scans (a program opening a directory's files, or listing its
//! subdirectories, in listing order), whose next files or listings are fetched in
//! parallel by the read-ahead threads.

use super::*;

impl Inner {
    /// Sequential detection per handle: a read that starts near where the reading
    /// got to grows the window (doubling up to the maximum); any other read resets it.
    /// Near, not exactly: the kernel sends a sequential reader's requests several at
    /// a time, and they reach us on different threads in any order.
    pub(super) fn plan_readahead(
        &self,
        h: &Handle,
        obj: &Object,
        off: u64,
        end: u64,
    ) -> Option<Range<u64>> {
        if self.cfg.readahead_max == 0 || self.cfg.prefetch_threads == 0 {
            return None;
        }
        let mut ra = h.ra.lock();
        let sequential = off <= ra.next + SEQ_SLACK && off + SEQ_SLACK >= ra.next;
        if !sequential {
            ra.next = end;
            ra.window = 0;
            return None;
        }
        ra.next = ra.next.max(end);
        ra.window = if ra.window == 0 {
            ((end - off) * 2).max(2 * obj.bs)
        } else {
            ra.window * 2
        }
        .min(self.cfg.readahead_max);
        let first = ra.next.div_ceil(obj.bs);
        let last = (ra.next + ra.window).min(obj.size()).div_ceil(obj.bs);
        (first < last).then_some(first..last)
    }

    /// Claims the blocks of a read-ahead window that are not cached or in flight and
    /// queues their fetches. A full queue drops them (and their claims).
    pub(super) fn start_readahead(&self, obj: &Arc<Object>, blocks: Range<u64>) {
        // What the disk tier holds of the window is left to the kernel's own
        // read-ahead of the cache file (one open file per object, so it sees the
        // reader's pattern): asking for it with WILLNEED halved warm sequential reads,
        // as that reads into one-page folios and out of step with the reader.
        let mut claims = self.claim_uncached(obj, blocks);
        // As much as admission allows (see `admission`).
        let mut room = self.readahead_room(obj.bs);
        let mut held = 0;
        for c in &mut claims {
            let keep = (c.blocks.end - c.blocks.start).min(room);
            room -= keep;
            held += c.keep_first(keep);
        }
        if held > 0 {
            stats::add(&self.stats.readahead_held, held);
            claims.retain(|c| !c.blocks.is_empty());
        }
        if claims.is_empty() {
            return;
        }
        let tx = self.prefetch_tx.read().clone();
        let Some(tx) = tx else { return };
        for claim in claims {
            for c in self.split(claim) {
                match tx.try_send(Prefetch::Blocks(c)) {
                    Ok(()) => {}
                    // Dropping the claim releases its blocks.
                    Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
                }
            }
        }
    }

    /// Claims the blocks of a range that no tier holds and nobody fetches. Only the
    /// blocks the hint marks cached are asked of the tiers (outside the object's
    /// lock); the claim itself is made under one lock of the object.
    pub(super) fn claim_uncached(&self, obj: &Arc<Object>, blocks: Range<u64>) -> Vec<Claim> {
        let mut maybe: Vec<u64> = Vec::new();
        let mut todo: Vec<u64> = Vec::new();
        {
            let st = obj.lock();
            for b in blocks {
                let r = obj.bytes_of(b..b + 1);
                let bits = st.tree.bits_at(r.start);
                if bits & (bits::FETCHING | bits::FILLING | bits::VERIFIED) != 0 {
                    continue;
                }
                if bits & bits::CACHED != 0 {
                    maybe.push(b);
                } else {
                    todo.push(b);
                }
            }
        }
        for b in maybe {
            if !self.tiers.holds(&BlockKey {
                obj: obj.id,
                blk: b,
            }) {
                todo.push(b);
            }
        }
        if todo.is_empty() {
            return Vec::new();
        }
        todo.sort_unstable();
        let mut st = obj.lock();
        obj.claim(&mut st, &todo, |blk| {
            let key = BlockKey { obj: obj.id, blk };
            self.tiers.memory.contains(&key) || self.tiers.fills.holds(&key)
        })
        .mine
    }

    /// Directory prefetch: a reader that opens a directory's files one after another
    /// in listing order (tar, cp -r, rsync) pays a few origin round trips per small
    /// file. Seeing that, fetch the next files ahead, several at once, with a window
    /// that doubles while the scan goes on, as read-ahead does within a file.
    pub(super) fn note_open(&self, path: &Path) {
        let max = self.cfg.dir_prefetch_files;
        if max == 0 || self.cfg.prefetch_threads == 0 {
            return;
        }
        let Some((dir, ahead)) = self.advance_scan(&self.dir_scans, path, FileKind::File, max)
        else {
            return;
        };
        if !self.dir_prefetch_admitted() {
            // The disk writer is behind (see `admission`).
            stats::add(&self.stats.readahead_held, ahead.len() as u64);
            return;
        }
        let tx = self.prefetch_tx.read().clone();
        let Some(tx) = tx else { return };
        for name in ahead {
            if tx.try_send(Prefetch::File(dir.join(name))).is_err() {
                // Busy: the files left out are fetched when the reader opens them.
                break;
            }
        }
    }

    /// A tree walk (`find`, `du`, `ls -R`) lists a directory's subdirectories one after
    /// the other in listing order: once it goes through them that way, the next ones
    /// are listed ahead of it, their entries' attributes too, with a window that
    /// doubles up to `LIST_AHEAD`. Off with directory prefetch.
    pub(super) fn note_list(&self, path: &Path) {
        if self.cfg.dir_prefetch_files == 0 || self.cfg.prefetch_threads == 0 {
            return;
        }
        let Some((parent, ahead)) =
            self.advance_scan(&self.list_scans, path, FileKind::Dir, LIST_AHEAD)
        else {
            return;
        };
        let tx = self.prefetch_tx.read().clone();
        let Some(tx) = tx else { return };
        for name in ahead {
            let dir = parent.join(name);
            if self.trusted(&self.dirs, &dir).is_some() {
                continue;
            }
            let (tx_done, done) = crossbeam_channel::bounded(0);
            {
                let mut m = self.lists_ahead.lock();
                if m.contains_key(&dir) {
                    continue; // on its way
                }
                m.insert(
                    dir.clone(),
                    ListAhead {
                        started: false,
                        done,
                    },
                );
            }
            if tx.try_send(Prefetch::Dir(dir.clone(), tx_done)).is_err() {
                // Busy: the walk lists the rest itself.
                self.lists_ahead.lock().remove(&dir);
                break;
            }
        }
    }

    /// Moves the scan of `path`'s parent on to `path`, an entry of kind `kind` in the
    /// parent's cached listing. Returns the parent and the names of the next entries
    /// of that kind to fetch ahead, if the reader is scanning and some are due.
    pub(super) fn advance_scan(
        &self,
        scans: &Mutex<FxHashMap<PathBuf, DirScan>>,
        path: &Path,
        kind: FileKind,
        max: usize,
    ) -> Option<(PathBuf, Vec<OsString>)> {
        let (dir, name) = (path.parent()?, path.file_name()?);
        // Only a directory the reader listed: that is what a scan does first.
        let Some(Ok(list)) = self.dirs.get_stale(dir) else {
            return None;
        };
        let (from, to) = {
            let mut scans = scans.lock();
            let prev = scans.get(dir).copied();
            let hint = prev.map_or(0, |s| s.last + 1);
            let i = find_entry(&list, name, hint)?;
            let continues = match prev {
                Some(s) => i > s.last && i <= s.last + SCAN_SLACK,
                // The first entry of its kind starts a scan.
                None => list[..i].iter().all(|e| e.kind != kind),
            };
            let scan = if continues {
                let w = prev.map_or(0, |s| s.window);
                DirScan {
                    last: i,
                    window: if w == 0 { 4 } else { w * 2 }.min(max),
                    until: prev.map_or(0, |s| s.until).max(i + 1),
                }
            } else {
                DirScan {
                    last: i,
                    window: 0,
                    until: i + 1,
                }
            };
            // The window counts entries of the kind scanned, not all entries.
            let mut to = scan.until.max(i + 1);
            let mut n = list[i + 1..to.min(list.len())]
                .iter()
                .filter(|e| e.kind == kind)
                .count();
            while to < list.len() && n < scan.window {
                if list[to].kind == kind {
                    n += 1;
                }
                to += 1;
            }
            let to = to.max(scan.until);
            if scans.len() >= MAX_SCANS && prev.is_none() {
                scans.clear();
            }
            scans.insert(dir.to_path_buf(), DirScan { until: to, ..scan });
            (scan.until, to)
        };
        let ahead: Vec<OsString> = list[from.min(to)..to.min(list.len())]
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.name.clone())
            .collect();
        (!ahead.is_empty()).then(|| (dir.to_path_buf(), ahead))
    }

    /// Lists a directory a tree walk will probably reach, with its first entries'
    /// attributes, unless that is cached already.
    pub(super) fn prefetch_dir(&self, dir: &Path) {
        if let Some(a) = self.lists_ahead.lock().get_mut(dir) {
            a.started = true;
        }
        if self.trusted(&self.dirs, &dir.to_path_buf()).is_none() {
            stats::inc(&self.stats.list_prefetches);
        }
        if let Ok(list) = self.read_dir(dir) {
            let paths: Vec<PathBuf> = list
                .iter()
                .take(LIST_AHEAD_ATTRS)
                .map(|e| dir.join(&e.name))
                .collect();
            self.stat_many(&paths, LISTING_WIDTH);
        }
        self.lists_ahead.lock().remove(dir);
    }

    /// Fetches the start of a file a directory scan will probably reach, unless it is
    /// cached already.
    pub(super) fn prefetch_file(&self, path: &Path) {
        if matches!(self.cached_attr(path), Some((Err(_), _))) {
            return;
        }
        let Ok((attr, confirmed)) = self.confirmed_attr(path) else {
            return;
        };
        if attr.kind != FileKind::File || attr.token.size() == 0 {
            return;
        }
        let Ok(obj) = self.object_for(path, &attr, confirmed) else {
            return;
        };
        let end = obj.size().min(self.cfg.dir_prefetch_bytes.max(1));
        let claims = self.claim_uncached(&obj, 0..end.div_ceil(obj.bs));
        if claims.is_empty() {
            return;
        }
        stats::inc(&self.stats.dir_prefetches);
        for claim in claims {
            for c in self.split(claim) {
                if self.fetch(&obj, c, true).is_err() {
                    return;
                }
            }
        }
    }
}

/// Index of `name` in a listing, looked for first at `hint` and just after it.
pub(super) fn find_entry(list: &[DirEntry], name: &OsStr, hint: usize) -> Option<usize> {
    (hint..(hint + SCAN_SLACK).min(list.len()))
        .find(|&i| list[i].name == name)
        .or_else(|| list.iter().position(|e| e.name == name))
}
