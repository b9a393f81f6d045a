#!/bin/bash
# Mirrors the suite's strata runs over an sshfs mount ($O): cold, populate, settle;
# then how much of large.bin is on disk, and how many origin requests warm makes.
BIN=${BIN:-/work/main/target/release/strata}
O=${O:-/tmp/chk/sshfs}; M=/tmp/chk/mnt; C=/tmp/chk/cache
st() { $BIN stats --json $M | python3 -c 'import json,sys; s=json.load(sys.stdin)["stats"]; print(" ".join(f"{k}={s[k]}" for k in sys.argv[1:]))' "$@"; }
fiof() { fio --name=r --filename=$1 --rw=randread --bs=${2:-4k} --ioengine=psync --runtime=8 --time_based --randrepeat=0 --invalidate=0 --output-format=json | python3 -c 'import json,sys; r=json.load(sys.stdin)["jobs"][0]["read"]; print(int(r["iops"]), r["clat_ns"]["percentile"]["50.000000"]//1000,"us")'; }
drop() { echo 3 > /proc/sys/vm/drop_caches; }
settle() { for _ in 1 2; do while [ "$($BIN stats --json $M | python3 -c 'import json,sys; print(json.load(sys.stdin)["stats"]["inflight_fill_bytes"])')" != 0 ]; do sleep 0.1; done; sleep 0.3; done; }
mkdir -p $M; rm -rf $C
$BIN mount $O $M --cache-dir $C --cache-size 8G "$@"
drop; echo -n "cold seq: "; dd if=$M/large.bin of=/dev/null bs=1M 2>&1 | tail -1
echo -n "populate: "; dd if=$M/large.bin of=/dev/null bs=1M 2>&1 | tail -1; settle
st fills_queued fills_dropped readahead_held readahead_requests origin_requests disk_bytes
drop; echo -n "warm seq: "; dd if=$M/large.bin of=/dev/null bs=1M 2>&1 | tail -1
st origin_requests disk_hits ram_hits fills_dropped disk_bytes
drop; echo -n "warm rand4k: "; fiof $M/large.bin; st origin_requests disk_hits ram_hits
$BIN umount $M
