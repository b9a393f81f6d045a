#!/usr/bin/env python3
"""Side-by-side benchmark of caches over one real slow network filesystem.

The origin is a directory served over SSH from a network namespace, behind a relay
that adds a round-trip time, mounted with sshfs (bench/slow-origin.sh). Every cache
is put in front of that same sshfs mount:

  nocache    reading the sshfs mount directly
  strata     strata with its defaults
  strata-pt  strata with --passthrough
  strata-uring  strata with --uring (FUSE over io_uring; not run unless named)
  rclone     rclone mount --vfs-cache-mode full, over the mount as a local remote
  catfs      catfs (if installed)
  local      a copy of the same files on the local disk: the physical limit

Workloads, each cold (empty cache, page cache dropped), warm (cached, page cache
dropped) and hot (page cache warm), and again after an unmount and mount:
  seq        sequential read of one large file (MiB/s)
  rand4k     random 4 KiB reads of it (fio, IOPS)
  rand128k   random 128 KiB reads of it (fio, IOPS)
  tar        tar of a source-like tree of many small files (files/s)
  walk       find + lstat of every file of the tree (files/s)
  ttfb       time to the first byte of a file not read yet (ms; cold only)

Writes results.md, results.json, machine.txt and PNG plots (ratios to local) into the
output folder, and ends with one `NAME = VALUE` line per headline ratio.
"""
import argparse
import json
import mmap
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STRATA = ROOT / "target/release/strata"
SEQ_BUF = 1 << 20


def sh(*args, check=True, **kw):
    return subprocess.run([str(a) for a in args], check=check, **kw)


def drop_caches():
    # Dirty pages survive drop_caches: a cache that writes its copy without syncing
    # (catfs, rclone) would read it back from memory in a "warm" run, where strata,
    # which syncs its fills, reads from disk. So write back the filesystem the caches
    # live on first; only that one (`sync -f`): a plain `sync` waits on a hung mount.
    if ARGS is not None:
        subprocess.run(["sync", "-f", str(ARGS.work)], check=False, timeout=600)
    Path("/proc/sys/vm/drop_caches").write_text("3")


def is_mounted(path: Path) -> bool:
    return sh("mountpoint", "-q", path, check=False).returncode == 0


def wait_mounted(path: Path, timeout=60):
    t = time.time()
    while time.time() - t < timeout:
        if is_mounted(path):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{path} did not get mounted")


# --- contenders ---------------------------------------------------------------

class Contender:
    name = "?"
    has_cache = True

    def __init__(self, work: Path, origin: Path):
        self.work, self.origin = work, origin
        self.mnt = work / f"mnt-{self.name}"
        self.cache = work / f"cache-{self.name}"

    def root(self) -> Path:
        return self.mnt

    def fresh(self):
        shutil.rmtree(self.cache, ignore_errors=True)

    def mount(self):
        raise NotImplementedError

    def umount(self):
        if is_mounted(self.mnt):
            sh("umount", self.mnt, check=False)
            if is_mounted(self.mnt):
                sh("umount", "-l", self.mnt, check=False)

    def settle(self):
        """Waits until what was read is in the cache (background fills)."""
        time.sleep(2)

    def stats(self):
        """The cache's own counters, where it has them."""
        return None

    def origin_requests(self):
        """Requests the cache has sent to the origin so far, where it says."""
        return None

    def read_split(self):
        """Where the reads' time went, where the cache says (strata's counters)."""
        return None


class NoCache(Contender):
    name = "nocache"
    has_cache = False

    def root(self):
        return self.origin

    def mount(self):
        pass

    def umount(self):
        pass

    def settle(self):
        pass


class Local(NoCache):
    name = "local"

    def root(self):
        return self.work / "local"


