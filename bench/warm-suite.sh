#!/usr/bin/env bash
# Issue 27's benchmark: real programs over a real slow origin (bench/slow-origin.sh:
# sshfs from a network namespace through a relay that adds the round trip), cold and
# warm after a remount, against the local copy, side by side in one run.
#   python   Python's interpreter with a set of common standard-library imports, its
#            whole standard library (PYTHONHOME) read through the mount
#   walk     a stat walk (find -printf size and mtime) of a 10,000-file tree
#   git      git status of a real repository (the sources of the crates this
#            project builds with, 6,000-odd files, committed)
#   compile  rustc compiling hello world, the toolchain itself (rustc, its shared
#            libraries, the standard library) run and read through the mount
# Each workload: cold (an empty cache over a freshly mounted origin), then warm (the
# same cache directory mounted again at once over a freshly mounted origin, so sshfs's
# own caches are cold too), the page cache dropped before every run. Default options
# unless STRATA_ARGS says.
#   bench/warm-suite.sh [RTT_MS...]           (default: 2 10)
# Prints a table per RTT, with the origin requests each warm run cost (data fetches,
# and attribute revalidations).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
rtts=("$@")
[ ${#rtts[@]} -gt 0 ] || rtts=(2 10)
strata=$PWD/target/release/strata
cargo build --release --locked -q -p strata-cli -p strata-bench
data=${STRATA_BENCH_DATA:-/var/tmp/strata-warm-suite-data}
work=$(mktemp -d /var/tmp/strata-warm-suite.XXXXXX)
cleanup() {
    "$strata" umount "$work/m" 2>/dev/null || true
    bench/slow-origin.sh down "$work/s" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/s" "$work/m"

# The data, made once and kept (STRATA_BENCH_DATA).
if [ ! -f "$data/.complete" ]; then
    rm -rf "$data"
    mkdir -p "$data"
    python3 - "$data/tree" <<'EOF'
import os, sys
root = sys.argv[1]
for d in range(100):
    os.makedirs(f"{root}/d{d:03}")
    for f in range(100):
        with open(f"{root}/d{d:03}/f{f:03}", "wb") as out:
            out.write(os.urandom(1000 + f * 10))
EOF
    stdlib=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
    mkdir -p "$data/py/lib"
    # Byte-compiled first, so the copy serves .pyc files as an installed Python does.
    python3 -m compileall -q "$stdlib" >/dev/null 2>&1 || true
    cp -a "$stdlib" "$data/py/lib/"
    for skip in site-packages test idlelib tkinter turtledemo; do
        rm -rf "$data/py/lib/$(basename "$stdlib")/$skip"
    done
    plat=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["platstdlib"])')
    [ -d "$data/py/lib/$(basename "$stdlib")/lib-dynload" ] ||
        cp -a "$plat/lib-dynload" "$data/py/lib/$(basename "$stdlib")/" 2>/dev/null || true
    mkdir -p "$data/repo"
    cp -a "$HOME/.cargo/registry/src/." "$data/repo/"
    git -C "$data/repo" init -q
    git -C "$data/repo" add -A >/dev/null
    git -C "$data/repo" -c user.name=bench -c user.email=bench@localhost commit -qm sources
    sysroot=$(rustc --print sysroot)
    mkdir -p "$data/tc/bin" "$data/tc/lib/rustlib"
    cp -a "$sysroot/bin/rustc" "$data/tc/bin/"
    cp -a "$sysroot"/lib/*.so* "$data/tc/lib/"
    # The target's libraries and its linker (rust-lld).
    cp -a "$sysroot/lib/rustlib/x86_64-unknown-linux-gnu" "$data/tc/lib/rustlib/"
    printf 'fn main() {\n    println!("hello");\n}\n' > "$data/hello.rs"
    touch "$data/.complete"
fi

imports="json, re, argparse, logging, subprocess, pathlib, typing, dataclasses, asyncio, \
email.parser, http.client, urllib.request, xml.etree.ElementTree, unittest, decimal, csv, \
sqlite3, multiprocessing, concurrent.futures, tarfile"
run_python() { PYTHONHOME=$1/py python3 -B -c "import $imports"; }
run_walk() { find "$1/tree" -printf '%s %T@\n' | wc -l; }
# sshfs numbers inodes itself, so the index's inode numbers never match through it
# (nor through strata over it): checkStat=minimal, as a user of git over sshfs sets,
# makes git status compare sizes and times, not rehash every file.
run_git() {
    git --no-optional-locks -c safe.directory='*' -c core.checkStat=minimal \
        -c core.trustctime=false -C "$1/repo" status --porcelain | wc -l
}
run_compile() { "$1/tc/bin/rustc" --edition 2021 "$1/hello.rs" -o "$work/hello" && "$work/hello"; }
workloads=(python walk git compile)

# timed CMD...: seconds for CMD, page cache dropped first; fails loudly.
timed() {
    local t0 t1
    sync
    echo 3 > /proc/sys/vm/drop_caches
    t0=$(date +%s.%N)
    "$@" >"$work/out" 2>&1 || { echo "failed: $*" >&2; cat "$work/out" >&2; exit 1; }
    t1=$(date +%s.%N)
    python3 -c "print(f'{$t1 - $t0:.2f}')"
}
origin_up() { bench/slow-origin.sh up "$data" "$work/s" "$1" >/dev/null; }
mount_it() {
    # shellcheck disable=SC2086
    "$strata" mount "$work/s" "$work/m" --cache-dir "$work/c" ${STRATA_ARGS:-}
}
reqs() { strata_stat "$strata" "$work/m" origin_requests; }

reval() { strata_stat "$strata" "$work/m" revalidations; }

for rtt in "${rtts[@]}"; do
    declare -A local_t cold_t warm_t warm_req warm_reval
    for w in "${workloads[@]}"; do
        local_t[$w]=$(timed "run_$w" "$data")
        # Cold, then warm right after a remount (strata and the origin both), as a
        # user who restarts a machine or a container would: the trust a remount
        # finds left is the trust the cold run's answers had.
        rm -rf "$work/c"
        origin_up "$rtt"
        mount_it
        cold_t[$w]=$(timed "run_$w" "$work/m")
        "$strata" umount "$work/m"
        bench/slow-origin.sh down "$work/s" >/dev/null
        origin_up "$rtt"
        mount_it
        warm_t[$w]=$(timed "run_$w" "$work/m")
        warm_req[$w]=$(reqs)
        warm_reval[$w]=$(reval)
        "$strata" umount "$work/m"
        bench/slow-origin.sh down "$work/s" >/dev/null
    done
    echo
    echo "## sshfs origin, ${rtt} ms RTT (strata ${STRATA_ARGS:-defaults})"
    echo
    echo "| workload | local | cold | warm after remount | warm / cold | warm / local | warm: data requests, revalidations |"
    echo "| --- | --- | --- | --- | --- | --- | --- |"
    for w in "${workloads[@]}"; do
        python3 -c "
l, c, m = ${local_t[$w]}, ${cold_t[$w]}, ${warm_t[$w]}
print(f'| $w | {l:.2f} s | {c:.2f} s | {m:.2f} s | {m / c:.2f} | {m / max(l, 0.01):.1f} | ${warm_req[$w]}, ${warm_reval[$w]} |')"
    done
    unset local_t cold_t warm_t warm_req warm_reval
done
