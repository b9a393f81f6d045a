//! Opening a cache directory: replaying the index log into the in-memory index,
//! cutting a torn or damaged tail, starting anew on an unreadable index.

use super::*;

impl DiskTier {
    /// Opens (or creates) the tier, replaying its index. Damage in the index never
    /// fails the open: a torn or damaged tail is cut off, an unreadable index is
    /// started anew (the scrubber then reclaims the orphaned data).
    pub fn open(
        storage: Arc<dyn Storage>,
        cfg: DiskConfig,
        stats: Arc<Stats>,
    ) -> Result<Self, DiskError> {
        let t0 = Instant::now();
        if !cfg.block_size.is_power_of_two() || cfg.block_size < 4096 {
            return Err(DiskError::Io {
                what: format!(
                    "block size {} is not a power of two >= 4096",
                    cfg.block_size
                ),
                source: io::ErrorKind::InvalidInput.into(),
            });
        }
        storage
            .create_dir_all(Path::new(""))
            .map_err(io_err("create cache directory"))?;
        let lock = storage.lock().map_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                DiskError::Locked(e.to_string())
            } else {
                DiskError::Io {
                    what: "lock cache directory".into(),
                    source: e,
                }
            }
        })?;
        let bs = cfg.block_size as u64;
        let mut made_dirs = false;
        let existing: Vec<String> = storage.list_dir(Path::new(OBJECTS)).unwrap_or_default();
        if existing.len() < 256 {
            for n in 0..256u32 {
                storage
                    .create_dir_all(&subdir(n))
                    .map_err(io_err("create object directories"))?;
            }
            made_dirs = true;
        }
        if made_dirs {
            storage
                .sync_dir(Path::new(OBJECTS))
                .and_then(|_| storage.sync_dir(Path::new("")))
                .map_err(io_err("sync cache directory"))?;
        }
        // A compaction that did not finish leaves its temporary file behind.
        let _ = storage.remove_file(Path::new(LOG_TMP));

        let log = storage
            .open(Path::new(LOG), true)
            .map_err(io_err("open index log"))?;
        let len = log.len().map_err(io_err("read index log"))?;
        let mut bytes = vec![0u8; len as usize];
        let got =
            crate::storage::read_full_at(&*log, &mut bytes, 0).map_err(io_err("read index log"))?;
        bytes.truncate(got);

        let mut index = Index::new(bs);
        let mut report = OpenReport::default();
        if bytes.is_empty() && has_data_files(&*storage) {
            // The index is gone but data is here: a reset, not a new cache.
            tracing::warn!(
                "cache index is missing; starting with an empty cache \
                 (its data files will be reclaimed in the background)"
            );
            report.index_reset = true;
        }
        let valid_end = match replay(&bytes, cfg.block_size, &mut index, &mut report)? {
            Some(end) => end,
            None => {
                tracing::warn!(
                    "cache index is unreadable; starting with an empty cache \
                     (its data files will be reclaimed in the background)"
                );
                report.index_reset = true;
                0
            }
        };
        report.log_tail_dropped = bytes.len() as u64 - valid_end;
        drop(bytes);
        let mut log_len = valid_end;
        if valid_end == 0 || report.log_tail_dropped > 0 {
            if report.log_tail_dropped > 0 && !report.index_reset {
                tracing::warn!(
                    bytes = report.log_tail_dropped,
                    "cache index had a torn or damaged tail (an interrupted commit); cut it off"
                );
            }
            log.set_len(valid_end)
                .map_err(io_err("truncate index log"))?;
            if valid_end == 0 {
                let mut b = Vec::new();
                record::encode(
                    &Record::Header {
                        version: record::VERSION,
                        block_size: cfg.block_size,
                    },
                    &mut b,
                );
                log.write_all_at(&b, 0).map_err(io_err("write index log"))?;
                log_len = b.len() as u64;
            }
            log.sync_data().map_err(io_err("sync index log"))?;
            storage
                .sync_dir(Path::new(""))
                .map_err(io_err("sync cache directory"))?;
        }
        index.blocks.compact();
        stats::add(&stats.index_records_dropped, report.records_dropped);
        report.objects = index.by_id.len() as u64;
        report.blocks = index.blocks.len() as u64;

        let capacity = (cfg.capacity / bs) * bs;
        let ids = index.next_id;
        let tier = DiskTier {
            storage,
            lock: Mutex::new(Some(lock)),
            bs,
            index: RwLock::new(index),
            files: Mutex::new(FileCache {
                open: FxHashMap::default(),
            }),
            pending: Mutex::new(Pending::default()),
            writer: Mutex::new(Writer {
                log,
                log_len,
                buf: Vec::new(),
                space: None,
                culling: false,
                failures: 0,
                failed_until: None,
                scrub_todo: (0..256).rev().collect(),
                dirty_dirs: Vec::new(),
            }),
            stats,
            state: AtomicU8::new(FillState::Normal as u8),
            ids: AtomicU64::new(ids),
            report: OpenReport::default(),
            cfg,
        };
        // A smaller limit than last time: evict down to it now, what no pin keeps
        // first; the limit is hard, so pins larger than it lose blocks too.
        let victims: Vec<(u64, u64)> = {
            let mut idx = tier.index.write();
            let mut victims = Vec::new();
            while idx.blocks.weight() > capacity {
                match idx.evict_one() {
                    Some(v) => victims.push(v),
                    None => break,
                }
            }
            let evicted = idx.blocks.set_capacity(capacity);
            if !evicted.is_empty() {
                tracing::warn!(
                    blocks = evicted.len(),
                    "pinned files exceed the cache size: some of their blocks were dropped \
                     (raise --cache-size or unpin)"
                );
            }
            evicted
                .into_iter()
                .filter_map(|(k, _, _)| {
                    let (slot, blk) = unkey(k);
                    let o = idx.slots[slot as usize].as_mut()?;
                    o.present.clear(blk..blk + 1, PRESENT);
                    Some((o.id, blk))
                })
                .chain(victims)
                .collect()
        };
        if !victims.is_empty() {
            stats::add(&tier.stats.disk_evictions, victims.len() as u64);
            let mut w = tier.writer.lock();
            tier.retire(&mut w, &victims, &[])
                .map_err(io_err("evict down to the size limit"))?;
        }
        tier.update_gauges();
        report.took = t0.elapsed();
        Ok(DiskTier { report, ..tier })
    }

    /// The block size a cache directory was created with (None: no readable index).
    pub fn probe_block_size(storage: &dyn Storage) -> Option<u32> {
        let log = storage.open(Path::new(LOG), false).ok()?;
        let mut head = vec![0u8; 64];
        let n = crate::storage::read_full_at(&*log, &mut head, 0).ok()?;
        match record::decode(&head[..n]) {
            Ok((Record::Header { block_size, .. }, _)) => Some(block_size),
            _ => None,
        }
    }
}

