#!/usr/bin/env bash
# Issue 29's benchmark: writes over a real slow origin (bench/slow-origin.sh: sshfs
# from a network namespace through a relay that adds the round trip), through strata
# against straight to the sshfs mount and, where rclone is installed, through
# `rclone mount --vfs-cache-mode writes`, side by side in one run, the page cache
# dropped and the output emptied before every run. With a write-back cache (strata
# with STRATA_ARGS=--write-back, rclone) the workload's time is what the writer waits;
# "at origin" adds the time until the origin holds everything (strata: its umount,
# which sends what is dirty; rclone: polling the origin while it stays mounted).
#   seqwrite  one file of STRATA_BENCH_WRITE_MIB (default 1024) MiB of random bytes,
#             written with dd (1 MiB writes) and fsync'ed
#   untar     a 10,000-file tree (100 directories of 100 files of 1-2 KB) untarred
#             (STRATA_BENCH_TREE_DIRS directories: 100)
#   build     a debug `cargo build` of a real crate (regex-syntax, from cargo's
#             registry cache; its lock file made once, online) with its target
#             directory on the mount: ~150 files, 58 MB
#   bench/write-suite.sh [RTT_MS...]           (default: 2 10)
# STRATA_BENCH_WORKLOADS picks some ("untar"; default all three).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
rtts=("$@")
[ ${#rtts[@]} -gt 0 ] || rtts=(2 10)
strata=$PWD/target/release/strata
cargo build --release --locked -q -p strata-cli
mib=${STRATA_BENCH_WRITE_MIB:-1024}
dirs=${STRATA_BENCH_TREE_DIRS:-100}
data=${STRATA_BENCH_DATA:-/var/tmp/strata-write-suite-data}
work=$(mktemp -d /var/tmp/strata-write-suite.XXXXXX)
cleanup() {
    "$strata" umount "$work/m" 2>/dev/null || true
    bench/slow-origin.sh down "$work/s" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/s" "$work/m" "$work/origin"

if [ ! -f "$data/.complete-$mib-$dirs" ]; then
    rm -rf "$data"
    mkdir -p "$data"
    head -c "$((mib << 20))" /dev/urandom > "$data/big"
    python3 - "$data/tree" "$dirs" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(int(sys.argv[2])):
    os.makedirs(f"{root}/d{d:03}")
    for f in range(100):
        with open(f"{root}/d{d:03}/f{f:03}", "wb") as out:
            out.write(os.urandom(1000 + f * 10))
PY
    tar -C "$data" -cf "$data/tree.tar" tree
    rm -rf "$data/tree"
    touch "$data/.complete-$mib-$dirs"
fi
read -r -a workloads <<< "${STRATA_BENCH_WORKLOADS:-seqwrite untar build}"
if [[ " ${workloads[*]} " == *" build "* && ! -f "$data/crate/Cargo.lock" ]]; then
    src=$(find "$HOME/.cargo/registry/src" -maxdepth 2 -name 'regex-syntax-0.8.*' | sort | tail -1)
    [ -n "$src" ] || { echo "write-suite: regex-syntax 0.8 is not in cargo's registry cache (cargo fetch in this repository puts it there)" >&2; exit 1; }
    rm -rf "$data/crate"
    cp -r "$src" "$data/crate"
    (cd "$data/crate" && cargo generate-lockfile -q)
fi

run_seqwrite() { dd if="$data/big" of="$1/big" bs=1M conv=fsync status=none; }
run_untar() { tar -C "$1" -xf "$data/tree.tar"; }
run_build() {
    CARGO_TARGET_DIR="$1/target" cargo build --offline -q --manifest-path "$data/crate/Cargo.toml"
    find "$1/target" -type f | wc -l > "$work/build-files"
}

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
fresh_origin() {
    rm -rf "$work/origin"
    mkdir -p "$work/origin"
    bench/slow-origin.sh up "$work/origin" "$work/s" "$1" >/dev/null
}

# landed W DIR: true when DIR holds everything workload W wrote.
landed() {
    case $1 in
    seqwrite) cmp -s "$data/big" "$2/big" ;;
    untar) [ "$(find "$2/tree" -type f 2>/dev/null | wc -l)" = $((dirs * 100)) ] ;;
    build) [ "$(find "$2/target" -type f 2>/dev/null | wc -l)" = "$(cat "$work/build-files")" ] ;;
    esac
}
now() { date +%s.%N; }
rclone_bin=$(command -v rclone || true)

for rtt in "${rtts[@]}"; do
    declare -A direct_t strata_t strata_o rclone_t rclone_o
    for w in "${workloads[@]}"; do
        fresh_origin "$rtt"
        direct_t[$w]=$(timed "run_$w" "$work/s")
        bench/slow-origin.sh down "$work/s" >/dev/null
        fresh_origin "$rtt"
        rm -rf "$work/c"
        # shellcheck disable=SC2086
        "$strata" mount "$work/s" "$work/m" --cache-dir "$work/c" ${STRATA_ARGS:-}
        t0=$(now)
        strata_t[$w]=$(timed "run_$w" "$work/m")
        "$strata" umount "$work/m"
        strata_o[$w]=$(python3 -c "print(f'{$(now) - $t0 - 0:.2f}')")
        # What landed at the origin is what was written.
        landed "$w" "$work/origin" || { echo "strata: $w did not reach the origin" >&2; exit 1; }
        bench/slow-origin.sh down "$work/s" >/dev/null
        if [ -n "$rclone_bin" ]; then
            fresh_origin "$rtt"
            rm -rf "$work/rc"
            mkdir -p "$work/r"
            "$rclone_bin" mount "$work/s" "$work/r" --vfs-cache-mode writes \
                --cache-dir "$work/rc" --daemon
            t0=$(now)
            rclone_t[$w]=$(timed "run_$w" "$work/r")
            # Still mounted while its uploads run: unmounted at once, rclone drops
            # what it has not sent (seen in bench/results/2026-12-07-write-back).
            for _ in $(seq 1200); do landed "$w" "$work/origin" && break; sleep 0.1; done
            rclone_o[$w]=$(python3 -c "print(f'{$(now) - $t0:.2f}')")
            landed "$w" "$work/origin" || rclone_o[$w]="never (not at the origin 120 s after the writes)"
            fusermount -u "$work/r" 2>/dev/null || umount "$work/r"
            bench/slow-origin.sh down "$work/s" >/dev/null
        fi
    done
    echo
    echo "## sshfs origin, ${rtt} ms RTT (strata ${STRATA_ARGS:-defaults})"
    echo
    echo "| workload | straight to sshfs | strata | strata, at origin | speed strata / straight | rclone writes | rclone, at origin | speed strata / rclone |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
    for w in "${workloads[@]}"; do
        python3 -c "
d, s, so = ${direct_t[$w]}, ${strata_t[$w]}, ${strata_o[$w]}
r, ro = '${rclone_t[$w]:-}', '${rclone_o[$w]:-}'
rc = f'{float(r):.2f} s' if r else 'not installed'
ratio = f'{float(r) / s:.2f}' if r else '-'
print(f'| $w | {d:.2f} s | {s:.2f} s | {so:.2f} s | {d / s:.2f} | {rc} | {ro} | {ratio} |')"
    done
    unset direct_t strata_t strata_o rclone_t rclone_o
done
