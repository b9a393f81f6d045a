#!/bin/bash
. /tmp/rm/lib.sh
mountfull --ram-size 1M --origin-latency 20ms
for r in 1 2 3; do
  for t in 16 1 2; do
    $BIN umount $M; $BIN mount $O $M --cache-dir $C --cache-size 8G --ram-size 1M --threads $t
    drop; fiof $M/large.bin >/dev/null  # verify pass
    drop; echo -n "threads $t: "; fiof $M/large.bin
  done
  drop; echo -n "local:      "; fiof $L
done
$BIN umount $M
