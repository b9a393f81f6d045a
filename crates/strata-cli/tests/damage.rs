//! A damaged cache directory, through real mounts: bits flipped, files truncated,
//! deleted or replaced, data and index, between mounts and under a live mount. Every
//! damage must be detected or harmless: no wrong byte served, the damage counted,
//! `strata fsck` reporting it and `--repair` mending it.
//! Long run: STRATA_DAMAGE_ROUNDS=40.

mod common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Mount, drop_page_cache, eventually, pattern};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const FILES: u64 = 12;

fn origin_files(t: &Mount) {
    for i in 0..FILES {
        fs::write(
            t.o(format!("f{i}")),
            pattern(i, 50_000 + i as usize * 97_531),
        )
        .unwrap();
    }
}

/// Reads every file through the mount; returns the bytes that differ from the origin
/// (a read error counts as no wrong byte: the damage was detected).
fn wrong_bytes(t: &Mount) -> u64 {
    let mut wrong = 0u64;
    for i in 0..FILES {
        let want = fs::read(t.o(format!("f{i}"))).unwrap();
        match fs::read(t.m(format!("f{i}"))) {
            Ok(got) => {
                wrong += got.iter().zip(&want).filter(|(a, b)| a != b).count() as u64;
                wrong += got.len().abs_diff(want.len()) as u64;
            }
            Err(e) => panic!("f{i}: reads must fall back to the origin, got {e}"),
        }
    }
    wrong
}

fn data_files(cache: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in fs::read_dir(cache.join("objects")).unwrap() {
        for f in fs::read_dir(d.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}

/// Damages one file; returns what was done.
fn damage(path: &Path, rng: &mut Rng) -> &'static str {
    let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    match rng.below(5) {
        0 if len > 0 => {
            let f = fs::OpenOptions::new()
                .write(true)
                .read(true)
                .open(path)
                .unwrap();
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(len);
                let mut b = [0u8];
                f.read_exact_at(&mut b, at).unwrap();
                b[0] ^= 1 << rng.below(8);
                f.write_all_at(&b, at).unwrap();
            }
            "flip bits"
        }
        1 => {
            let f = fs::OpenOptions::new().write(true).open(path).unwrap();
            f.set_len(rng.below(len.max(1))).unwrap();
            "truncate"
        }
        2 => {
            fs::remove_file(path).unwrap();
            "delete"
        }
        3 => {
            let mut f = fs::File::create(path).unwrap();
            let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            f.write_all(&junk).unwrap();
            "replace with junk"
        }
        _ => {
            let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
            f.seek(SeekFrom::Start(rng.below(len.max(1)))).unwrap();
            f.write_all(&[0u8; 4096]).unwrap();
            "overwrite with zeros"
        }
    }
}

