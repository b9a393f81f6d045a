#!/usr/bin/env bash
# Builds and installs catfs 0.8.0 (the last release, 2019) for the suite.
#
# `cargo install catfs` no longer builds: catfs asks for xattr 0.2, whose
# `libc::ENOATTR` is gone from libc 0.2.190 on, and its own code trips a lint
# (let_underscore_lock) that later compilers deny. So the crate is fetched as
# published (checksum checked), built with the lock file beside this script (every
# dependency pinned, libc at 0.2.185) and with lints capped at warnings. catfs's
# code is not changed. It is built with line tables: catfs's error type walks the
# backtrace looking for its own source file and panics on a frame with no symbol,
# which, without debug info, it reaches at the first error it logs (seen here as a
# crash in the middle of a random-read run).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=0.8.0
sum=e8c53b23e06cda187a4a284ba82592b4990b5b0252c07d52f386403fad48f97c
if command -v catfs >/dev/null 2>&1; then
    exit 0
fi
command -v pkg-config >/dev/null 2>&1 || apt-get install -y -qq pkg-config >/dev/null
dpkg -s libfuse-dev >/dev/null 2>&1 || apt-get install -y -qq libfuse-dev >/dev/null
src=$(mktemp -d /var/tmp/catfs-src.XXXXXX)
trap 'rm -rf "$src"' EXIT
curl -sSfL "https://static.crates.io/crates/catfs/catfs-$version.crate" -o "$src/catfs.crate"
echo "$sum  $src/catfs.crate" | sha256sum -c --quiet
tar -xzf "$src/catfs.crate" -C "$src"
cp "$here/Cargo.lock" "$src/catfs-$version/Cargo.lock"
RUSTFLAGS="--cap-lints warn" CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo install --quiet --locked --path "$src/catfs-$version"
