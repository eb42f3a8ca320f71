#!/usr/bin/env bash
# Interleaved A/B of imgstore binaries on one pair of images, cold cache:
# for each round and each binary, a fresh store, then a put of NEW (every
# chunk new), a put of KNOWN (mostly the same bytes), a get of KNOWN to a
# file, and `cp KNOWN && sync` in the same minute. As root the page cache is
# dropped before each timed command. Prints wall s, user s, sys s and peak
# RSS KiB of each (GNU time), and the store's bytes after each put. Usage:
#   benches/ab.sh ROUNDS NEW_IMAGE KNOWN_IMAGE BIN...
# e.g. benches/ab.sh 3 c00-init.sqfs c01-edit.sqfs /tmp/imgstore-old target/release/imgstore
set -euo pipefail
rounds=$1 new=$2 known=$3
shift 3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
drop() { sync; [ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches || true; }
timed() { /usr/bin/time -f "%e %U %S %M" -o "$work/time" "$@" > /dev/null; cat "$work/time"; }
for r in $(seq 1 "$rounds"); do
    for bin in "$@"; do
        rm -rf "$work/store" "$work/index" "$work/out" "$work/cp"
        mkdir "$work/store"
        run=("$bin" --store "$work/store" --index-dir "$work/index" -q)
        "${run[@]}" init
        drop; a=$(timed "${run[@]}" put lab/ab:new "$new")
        a="$a | store $(du -sb "$work/store" | cut -f1) B"
        drop; b=$(timed "${run[@]}" put lab/ab:known "$known")
        b="$b | store $(du -sb "$work/store" | cut -f1) B"
        drop; c=$(timed "${run[@]}" get lab/ab:known -o "$work/out")
        cmp -s "$work/out" "$known" || { echo "$bin: get gave other bytes" >&2; exit 1; }
        drop; d=$(timed sh -c "cp '$known' '$work/cp' && sync '$work/cp'")
        echo "round $r $bin | new put $a | known put $b | get $c | cp+sync $d"
    done
done
