#!/bin/bash
. /tmp/rm/lib.sh
mountfull --ram-size 1M --origin-latency 20ms
a=$($BIN stats --json $M | python3 -c 'import json,sys; s=json.load(sys.stdin)["stats"]; print(s["index_commits"], s["origin_requests"])')
for r in 1 2 3; do
  drop; echo -n "via strata: "; fiof $M/large.bin
  drop; echo -n "local:      "; fiof $L
done
echo "commits, origin requests before: $a after: $($BIN stats --json $M | python3 -c 'import json,sys; s=json.load(sys.stdin)["stats"]; print(s["index_commits"], s["origin_requests"])')"
$BIN umount $M
