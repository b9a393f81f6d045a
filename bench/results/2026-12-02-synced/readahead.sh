#!/bin/bash
# Warm random 128 KiB reads through strata with the mount's read_ahead_kb at 1024 (strata's default) and 128.
set -euo pipefail
D=$(realpath "${1:?usage: readahead.sh DATA_DIR (holding large.bin)}")
cd "$(dirname "$0")/../../.."
. bench/lib.sh
S=target/release/strata; W=${RT_WORK:-/var/tmp/strata-rt}
mkdir -p $W/m
trap '$S umount $W/m >/dev/null 2>&1 || true; rm -rf $W' EXIT
$S mount $D $W/m --cache-dir $W/cache
echo "fill passes: $(strata_fill $S $W/m $W/m/large.bin)"
$S umount $W/m
for ra in 1024 128 1024 128 1024 128; do
  $S mount $D $W/m --cache-dir $W/cache
  dev=$(mountpoint -d $W/m); echo $ra > /sys/class/bdi/$dev/read_ahead_kb
  r=$(fio_read $W/m/large.bin randread "${BS:-128k}" 8)
  echo "ra ${ra}k: $r, origin_requests $(strata_stat $S $W/m origin_requests), disk_hit_bytes $(strata_stat $S $W/m disk_hit_bytes)"
  $S umount $W/m
done