class Strata(Contender):
    name = "strata"
    extra: list = []

    def mount(self):
        self.mnt.mkdir(parents=True, exist_ok=True)
        sh(STRATA, "mount", self.origin, self.mnt, "--cache-dir", self.cache, "--cache-size", "8G",
           *self.extra, *ARGS.strata_args.split())

    def umount(self):
        if is_mounted(self.mnt):
            sh(STRATA, "umount", self.mnt, check=False)
        super().umount()

    def stats(self):
        out = sh(STRATA, "stats", "--json", self.mnt, capture_output=True, check=False).stdout
        try:
            return json.loads(out)["stats"]
        except (ValueError, KeyError):
            return None

    def origin_requests(self):
        s = self.stats()
        return s.get("origin_requests") if s else None

    def read_split(self):
        """Where a cold read's time went: per reader-issued origin request, the whole
        read, the wait for the origin thread's answer, and the origin's own part."""
        s = self.stats()
        n = s and s["origin_requests"] - s["readahead_requests"]
        if not n:
            return None
        ms = lambda k: s[k] / n / 1000
        return (f"read {ms('read_us'):.2f} ms, wait {ms('origin_wait_us'):.2f}, "
                f"origin {ms('origin_read_us'):.2f} (per origin request, {n} requests)")

    def settle(self):
        # Dropped fills are offered again once the writer is idle: wait for those too.
        for _ in range(1200):
            s = self.stats()
            if not s or s.get("inflight_fill_bytes", 0) == s.get("dropped_fill_blocks", 0) == 0:
                return
            time.sleep(0.1)


class StrataPassthrough(Strata):
    name = "strata-pt"
    extra = ["--passthrough"]


class StrataUring(Strata):
    name = "strata-uring"
    extra = ["--uring"]

    def mount(self):
        # The kernel ships FUSE over io_uring off.
        Path("/sys/module/fuse/parameters/enable_uring").write_text("1")
        super().mount()


class Rclone(Contender):
    name = "rclone"

    def mount(self):
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.cache.mkdir(parents=True, exist_ok=True)
        # `rclone mount --daemon` once gave up with "mount not ready" after 60 s
        # (2026-12-03 run) and lost the cells that needed it: try again.
        for attempt in range(3):
            try:
                sh("rclone", "mount", self.origin, self.mnt, "--vfs-cache-mode", "full",
                   "--cache-dir", self.cache, "--vfs-cache-max-size", "8G", "--daemon",
                   "--log-file", self.work / "rclone.log")
                wait_mounted(self.mnt)
                return
            except (subprocess.CalledProcessError, RuntimeError) as e:
                if attempt == 2:
                    raise
                print(f"  rclone mount failed ({e}); again", file=sys.stderr)
                self.umount()
                time.sleep(2)

    def umount(self):
        super().umount()
        # The daemon exits a while after its mount is gone. A new one started in the
        # same second once gave up with "mount not ready" (2026-12-03 run): wait for it.
        for _ in range(300):
            gone = subprocess.run(["pgrep", "-f", f"rclone mount .*{self.mnt}"],
                                  capture_output=True).returncode != 0
            if gone:
                break
            time.sleep(0.1)

    def settle(self):
        # rclone writes its cache as it reads; give it a moment to persist.
        time.sleep(3)


class Catfs(Contender):
    name = "catfs"

    def mount(self):
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.cache.mkdir(parents=True, exist_ok=True)
        log = open(self.work / "catfs.log", "a")
        self.proc = subprocess.Popen(["catfs", str(self.origin), str(self.cache), str(self.mnt)],
                                     stdout=log, stderr=log)
        wait_mounted(self.mnt)

    def umount(self):
        super().umount()
        if getattr(self, "proc", None):
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# --- workloads ----------------------------------------------------------------

def read_file(path: Path) -> int:
    total = 0
    # Page-aligned, as cp's and dd's buffers are: on this kind of VM a copy into an
    # unaligned buffer runs at a sixth of the speed (measured: 2.0 against 12 GB/s
    # from the page cache), which would flatten every hot figure.
    buf = mmap.mmap(-1, SEQ_BUF)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                return total
            total += n


def w_seq(root: Path, a):
    t = time.perf_counter()
    n = read_file(root / "large.bin")
    return n / (time.perf_counter() - t) / 2**20


