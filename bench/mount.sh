#!/usr/bin/env bash
# Benchmark through a strata mount over a real slow origin (sshfs from a network
# namespace, 2 ms RTT by default). Options: see bench/mount_bench.py --help.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p strata-cli -p strata-bench
exec python3 bench/mount_bench.py "$@"
