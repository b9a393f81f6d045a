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
if ! command -v catfs >/dev/null 2>&1; then
    # catfs builds against libfuse 2; if it no longer builds, the suite leaves it out.
    command -v pkg-config >/dev/null 2>&1 || apt-get install -y -qq pkg-config >/dev/null
    dpkg -s libfuse-dev >/dev/null 2>&1 || apt-get install -y -qq libfuse-dev >/dev/null || true
    cargo install catfs --locked >/tmp/catfs-install.log 2>&1 \
        || echo "catfs does not build here (see /tmp/catfs-install.log): left out" >&2
fi
cargo build --release --locked -q -p strata-cli -p strata-bench
args=()
for a in "$@"; do
    case "$a" in
        --quick) args+=(--large-mib 256 --tree-files 2000 --fio-secs 4 --out bench/results/quick) ;;
        *) args+=("$a") ;;
    esac
done
exec python3 bench/suite.py "${args[@]}"
