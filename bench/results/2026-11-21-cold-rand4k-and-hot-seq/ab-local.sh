#!/bin/bash
# Cold random reads through strata over a local tmpfs origin (strata's own cost per
# cold read), strata binaries alternating.
# usage: ab-local.sh SECS ROUNDS STRATA_BIN... (env: BS=4k, ARGS="strata options")
# Run from anywhere; needs the suite's origin data (bench/suite.py creates it) and root.
set -u
SECS=$1; ROUNDS=$2; shift 2
O=${ORIGIN:-/var/tmp/strata-suite/origin}; M=/tmp/ab/mnt; C=/tmp/ab/cache
fiorun() {
  sync; echo 3 > /proc/sys/vm/drop_caches
  fio --name=r --filename=$1/large.bin --rw=randread --bs=${BS:-4k} --ioengine=psync --direct=0 --runtime=$SECS --time_based --numjobs=1 --randrepeat=0 --invalidate=0 --output-format=json | python3 -c 'import json,sys; r=json.load(sys.stdin)["jobs"][0]["read"]; p=r["clat_ns"]["percentile"]; print("iops %.0f p50 %.3f p90 %.3f p99 %.3f" % (r["iops"], p["50.000000"]/1e6, p["90.000000"]/1e6, p["99.000000"]/1e6), end=" ")'
}
for i in $(seq $ROUNDS); do
  for b in "$@"; do
    rm -rf $C; $b mount $O $M --cache-dir $C --cache-size 8G ${ARGS:-} || exit 1
    echo -n "$(basename $b): "; fiorun $M; echo
    $b umount $M
  done
done
