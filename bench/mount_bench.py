#!/usr/bin/env python3
"""Benchmark through a strata mount (not a test): `bench/mount.sh`.

Reads the same files, in one run:
  origin   the slow origin directly (sshfs through a delaying relay)
  local    a copy of the same files on the local disk
  strata   strata mounted over the slow origin
each cold (empty cache, page cache dropped), warm (cached, strata remounted so its RAM
is empty, page cache dropped: served by the disk tier) and hot (page cache warm: the
best of three re-reads).
Prints a table, then one `NAME = VALUE` line per ratio. Ratios are of throughputs
measured in this run; the median of --runs runs is used.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STRATA = ROOT / "target/release/strata"


def sh(*args, check=True, **kw):
    return subprocess.run([str(a) for a in args], check=check, **kw)


def drop_caches():
    sh("sync")
    Path("/proc/sys/vm/drop_caches").write_text("3")


def read_tree(path: Path) -> int:
    """Reads every file under path (sequentially, 1 MiB reads); returns bytes read."""
    total = 0
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file())
    buf = bytearray(1 << 20)
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while True:
                n = fh.readinto(buf)
                if not n:
                    break
                total += n
    return total


def timed(path: Path):
    t = time.perf_counter()
    n = read_tree(path)
    return n, time.perf_counter() - t


def mount(origin: Path, mnt: Path, cache: Path, extra):
    sh(STRATA, "mount", origin, mnt, "--cache-dir", cache, *extra)


def umount(mnt: Path):
    sh(STRATA, "umount", mnt)


def stats(mnt: Path):
    out = sh(STRATA, "stats", "--json", mnt, capture_output=True).stdout
    return json.loads(out)["stats"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/var/tmp/strata-mount-bench")
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--small-files", type=int, default=2000)
    ap.add_argument("--rtt-ms", type=int, default=2)
    ap.add_argument("--rate", default="", help="tc tbf rate, e.g. 400mbit (default: none)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--strata-args", default="", help="extra strata mount arguments (e.g. --passthrough)")
    a = ap.parse_args()
    extra = a.strata_args.split()

    work = Path(a.work)
    data, local, sshfs, mnt = work / "data", work / "local", work / "sshfs", work / "mnt"
    for d in (data, local, mnt):
        d.mkdir(parents=True, exist_ok=True)
    big = data / "big.bin"
    if not big.exists() or big.stat().st_size != a.size_mib << 20:
        with open(big, "wb") as f:
            for _ in range(a.size_mib):
                f.write(os.urandom(1 << 20))
    small = data / "small"
    if not small.exists():
        for i in range(a.small_files):
            d = small / f"d{i % 20:02}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i:05}").write_bytes(os.urandom(1024 + (i * 7919) % 30000))
    # A dataset is made of files that have not changed for a while (strata passes
    # only settled files to the kernel; see --passthrough-min-age).
    hour_ago = time.time() - 3600
    for p in [big, *small.rglob("*")]:
        if p.is_file():
            os.utime(p, (hour_ago, hour_ago))
    if not (local / "big.bin").exists():
        shutil.copytree(data, local, dirs_exist_ok=True)

    sh(ROOT / "bench/slow-origin.sh", "up", data, sshfs, a.rtt_ms, *([a.rate] if a.rate else []))
    results = {}  # (contender, temp, workload) -> MiB/s
    try:
        for wl in ("big.bin", "small"):
            def record(key, runs):
                results[key + (wl,)] = statistics.median(runs)

            # Origin directly, and the local copy.
            runs = []
            for _ in range(a.runs):
                drop_caches()
                n, t = timed(sshfs / wl)
                runs.append(n / t / 2**20)
            record(("origin", "cold"), runs)
            def hot_read(path):
                # "Hot": the page cache fully warm; the best of three re-reads.
                return max(n / t / 2**20 for n, t in (timed(path) for _ in range(3)))

            cold, hot = [], []
            for _ in range(a.runs):
                drop_caches()
                n, t = timed(local / wl)
                cold.append(n / t / 2**20)
                hot.append(hot_read(local / wl))
            record(("local", "cold"), cold)
            record(("local", "hot"), hot)

            # strata: cold on a fresh cache each run; warm after a remount; hot.
            cold, warm, hot = [], [], []
            for r in range(a.runs):
                cache = work / f"cache-{r}"
                shutil.rmtree(cache, ignore_errors=True)
                mount(sshfs, mnt, cache, extra)
                try:
                    drop_caches()
                    n, t = timed(mnt / wl)
                    cold.append(n / t / 2**20)
                    # Let the fills land before the remount.
                    for _ in range(600):
                        s = stats(mnt)
                        if s["inflight_fill_bytes"] == s["dropped_fill_blocks"] == 0:
                            break
                        time.sleep(0.1)
                finally:
                    umount(mnt)
                mount(sshfs, mnt, cache, extra)
                try:
                    drop_caches()
                    n, t = timed(mnt / wl)
                    warm.append(n / t / 2**20)
                    s = stats(mnt)
                    hot.append(hot_read(mnt / wl))
                finally:
                    umount(mnt)
                if r == 0:
                    results[("strata", "warm-origin-requests", wl)] = s["origin_requests"]
            record(("strata", "cold"), cold)
            record(("strata", "warm"), warm)
            record(("strata", "hot"), hot)
    finally:
        sh(ROOT / "bench/slow-origin.sh", "down", sshfs, check=False)

    desc = f"{a.size_mib} MiB file, {a.small_files} small files, {a.rtt_ms} ms RTT" + (
        f", {a.rate}" if a.rate else "")
    print(f"\nThroughput in MiB/s (median of {a.runs}), {desc}:\n")
    print("| workload | origin cold | local cold | local hot | strata cold | strata warm | strata hot |")
    print("|---|---|---|---|---|---|---|")
    for wl in ("big.bin", "small"):
        r = lambda c, t: results[(c, t, wl)]
        print(f"| {wl} | {r('origin','cold'):.0f} | {r('local','cold'):.0f} | {r('local','hot'):.0f} "
              f"| {r('strata','cold'):.0f} | {r('strata','warm'):.0f} | {r('strata','hot'):.0f} |")
    print()
    lines = []
    for wl, tag in (("big.bin", "large"), ("small", "small")):
        r = lambda c, t: results[(c, t, wl)]
        lines += [
            (f"{tag}_cold_vs_origin", r("strata", "cold") / r("origin", "cold")),
            (f"{tag}_warm_vs_origin", r("strata", "warm") / r("origin", "cold")),
            (f"{tag}_warm_vs_local_disk", r("strata", "warm") / r("local", "cold")),
            (f"{tag}_hot_vs_local_page_cache", r("strata", "hot") / r("local", "hot")),
            (f"{tag}_warm_origin_requests", results[("strata", "warm-origin-requests", wl)]),
        ]
    for name, v in lines:
        print(f"{name} = {v:.2f}" if isinstance(v, float) else f"{name} = {v}")


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("the mount benchmark needs root (mounts, network namespaces, drop_caches)")
    main()
