//! Write-back through a mount (`--write-back`): reads through the mount show every
//! write at once, the origin gets it within the delay and always by `strata umount`
//! or a shutdown signal, and after `kill -9` the next mount sends what the journal
//! kept: every byte acknowledged by fsync is at the origin, nothing torn.

mod common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;

fn clean(t: &Mount) -> bool {
    eventually(Duration::from_secs(30), || {
        t.stat_u64("dirty_bytes") == 0 && t.stat_u64("dirty_files") == 0
    })
}

#[test]
fn umount_and_signals_send_what_the_delay_held_back() {
    let mut t = Mount::new();
    fs::write(t.o("old"), b"origin bytes").unwrap();
    t.mount(&["--write-back", "--write-back-delay", "1h"]);
    fs::write(t.m("new"), pattern(1, 300_000)).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(t.m("old"))
        .unwrap()
        .write_all_at(b"MOUNT!", 0)
        .unwrap();
    // Held back (an hour's delay), served through the mount.
    assert_eq!(fs::read(t.o("old")).unwrap(), b"origin bytes");
    assert_eq!(fs::read(t.m("old")).unwrap(), b"MOUNT! bytes");
    assert_eq!(fs::read(t.m("new")).unwrap(), pattern(1, 300_000));
    assert_eq!(fs::metadata(t.m("new")).unwrap().len(), 300_000);
    assert!(t.stat_u64("dirty_bytes") >= 300_000);
    t.umount();
    assert_eq!(fs::read(t.o("old")).unwrap(), b"MOUNT! bytes");
    assert_eq!(fs::read(t.o("new")).unwrap(), pattern(1, 300_000));

    // SIGTERM: the daemon unmounts, and sends everything first.
    t.mount(&["--write-back", "--write-back-delay", "1h"]);
    fs::write(t.m("new"), pattern(2, 100_000)).unwrap();
    let pid = t.daemon_pid();
    kill(pid, "-TERM");
    assert!(eventually(Duration::from_secs(30), || {
        fs::read(t.o("new")).unwrap() == pattern(2, 100_000)
    }));
    t.clear_dead(pid);
}

#[test]
fn random_operations_in_write_back_match_a_model_and_reach_the_origin() {
    // fsx in small, in write-back: writes, truncates, mmap writes, fsyncs, renames
    // and reads across files; every read through the mount equals the model at once.
    // Now and then the test waits for the flushers and checks the origin equals the
    // model, and changes a clean file from outside.
    let mut t = Mount::new();
    const FILES: usize = 4;
    let mut model: Vec<Vec<u8>> = (0..FILES).map(|i| pattern(i as u64, 50_000)).collect();
    for (i, m) in model.iter().enumerate() {
        fs::write(t.o(format!("f{i}")), m).unwrap();
    }
    t.mount(&[
        "--write-back",
        "--write-back-delay",
        "200ms",
        "--attr-ttl",
        "50ms",
    ]);
    let steps: u64 = std::env::var("STRATA_FSX_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n.max(1)
    };
    for step in 0..steps {
        let i = rnd(FILES as u64) as usize;
        let name = format!("f{i}");
        match rnd(14) {
            0..=4 => {
                let off = rnd(120_000) as usize;
                let len = 1 + rnd(40_000) as usize;
                let data = pattern(step + 100, len);
                let mut f = fs::OpenOptions::new().write(true).open(t.m(&name)).unwrap();
                f.seek(SeekFrom::Start(off as u64)).unwrap();
                f.write_all(&data).unwrap();
                if rnd(3) == 0 {
                    f.sync_all().unwrap();
                }
                let m = &mut model[i];
                if m.len() < off + len {
                    m.resize(off + len, 0);
                }
                m[off..off + len].copy_from_slice(&data);
            }
            5 => {
                let len = rnd(120_000);
                fs::OpenOptions::new()
                    .write(true)
                    .open(t.m(&name))
                    .unwrap()
                    .set_len(len)
                    .unwrap();
                model[i].resize(len as usize, 0);
            }
            6 if !model[i].is_empty() => {
                // A shared writable mapping: the kernel writes it back through the
                // mount.
                let len = model[i].len();
                let off = rnd(len as u64) as usize;
                let n = (1 + rnd(5000) as usize).min(len - off);
                let data = pattern(step + 3000, n);
                let src = t.tmp.path().join("mmap-src");
                fs::write(&src, &data).unwrap();
                let py = format!(
                    "import mmap\nf=open('{}','r+b')\nm=mmap.mmap(f.fileno(),0)\nd=open('{}','rb').read()\nm[{off}:{off}+len(d)]=d\nm.flush()\nm.close()\nf.close()\n",
                    t.m(&name).display(),
                    src.display()
                );
                let out = std::process::Command::new("python3")
                    .arg("-c")
                    .arg(py)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                model[i][off..off + n].copy_from_slice(&data);
            }
            7 => {
                // A rename over another file: the names swap their contents.
                let j = (i + 1) % FILES;
                fs::rename(t.m(&name), t.m("tmp")).unwrap();
                fs::rename(t.m(format!("f{j}")), t.m(&name)).unwrap();
                fs::rename(t.m("tmp"), t.m(format!("f{j}"))).unwrap();
                model.swap(i, j);
            }
            8 => {
                assert!(clean(&t), "step {step}: dirty data not flushed");
                for (k, m) in model.iter().enumerate() {
                    assert!(
                        fs::read(t.o(format!("f{k}"))).unwrap() == *m,
                        "step {step}: f{k} at the origin differs from the model"
                    );
                }
                // From outside, on a clean file.
                let data = pattern(step + 7000, 1 + rnd(60_000) as usize);
                fs::write(t.o(&name), &data).unwrap();
                model[i] = data;
                std::thread::sleep(Duration::from_millis(120));
            }
            _ => {}
        }
        let got = fs::read(t.m(&name)).unwrap();
        assert!(
            got == model[i],
            "step {step}: f{i} through the mount differs from the model ({} vs {} bytes)",
            got.len(),
            model[i].len()
        );
    }
    t.umount();
    for (i, m) in model.iter().enumerate() {
        assert!(
            fs::read(t.o(format!("f{i}"))).unwrap() == *m,
            "f{i} at the origin after umount differs from the model"
        );
    }
    let conflicts = fs::read_dir(&t.origin)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("strata-conflict")
        })
        .count();
    assert_eq!(conflicts, 0, "no conflict: outside changes hit clean files");
}

