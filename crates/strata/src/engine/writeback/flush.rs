//! Sending dirty data to the origin: one file at a time per flusher, in order, the
//! origin's token checked first (a conflict copy when it moved), adjacent runs
//! joined, the file synced at the origin before the journal hears it is done.

use super::*;

/// Largest single origin write of a flush (adjacent dirty runs are joined up to it).
const MAX_RUN: usize = 8 << 20;
/// Longest pause between retries of a failing flush.
const MAX_RETRY: Duration = Duration::from_secs(30);

impl Inner {
    /// Sends `path`'s dirty data to the origin now (before a change that must follow
    /// it there).
    pub(in crate::engine) fn flush_path(&self, path: &Path) -> io::Result<()> {
        let Some(d) = self.wb.as_ref().and_then(|wb| wb.get(path)) else {
            return Ok(());
        };
        self.flush_file(&d)
    }

    /// Flushes every dirty file at or below `path` (a directory being renamed).
    pub(in crate::engine) fn flush_under(&self, path: &Path) -> io::Result<()> {
        let Some(wb) = &self.wb else { return Ok(()) };
        let below: Vec<Arc<Dirty>> = wb
            .files
            .lock()
            .values()
            .filter(|d| d.path.starts_with(path))
            .cloned()
            .collect();
        for d in below {
            self.flush_file(&d)?;
        }
        Ok(())
    }

    /// Sends one file's dirty data to the origin.
    pub(super) fn flush_file(&self, d: &Arc<Dirty>) -> io::Result<()> {
        let wb = self.wb();
        let r = self.flush_once(wb, d);
        match &r {
            Ok(_) => {
                let mut files = wb.files.lock();
                let mut st = d.st.lock();
                if st.is_clean() && !st.removed {
                    st.removed = true;
                    files.remove(&d.path);
                    stats::sub(&self.stats.dirty_files, 1);
                }
            }
            Err(e) => {
                let mut st = d.st.lock();
                st.error = Some(e.raw_os_error().unwrap_or(5));
                st.failures += 1;
                let pause = Duration::from_millis(250 << st.failures.min(7)).min(MAX_RETRY);
                st.retry_at = Some(Instant::now() + pause);
                stats::inc(&self.stats.wb_flush_errors);
                tracing::warn!(path = %d.path.display(), error = %e, retry_in = ?pause, "write-back to the origin failed; the data stays in the journal and is retried");
            }
        }
        wb.flush_ended();
        r
    }