def w_rand(bs):
    def run(root: Path, a):
        out = sh("fio", "--name=r", f"--filename={root / 'large.bin'}", "--rw=randread",
                 f"--bs={bs}", "--ioengine=psync", "--direct=0", f"--runtime={a.fio_secs}",
                 "--time_based", "--numjobs=1", "--randrepeat=0", "--invalidate=0",
                 "--output-format=json", capture_output=True).stdout
        rd = json.loads(out)["jobs"][0]["read"]
        pct = rd.get("clat_ns", {}).get("percentile", {})
        LAT_LAST[:] = [pct.get("50.000000", 0) / 1e6, pct.get("99.000000", 0) / 1e6]
        return rd["iops"]
    return run


# Latency percentiles (ms) of the last fio run: p50, p99.
LAT_LAST: list = []


def w_tar(root: Path, a):
    t = time.perf_counter()
    p1 = subprocess.Popen(["tar", "cf", "-", "-C", str(root), "tree"], stdout=subprocess.PIPE)
    p2 = subprocess.run(["wc", "-c"], stdin=p1.stdout, capture_output=True)
    p1.wait()
    took = time.perf_counter() - t
    if p1.returncode != 0:
        raise RuntimeError(f"tar exited with {p1.returncode}")
    # A timing is only worth something if the contender gave tar the whole tree.
    got = int(p2.stdout.split()[0])
    if got < a.tree_bytes:
        raise RuntimeError(f"wrong answer: tar wrote {got:,} bytes for a tree of {a.tree_bytes:,}")
    return a.tree_files / took


def w_walk(root: Path, a):
    t = time.perf_counter()
    out = sh("find", root / "tree", "-printf", "%s %T@ %m\n", capture_output=True).stdout
    took = time.perf_counter() - t
    if (n := out.count(b"\n")) < a.tree_entries:
        raise RuntimeError(f"wrong answer: find listed {n:,} entries of the tree's {a.tree_entries:,}")
    return a.tree_files / took


WORKLOADS = {
    "seq": (w_seq, "MiB/s"),
    "rand4k": (w_rand("4k"), "IOPS"),
    "rand128k": (w_rand("128k"), "IOPS"),
    "tar": (w_tar, "files/s"),
    "walk": (w_walk, "files/s"),
}


def populate(root: Path, wl: str):
    """After a cold run, makes sure the whole working set went through the cache."""
    if wl in ("rand4k", "rand128k", "seq"):
        read_file(root / "large.bin")
    elif wl == "tar":
        w_tar(root, ARGS)


def ttfb(root: Path, n=5):
    times = []
    for i in range(n):
        p = root / "ttfb" / f"t{i}"
        t = time.perf_counter()
        with open(p, "rb", buffering=0) as f:
            f.read(1)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


# --- data ---------------------------------------------------------------------

def make_data(data: Path, a) -> bool:
    """Creates what is missing; True if anything was (re)made."""
    made = False
    data.mkdir(parents=True, exist_ok=True)
    hour_ago = time.time() - 3600
    large = data / "large.bin"
    if not large.exists() or large.stat().st_size != a.large_mib << 20:
        made = True
        with open(large, "wb") as f:
            for _ in range(a.large_mib):
                f.write(os.urandom(1 << 20))
        os.utime(large, (hour_ago, hour_ago))
    tree = data / "tree"
    if not tree.exists() or sum(1 for _ in tree.rglob("*") if _.is_file()) != a.tree_files:
        made = True
        shutil.rmtree(tree, ignore_errors=True)
        # A source-tree shape: directories of 20-40 files, sizes from 200 B to 60 KiB.
        for i in range(a.tree_files):
            d = tree / f"mod{i // 400:03}" / f"pkg{(i // 25) % 16:02}"
            d.mkdir(parents=True, exist_ok=True)
            size = 200 + (i * 7919) % 12000 + (40000 if i % 37 == 0 else 0)
            (d / f"file{i:05}.rs").write_bytes(os.urandom(size))
        for p in tree.rglob("*"):
            os.utime(p, (hour_ago, hour_ago))
    tt = data / "ttfb"
    tt.mkdir(exist_ok=True)
    for i in range(20):
        p = tt / f"t{i}"
        if not p.exists():
            made = True
            p.write_bytes(os.urandom(256 << 10))
    return made


