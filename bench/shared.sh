#!/usr/bin/env bash
# Issue 30's benchmark: reads served by the shared tier against the origin itself and
# against the local disk tier, side by side in one run. The origin is sshfs through
# bench/slow-origin.sh (RTT_MS each way round); the shared tier three memcached
# servers on loopback. For each pattern (sequential 1 MiB reads of a whole file;
# random 128 KiB reads, the same offsets every time), page cache dropped first:
#   none    mount N, fresh cache, no shared tier, reads: every block from the origin
#   origin  mount A, fresh cache, reads: every block from the origin (and put into
#           memcached; A is unmounted, which sends what is queued)
#   shared  mount B, another fresh cache, same reads: every block from memcached
#   disk    mount B again, same reads (its RAM tier, 16M, cannot hold the file)
#   bench/shared.sh [RTT_MS...]        (default: 2 10)
# STRATA_BENCH_MIB: the file's size (default 256); STRATA_BENCH_IOS: random reads (200).
set -euo pipefail
cd "$(dirname "$0")/.."
rtts=("$@")
[ ${#rtts[@]} -gt 0 ] || rtts=(2 10)
mib=${STRATA_BENCH_MIB:-256}
ios=${STRATA_BENCH_IOS:-200}
strata=$PWD/target/release/strata
cargo build --release --locked -q -p strata-cli
command -v fio >/dev/null || { apt-get update -qq && apt-get install -y -qq fio >/dev/null; }
command -v memcached >/dev/null || { apt-get update -qq && apt-get install -y -qq memcached >/dev/null; }
work=$(mktemp -d /var/tmp/strata-shared-bench.XXXXXX)
ports=(11411 11412 11413)
urls=$(printf 'memcached://127.0.0.1:%s,' "${ports[@]}"); urls=${urls%,}
cleanup() {
    for m in n a b; do "$strata" umount "$work/$m" 2>/dev/null || true; done
    bench/slow-origin.sh down "$work/s" >/dev/null 2>&1 || true
    for p in "${ports[@]}"; do [ -f "$work/mc-$p.pid" ] && kill "$(cat "$work/mc-$p.pid")" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/origin" "$work/s" "$work/n" "$work/a" "$work/b"
head -c "$((mib << 20))" /dev/urandom > "$work/origin/file"
for p in "${ports[@]}"; do
    memcached -u root -l 127.0.0.1 -p "$p" -U 0 -m 1024 -I 2m -d -P "$work/mc-$p.pid"
done
flush() {
    for p in "${ports[@]}"; do
        python3 -c "import socket; s=socket.create_connection(('127.0.0.1',$p)); s.sendall(b'flush_all\r\n'); s.recv(100)"
    done
}

# read_once MNT PATTERN: MiB/s and mean latency of one fio pass (page cache dropped).
read_once() {
    local what=(--rw=read --bs=1M)
    [ "$2" = rand ] && what=(--rw=randread --bs=128k --number_ios="$ios" --randrepeat=1 --randseed=42)
    sync; echo 3 > /proc/sys/vm/drop_caches
    fio --name=r --filename="$1/file" "${what[@]}" --ioengine=psync --direct=0 \
        --invalidate=0 --output-format=json |
        python3 -c 'import json,sys; r=json.load(sys.stdin)["jobs"][0]["read"]; print("%.1f %.0f" % (r["bw"] / 1024, r["clat_ns"]["mean"] / 1e3))'
}
mount_fresh() {
    local shared=(--shared-cache "$urls" --shared-namespace bench)
    [ "$1" = n ] && shared=()
    rm -rf "$work/cache-$1"
    "$strata" mount "$work/s" "$work/$1" --cache-dir "$work/cache-$1" --ram-size 16M "${shared[@]}"
}
stat_of() { "$strata" stats "$work/$1" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['stats']['$2'])"; }

for rtt in "${rtts[@]}"; do
    bench/slow-origin.sh up "$work/origin" "$work/s" "$rtt" >/dev/null
    echo
    echo "## sshfs origin at ${rtt} ms, ${mib} MiB file, shared tier: 3 memcached on loopback"
    echo
    echo "| reads | origin, no shared tier (mount N, cold) | origin, shared tier missing (mount A, cold) | shared tier (mount B, cold) | local disk tier (mount B, warm) | miss cost: A / N | shared / origin (B / N) | shared / disk |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
    for pat in seq rand; do
        mount_fresh n
        read -r n_bw n_lat <<< "$(read_once "$work/n" "$pat")"
        "$strata" umount "$work/n"
        flush
        mount_fresh a
        read -r o_bw o_lat <<< "$(read_once "$work/a" "$pat")"
        # Puts sent and dropped (queue full) by the time the read ends; umount then
        # waits up to 3 s for what is queued.
        a_puts=$(stat_of a shared_puts); a_refused=$(stat_of a shared_refused)
        "$strata" umount "$work/a"
        mount_fresh b
        read -r s_bw s_lat <<< "$(read_once "$work/b" "$pat")"
        hits=$(stat_of b shared_hits); origin=$(stat_of b origin_bytes)
        read -r d_bw d_lat <<< "$(read_once "$work/b" "$pat")"
        "$strata" umount "$work/b"
        label="sequential 1 MiB"; [ "$pat" = rand ] && label="random 128 KiB ($ios reads)"
        python3 -c "
n, o, s, d = $n_bw, $o_bw, $s_bw, $d_bw
print(f'| $label | {n:.1f} MiB/s, {$n_lat:.0f} us | {o:.1f} MiB/s, {$o_lat:.0f} us | {s:.1f} MiB/s, {$s_lat:.0f} us | {d:.1f} MiB/s, {$d_lat:.0f} us | {o / n:.2f} | {s / n:.2f} | {s / d:.2f} |')"
        echo "  (mount A at the end of its read: $a_puts blocks put, $a_refused dropped; mount B, cold: $hits blocks from the shared tier, $origin bytes from the origin)" >&2
    done
    bench/slow-origin.sh down "$work/s" >/dev/null
done