    fn flush_once(&self, wb: &WriteBack, d: &Arc<Dirty>) -> io::Result<()> {
        let _order = d.order.lock();
        if wb.abandoned.load(Ordering::Acquire) {
            return Err(io::Error::other("write-back abandoned"));
        }
        // An earlier flush's DONE the journal could not take: nothing more goes to
        // the origin until it is recorded, or a replay (finding that flush's start)
        // could write older records over newer bytes it has not got.
        let pending = d.st.lock().unrecorded.clone();
        if let Some((s, now)) = pending {
            record_done(wb, &d.path, s, &now)?;
            let mut st = d.st.lock();
            st.unrecorded = None;
            st.blind = false;
        }
        let (base, file, adopt) = {
            let st = d.st.lock();
            if st.is_clean() {
                return Ok(());
            }
            (st.base.clone(), st.file.clone(), st.adopt)
        };
        let obj = self.objects.lock().get(&d.path).cloned();
        let _io = obj.as_ref().map(|o| o.io.write());
        let path = d.path.clone();
        // The origin file, at the version the dirty data sits on.
        let p = path.clone();
        let opened = self.change(move |o| {
            let f: Arc<dyn OriginFile> = match file {
                Some(f) => f,
                None => Arc::from(o.open_rw(&p, false)?),
            };
            let pre = f.token()?;
            Ok((f, pre))
        });
        let (f, pre) = opened?;
        // What is dirty now; with `send`, marked as being sent and the flush's start
        // appended in the same breath: the records before it in the journal are
        // exactly what is sent (writers journal under the same lock).
        let snapshot = |d: &Dirty, send: bool| {
            let mut st = d.st.lock();
            let snap = st.data.clone();
            if send {
                for (&s, b) in &snap {
                    st.tree.set(s..s + b.len() as u64, bits::WRITEBACK);
                }
            }
            let appended = send.then(|| wb.journal.flush_start(&path));
            (snap, st.seq, st.times, st.size, appended)
        };
        if pre != base && !adopt {
            let (snap, seq, _, size, _) = snapshot(d, false);
            return self.conflict(wb, d, &snap, size, seq, &pre);
        }
        // The start is durable before the origin changes: records journaled during
        // this flush name the token from before it, and a cut before the DONE below
        // is synced would otherwise make the replay call our own flush a conflict.
        let (snap, seq, times, _, appended) = snapshot(d, true);
        // The DONE names the start: every record before it is in `snap`.
        let upto = match &appended {
            Some(Ok(start)) => *start,
            _ => seq,
        };
        let started = appended.unwrap_or(Ok(0)).and_then(|_| wb.journal.sync());
        if let Err(e) = started {
            // The data goes to the origin all the same (if the start is lost, a
            // replay keeps a conflict copy of what the origin has), but nothing
            // more of the file is journaled until a DONE of it is recorded: a
            // record written now would be replayed over the token from before.
            d.st.lock().blind = true;
            tracing::warn!(error = %e, "write-back journal: could not record a flush's start");
        }
        // From here a failure may leave part of the data at the origin.
        let cut = |d: &Dirty| {
            let mut st = d.st.lock();
            st.tree.clear_all(bits::WRITEBACK);
            st.adopt = true;
        };
        let runs = runs(&snap);
        let mut sent = 0u64;
        for (off, parts) in &runs {
            let (f, buf) = (f.clone(), join(parts));
            sent += buf.len() as u64;
            let off = *off;
            self.change(move |_| f.write_at(&buf, off))
                .inspect_err(|_| cut(d))?;
        }
        let (f2, p2) = (f.clone(), path.clone());
        let post = self
            .change(move |o| {
                f2.sync(true)?;
                if let Some(t) = times {
                    let set = SetAttr {
                        atime: t.atime.map(SetTime::At),
                        mtime: t.mtime.map(SetTime::At),
                        mode: t.mode,
                        uid: t.uid,
                        gid: t.gid,
                        size: None,
                    };
                    o.set_attr(&p2, &set)?;
                }
                f2.attr()
            })
            .inspect_err(|_| cut(d))?;
        // The origin has it, durably: out of the dirty map and the journal.
        {
            let mut st = d.st.lock();
            let mut freed = 0u64;
            for (s, b) in &snap {
                if st
                    .data
                    .get(s)
                    .is_some_and(|c| c.as_ptr() == b.as_ptr() && c.len() == b.len())
                {
                    st.data.remove(s);
                    freed += b.len() as u64;
                }
            }
            st.tree.clear_all(bits::DIRTY | bits::WRITEBACK);
            let left: Vec<Range<u64>> = st
                .data
                .iter()
                .map(|(&s, b)| s..s + b.len() as u64)
                .collect();
            for r in left {
                st.tree.set(r, bits::DIRTY);
            }
            st.bytes -= freed;
            stats::sub(&self.stats.dirty_bytes, freed);
            if st.times == times {
                st.times = None;
            }
            st.base = post.token.clone();
            st.size = st.size.max(post.size);
            st.since = (!st.data.is_empty()).then(Instant::now);
            st.error = None;
            st.failures = 0;
            st.retry_at = None;
            st.adopt = false;
            if st.is_clean() {
                st.file = None;
            }
        }
        let recorded = record_done(wb, &path, upto, &post.token);
        if recorded.is_err() {
            // The data is at the origin; a replay would find the start recorded
            // and write the records again over it, so nothing may change the
            // file through us until this is recorded.
            d.st.lock().unrecorded = Some((upto, post.token.clone()));
        } else {
            d.st.lock().blind = false;
        }
        stats::inc(&self.stats.wb_flushes);
        stats::add(&self.stats.wb_flushed_bytes, sent);
        // The cache follows, as after a write-through write of these runs.
        if let Some(o) = &obj {
            let mut pre = pre;
            for (off, parts) in &runs {
                let buf = join(parts);
                let end = off + buf.len() as u64;
                self.apply_change(o, &pre, post.clone(), Some(*off..end), Some(&buf));
                pre = post.token.clone();
            }
            if runs.is_empty() {
                self.apply_change(o, &pre, post.clone(), None, None);
            }
        } else {
            self.attrs.remove(&path);
        }
        recorded
    }

