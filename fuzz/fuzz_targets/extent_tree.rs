//! The extent tree against a per-position model, for any sequence of operations.
#![no_main]
use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use strata::extent::ExtentTree;

#[derive(Arbitrary, Debug)]
enum Op {
    Set(u8, u8, u8),
    Clear(u8, u8, u8),
    TestAll(u8, u8, u8),
    TestAny(u8, u8, u8),
    FindSet(u8, u8, u8),
    FindClear(u8, u8, u8),
}

fn range(a: u8, b: u8) -> std::ops::Range<u64> {
    let (a, b) = (a.min(b) as u64, a.max(b) as u64);
    a..b + 1
}

fuzz_target!(|ops: Vec<Op>| {
    let mut t = ExtentTree::new();
    let mut m: BTreeMap<u64, u32> = BTreeMap::new();
    let get = |m: &BTreeMap<u64, u32>, p: u64| m.get(&p).copied().unwrap_or(0);
    let find = |m: &BTreeMap<u64, u32>, r: std::ops::Range<u64>, pred: &dyn Fn(u32) -> bool| {
        let mut found: Option<std::ops::Range<u64>> = None;
        for p in r {
            if pred(get(m, p)) {
                match &mut found {
                    Some(f) => f.end = p + 1,
                    None => found = Some(p..p + 1),
                }
            } else if found.is_some() {
                break;
            }
        }
        found
    };
    for op in ops {
        match op {
            Op::Set(a, b, bits) | Op::Clear(a, b, bits) if bits == 0 => {
                let _ = (a, b);
            }
            Op::Set(a, b, bits) => {
                let r = range(a, b);
                t.set(r.clone(), bits as u32);
                for p in r {
                    *m.entry(p).or_insert(0) |= bits as u32;
                }
            }
            Op::Clear(a, b, bits) => {
                let r = range(a, b);
                t.clear(r.clone(), bits as u32);
                for p in r {
                    let v = get(&m, p) & !(bits as u32);
                    if v == 0 {
                        m.remove(&p);
                    } else {
                        m.insert(p, v);
                    }
                }
            }
            Op::TestAll(a, b, bits) => {
                let r = range(a, b);
                let want = r.clone().all(|p| get(&m, p) & bits as u32 == bits as u32);
                assert_eq!(t.test_all(r, bits as u32), want);
            }
            Op::TestAny(a, b, bits) => {
                let r = range(a, b);
                let want = r.clone().any(|p| get(&m, p) & bits as u32 != 0);
                assert_eq!(t.test_any(r, bits as u32), want);
            }
            Op::FindSet(a, b, bits) => {
                let r = range(a, b);
                let want = find(&m, r.clone(), &|x| x & bits as u32 != 0);
                assert_eq!(t.find_set(r, bits as u32), want);
            }
            Op::FindClear(a, b, bits) => {
                let r = range(a, b);
                let want = find(&m, r.clone(), &|x| x & bits as u32 == 0);
                assert_eq!(t.find_clear(r, bits as u32), want);
            }
        }
    }
    // Canonical: no empty or zero extents, no touching equal neighbours.
    let mut prev: Option<(u64, u32)> = None;
    for (r, b) in t.iter() {
        assert!(r.start < r.end && b != 0);
        if let Some((pe, pb)) = prev {
            assert!(pe <= r.start && !(pe == r.start && pb == b));
        }
        prev = Some((r.end, b));
    }
});
