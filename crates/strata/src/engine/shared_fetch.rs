//! Fetching with a shared tier: one fetch for the fleet. Before asking the origin for
//! a chunk, take its lease in the shared tier; if another machine holds it, wait for
//! its put and take from the origin only what it did not bring. What comes from the
//! origin goes to the shared tier too (after the reader is answered, through the
//! tier's queue), and the lease is given back once it is stored.

use super::*;
use crate::tier::shared::{Lease, SharedTier};

/// Leases asked for one fetch at most (each wait ends when its holder is done).
const LEASE_TRIES: usize = 4;

impl Inner {
    /// `fetch` with a shared tier (the caller holds the version's I/O lock).
    pub(super) fn fetch_shared(
        &self,
        obj: &Arc<Object>,
        claim: Claim,
        readahead: bool,
        s: &Arc<SharedTier>,
    ) -> io::Result<Fetched> {
        let blocks = claim.blocks.clone();
        let n = (blocks.end - blocks.start) as usize;
        // A read asked the tiers before it claimed; read-ahead did not.
        let mut got: Vec<Option<Bytes>> = if readahead {
            crate::tier::Tier::get_run(s.as_ref(), obj.id, blocks.start, n).0
        } else {
            vec![None; n]
        };
        // The lease of the chunk: whoever holds it fetches, the others wait for its
        // put; a holder that fetched less than a waiter needs gives it back, and the
        // waiter takes it for the rest (so the chunk is fetched once in parts).
        let mut mine = None;
        let chunk = blocks.start / self.fetch_chunk(obj) * self.fetch_chunk(obj);
        for _ in 0..LEASE_TRIES {
            if got.iter().all(Option::is_some) {
                break;
            }
            match s.lease(obj.id, chunk) {
                Lease::Theirs(key) => {
                    if !s.wait_for(obj.id, blocks.start, &mut got, &key) {
                        break;
                    }
                }
                Lease::Mine(key) => {
                    mine = Some(key);
                    break;
                }
                Lease::None => break,
            }
        }
        // What is still missing comes from the origin, a run at a time.
        let mut runs: Vec<(u64, Vec<Bytes>)> = Vec::new();
        let mut i = 0;
        while i < n {
            if got[i].is_some() {
                i += 1;
                continue;
            }
            let start = i;
            while i < n && got[i].is_none() {
                i += 1;
            }
            let run = blocks.start + start as u64..blocks.start + i as u64;
            let (data, cached) = match self.read_origin(obj, run.clone(), readahead) {
                Ok(r) => r,
                Err(e) => {
                    if let Some(k) = mine {
                        s.release(&k);
                    }
                    return Err(e);
                }
            };
            if !cached {
                if let Some(k) = mine {
                    s.release(&k);
                }
                return Ok(Fetched {
                    data: Vec::new(),
                    cached: false,
                });
            }
            let short = data.len() < run.clone().count()
                || data
                    .iter()
                    .enumerate()
                    .any(|(j, b)| b.len() != obj.block_len(run.start + j as u64));
            for (j, b) in data.iter().enumerate() {
                got[start + j] = Some(b.clone());
            }
            runs.push((run.start, data));
            if short {
                // The file ends here.
                break;
            }
        }
        let last = runs.len().saturating_sub(1);
        for (k, (first, data)) in runs.iter().enumerate() {
            let release = if k == last { mine.take() } else { None };
            s.put_run(obj.id, *first, data, release);
        }
        if let Some(k) = mine {
            s.release(&k);
        }
        let data: Vec<Bytes> = got.into_iter().map_while(|b| b).collect();
        self.cache_fetched(obj, blocks.start, data.clone());
        // Waiters wake now and find the blocks in RAM or on their way to disk.
        drop(claim);
        Ok(Fetched { data, cached: true })
    }
}