    /// The origin file changed under dirty data: the origin's file stays as it is,
    /// and the dirty bytes are saved beside it, as `NAME.strata-conflict-SECS`, at
    /// their offsets (ranges never written through the mount are holes), and the
    /// file's dirty data is dropped.
    fn conflict(
        &self,
        wb: &WriteBack,
        d: &Arc<Dirty>,
        snap: &BTreeMap<u64, Bytes>,
        size: u64,
        seq: u64,
        now: &Token,
    ) -> io::Result<()> {
        let name = d.path.file_name().unwrap_or_default().to_string_lossy();
        let copy = d
            .path
            .with_file_name(format!("{name}.strata-conflict-{}", wall_timestamp().secs));
        let (c, runs) = (copy.clone(), runs(snap));
        self.change(move |o| {
            let new = NewEntry {
                mode: 0o600,
                owner: None,
            };
            let f = o.create(&c, &new, false)?;
            f.set_len(0)?;
            for (off, parts) in &runs {
                f.write_at(&join(parts), *off)?;
            }
            f.set_len(size)?;
            f.sync(true)
        })?;
        stats::inc(&self.stats.wb_conflicts);
        tracing::warn!(path = %d.path.display(), copy = %copy.display(), origin = ?now, "the origin file changed under data written through the mount: the origin's version stays, the local bytes were saved as a conflict copy");
        {
            let mut st = d.st.lock();
            let freed = st.bytes;
            st.data.clear();
            st.tree = ExtentTree::new();
            st.times = None;
            st.bytes = 0;
            st.since = None;
            st.file = None;
            stats::sub(&self.stats.dirty_bytes, freed);
        }
        let _ = wb
            .journal
            .done(&d.path, seq, now)
            .and_then(|_| wb.journal.sync());
        self.forget_parent_of(&copy);
        let active = self.objects.lock().get(&d.path).cloned();
        if let Some(o) = active {
            self.kill(&o);
        }
        self.attrs.remove(&d.path);
        Ok(())
    }

    /// Sends every dirty file to the origin; gives up when a round makes no progress
    /// for `patience`. Returns how many files are still dirty.
    pub(in crate::engine) fn flush_all(&self, patience: Duration) -> usize {
        let Some(wb) = &self.wb else { return 0 };
        if wb.abandoned.load(Ordering::Acquire) {
            return wb.files.lock().len();
        }
        let mut last = (usize::MAX, Instant::now());
        loop {
            let left: Vec<Arc<Dirty>> = wb.files.lock().values().cloned().collect();
            let n = left.len();
            if n == 0 {
                return 0;
            }
            // Only the journal fails (a flush's DONE it cannot take holds each file
            // back): waiting would not help. One more try each, here.
            if left.iter().all(|d| d.st.lock().unrecorded.is_some()) {
                for d in &left {
                    let _ = self.flush_file(d);
                }
                return wb.files.lock().len();
            }
            if n < last.0 {
                last = (n, Instant::now());
            } else if last.1.elapsed() > patience {
                return n;
            }
            // In parallel through the flushers, retries due at once.
            for d in &left {
                d.st.lock().retry_at = None;
            }
            wb.kick(true);
            wb.wait_flush(Duration::from_millis(50));
            if wb.queue.lock().is_none() {
                // No flushers (startup, shutdown): one at a time here.
                for d in &left {
                    let _ = self.flush_file(d);
                }
            }
        }
    }
}

/// Records in the journal, durably, that `path`'s records up to `seq` are on the
/// origin, now at `now`.
fn record_done(wb: &WriteBack, path: &Path, seq: u64, now: &Token) -> io::Result<()> {
    wb.journal
        .done(path, seq, now)
        .and_then(|_| wb.journal.sync())
        .map_err(|e| {
            tracing::warn!(path = %path.display(), error = %e, "write-back journal: could not record a flush; the file cannot change until it can");
            // EIO to the caller (the cause is in the log line above).
            io::Error::from_raw_os_error(5)
        })
}

/// Joins adjacent entries into runs of at most `MAX_RUN` bytes.
fn runs(data: &BTreeMap<u64, Bytes>) -> Vec<(u64, Vec<Bytes>)> {
    let mut out: Vec<(u64, Vec<Bytes>, usize)> = Vec::new();
    for (&s, b) in data {
        match out.last_mut() {
            Some((start, parts, len)) if *start + *len as u64 == s && *len < MAX_RUN => {
                parts.push(b.clone());
                *len += b.len();
            }
            _ => out.push((s, vec![b.clone()], b.len())),
        }
    }
    out.into_iter().map(|(s, p, _)| (s, p)).collect()
}