def origin_tmpfs(data: Path, a):
    """The origin server's files live in RAM (a tmpfs): the server is another machine
    in the setting modelled, with storage of its own. On this machine's one disk, a
    cache's writes would otherwise slow the origin's reads down, which no deployment
    sees, and drop_caches would put the server's disk into every cold figure."""
    need = (a.large_mib << 20) + a.tree_files * 64 * 1024 + (64 << 20)
    if is_mounted(data):
        # Left by an earlier run, perhaps a smaller one (--quick): make room.
        if os.statvfs(data).f_blocks * os.statvfs(data).f_frsize < need:
            sh("mount", "-o", f"remount,size={need}", data)
        return
    data.mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", f"size={need}", "strata-origin", data)


def machine():
    lines = [f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
             f"kernel: {platform.release()}",
             f"cpus: {os.cpu_count()}"]
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0]
        lines.append(f"memory: {mem.split(':')[1].strip()}")
        model = [l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")]
        if model:
            lines.append(f"cpu: {model[0].split(':')[1].strip()}")
    except OSError:
        pass
    for cmd in (["sshfs", "--version"], ["rclone", "version"], ["catfs", "--version"],
                [str(STRATA), "--version"], ["fio", "--version"]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            first = (out.stdout or out.stderr).strip().splitlines()
            lines.append(f"{cmd[0].split('/')[-1]}: {first[0] if first else '?'}")
        except (OSError, subprocess.TimeoutExpired):
            lines.append(f"{cmd[0]}: not available")
    return "\n".join(lines)


# --- the run --------------------------------------------------------------------

ARGS = None


def run_contender(c: Contender, a, res: dict, rtt: int):
    key = lambda wl, temp: f"{rtt}ms/{c.name}/{wl}/{temp}"
    for wl, (measure, unit) in WORKLOADS.items():
        def run_one(temp, wl=wl, measure=measure, drop=False, times=1, between=None,
                    pair=False):
            """The median of `times` runs (`between` runs before each but the first);
            the latency percentiles are those of the median run. With `pair`, each run
            follows a run of the same workload on the origin itself (no cache), and the
            median of the run-by-run ratios is kept too."""
            got, lats, ratios = [], [], []
            for i in range(times):
                if i and between:
                    between()
                if pair:
                    drop_caches()
                    base = measure(c.origin, a)
                before = c.origin_requests() if temp != "cold" else None
                if drop:
                    drop_caches()
                LAT_LAST.clear()
                t0 = time.perf_counter()
                got.append(measure(c.root(), a))
                lats.append(list(LAT_LAST))
                if pair and base:
                    ratios.append(got[-1] / base)
                    # Tells a slow round (the origin's time grows) from strata's own cost.
                    if split := c.read_split():
                        print(f"  {rtt} ms {c.name:9} {wl:9} cold run {i + 1}: {split}", flush=True)
                # A cached run that still went to the origin measures the origin too.
                if before is not None and (after := c.origin_requests()) is not None and after > before:
                    # What the mount knows of why: holes left by dropped fills?
                    s = c.stats() or {}
                    why = ", ".join(f"{k} {s[k]}" for k in ("fills_dropped", "readahead_held",
                                                            "disk_blocks", "invalidations") if k in s)
                    print(f"  {rtt} ms {c.name:9} {wl:9} {temp}: {after - before} origin requests ({why})",
                          flush=True)
                # A contender whose first read blocks until the whole file is fetched
                # (rclone's cold random reads) gives near 0 every time, for a minute a
                # run at 10 ms: once is enough to show it.
                if times > 1 and time.perf_counter() - t0 > 4 * a.fio_secs:
                    break
            mid = sorted(range(len(got)), key=got.__getitem__)[len(got) // 2]
            res[key(wl, temp)] = got[mid]
            if lats[mid]:
                res[f"lat/{key(wl, temp)}"] = lats[mid]
            if len(got) > 1:
                print(f"  {rtt} ms {c.name:9} {wl:9} {temp} runs: {', '.join(f'{g:.0f}' for g in got)}",
                      flush=True)
            if ratios:
                res[f"pair/{key(wl, temp)}"] = statistics.median(ratios)
                print(f"  {rtt} ms {c.name:9} {wl:9} {temp} / no cache run just before: "
                      f"{', '.join(f'{r:.2f}' for r in ratios)}", flush=True)

        def remount_empty():
            c.umount()
            c.fresh()
            c.mount()

        # One cached figure on this shared VM can be off by half (the disk's speed
        # swings within minutes): warm, hot and remount seq and rand128k are the median
        # of three (caches dropped before each warm one, remounted before each remount
        # one). Not rand4k: its blocks are promoted to strata's RAM tier, which outlives
        # a page-cache drop, so a second warm run would measure RAM.
        cached = c.has_cache or c.name == "local"
        cached_times = 3 if wl in ("seq", "rand128k") and cached else 1
        if wl not in a.workloads:
            continue
        try:
            c.fresh()
            c.mount()
            # One cold fio run of a few seconds swings by a third on this VM: cold
            # random reads are the median of three, each on an empty cache.
            rand = wl in ("rand4k", "rand128k")
            # Cold random reads are within a few tens of percent of the origin's own
            # speed, and this VM's speed drifts by as much within minutes: each cold
            # run is paired with a run on the origin just before it.
            run_one("cold", drop=True, times=3 if rand else 1, between=remount_empty,
                    pair=rand and c.has_cache and "nocache" in a.contenders)
            if c.has_cache:
                populate(c.root(), wl)
                c.settle()
                # How the fill went: dropped fills (the disk writer behind) are offered
                # again from RAM, or fetched again, before the warm run.
                if s := c.stats():
                    print(f"  {rtt} ms {c.name:9} {wl:9} filled: " + ", ".join(
                        f"{k} {s[k]}" for k in ("fills_dropped", "fills_refetched", "disk_blocks")
                        if k in s), flush=True)
            run_one("warm", drop=True, times=cached_times)
            # Without a cache, hot and remount only repeat warm: skipped.
            if c.has_cache or c.name == "local":
                if wl in ("rand4k", "rand128k"):
                    # Hot: the whole file in the page cache, not only what warm read.
                    read_file(c.root() / "large.bin")
                run_one("hot", times=cached_times)
                if wl == "seq" and c.has_cache:
                    # The cache's own copy read straight from its file: tells the device's
                    # speed (the host's caching of a freshly written file) from the cache's.
                    # After hot, since it drops the page cache (the remount drops it anyway).
                    files = [f for f in Path(c.cache).rglob("*") if f.is_file()]
                    if files:
                        big = max(files, key=lambda f: f.stat().st_size)
                        drop_caches()
                        t = time.perf_counter()
                        n = read_file(big)
                        frag = subprocess.run(["filefrag", str(big)], capture_output=True,
                                              text=True).stdout.strip().rsplit(": ", 1)[-1]
                        print(f"  {rtt} ms {c.name:9} seq       its cache file read directly: "
                              f"{n / (time.perf_counter() - t) / 2**20:.0f} MiB/s ({frag})",
                              flush=True)
                def remount():
                    if c.has_cache:
                        c.settle()
                        c.umount()
                        c.mount()

                remount()
                run_one("remount", drop=True, times=cached_times, between=remount)
        except Exception as e:  # a contender that fails a workload is reported, not fatal
            print(f"  {c.name} {wl}: failed: {e}", file=sys.stderr)
            res[f"fail/{key(wl, '')}".rstrip("/")] = str(e)
        finally:
            c.umount()
        done = {k.split("/")[-1]: round(v, 1) for k, v in res.items() if k.startswith(key(wl, ""))}
        print(f"  {rtt} ms {c.name:9} {wl:9} {done} {unit}", flush=True)
    if "ttfb" in a.workloads:
        try:
            c.fresh()
            c.mount()
            drop_caches()
            res[key("ttfb", "cold")] = ttfb(c.root())
        except Exception as e:
            print(f"  {c.name} ttfb: failed: {e}", file=sys.stderr)
        finally:
            c.umount()
        print(f"  {rtt} ms {c.name:9} ttfb      {res.get(key('ttfb', 'cold'), float('nan')):.1f} ms", flush=True)


def plots(res: dict, a, out: Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plots (pip install matplotlib)", file=sys.stderr)
        return
    names = [c for c in a.contenders if c != "local"]

    def panels(path, columns, value, title):
        """One figure per round trip: cold, warm and hot side by side, a bar per
        contender and column, as a ratio to local (log scale)."""
        fig, axes = plt.subplots(1, 3, figsize=(18, 5))
        for ax, temp in zip(axes, ("cold", "warm", "hot")):
            width = 0.8 / max(len(names), 1)
            for i, n in enumerate(names):
                ref = "hot" if temp == "hot" else "warm"
                vals = [value(n, col, temp, ref) for col, _ in columns]
                ax.bar([x + i * width for x in range(len(columns))], vals, width, label=n)
            ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(columns))])
            ax.set_xticklabels([label for _, label in columns])
            ax.set_title(title(temp))
            ax.axhline(1.0, color="gray", linewidth=0.8)
            ax.set_yscale("log")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)

    def ratio(x, y):
        return x / y if x and y else 0

    for rtt in a.rtts:
        wls = [(w, w) for w in WORKLOADS if w in a.workloads]
        panels(out / f"throughput-{rtt}ms.png", wls,
               lambda n, wl, t, ref: ratio(res.get(f"{rtt}ms/{n}/{wl}/{t}"),
                                           res.get(f"{rtt}ms/local/{wl}/{ref}")),
               lambda t: f"{t}, {rtt} ms RTT (ratio to local {'page cache' if t == 'hot' else 'disk'})")
        # Read latency (fio p50 and p99) of the random workloads.
        cols = [((wl, q), f"{wl} {'p50' if q == 0 else 'p99'}")
                for wl in ("rand4k", "rand128k") if wl in a.workloads for q in (0, 1)]
        lat = lambda n, col, t: (res.get(f"lat/{rtt}ms/{n}/{col[0]}/{t}") or [0, 0])[col[1]]
        panels(out / f"latency-{rtt}ms.png", cols,
               lambda n, col, t, ref: ratio(lat(n, col, t), lat("local", col, ref)),
               lambda t: f"read latency, {t}, {rtt} ms RTT (ratio to local; lower is better)")
    # Time to first byte.
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, n in enumerate([c for c in a.contenders]):
        ax.bar([x + i * 0.8 / len(a.contenders) for x in range(len(a.rtts))],
               [res.get(f"{r}ms/{n}/ttfb/cold", 0) for r in a.rtts], 0.8 / len(a.contenders), label=n)
    ax.set_xticks(range(len(a.rtts)))
    ax.set_xticklabels([f"{r} ms RTT" for r in a.rtts])
    ax.set_ylabel("ms (lower is better)")
    ax.set_title("time to first byte, cold")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "ttfb.png", dpi=90)
    plt.close(fig)