#[test]
fn kill_9_under_writes_loses_nothing_fsync_acknowledged() {
    const WORKERS: u64 = 3;
    let kills: u64 = std::env::var("STRATA_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut t = Mount::new();
    let args = ["--write-back", "--write-back-delay", "1h"];
    for k in 0..kills {
        t.mount(&args);
        let stop = Arc::new(AtomicBool::new(false));
        // Each worker writes its own file and keeps every state it went through and
        // the newest an fsync acknowledged.
        let workers: Vec<_> = (0..WORKERS)
            .map(|r| {
                let (stop, mnt, origin) = (stop.clone(), t.mnt.clone(), t.origin.clone());
                std::thread::spawn(move || {
                    let name = format!("k{k}w{r}");
                    let mut states: Vec<Vec<u8>> = vec![Vec::new()];
                    let mut acked = 0usize;
                    let mut torn: Option<(u64, Vec<u8>)> = None;
                    let Ok(f) = fs::File::create(mnt.join(&name)) else {
                        return (name, states, acked, torn, origin);
                    };
                    let mut y = (k * 10 + r + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    while !stop.load(Ordering::Relaxed) {
                        y ^= y << 13;
                        y ^= y >> 7;
                        y ^= y << 17;
                        let off = (y >> 20) % 200_000;
                        let data = pattern(y, 1 + (y >> 44) as usize % 30_000);
                        if f.write_all_at(&data, off).is_err() {
                            // Unanswered when the daemon died: it may have reached
                            // the journal whole, in part (the kernel sends a large
                            // write as several requests) or not at all.
                            torn = Some((off, data));
                            break;
                        }
                        let mut next = states.last().unwrap().clone();
                        let end = off as usize + data.len();
                        if next.len() < end {
                            next.resize(end, 0);
                        }
                        next[off as usize..end].copy_from_slice(&data);
                        states.push(next);
                        if y % 4 == 0 {
                            if f.sync_data().is_err() {
                                break;
                            }
                            acked = states.len() - 1;
                        }
                    }
                    (name, states, acked, torn, origin)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(400 + k * 300));
        let pid = t.daemon_pid();
        kill(pid, "-9");
        stop.store(true, Ordering::Relaxed);
        t.abort_if_hung(pid);
        let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        t.clear_dead(pid);
        // The next mount sends the journal before serving.
        t.mount(&args);
        assert!(
            t.stat_u64("journal_replays") > 0,
            "kill {k}: nothing replayed"
        );
        for (name, mut states, acked, torn, origin) in results {
            let got = fs::read(origin.join(&name)).unwrap_or_default();
            // The write in flight, as far as it got: the longest prefix of it that
            // the origin shows.
            if let Some((off, data)) = torn {
                let off = off as usize;
                let k = (0..data.len())
                    .find(|&i| got.get(off + i) != Some(&data[i]))
                    .unwrap_or(data.len());
                let mut part = states.last().unwrap().clone();
                if part.len() < off + k {
                    part.resize(off + k, 0);
                }
                part[off..off + k].copy_from_slice(&data[..k]);
                states.push(part);
            }
            let at = states.iter().rposition(|s| *s == got);
            assert!(
                at.is_some_and(|i| i >= acked),
                "kill {k}: {name} at the origin is state {at:?} of {}, fsync acknowledged {acked}",
                states.len()
            );
            assert!(
                fs::read(t.m(&name)).unwrap() == got,
                "kill {k}: {name} through the mount differs from the origin"
            );
        }
        t.umount();
    }
}
