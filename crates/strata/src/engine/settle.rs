//! Writes through the cache whose token is asked for later.
//!
//! After a data write the origin's new token (size, mtime, ctime) is what lets the
//! version keep its cached blocks. Asking for it after every write costs a round
//! trip that waits for the write itself to reach the server (sshfs answers writes
//! at once and pipelines them; an fstat queued behind them waits for all of them):
//! a 1 MiB write at 10 ms became ~20 ms. So a run of writes through one handle asks
//! once, when something needs the token, as FS-Cache takes a netfs file's new
//! coherency data when it is let go of (`fscache_unuse_cookie`), not per write:
//!
//! - The first write of a run checks, as before, that the origin's token is the
//!   version's (nobody else changed the file). Later writes of the run do not ask.
//! - Until the run is settled the version carries an estimate: the size the writes
//!   made, and the daemon's clock for mtime and ctime, in its token and in the
//!   cached attributes (which keep the trust they had). Nothing is named in the
//!   shared tier or recorded in the disk index with the estimate.
//! - `settle` asks the origin through the file that wrote and takes its token if
//!   its size is the estimate's; otherwise the version is replaced at its next use.
//!   It runs on close (FUSE flush), fsync, before any comparison of the version's
//!   token with the origin's (a fetch, a revalidation, an open), and before a write
//!   when the run is older than `SETTLE_AFTER`, and before any change of attributes.
//! - Write-through mode only: write-back's fallbacks ask after every write.
//!
//! What this gives up: a change made by someone else between two writes of a run,
//! at most `SETTLE_AFTER` apart, that leaves the size as ours is taken as ours.
//! Two writers on two machines writing one file at once get no ordering from NFS
//! either (close-to-open); SEMANTICS.md says so.

use super::*;
use crate::engine::object::Pending;

/// The longest a run of writes goes without asking the origin for its token.
const SETTLE_AFTER: Duration = Duration::from_secs(1);

impl Inner {
    /// A write through `file` (a handle of `obj`'s file) whose token is asked for
    /// later. None: it must go the way that asks at once (the version is no longer
    /// the origin's, or has no stat token); the caller holds `obj.io` alone.
    pub(super) fn write_deferred(
        &self,
        obj: &Arc<Object>,
        file: &Arc<dyn OriginFile>,
        off: u64,
        bytes: &Bytes,
    ) -> Option<io::Result<usize>> {
        let Token::Stat { ino, .. } = obj.token() else {
            return None;
        };
        if obj.is_dead() {
            return None;
        }
        let mut pend = obj.pending.lock();
        let current = pend
            .as_ref()
            .map(|p| Arc::ptr_eq(&p.file, file) && p.since.elapsed() < SETTLE_AFTER);
        if current == Some(false) {
            drop(pend);
            self.settle(obj);
            pend = obj.pending.lock();
        }
        let since = match pend.as_ref() {
            Some(p) => p.since,
            None => {
                let f = file.clone();
                match self.change(move |_| f.token()) {
                    Ok(pre) if self.is_ours(obj, &pre) => {}
                    Ok(_) => return None,
                    Err(e) => return Some(Err(e)),
                }
                // Its blocks change under its old name: nobody may find them by it
                // (named again when the run is settled).
                if let Some(s) = &self.tiers.shared {
                    s.unname(obj.id);
                }
                Instant::now()
            }
        };
        let (f, b) = (file.clone(), bytes.clone());
        if let Err(e) = self.change(move |_| f.write_at(&b, off)) {
            drop(pend);
            // The origin may hold part of it: what is cached of the file goes.
            self.kill(obj);
            return Some(Err(e));
        }
        stats::inc(&self.stats.writes);
        stats::add(&self.stats.write_bytes, bytes.len() as u64);
        let end = off + bytes.len() as u64;
        let size = obj.size().max(end);
        let now = wall_timestamp();
        let token = Token::Stat {
            size,
            mtime_ns: now.as_nanos(),
            ctime_ns: now.as_nanos(),
            ino,
        };
        let whole = self.rewrite(obj, token.clone(), Some(off..end), Some(bytes));
        self.attrs.update(&obj.path, |r| {
            if let Ok(a) = r
                && a.kind == FileKind::File
            {
                a.size = size;
                a.blocks = a.blocks.max(size.div_ceil(512));
                (a.mtime, a.ctime) = (now, now);
                a.token = token.clone();
            }
        });
        *pend = Some(Pending {
            file: file.clone(),
            since,
        });
        obj.unsettled.store(true, Ordering::Release);
        drop(pend);
        self.cache_whole(obj, whole);
        Some(Ok(bytes.len()))
    }

    /// Asks the origin for the token of `obj`'s file after writes of ours (see the
    /// module's notes): the version takes it, or goes if the file is not the size
    /// the writes made it. Nothing to do for a version without such writes.
    /// Returns the estimate and the origin's attributes when it took them.
    pub(super) fn settle(&self, obj: &Arc<Object>) -> Option<(Token, Attr)> {
        if !obj.is_unsettled() {
            return None;
        }
        // Held while the origin is asked: no write of the run lands in between.
        let mut pend = obj.pending.lock();
        let p = pend.take()?;
        obj.unsettled.store(false, Ordering::Release);
        if obj.is_dead() {
            return None;
        }
        let estimate = obj.token();
        let f = p.file;
        stats::inc(&self.stats.revalidations);
        let r = self.guard.call(move || f.attr());
        match r {
            Ok(post) if post.kind == FileKind::File && post.size == obj.size() => {
                obj.retoken(post.token.clone());
                if let Some(s) = &self.tiers.shared {
                    s.name(obj.id, &obj.path, &post.token, self.origin.stable_inodes());
                }
                drop(pend);
                if !obj.detached.load(Ordering::Acquire) {
                    self.catalog.retoken(&obj.path, obj.id, &post.token);
                    if post.nlink > 0 {
                        let _ = self.stat_answered(&obj.path, Ok(post.clone()));
                    }
                }
                Some((estimate, post))
            }
            _ => {
                // Not what the writes made (or not known): as when a fetch sees the
                // file change, the next use asks the origin and the version goes.
                // (Not dropped here: this may run inside a read, where telling the
                // kernel to drop its pages could wait on that very read.)
                obj.suspect.store(true, Ordering::Release);
                obj.validated_ns.store(0, Ordering::Release);
                drop(pend);
                self.attrs.remove(&obj.path);
                None
            }
        }
    }

    /// `settle` for the active version of `path`, if it has writes to settle.
    pub(super) fn settle_path(&self, path: &Path) -> Option<(Token, Attr)> {
        let o = match self.objects.lock().get(path) {
            Some(o) if o.is_unsettled() => o.clone(),
            _ => return None,
        };
        self.settle(&o)
    }
}