def table(res: dict, a) -> str:
    lines = []
    for rtt in a.rtts:
        lines.append(f"\n### {rtt} ms round trip\n")
        lines.append("| workload | temp | " + " | ".join(a.contenders) + " |")
        lines.append("|---|---|" + "---|" * len(a.contenders))
        for wl, (_, unit) in WORKLOADS.items():
            if wl not in a.workloads:
                continue
            for temp in ("cold", "warm", "hot", "remount"):
                row = []
                for n in a.contenders:
                    v = res.get(f"{rtt}ms/{n}/{wl}/{temp}")
                    failed = v is None and f"fail/{rtt}ms/{n}/{wl}" in res
                    row.append("failed" if failed else "–" if v is None else f"{v:,.0f}")
                lines.append(f"| {wl} ({unit}) | {temp} | " + " | ".join(row) + " |")
        for wl in ("rand4k", "rand128k"):
            if wl not in a.workloads or not any(f"pair/{rtt}ms/{n}/{wl}/cold" in res for n in a.contenders):
                continue
            row = [f"{v:.2f}" if (v := res.get(f"pair/{rtt}ms/{n}/{wl}/cold")) is not None else "–"
                   for n in a.contenders]
            lines.append(f"| {wl} ÷ no cache run just before (median) | cold | " + " | ".join(row) + " |")
        for wl in ("rand4k", "rand128k"):
            if wl not in a.workloads:
                continue
            for temp in ("cold", "warm", "hot", "remount"):
                row = []
                for n in a.contenders:
                    v = res.get(f"lat/{rtt}ms/{n}/{wl}/{temp}")
                    row.append("–" if not v else f"{v[0]:.3g} / {v[1]:.3g}")
                lines.append(f"| {wl} latency p50 / p99 (ms) | {temp} | " + " | ".join(row) + " |")
        if "ttfb" in a.workloads:
            row = [f"{res[k]:.1f}" if (k := f"{rtt}ms/{n}/ttfb/cold") in res else "–" for n in a.contenders]
            lines.append("| time to first byte (ms) | cold | " + " | ".join(row) + " |")
    fails = [(k.split("/")[1:], m) for k, m in res.items() if k.startswith("fail/")]
    if fails:
        lines.append("\n### Failed runs\n")
        lines += [f"- {rtt} {n} {wl}: {m}" for (rtt, n, wl), m in sorted(fails)]
    return "\n".join(lines)


