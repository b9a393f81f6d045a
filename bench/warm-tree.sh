#!/usr/bin/env bash
# Many small files through strata, cold, warm with the TTL expired, and after a
# remount, against the local copy, side by side in one run: a stat walk (find) and a
# read walk (tar through a pipe; GNU tar skips reading when it writes to /dev/null).
# The origin is a local tree behind strata's own --origin-latency, so the figures show
# strata's round trips, not a network's.
#   bench/warm-tree.sh [LATENCY] [DIRS] [FILES_PER_DIR]     (default 2ms 100 100)
# Prints NAME = SECONDS lines, and the origin revalidations each run cost.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
lat=${1:-2ms}
dirs=${2:-100}
per=${3:-100}
strata=target/release/strata
cargo build --release --locked -p strata-cli >/dev/null
work=$(mktemp -d /var/tmp/strata-warm-tree.XXXXXX)
trap '"$strata" umount "$work/m" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/o" "$work/m"
python3 - "$work/o" "$dirs" "$per" <<'EOF'
import os, sys
root, dirs, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for d in range(dirs):
    os.makedirs(f"{root}/d{d:03}", exist_ok=True)
    for f in range(per):
        with open(f"{root}/d{d:03}/f{f:03}", "wb") as out:
            out.write(os.urandom(1000 + f * 10))
EOF
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# timed NAME CMD...: seconds for CMD, page cache dropped first.
timed() {
    local name=$1 t0 t1
    shift
    drop
    t0=$(date +%s.%N)
    "$@" >/dev/null 2>&1
    t1=$(date +%s.%N)
    echo "$name = $(python3 -c "print(round($t1 - $t0, 3))")"
}
walk() { find "$1" -type f; }
readall() { tar cf - "$1" | cat; }
mount_it() { "$strata" mount "$work/o" "$work/m" --cache-dir "$work/c" --origin-latency "$lat"; }
revals() { echo "  revalidations so far: $(strata_stat "$strata" "$work/m" revalidations)"; }

echo "# $((dirs * per)) files, origin latency $lat"
timed local_find walk "$work/o"
timed local_tar readall "$work/o"
mount_it
timed cold_find walk "$work/m"; revals
timed cold_tar readall "$work/m"; revals
sleep 1.5 # past the default TTL
timed ttl_expired_find walk "$work/m"; revals
sleep 1.5
timed ttl_expired_tar readall "$work/m"; revals
"$strata" umount "$work/m"
mount_it
timed remount_find walk "$work/m"; revals
"$strata" umount "$work/m"
mount_it
timed remount_tar readall "$work/m"; revals