fn fsck(cache: &Path, repair: bool) -> (i32, String) {
    let mut c = Command::new(common::STRATA);
    c.arg("fsck").arg(cache);
    if repair {
        c.arg("--repair");
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn rounds() -> u64 {
    std::env::var("STRATA_DAMAGE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

#[test]
fn damage_between_mounts_is_detected_or_harmless() {
    let (mut damaged, mut wrong, mut detected) = (0u64, 0u64, 0u64);
    for round in 0..rounds() {
        let mut rng = Rng(0x5eed ^ ((round + 1) * 0x9E37_79B9));
        let mut t = Mount::new();
        origin_files(&t);
        // A RAM tier of almost nothing: reads after the remount come from the disk.
        let args = ["--ram-size", "64K", "--attr-ttl", "60s"];
        t.mount(&args);
        assert_eq!(wrong_bytes(&t), 0);
        assert!(eventually(Duration::from_secs(20), || t
            .stat_u64("inflight_fill_bytes")
            == 0));
        t.umount();

        let index_round = round % 3 == 2;
        if index_round {
            // The index: a flipped bit in the middle, a cut, garbage, or no index at all.
            let log = t.cache.join("index.log");
            match rng.below(4) {
                0 => {
                    let f = fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&log)
                        .unwrap();
                    let len = f.metadata().unwrap().len();
                    let at = len / 2 + rng.below(len / 2);
                    let mut b = [0u8];
                    f.read_exact_at(&mut b, at).unwrap();
                    f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
                }
                1 => {
                    let f = fs::OpenOptions::new().write(true).open(&log).unwrap();
                    let len = f.metadata().unwrap().len();
                    f.set_len(len - 1 - rng.below(len / 2)).unwrap();
                }
                2 => fs::write(&log, b"this is not an index at all, not even close").unwrap(),
                _ => fs::remove_file(&log).unwrap(),
            }
            damaged += 1;
        } else {
            let files = data_files(&t.cache);
            for _ in 0..1 + rng.below(4) {
                let f = &files[rng.below(files.len() as u64) as usize];
                if f.exists() {
                    damage(f, &mut rng);
                    damaged += 1;
                }
            }
        }

        if round % 2 == 0 && !index_round {
            // fsck sees it, --repair mends it, and then it is clean.
            let (code, report) = fsck(&t.cache, false);
            assert_eq!(code, 4, "fsck must report the damage:\n{report}");
            let (code, report) = fsck(&t.cache, true);
            assert_eq!(code, 1, "fsck --repair must mend it:\n{report}");
            let (code, report) = fsck(&t.cache, false);
            assert_eq!(code, 0, "clean after repair:\n{report}");
            detected += 1;
        }

        drop_page_cache();
        t.mount(&args);
        wrong += wrong_bytes(&t);
        let s = t.stats();
        let counted = s["checksum_failures"].as_u64().unwrap()
            + s["index_records_dropped"].as_u64().unwrap()
            + s["disk_read_errors"].as_u64().unwrap();
        if round % 2 == 1 && !index_round {
            assert!(counted > 0, "round {round}: damage served unnoticed? {s}");
            detected += 1;
        }
        t.umount();
        if index_round {
            let log = fs::read_to_string(t.cache.join("strata.log")).unwrap();
            assert!(
                log.contains("cut it off")
                    || log.contains("unreadable")
                    || log.contains("missing")
                    || log.contains("checksum"),
                "round {round}: a clear log line about the damaged index"
            );
            detected += 1;
        }
    }
    println!("damage_rounds = {}", rounds());
    println!("damage_files_damaged = {damaged}");
    println!("damage_detected_or_repaired = {detected}");
    println!("damage_wrong_bytes = {wrong}");
    assert_eq!(wrong, 0);
}

#[test]
fn damage_under_a_live_mount_is_detected() {
    let mut t = Mount::new();
    origin_files(&t);
    t.mount(&["--ram-size", "64K", "--attr-ttl", "60s"]);
    assert_eq!(wrong_bytes(&t), 0);
    assert!(eventually(Duration::from_secs(20), || t
        .stat_u64("inflight_fill_bytes")
        == 0));
    let mut rng = Rng(77);
    // Flip bytes inside every cached data file while it is in use.
    for f in data_files(&t.cache) {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&f)
            .unwrap();
        let len = file.metadata().unwrap().len();
        for _ in 0..4 {
            let at = rng.below(len);
            let mut b = [0u8];
            file.read_exact_at(&mut b, at).unwrap();
            file.write_all_at(&[!b[0]], at).unwrap();
        }
    }
    drop_page_cache();
    assert_eq!(
        wrong_bytes(&t),
        0,
        "damage under a live mount must not be served"
    );
    let s = t.stats();
    assert!(s["checksum_failures"].as_u64().unwrap() > 0, "{s}");
    // The damaged blocks were dropped and fetched again: a second pass is clean.
    drop_page_cache();
    assert_eq!(wrong_bytes(&t), 0);
    t.umount();
    let (code, report) = fsck(&t.cache, false);
    assert!(code == 0 || code == 4, "{report}");
}