def headlines(res: dict, a):
    r = lambda rtt, n, wl, t: res.get(f"{rtt}ms/{n}/{wl}/{t}")
    out = []

    def ratio(name, x, y):
        if x and y:
            out.append((name, x / y))

    low, high = min(a.rtts), max(a.rtts)
    for n in ("strata", "strata-pt", "strata-uring"):
        if n not in a.contenders:
            continue
        p = n.replace("-", "_")
        # Local disk as it reads at its best here: its "warm" (page cache dropped, the
        # host's own cache of the virtual disk as warm as strata's disk tier is).
        ratio(f"{p}_warm_seq_vs_local_disk", r(low, n, "seq", "warm"), r(low, "local", "seq", "warm"))
        ratio(f"{p}_hot_seq_vs_local_page_cache", r(low, n, "seq", "hot"), r(low, "local", "seq", "hot"))
        ratio(f"{p}_warm_rand4k_vs_local_disk", r(low, n, "rand4k", "warm"), r(low, "local", "rand4k", "warm"))
        ratio(f"{p}_warm_walk_vs_nocache_{high}ms", r(high, n, "walk", "warm"), r(high, "nocache", "walk", "warm"))
        for rtt in a.rtts:
            for wl in ("seq", "rand4k", "rand128k", "tar", "walk"):
                paired = res.get(f"pair/{rtt}ms/{n}/{wl}/cold")
                if paired is not None:
                    out.append((f"{p}_cold_{wl}_vs_nocache_{rtt}ms", paired))
                else:
                    ratio(f"{p}_cold_{wl}_vs_nocache_{rtt}ms", r(rtt, n, wl, "cold"),
                          r(rtt, "nocache", wl, "cold"))
        for peer in ("rclone", "catfs"):
            if peer not in a.contenders:
                continue
            for rtt in a.rtts:
                for wl in ("seq", "rand4k", "rand128k", "tar", "walk"):
                    for t in ("cold", "warm"):
                        ratio(f"{p}_vs_{peer}_{t}_{wl}_{rtt}ms", r(rtt, n, wl, t), r(rtt, peer, wl, t))
    return out


