#!/bin/bash
# FUSE over io_uring against /dev/fuse, side by side: one filled cache, mounted in turn
# with and without --uring, warm random reads (page cache dropped before each run)
# through the disk tier, next to the local-disk copy. Nothing pinned: where the
# scheduler puts the threads is part of what is measured.
#
#   bench/uring-ab.sh DATA_DIR LOCAL_COPY [ROUNDS] [SECS] [BS] [RW]   (RW: fio --rw, randread)
#
# DATA_DIR holds large.bin (served by strata, not over a network); LOCAL_COPY is the
# same file on the local disk. Needs root (drop_caches, enable_uring) and fio.
# URING_AB_OTHER=PATH adds a third mount in each round: `--uring` with another strata
# binary (an older build, say), over the same cache.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
data=$(realpath "$1"); local_copy=$(realpath "$2"); rounds=${3:-3}; secs=${4:-5}; bs=${5:-4k}; rw=${6:-randread}
strata=$here/target/release/strata
[ -x "$strata" ] || cargo build --release --locked -q -p strata-cli --manifest-path "$here/Cargo.toml"
echo 1 > /sys/module/fuse/parameters/enable_uring
work=$(mktemp -d /var/tmp/strata-uring.XXXXXX)
mnt=$work/mnt; mkdir -p "$mnt"
cleanup() { "$strata" umount "$mnt" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

# A sequential run reads the file once (a second pass would come from the page cache).
timing="--runtime=$secs --time_based"; [ "$rw" = read ] && timing=""
fio_iops() { # FILE
    sync; echo 3 > /proc/sys/vm/drop_caches
    fio --name=r --filename="$1" --rw="$rw" --bs="$bs" --ioengine=psync \
        --direct=0 $timing --numjobs=1 --randrepeat=0 \
        --invalidate=0 --output-format=json |
        python3 -c 'import json,sys; r=json.load(sys.stdin)["jobs"][0]["read"]; p=r["clat_ns"]["percentile"]; print("%7.0f IOPS %6.0f MiB/s, mean %5.0f us, p99 %5.0f us" % (r["iops"], r["bw"] / 1024, r["clat_ns"]["mean"] / 1e3, p["99.000000"] / 1e3))'
}
. "$here/bench/lib.sh"
stat() { strata_stat "$strata" "$mnt" "$1"; }

"$strata" mount "$data" "$mnt" --cache-dir "$work/cache"
echo "filled in $(strata_fill "$strata" "$mnt" "$mnt/large.bin") passes"
"$strata" umount "$mnt"
for r in $(seq "$rounds"); do
    echo "$r local              $(fio_iops "$local_copy")"
    for mode in dev-fuse uring ${URING_AB_OTHER:+uring-other}; do
        args=(); [ $mode != dev-fuse ] && args=(--uring)
        bin=$strata; [ $mode = uring-other ] && bin=$URING_AB_OTHER
        "$bin" mount "$data" "$mnt" --cache-dir "$work/cache" "${args[@]}"
        out=$(fio_iops "$mnt/large.bin")
        echo "$r strata $(printf %-11s $mode) $out  (origin requests $(stat origin_requests), uring requests $(stat fuse_uring_requests))"
        "$strata" umount "$mnt"
    done
done
