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

. "$here/bench/lib.sh"
stat() { strata_stat "$strata" "$mnt" "$1"; }

"$strata" mount "$data" "$mnt" --cache-dir "$work/cache"
echo "filled in $(strata_fill "$strata" "$mnt" "$mnt/large.bin") passes"
"$strata" umount "$mnt"
for r in $(seq "$rounds"); do
    echo "$r local              $(fio_read "$local_copy" "$rw" "$bs" "$secs")"
    for mode in dev-fuse uring ${URING_AB_OTHER:+uring-other}; do
        args=(); [ $mode != dev-fuse ] && args=(--uring)
        bin=$strata; [ $mode = uring-other ] && bin=$URING_AB_OTHER
        "$bin" mount "$data" "$mnt" --cache-dir "$work/cache" "${args[@]}"
        out=$(fio_read "$mnt/large.bin" "$rw" "$bs" "$secs")
        echo "$r strata $(printf %-11s $mode) $out  (origin requests $(stat origin_requests), uring requests $(stat fuse_uring_requests))"
        "$strata" umount "$mnt"
    done
done
