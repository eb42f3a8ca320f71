#!/usr/bin/env bash
# Peak RSS of put and get against image size: for each SIZE (GiB), a dense
# image of random bytes (nothing for zstd or hole skipping to save) is put
# into a fresh store and got back to /dev/null (the whole-image check still
# runs) and to a file; then the same image with its first 4 KiB changed is
# put under the same name from a pipe (a mostly-known put whose manifest is
# a delta against the first's) and got back. Prints wall time, CPU time and
# peak RSS of each (GNU time). Usage:
#   benches/rss_size.sh [WORKDIR] [SIZE_GIB...]   (default: a temp dir, 1 16)
# Needs about 2 x the largest SIZE of free disk and the release binary:
#   cargo build --release --bin imgstore
set -euo pipefail
WORK=${1:-$(mktemp -d)}
shift || true
[ $# -eq 0 ] && set -- 1 16
BIN=${IMGSTORE_BIN:-${CARGO_TARGET_DIR:-target}/release/imgstore}
export IMGSTORE_STORE=$WORK/store IMGSTORE_INDEX_DIR=$WORK/index
for g in "$@"; do
    rm -rf "$IMGSTORE_STORE" "$IMGSTORE_INDEX_DIR" "$WORK/img"
    "$BIN" init -q
    head -c "$((g << 30))" /dev/urandom > "$WORK/img"
    sync
    [ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches
    /usr/bin/time -f "put ${g} GiB: %e s wall, %U+%S s CPU, %M KiB peak RSS" \
        "$BIN" put -q "rss/app:${g}g" "$WORK/img"
    [ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches
    { head -c 4096 /dev/urandom; tail -c +4097 "$WORK/img"; } | /usr/bin/time \
        -f "put ${g} GiB, next commit (delta manifest): %e s wall, %U+%S s CPU, %M KiB peak RSS" \
        "$BIN" put -q "rss/app:${g}g-next" -
    rm -f "$WORK/img"
    [ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches
    /usr/bin/time -f "get ${g} GiB, next commit (delta manifest): %e s wall, %U+%S s CPU, %M KiB peak RSS" \
        "$BIN" get -q "rss/app:${g}g-next" -o - > /dev/null
    [ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches
    /usr/bin/time -f "get ${g} GiB: %e s wall, %U+%S s CPU, %M KiB peak RSS" \
        "$BIN" get -q "rss/app:${g}g" -o - > /dev/null
    [ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches
    /usr/bin/time -f "get ${g} GiB to a file: %e s wall, %U+%S s CPU, %M KiB peak RSS" \
        "$BIN" get -q "rss/app:${g}g" -o "$WORK/out"
    rm -f "$WORK/out"
done
rm -rf "$IMGSTORE_STORE" "$IMGSTORE_INDEX_DIR"
