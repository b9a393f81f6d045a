#!/bin/bash
# Cold rand4k at 2 ms: nocache vs strata variants, alternating, with CPU accounting.
# usage: exp.sh ROUNDS SECS BS VARIANT...   (VARIANT: nocache | strata:ARGS)
# The script as run, from a scratch directory: it expects a checkout at /work/main,
# the suite's origin in /var/tmp/strata-suite/origin, and uses /tmp/y for its sshfs
# mountpoint, strata mountpoint and cache.
cd /work/main
R=$1; S=$2; BS=$3; shift 3
W=/var/tmp/strata-suite
SS=/tmp/y/sshfs; M=/tmp/y/m; mkdir -p $SS $M
bench/slow-origin.sh up $W/origin $SS 2 >/dev/null
dp() { p=$(pgrep -f "strata mount.*--foreground" | head -1); [ -n "$p" ] && awk '{print $14+$15}' /proc/$p/stat || echo 0; }
cpu() { awk '/^cpu /{print $2+$3+$4+$7+$8, $6}' /proc/stat; }
pt() { for p in $(pgrep -x "$1"); do awk '{print $14+$15}' /proc/$p/stat; done | awk '{s+=$1}END{print s+0}'; }
for r in $(seq $R); do
 for v in "$@"; do
  root=$SS
  if [[ $v == strata* ]]; then
    rm -rf /tmp/y/c; args=${v#strata}; args=${args#:}
    target/release/strata mount $SS $M --cache-dir /tmp/y/c $args >/dev/null
    root=$M
  fi
  sync; echo 3 > /proc/sys/vm/drop_caches
  c0=($(cpu)); s0=$(dp); h0=$(pt ssh); d0=$(pt sshd); y0=$(pt delay-relay); f0=$(pt sshfs)
  out=$(fio --name=r --filename=$root/large.bin --rw=randread --bs=$BS --ioengine=psync --direct=0 --runtime=$S --time_based --numjobs=1 --randrepeat=0 --invalidate=0 --output-format=json | python3 -c 'import json,sys; r=json.load(sys.stdin)["jobs"][0]["read"]; p=r["clat_ns"]["percentile"]; print("iops %6.0f p50 %.2f p99 %.2f"%(r["iops"],p["50.000000"]/1e6,p["99.000000"]/1e6))')
  c1=($(cpu)); s1=$(dp); h1=$(pt ssh); d1=$(pt sshd); y1=$(pt delay-relay); f1=$(pt sshfs)
  echo "$r $v: $out busy $(( c1[0]-c0[0] )) iowait $(( c1[1]-c0[1] )) strata $((s1-s0)) ssh $((h1-h0)) sshd $((d1-d0)) relay $((y1-y0)) sshfs $((f1-f0))"
  if [[ $v == strata* ]]; then target/release/strata stats $M 2>/dev/null | grep -E "^(reads|read_us|origin_wait_us|origin_read_us|origin_requests) " | awk "{print \$1, \$2}" | tr "\n" " " | fold -w 400; echo; target/release/strata umount $M; fi
 done
done
bench/slow-origin.sh down $SS >/dev/null