def main():
    global ARGS, STRATA
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/var/tmp/strata-suite")
    ap.add_argument("--out", default=str(ROOT / "bench/results/latest"))
    ap.add_argument("--rtts", default="2,10")
    ap.add_argument("--rate", default="", help="tc tbf rate for the link, e.g. 400mbit")
    ap.add_argument("--large-mib", type=int, default=1024)
    ap.add_argument("--tree-files", type=int, default=10000)
    ap.add_argument("--fio-secs", type=int, default=8)
    ap.add_argument("--contenders", default="nocache,strata,strata-pt,rclone,catfs,local")
    ap.add_argument("--workloads", default="seq,rand4k,rand128k,tar,walk,ttfb")
    ap.add_argument("--strata", default=str(STRATA),
                    help="the strata binary (to compare builds: before and after a change)")
    ap.add_argument("--strata-args", default="",
                    help="more options for strata mount, e.g. '--attr-ttl 20s' (both strata contenders)")
    a = ap.parse_args()
    STRATA = Path(a.strata)
    a.rtts = [int(x) for x in a.rtts.split(",")]
    a.contenders = [c for c in a.contenders.split(",") if c != "catfs" or shutil.which("catfs")]
    a.workloads = a.workloads.split(",")
    ARGS = a
    work = Path(a.work)
    data, sshfs, local = work / "origin", work / "sshfs", work / "local"
    origin_tmpfs(data, a)
    made = make_data(data, a)
    tree = [p for p in (data / "tree").rglob("*")]
    a.tree_entries = len(tree) + 1
    a.tree_bytes = sum(p.stat().st_size for p in tree if p.is_file())
    if made or not (local / "large.bin").exists():
        # The physical limit reads the very same files from the local disk.
        shutil.rmtree(local, ignore_errors=True)
        shutil.copytree(data, local)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "machine.txt").write_text(machine() + "\n")
    classes = {"nocache": NoCache, "strata": Strata, "strata-pt": StrataPassthrough,
               "strata-uring": StrataUring,
               "rclone": Rclone, "catfs": Catfs, "local": Local}
    res = {}
    for rtt in a.rtts:
        sh(ROOT / "bench/slow-origin.sh", "up", data, sshfs, rtt, *([a.rate] if a.rate else []))
        try:
            for n in a.contenders:
                run_contender(classes[n](work, sshfs), a, res, rtt)
        finally:
            sh(ROOT / "bench/slow-origin.sh", "down", sshfs, check=False)
    (out / "results.json").write_text(json.dumps(res, indent=1, sort_keys=True))
    md = [f"# Side-by-side results\n", "```", machine(), "```",
          f"\nOrigin: sshfs over ssh from a network namespace, {', '.join(f'{r} ms' for r in a.rtts)} "
          f"round trip{', ' + a.rate if a.rate else ''}. Large file {a.large_mib} MiB, "
          f"tree of {a.tree_files} files. cold: empty cache, page cache dropped; warm: cached, "
          "page cache dropped; hot: page cache warm; remount: after an unmount and mount, page "
          "cache dropped. Higher is better except time to first byte."
          + (f" strata mounted with `{a.strata_args}`." if a.strata_args else "") + "\n",
          table(res, a), "\n\n![throughput 2 ms](throughput-%dms.png)\n" % min(a.rtts),
          "![throughput %d ms](throughput-%dms.png)\n" % (max(a.rtts), max(a.rtts)),
          "![latency 2 ms](latency-%dms.png)\n" % min(a.rtts),
          "![latency %d ms](latency-%dms.png)\n" % (max(a.rtts), max(a.rtts)),
          "![time to first byte](ttfb.png)\n"]
    (out / "results.md").write_text("\n".join(md))
    plots(res, a, out)
    print(table(res, a))
    print()
    for name, v in headlines(res, a):
        print(f"{name} = {v:.2f}")


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("the suite needs root (mounts, network namespaces, drop_caches)")
    main()
