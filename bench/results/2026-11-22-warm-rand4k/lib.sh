BIN=${BIN:-/work/main/target/release/strata}
O=/var/tmp/strata-suite/origin; M=/tmp/ab/mnt; C=/tmp/ab/cache; L=/var/tmp/strata-suite/local/large.bin
fiof() { $PRE fio --name=r --filename=$1 --rw=randread --bs=${2:-4k} --ioengine=psync --runtime=${SECS:-5} --time_based --randrepeat=0 --invalidate=0 --output-format=json | python3 -c 'import json,sys; r=json.load(sys.stdin)["jobs"][0]["read"]; print(int(r["iops"]), r["clat_ns"]["percentile"]["50.000000"]//1000,"us")'; }
settle() { while [ "$($BIN stats --json $M | python3 -c 'import json,sys; print(json.load(sys.stdin)["stats"]["inflight_fill_bytes"])')" != 0 ]; do sleep 0.2; done; }
mountfull() {
  mkdir -p $M; rm -rf $C
  $BIN mount $O $M --cache-dir $C --cache-size 8G "$@"
  PID=$(pgrep -f "strata mount $O" | head -1)
  for p in 1 2 3 4 5 6 7 8; do
    dd if=$M/large.bin of=/dev/null bs=1M 2>/dev/null; settle
    F=$(find $C/objects -type f -size +500M | head -1)
    [ "$(du -k $F | cut -f1)" -ge 1048576 ] && break
  done
  echo "populated after $p passes: $(du -k $F | cut -f1) KiB"
  cat $F > /dev/null
}
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
