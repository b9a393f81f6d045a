#!/bin/bash
# Cold random reads over sshfs, no cache against strata binaries, alternating.
# usage: ab-sshfs.sh RTT_MS SECS ROUNDS STRATA_BIN... (env: BS=4k, ARGS="strata options")
# Run from anywhere; needs the suite's origin data (bench/suite.py creates it) and root.
set -u
root=$(cd "$(dirname "$0")/../../.." && pwd)
RTT=$1; SECS=$2; ROUNDS=$3; shift 3
O=${ORIGIN:-/var/tmp/strata-suite/origin}; SS=/var/tmp/strata-suite/sshfs
M=/tmp/ab/mnt; C=/tmp/ab/cache
mkdir -p $M
cd "$root" && bench/slow-origin.sh up $O $SS $RTT >/dev/null
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
fiorun() {
  sync; echo 3 > /proc/sys/vm/drop_caches
  fio --name=r --filename=$1/large.bin --rw=randread --bs=${BS:-4k} --ioengine=psync --direct=0 --runtime=$SECS --time_based --numjobs=1 --randrepeat=0 --invalidate=0 --output-format=json | python3 -c 'import json,sys; r=json.load(sys.stdin)["jobs"][0]["read"]; p=r["clat_ns"]["percentile"]; print("iops %.0f p50 %.2f p90 %.2f p99 %.2f" % (r["iops"], p["50.000000"]/1e6, p["90.000000"]/1e6, p["99.000000"]/1e6), end=" ")'
}
for i in $(seq $ROUNDS); do
  echo -n "nocache: "; fiorun $SS; echo
  for b in "$@"; do
    rm -rf $C; $b mount $SS $M --cache-dir $C --cache-size 8G ${ARGS:-} || exit 1
    P=$(pgrep -f "mount $SS $M" | head -1); c0=$(cpu $P)
    echo -n "$(basename $b): "; fiorun $M; echo "cpu_s $(( $(cpu $P) - c0 ))e-2"
    $b umount $M
  done
done
cd "$root" && bench/slow-origin.sh down $SS >/dev/null
