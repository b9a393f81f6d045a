#!/bin/bash
# Warm random 128 KiB reads through strata with the mount's read_ahead_kb at 1024 (strata's default) and 128.
set -euo pipefail
D=$(realpath "${1:?usage: readahead.sh DATA_DIR (holding large.bin)}")
cd "$(dirname "$0")/../../.."
. bench/lib.sh
S=target/release/strata; W=${RT_WORK:-/var/tmp/strata-rt}
mkdir -p $W/m
$S mount $D $W/m --cache-dir $W/cache
echo "fill passes: $(strata_fill $S $W/m $W/m/large.bin)"
$S umount $W/m
for ra in 1024 128 1024 128 1024 128; do
  $S mount $D $W/m --cache-dir $W/cache
  dev=$(mountpoint -d $W/m); echo $ra > /sys/class/bdi/$dev/read_ahead_kb
  sync; echo 3 > /proc/sys/vm/drop_caches
  r=$(fio --name=r --filename=$W/m/large.bin --rw=randread --bs=${BS:-128k} --ioengine=psync --direct=0 --runtime=8 --time_based --randrepeat=0 --invalidate=0 --output-format=json | python3 -c 'import json,sys; r=json.load(sys.stdin)["jobs"][0]["read"]; p=r["clat_ns"]["percentile"]; print("%7.0f IOPS, p50 %5.0f us, p99 %5.0f us" % (r["iops"], p["50.000000"] / 1e3, p["99.000000"] / 1e3))')
  echo "ra ${ra}k: $r, origin_requests $(strata_stat $S $W/m origin_requests), disk_hit_bytes $(strata_stat $S $W/m disk_hit_bytes)"
  $S umount $W/m
done
rm -rf $W
