#!/bin/bash
# Warm reads through each cache's own copy, side by side on a level field: one large
# file on a local directory (no network: nothing but the cache is measured), cached
# whole by strata, catfs and rclone, then read in turn (page cache dropped before
# each run) next to the local copy, for a few rounds.
#
#   bench/warm-peers.sh DATA_DIR LOCAL_COPY [ROUNDS] [SECS] [BS] [RW]   (RW: fio --rw)
#
# DATA_DIR holds large.bin; LOCAL_COPY is the same file elsewhere on the local disk.
# PEERS_DIR=/dev/shm keeps the caches in memory (each cache's read path alone);
# PEERS_OTHER=PATH adds `strata-other`, another strata build over the same cache
# (PEERS_OTHER_ARGS: extra mount options for it; PEERS_OTHER=target/release/strata
# with them compares options on one build);
# PEERS=... picks the caches (default "strata catfs rclone").
# Needs root, fio, catfs (bench/catfs/build.sh) and rclone.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
data=$(realpath "$1"); local_copy=$(realpath "$2")
rounds=${3:-3}; secs=${4:-5}; bs=${5:-4k}; rw=${6:-randread}
strata=$here/target/release/strata
[ -x "$strata" ] || cargo build --release --locked -q -p strata-cli --manifest-path "$here/Cargo.toml"
work=$(mktemp -d "${PEERS_DIR:-/var/tmp}/strata-peers.XXXXXX")  # PEERS_DIR=/dev/shm: caches in memory
cleanup() {
    for m in strata strata-other; do "$strata" umount "$work/$m" >/dev/null 2>&1 || true; done
    for m in catfs rclone; do fusermount -u "$work/$m" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT
peers=${PEERS:-strata catfs rclone}
[ -n "${PEERS_OTHER:-}" ] && peers="strata strata-other ${peers/strata/}"
mkdir -p "$work"/{strata,strata-other,catfs,rclone}

. "$here/bench/lib.sh"
wait_mounted() { for _ in $(seq 100); do mountpoint -q "$1" && return; sleep 0.1; done; echo "$1: not mounted" >&2; exit 1; }
mount_one() { # NAME
    case $1 in
        strata) "$strata" mount "$data" "$work/strata" --cache-dir "$work/cache-strata" ;;
        strata-other) "$PEERS_OTHER" mount "$data" "$work/strata-other" --cache-dir "$work/cache-strata" \
                          ${PEERS_OTHER_ARGS:-} ;;
        catfs) mkdir -p "$work/cache-catfs"   # catfs stays in the foreground
               catfs "$data" "$work/cache-catfs" "$work/catfs" >>"$work/catfs.log" 2>&1 & ;;
        rclone) rclone mount "$data" "$work/rclone" --vfs-cache-mode full --cache-dir "$work/cache-rclone" \
                    --vfs-cache-max-size 8G --daemon --log-file "$work/rclone.log" ;;
    esac
    wait_mounted "$work/$1"
}
umount_one() { # NAME
    case $1 in
        strata*) "$strata" umount "$work/$1" ;;
        *) fusermount -u "$work/$1"; sleep 1 ;;
    esac
}

# Fill each cache with the whole file.
mount_one strata
pass=$(strata_fill "$strata" "$work/strata" "$work/strata/large.bin")
umount_one strata
for m in catfs rclone; do
    [[ " $peers " == *" $m "* ]] || continue
    mount_one $m
    cat "$work/$m/large.bin" > /dev/null
    sleep 3   # both write their copy behind the reader
    cat "$work/$m/large.bin" > /dev/null
    umount_one $m
done
echo "filled: strata in $pass passes$(for m in catfs rclone; do [ -d "$work/cache-$m" ] && echo -n ", $m $(du -sh "$work/cache-$m" | cut -f1)"; done)"

for r in $(seq "$rounds"); do
    echo "$r local   $(fio_read "$local_copy" "$rw" "$bs" "$secs")"
    for m in $peers; do
        mount_one $m
        echo "$r $(printf %-7s $m) $(fio_read "$work/$m/large.bin" "$rw" "$bs" "$secs")"
        umount_one $m
    done
done