/// True if any object directory holds a file.
pub(super) fn has_data_files(storage: &dyn Storage) -> bool {
    (0..256u32).any(|n| storage.list_dir(&subdir(n)).is_ok_and(|f| !f.is_empty()))
}

pub(super) fn push_removals(
    recs: &mut Vec<Record>,
    drops: &[(u64, bool)],
    dels: &[(u64, u64)],
    victims: &[(u64, u64)],
) {
    for &(id, persisted) in drops {
        if persisted {
            recs.push(Record::Drop { id });
        }
    }
    let mut all: Vec<(u64, u64)> = dels.iter().chain(victims).copied().collect();
    all.sort_unstable();
    all.dedup();
    let mut i = 0;
    while i < all.len() {
        let (id, first) = all[i];
        let mut count = 1;
        while i + (count as usize) < all.len() && all[i + count as usize] == (id, first + count) {
            count += 1;
        }
        recs.push(Record::Del { id, first, count });
        i += count as usize;
    }
}

/// Replays a log into `index`. Returns the end of the valid prefix, or None if the
/// log does not even start with a valid header.
pub(super) fn replay(
    bytes: &[u8],
    block_size: u32,
    index: &mut Index,
    report: &mut OpenReport,
) -> Result<Option<u64>, DiskError> {
    if bytes.is_empty() {
        return Ok(Some(0));
    }
    let mut off = match record::decode(bytes) {
        Ok((
            Record::Header {
                version,
                block_size: bsz,
            },
            n,
        )) => {
            if version != record::VERSION {
                tracing::warn!(version, "cache index has an unknown format version");
                return Ok(None);
            }
            if bsz != block_size {
                return Err(DiskError::BlockSizeMismatch {
                    found: bsz,
                    configured: block_size,
                });
            }
            n
        }
        _ => return Ok(None),
    };
    // Size the tables once: count the blocks first.
    let mut blocks = 0usize;
    let mut o = off;
    while let Ok((r, n)) = record::decode(&bytes[o..]) {
        if let Record::Add { crcs, .. } = &r {
            blocks += crcs.len();
        }
        o += n;
    }
    index.blocks.reserve(blocks);

    loop {
        let (rec, n) = match record::decode(&bytes[off..]) {
            Ok(x) => x,
            Err(DecodeError::Incomplete) if off == bytes.len() => break,
            Err(_) => break,
        };
        off += n;
        match rec {
            Record::Header { .. } => report.records_dropped += 1,
            Record::Object { id, token, path } => {
                index.add_object(id, Arc::from(path), token, true);
            }
            Record::Add { id, first, crcs } => {
                let Some(&slot) = index.by_id.get(&id) else {
                    report.records_dropped += 1;
                    continue;
                };
                let size = index.slots[slot as usize]
                    .as_ref()
                    .expect("live")
                    .token
                    .size();
                let mut end = first;
                for (i, crc) in crcs.into_iter().enumerate() {
                    let blk = first + i as u64;
                    // A block past the object's end cannot be valid.
                    let Some(k) = key(slot, blk).filter(|_| blk.saturating_mul(index.bs) < size)
                    else {
                        report.records_dropped += 1;
                        break;
                    };
                    index.blocks.insert_loaded(k, crc);
                    end = blk + 1;
                }
                if end > first {
                    index.slots[slot as usize]
                        .as_mut()
                        .expect("live")
                        .present
                        .set(first..end, PRESENT);
                }
            }
            Record::Del { id, first, count } => {
                let Some(&slot) = index.by_id.get(&id) else {
                    continue;
                };
                let present: Vec<Range<u64>> = index.slots[slot as usize]
                    .as_ref()
                    .expect("live")
                    .present
                    .runs(first..first.saturating_add(count))
                    .filter(|(_, b)| *b != 0)
                    .map(|(r, _)| r)
                    .collect();
                for r in present {
                    for blk in r {
                        index.remove_block(slot, blk);
                    }
                }
            }
            Record::Drop { id } => {
                index.remove_object(id);
                index.next_id = index.next_id.max(id + 1);
            }
            Record::NextId { next } => index.next_id = index.next_id.max(next),
            Record::Pin { path } => {
                index.user_pins.insert(path);
            }
            Record::Unpin { path } => {
                index.user_pins.remove(&path);
            }
        }
    }
    Ok(Some(off as u64))
}
