//! Index logs built from fuzzer-chosen records (valid frames), then damaged at
//! fuzzer-chosen places, replayed into a disk tier whose data files hold known bytes:
//! opening never panics, and every block the tier serves is the data written for it.
#![no_main]
use std::path::Path;
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use strata::origin::Token;
use strata::stats::Stats;
use strata::storage::{SimStorage, Storage};
use strata::tier::disk::{DiskConfig, DiskTier, Record, Thresholds, encode_record};

const BS: u64 = 4096;
const IDS: u64 = 6;
const BLOCKS: u64 = 4;

#[derive(Arbitrary, Debug)]
enum R {
    Object { id: u8, size_blocks: u8, path: u8 },
    Add { id: u8, first: u8, n: u8, good_crc: bool },
    Del { id: u8, first: u8, count: u8 },
    Drop { id: u8 },
    NextId { next: u16 },
    Header { bs_shift: u8 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    records: Vec<R>,
    flips: Vec<(u16, u8)>,
    cut: Option<u16>,
}

fn content(id: u64, blk: u64) -> Vec<u8> {
    vec![(id * 31 + blk) as u8; BS as usize]
}

fuzz_target!(|inp: Input| {
    let mut log = Vec::new();
    encode_record(&Record::Header { version: 1, block_size: BS as u32 }, &mut log);
    for r in &inp.records {
        let rec = match *r {
            R::Object { id, size_blocks, path } => Record::Object {
                id: id as u64 % IDS,
                token: Token::Stat {
                    size: (size_blocks as u64 % 6) * BS,
                    mtime_ns: 0,
                    ctime_ns: 0,
                    ino: id as u64,
                },
                path: vec![b'p', path % 4],
            },
            R::Add { id, first, n, good_crc } => {
                let id = id as u64 % IDS;
                let first = first as u64 % 6;
                let crcs = (0..1 + n as u64 % 4)
                    .map(|i| {
                        let c = crc32c::crc32c(&content(id, first + i));
                        if good_crc { c } else { c ^ 1 }
                    })
                    .collect();
                Record::Add { id, first, crcs }
            }
            R::Del { id, first, count } => Record::Del {
                id: id as u64 % IDS,
                first: first as u64 % 6,
                count: count as u64 % 4,
            },
            R::Drop { id } => Record::Drop { id: id as u64 % IDS },
            R::NextId { next } => Record::NextId { next: next as u64 },
            R::Header { bs_shift } => Record::Header {
                version: 1,
                block_size: 4096 << (bs_shift % 2),
            },
        };
        encode_record(&rec, &mut log);
    }
    for &(at, bit) in &inp.flips {
        if !log.is_empty() {
            let at = at as usize % log.len();
            log[at] ^= 1 << (bit % 8);
        }
    }
    if let Some(cut) = inp.cut {
        log.truncate(cut as usize % (log.len() + 1));
    }

    let st = SimStorage::new();
    st.create_dir_all(Path::new("objects")).unwrap();
    let f = st.open(Path::new("index.log"), true).unwrap();
    f.write_all_at(&log, 0).unwrap();
    f.sync_data().unwrap();
    for id in 0..IDS {
        let dir = format!("objects/{:02x}", id & 0xff);
        st.create_dir_all(Path::new(&dir)).unwrap();
        let f = st.open(Path::new(&format!("{dir}/{id:016x}")), true).unwrap();
        for blk in 0..BLOCKS {
            f.write_all_at(&content(id, blk), blk * BS).unwrap();
        }
        f.sync_data().unwrap();
    }
    let cfg = DiskConfig {
        capacity: 1 << 20,
        block_size: BS as u32,
        thresholds: Thresholds::OFF,
        compact_min_bytes: 256,
    };
    let Ok(t) = DiskTier::open(Arc::new(st), cfg, Arc::new(Stats::default())) else {
        return; // a clear error (another block size) is fine
    };
    let check = |t: &DiskTier| {
        for id in 0..IDS {
            for (blk, b) in t.read(id, 0, 6).into_iter().enumerate() {
                if let Some(b) = b {
                    assert_eq!(&b[..], &content(id, blk as u64)[..b.len()], "object {id} block {blk}");
                }
            }
        }
    };
    check(&t);
    let _ = t.fsck(true);
    while t.maintain() {}
    check(&t);
});
