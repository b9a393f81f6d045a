#!/bin/bash
# Warm random 4 KiB reads through strata's disk tier against CPU placement: strata's
# threads and the reader (fio) pinned to the same CPU or to different ones, next to
# the local-disk copy read from each CPU. On a VM a wake-up on another vCPU is an
# inter-processor interrupt, and a FUSE read needs two of them besides the disk's own
# completion, so where the scheduler puts the threads decides the figure.
#
#   bench/placement.sh DATA_DIR LOCAL_COPY [ROUNDS] [SECS]
#
# DATA_DIR holds large.bin (served by strata, not over a network); LOCAL_COPY is the
# same file on the local disk. Needs root (drop_caches), fio, taskset and at least two
# CPUs. Prints one line per run and the CPU that takes the disk's interrupts.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
data=$(realpath "$1"); local_copy=$(realpath "$2"); rounds=${3:-2}; secs=${4:-4}
strata=$here/target/release/strata
[ -x "$strata" ] || cargo build --release --locked -q -p strata-cli --manifest-path "$here/Cargo.toml"
work=$(mktemp -d /var/tmp/strata-placement.XXXXXX)
mnt=$work/mnt; mkdir -p "$mnt"
cleanup() { "$strata" umount "$mnt" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

fio_iops() { # CPU FILE
    sync; echo 3 > /proc/sys/vm/drop_caches
    taskset -c "$1" fio --name=r --filename="$2" --rw=randread --bs=4k --ioengine=psync \
        --direct=0 --runtime="$secs" --time_based --numjobs=1 --randrepeat=0 \
        --invalidate=0 --output-format=json |
        python3 -c 'import json,sys; r=json.load(sys.stdin)["jobs"][0]["read"]; print("%6.0f IOPS, mean %4.0f us" % (r["iops"], r["clat_ns"]["mean"] / 1e3))'
}
pin() { # CPU: every thread of the strata daemon
    local pid
    pid=$(pgrep -f "strata mount $data $mnt .*--foreground" | head -1)
    for t in /proc/"$pid"/task/*; do taskset -pc "$1" "$(basename "$t")" >/dev/null; done
}

"$strata" mount "$data" "$mnt" --cache-dir "$work/cache"
cat "$mnt/large.bin" > /dev/null
until "$strata" stats "$mnt" --json | python3 -c 'import json,sys; s = json.load(sys.stdin)["stats"]; sys.exit(s["inflight_fill_bytes"] + s["dropped_fill_blocks"] != 0)'; do
    sleep 0.5
done
echo "disk interrupts per CPU: $(grep -E 'virtio.*req|nvme|ahci' /proc/interrupts | head -1 | awk '{$1=""; print}' | cut -c1-40)"
for r in $(seq "$rounds"); do
    for cpu in 0 1; do echo "$r local       fio@$cpu            $(fio_iops $cpu "$local_copy")"; done
    for s in 0 1; do
        for f in 0 1; do
            pin $s
            echo "$r strata@$s    fio@$f            $(fio_iops $f "$mnt/large.bin")"
        done
    done
    pin 0-1
    echo "$r strata free  fio free          $(fio_iops 0-1 "$mnt/large.bin")"
done
