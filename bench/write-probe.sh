#!/usr/bin/env bash
# One sequential write, straight to the suite's sshfs origin and through strata, side
# by side (a quick form of write-suite.sh's seqwrite, for one RTT and size):
#   bench/write-probe.sh [RTT_MS] [MIB]        (default: 10 256)
# STRATA_ARGS adds mount options (e.g. --write-back).
set -euo pipefail
cd "$(dirname "$0")/.."
rtt=${1:-10}
mib=${2:-256}
strata=$PWD/target/release/strata
cargo build --release --locked -q -p strata-cli
w=$(mktemp -d /var/tmp/strata-write-probe.XXXXXX)
cleanup() {
    "$strata" umount "$w/m" 2>/dev/null || true
    bench/slow-origin.sh down "$w/s" >/dev/null 2>&1 || true
    rm -rf "$w"
}
trap cleanup EXIT
mkdir -p "$w/origin" "$w/s" "$w/m"
head -c "$((mib << 20))" /dev/urandom > "$w/big"
bench/slow-origin.sh up "$w/origin" "$w/s" "$rtt" >/dev/null
timed() {
    sync
    echo 3 > /proc/sys/vm/drop_caches
    local t0 t1
    t0=$(date +%s.%N)
    dd if="$w/big" of="$1" bs=1M conv=fsync status=none
    t1=$(date +%s.%N)
    python3 -c "print(f'{$t1 - $t0:.2f}')"
}
straight=$(timed "$w/s/big")
rm -f "$w/origin/big"
# shellcheck disable=SC2086
"$strata" mount "$w/s" "$w/m" --cache-dir "$w/c" ${STRATA_ARGS:-}
through=$(timed "$w/m/big")
"$strata" umount "$w/m"
cmp -s "$w/big" "$w/origin/big" || { echo "write-probe: the origin does not hold what was written" >&2; exit 1; }
python3 -c "print(f'$mib MiB at $rtt ms: straight {$straight} s, strata {$through} s, strata / straight speed {$straight / $through:.2f}')"
