#!/usr/bin/env bash
# GC at scale: N small synthetic images (each a shared 1 MiB base plus 64 KiB
# of its own), then rm of every other one, then gc twice, each after a
# `gc --dry-run`; prints wall time and peak RSS of each run (GNU time). Usage:
#   benches/gc_scale.sh [N] [WORKDIR]      (default 1000, a temp dir)
# Needs the release binary: cargo build --release --bin imgstore
set -euo pipefail
N=${1:-1000}
WORK=${2:-$(mktemp -d)}
BIN=${IMGSTORE_BIN:-${CARGO_TARGET_DIR:-target}/release/imgstore}
export IMGSTORE_STORE=$WORK/store IMGSTORE_INDEX_DIR=$WORK/index
rm -rf "$IMGSTORE_STORE" "$IMGSTORE_INDEX_DIR"
"$BIN" init -q
head -c 1048576 /dev/urandom > "$WORK/base"
start=$(date +%s)
for i in $(seq 1 "$N"); do
    { cat "$WORK/base"; head -c 65536 /dev/urandom; } > "$WORK/img"
    "$BIN" put -q "scale/app:c$i" "$WORK/img"
done
echo "put $N images in $(( $(date +%s) - start ))s"
for i in $(seq 1 2 "$N"); do echo "scale/app:c$i"; done | xargs -n 200 "$BIN" rm -q
for run in 1 2; do
    /usr/bin/time -f "gc --dry-run $run: %e s wall, %M KiB peak RSS" "$BIN" gc --grace 0s --dry-run >/dev/null
    /usr/bin/time -f "gc run $run: %e s wall, %M KiB peak RSS" "$BIN" gc --grace 0s
done
du -sh "$IMGSTORE_STORE"
