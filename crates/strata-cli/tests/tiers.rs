//! End to end: the memory tiers through a real mount. With a small RAM tier and a
//! compressed RAM tier, a tree read again and again is served byte for byte from
//! every tier (compressed RAM included), incompressible data is refused by the
//! compressed tier and still served, and `strata stats` shows a row per tier.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::process::Command;

use common::{Mount, compare_tree, drop_page_cache, pattern};

/// Text-like bytes that LZ4 compresses several times over.
fn text(seed: u64, len: usize) -> Vec<u8> {
    let words = [
        "strata ",
        "cache ",
        "block ",
        "origin ",
        "tier ",
        "compressed ",
        "memory ",
        "\n",
    ];
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn compressed_ram_serves_the_tree_byte_for_byte_and_refuses_noise() {
    let mut t = Mount::new();
    fs::create_dir(t.o("text")).unwrap();
    for i in 0..24 {
        fs::write(
            t.o(format!("text/t{i}")),
            text(i, 400_000 + i as usize * 1000),
        )
        .unwrap();
    }
    fs::write(t.o("noise"), pattern(99, 1_500_000)).unwrap();
    t.mount(&["--ram-size", "4M", "--compressed-ram-size", "3M"]);
    drop_page_cache();
    assert!(compare_tree(&t.origin, &t.mnt) >= 25);
    // Rounds of random reads (whole files read in order are left to the kernel's page
    // cache, not promoted): blocks read again move to RAM's main queue, and from
    // there down to compressed RAM when RAM needs the room, and back up on a hit.
    let files: Vec<(String, Vec<u8>)> = (0..24)
        .map(|i| format!("text/t{i}"))
        .chain(["noise".to_string()])
        .map(|f| {
            let want = fs::read(t.o(&f)).unwrap();
            (f, want)
        })
        .collect();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for round in 0..4 {
        drop_page_cache();
        for _ in 0..400 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (f, want) = &files[(x % files.len() as u64) as usize];
            let off = ((x >> 20) as usize % want.len()) & !0x3fff;
            let len = (want.len() - off).min(16384);
            let mut got = vec![0u8; len];
            fs::File::open(t.m(f))
                .unwrap()
                .read_exact_at(&mut got, off as u64)
                .unwrap();
            assert!(got == want[off..off + len], "round {round}: {f} at {off}");
        }
    }
    let s = t.stats();
    assert!(s["compressed_hits"].as_u64().unwrap() > 0, "{s}");
    assert!(
        s["compressed_refusals"].as_u64().unwrap() > 0,
        "noise refused: {s}"
    );
    // The two share one budget; a block on its way down between them (one per
    // thread that moves one) may be counted on neither side for a moment.
    assert!(
        s["ram_bytes"].as_u64().unwrap() + s["compressed_bytes"].as_u64().unwrap()
            <= (4 << 20) + 16 * 16384,
        "the two share one budget: {s}"
    );
    let reply = t.stats_reply();
    let tiers: Vec<&str> = reply["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(tiers, ["ram", "compressed", "disk"], "{reply}");
    let compressed = &reply["tiers"][1];
    assert!(compressed["raw_bytes"].as_u64().unwrap() > compressed["bytes"].as_u64().unwrap());
    let out = Command::new(common::STRATA)
        .arg("stats")
        .arg(&t.mnt)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("compressed"), "{text}");
    // After a remount (RAM tiers empty), the disk tier serves the same bytes.
    t.umount();
    t.mount(&["--ram-size", "4M", "--compressed-ram-size", "3M"]);
    drop_page_cache();
    compare_tree(&t.origin, &t.mnt);
    assert_eq!(t.stats()["origin_requests"], 0);
    t.umount();
}

#[test]
fn a_compressed_tier_larger_than_ram_is_refused_at_mount() {
    let t = Mount::new();
    let out = t.try_mount(&["--ram-size", "4M", "--compressed-ram-size", "8M"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("compressed RAM"), "{err}");
}

/// Copies of one file read through the mount share their RAM: each distinct block is
/// held once, and every copy still reads byte for byte.
#[test]
fn identical_blocks_share_ram() {
    let mut t = Mount::new();
    let one = text(5, 256 * 1024);
    for i in 0..20 {
        fs::write(t.o(format!("copy{i}")), &one).unwrap();
    }
    t.mount(&["--ram-size", "64M"]);
    for i in 0..20 {
        assert!(fs::read(t.m(format!("copy{i}"))).unwrap() == one, "copy{i}");
    }
    let s = t.stats();
    let shared = s["ram_shared_bytes"].as_u64().unwrap();
    // 19 of the 20 copies cost no block bytes (allow for blocks RAM let go).
    assert!(shared >= 15 * one.len() as u64, "{s}");
    assert!(
        s["ram_bytes"].as_u64().unwrap() < 3 * one.len() as u64,
        "{s}"
    );
    t.umount();
}
