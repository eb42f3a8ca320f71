#!/usr/bin/env bash
# Known-put A/B, cold: as root the page cache is dropped before each put
# (not otherwise). Usage:
#   benches/ab_known.sh ROUNDS NEW_IMAGE KNOWN_IMAGE BIN...
# each binary has its own store holding NEW; each round puts KNOWN
# cold under a fresh tag, then removes that tag and the manifest it wrote, so
# every round plans a delta against NEW again.
set -euo pipefail
rounds=$1 new=$2 known=$3; shift 3
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
drop() { sync; [ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches || true; }
for bin in "$@"; do
  b=$(basename $bin); S=$W/$b
  $bin --store $S/store --index-dir $S/index -q init
  $bin --store $S/store --index-dir $S/index -q put lab/ab:new "$new"
  touch $S/marker
done
for r in $(seq 1 $rounds); do
  for bin in "$@"; do
    b=$(basename $bin); S=$W/$b
    drop
    /usr/bin/time -f "%e %U %S %M" -o $W/t $bin --store $S/store --index-dir $S/index -q put lab/ab:k$r "$known"
    echo "round $r $b known put $(cat $W/t) manifest $(find $S/store/manifests -type f -newer $S/marker -printf '%s ')"
    $bin --store $S/store --index-dir $S/index -q rm lab/ab:k$r
    find $S/store/manifests -type f -newer $S/marker -delete
  done
done
