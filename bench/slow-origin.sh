#!/usr/bin/env bash
# A real slow origin for benchmarks: a directory served over SSH from a network
# namespace of our own, through a TCP relay that adds a round-trip time (this kernel
# has no tc netem), optionally capped in bandwidth with tc tbf, mounted with sshfs.
#
#   bench/slow-origin.sh up   DATA_DIR SSHFS_MOUNTPOINT [RTT_MS] [RATE (tc, e.g. 200mbit)]
#   bench/slow-origin.sh down SSHFS_MOUNTPOINT
#
# Needs root. Installs openssh-server, sshfs and iproute2 if missing.
set -euo pipefail
NS=strata-origin
HOST_IF=strata-h
NS_IF=strata-o
HOST_IP=10.77.0.1
NS_IP=10.77.0.2
STATE=/run/strata-bench
RELAY_PORT=2222
here=$(cd "$(dirname "$0")/.." && pwd)

install_deps() {
    local need=()
    command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
    command -v sshfs >/dev/null 2>&1 || need+=(sshfs)
    command -v ip >/dev/null 2>&1 || need+=(iproute2)
    command -v tc >/dev/null 2>&1 || need+=(iproute2)
    if [ ${#need[@]} -gt 0 ]; then
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
}

down() {
    local mnt=${1:-}
    # /proc/mounts rather than mountpoint(1), which fails on a dead sshfs (EIO).
    while [ -n "$mnt" ] && awk -v m="$(realpath -m "$mnt")" '$2 == m {f=1} END {exit !f}' /proc/mounts; do
        fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt" || break
    done
    [ -f $STATE/relay.pid ] && kill "$(cat $STATE/relay.pid)" 2>/dev/null || true
    [ -f $STATE/sshd.pid ] && kill "$(cat $STATE/sshd.pid)" 2>/dev/null || true
    ip link del $HOST_IF 2>/dev/null || true
    ip netns del $NS 2>/dev/null || true
    rm -f $STATE/relay.pid $STATE/sshd.pid
}

up() {
    local data=$1 mnt=$2 rtt_ms=${3:-2} rate=${4:-}
    install_deps
    down "$mnt"
    mkdir -p $STATE "$mnt"
    chmod 700 $STATE
    ip netns add $NS
    ip link add $HOST_IF type veth peer name $NS_IF
    ip link set $NS_IF netns $NS
    ip addr add $HOST_IP/24 dev $HOST_IF
    ip link set $HOST_IF up
    ip netns exec $NS ip addr add $NS_IP/24 dev $NS_IF
    ip netns exec $NS ip link set $NS_IF up
    ip netns exec $NS ip link set lo up
    if [ -n "$rate" ]; then
        # Both directions: host → origin on the host side, origin → host inside.
        tc qdisc add dev $HOST_IF root tbf rate "$rate" burst 1mb latency 100ms
        ip netns exec $NS tc qdisc add dev $NS_IF root tbf rate "$rate" burst 1mb latency 100ms
    fi
    [ -f $STATE/host_key ] || ssh-keygen -q -t ed25519 -N '' -f $STATE/host_key
    [ -f $STATE/client_key ] || ssh-keygen -q -t ed25519 -N '' -f $STATE/client_key
    cp $STATE/client_key.pub $STATE/authorized_keys
    mkdir -p /run/sshd
    cat > $STATE/sshd_config <<CFG
ListenAddress $NS_IP
Port 22
HostKey $STATE/host_key
PidFile $STATE/sshd.pid
AuthorizedKeysFile $STATE/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
StrictModes no
Subsystem sftp internal-sftp
CFG
    ip netns exec $NS /usr/sbin/sshd -f $STATE/sshd_config
    local host=$NS_IP port=22
    if [ "$rtt_ms" != 0 ]; then
        cargo build --release --locked -q -p strata-bench --manifest-path "$here/Cargo.toml"
        local half_us=$(( rtt_ms * 1000 / 2 ))
        nohup "$here/target/release/delay-relay" 127.0.0.1:$RELAY_PORT $NS_IP:22 $half_us \
            >/dev/null 2>&1 &
        echo $! > $STATE/relay.pid
        host=127.0.0.1
        port=$RELAY_PORT
    fi
    for _ in $(seq 50); do
        (exec 3<>/dev/tcp/$host/$port) 2>/dev/null && break
        sleep 0.1
    done
    # No sshfs caching of its own beyond the defaults a user gets.
    sshfs -p $port "root@$host:$(realpath "$data")" "$mnt" \
        -o IdentityFile=$STATE/client_key,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null \
        -o reconnect,ServerAliveInterval=15
    echo "slow origin: $data over ssh with ${rtt_ms} ms RTT${rate:+, $rate} at $mnt"
}

case "${1:-}" in
    up) shift; up "$@" ;;
    down) shift; down "$@" ;;
    *) echo "usage: $0 up DATA_DIR MOUNTPOINT [RTT_MS] [RATE] | down MOUNTPOINT" >&2; exit 2 ;;
esac
