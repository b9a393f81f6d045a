#!/usr/bin/env bash
# The side-by-side benchmark suite (see bench/README.md): one command, root needed.
#   bench/suite.sh [--rtts 2,10] [--quick] [other options of bench/suite.py]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prereqs --tests
need=()
command -v fio >/dev/null 2>&1 || need+=(fio)
command -v rclone >/dev/null 2>&1 || need+=(rclone)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
python3 -c "import matplotlib" 2>/dev/null || pip install -q matplotlib
# catfs no longer builds with `cargo install catfs`: bench/catfs/build.sh builds its
# last release with pinned dependencies; if that fails too, the suite leaves it out.
bench/catfs/build.sh >/tmp/catfs-install.log 2>&1 \
    || echo "catfs does not build here (see /tmp/catfs-install.log): left out" >&2
cargo build --release --locked -q -p strata-cli -p strata-bench
args=()
for a in "$@"; do
    case "$a" in
        --quick) args+=(--large-mib 256 --tree-files 2000 --fio-secs 4 --out bench/results/quick) ;;
        *) args+=("$a") ;;
    esac
done
# This VM hands memory back to the host as soon as it is free (virtio-balloon free page
# reporting), and reading a file into such memory ran at 0.4 to 0.5 GB/s against 2.1 to
# 2.7 GB/s into memory freed a moment before. Every cold or warm run allocates its page
# cache anew, a FUSE cache twice over (its file's pages and the mount's), so the figures
# measured the host's timing. Keep freed memory for a minute while the suite runs.
pr=/sys/module/page_reporting/parameters/min_free_ms
if [ -w "$pr" ]; then
    old_pr=$(cat "$pr")
    if echo 60000 > "$pr" 2>/dev/null; then
        trap 'echo "$old_pr" > "$pr"' EXIT
    fi
fi
python3 bench/suite.py "${args[@]}"
