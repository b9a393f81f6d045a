#!/bin/bash
# What a cold read costs strata itself, with the origin's part held fixed: strata over
# a local directory with --origin-latency, each run on an empty cache, page cache
# dropped. The engine times every reader-issued origin request; what fio waits
# beyond that (strata's own cost: FUSE, hand-offs, filling) is printed as `own`.
# Variants of the mount options run in turn, round by round, so drift hits them alike.
#
#   bench/cold-cost.sh DATA_DIR [ROUNDS] [SECS] [BS] [LATENCY] [VARIANT...]
#
# DATA_DIR holds large.bin. A VARIANT is a quoted string of extra `strata mount`
# options; "" is the defaults, e.g.
#   bench/cold-cost.sh /data 3 8 128k 2ms "" "--origin-timeout 0" "--commit-interval 1s"
# COST_DIR=/dev/shm puts the cache in memory (its syncs cost nothing there).
# A variant that begins with bin=PATH runs that strata build (before and after a
# change): "bin=/tmp/old-strata" "" compares the old build with this one.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
data=$(realpath "$1")
rounds=${2:-3}; secs=${3:-8}; bs=${4:-128k}; lat=${5:-2ms}
shift $(($# < 5 ? $# : 5))
variants=("$@")
[ ${#variants[@]} -eq 0 ] && variants=("")
strata=$here/target/release/strata
[ -x "$strata" ] || cargo build --release --locked -q -p strata-cli --manifest-path "$here/Cargo.toml"
work=$(mktemp -d "${COST_DIR:-/var/tmp}/strata-cold-cost.XXXXXX")  # COST_DIR=/dev/shm: cache in memory, syncs free
cleanup() { umount "$work/mnt" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/mnt"
. "$here/bench/lib.sh"

for r in $(seq "$rounds"); do
    for v in "${variants[@]}"; do
        rm -rf "$work/cache"
        bin=$strata opts=$v
        if [[ $v == bin=* ]]; then
            bin=${v%% *}; bin=${bin#bin=}; opts=${v#* }; [ "$opts" = "$v" ] && opts=""
        fi
        # shellcheck disable=SC2086  # a variant is several words
        "$bin" mount "$data" "$work/mnt" --cache-dir "$work/cache" --origin-latency "$lat" $opts
        line=$(fio_read "$work/mnt/large.bin" randread "$bs" "$secs")
        stats=$("$bin" stats --json "$work/mnt")
        "$bin" umount "$work/mnt"
        mean=$(sed -E 's/.*mean +([0-9]+) us.*/\1/' <<<"$line")
        python3 -c '
import json, sys
r, v, line, mean = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
s = json.load(sys.stdin)["stats"]
n = s["origin_requests"] - s["readahead_requests"]
read, wait, origin = (s[k] / n if n else float("nan") for k in ("read_us", "origin_wait_us", "origin_read_us"))
print(f"{r} {v:28} {line}; per origin request ({n}): read {read:.0f} us, "
      f"wait {wait:.0f}, origin {origin:.0f}; own {mean - origin:.0f} us")' "$r" "${v:-defaults}" "$line" "$mean" <<<"$stats"
    done
done
