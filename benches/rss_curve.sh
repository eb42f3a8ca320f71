#!/usr/bin/env bash
# RSS of one long put against the bytes it has read so far: does the put's
# memory level off, or grow with the image? Streams GIB GiB of new,
# compressible bytes (benches/unique_stream.py over SEED, every chunk new
# and through zstd) into a fresh store and samples the put's /proc status
# every SECONDS s: bytes read (rchar), VmRSS, VmHWM, the [heap] mapping and
# the thread count, as tab-separated lines on stdout. Usage:
#   benches/rss_curve.sh WORKDIR SEED GIB [SECONDS]
# e.g. tar cf - /usr/lib | head -c 1G > seed.tar; benches/rss_curve.sh /work/rss seed.tar 64 5
# Needs about 0.4 x GIB of free disk for packs (the seed stores ~40%).
set -euo pipefail
WORK=$1 SEED=$2 GIB=$3 EVERY=${4:-5}
BIN=${IMGSTORE_BIN:-${CARGO_TARGET_DIR:-target}/release/imgstore}
HERE=$(cd "$(dirname "$0")" && pwd)
export IMGSTORE_STORE=$WORK/store IMGSTORE_INDEX_DIR=$WORK/index
rm -rf "$IMGSTORE_STORE" "$IMGSTORE_INDEX_DIR"
"$BIN" init -q
[ "$(id -u)" = 0 ] && sync && echo 3 > /proc/sys/vm/drop_caches
python3 "$HERE/unique_stream.py" "$GIB" "$SEED" | "$BIN" put -q "rss/curve:${GIB}g" - &
sleep 1
pid=$(pgrep -n -f "put -q rss/curve:${GIB}g" || true)
[ -n "$pid" ] || { echo "put did not start" >&2; exit 1; }
printf 'secs\tread_mib\trss_mib\thwm_mib\theap_mib\tthreads\n'
start=$(date +%s)
while [ -r "/proc/$pid/status" ]; do
    read_b=$(awk '/^rchar/ {print $2}' "/proc/$pid/io" 2>/dev/null || echo 0)
    st=$(awk '/^VmRSS/ {r=$2} /^VmHWM/ {h=$2} /^Threads/ {t=$2} END {print r, h, t}' "/proc/$pid/status" 2>/dev/null || true)
    heap=$(awk '/\[heap\]/ {f=1; next} f && /^Rss:/ {print $2; exit}' "/proc/$pid/smaps" 2>/dev/null || echo 0)
    [ -n "$st" ] || break
    echo "$(( $(date +%s) - start )) ${read_b:-0} $st ${heap:-0}" |
        awk '{printf "%d\t%d\t%.1f\t%.1f\t%.1f\t%d\n", $1, $2 / 1048576, $3 / 1024, $4 / 1024, $6 / 1024, $5}'
    sleep "$EVERY"
done
wait
