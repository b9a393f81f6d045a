#!/bin/bash
# Hot sequential reads (page cache warm) of one file: the local copy, strata, and
# strata --passthrough, side by side for a few rounds, with the page-cache folios
# behind each (bench/folios.py). Shows what the kernel's FUSE page cache costs
# against a local filesystem's.
#
#   bench/hot-folios.sh DATA_DIR LOCAL_COPY [ROUNDS]
#
# DATA_DIR holds large.bin; LOCAL_COPY is the same file on the local disk. Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
data=$(realpath "$1"); local_copy=$(realpath "$2"); rounds=${3:-5}
strata=$here/target/release/strata
[ -x "$strata" ] || cargo build --release --locked -q -p strata-cli --manifest-path "$here/Cargo.toml"
work=$(mktemp -d /var/tmp/strata-hot.XXXXXX)
cleanup() {
    for m in plain pt; do "$strata" umount "$work/$m" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work"/{plain,pt}
mbps() { # FILE: one whole-file read, MiB/s
    dd if="$1" of=/dev/null bs=1M 2>&1 | python3 -c 'import re,sys; t=sys.stdin.read(); b,s=re.search(r"^(\d+) bytes.*copied, ([0-9.]+) s", t, re.M).groups(); print(round(int(b)/float(s)/2**20))'
}
# Fill strata's cache, then mount both ways.
. "$here/bench/lib.sh"
"$strata" mount "$data" "$work/plain" --cache-dir "$work/cache"
strata_fill "$strata" "$work/plain" "$work/plain/large.bin" > /dev/null
"$strata" umount "$work/plain"
# The passthrough mount shares the cache directory, so it cannot run beside the
# plain one: each round mounts one, then the other.
for r in $(seq "$rounds"); do
    sync; echo 3 > /proc/sys/vm/drop_caches
    line="$r local $(cat "$local_copy" > /dev/null; mbps "$local_copy")"
    for m in plain pt; do
        extra=(); [ $m = pt ] && extra=(--passthrough)
        "$strata" mount "$data" "$work/$m" --cache-dir "$work/cache" "${extra[@]}"
        cat "$work/$m/large.bin" > /dev/null
        if [ $m = pt ]; then
            # That first read went through strata (a new mount verifies every block
            # before the kernel is handed the file); warm the page cache by
            # passthrough itself, as a reader of a settled mount would.
            sync; echo 3 > /proc/sys/vm/drop_caches
            cat "$work/$m/large.bin" > /dev/null
        fi
        line+="  strata-$m $(mbps "$work/$m/large.bin")"
        [ "$r" = 1 ] && folios+=("$("$here/bench/folios.py" "$work/$m/large.bin")")
        "$strata" umount "$work/$m"
    done
    echo "$line MiB/s"
done
"$here/bench/folios.py" "$local_copy"
printf '%s\n' "${folios[@]}"
