#!/usr/bin/env bash
# Reading an image through `imgstore mount` against `imgstore get` of it, in
# the same run: the first SIZE_MIB of IMAGE is put (from a pipe, so no copy
# is written), then
#   1. `imgstore get` to a file (then removed),
#   2. the same image read sequentially through the mount (`cat > /dev/null`),
#   3. the first byte of a second, cold image (another put of a different
#      slice) through the mount,
# and the mount process's peak RSS (VmHWM) after those reads; then 8 more
# images (192 MiB each) read through the mount at once, and the peak RSS. Needs root or
# fusermount3, and /dev/fuse.
#
#   benches/mount.sh BIN IMAGE [SIZE_MIB=1536]
set -euo pipefail
bin=$(realpath "$1"); image=$2; size=${3:-1536}
work=$(mktemp -d)
cleanup() {
    [ -n "${mnt_pid:-}" ] && kill "$mnt_pid" 2>/dev/null && wait "$mnt_pid" 2>/dev/null || true
    mountpoint -q "$work/m" 2>/dev/null && umount -l "$work/m"
    rm -rf "$work"
}
trap cleanup EXIT
export IMGSTORE_STORE=$work/store IMGSTORE_INDEX_DIR=$work/index
"$bin" -q init
head -c "${size}M" "$image" | "$bin" -q put bench/a:v1 -
# A different slice (past the first), so no frame of it is in any cache.
dd if="$image" bs=1M skip="$size" count=64 status=none | "$bin" -q put bench/b:v1 -
# Seconds since $1 (an $EPOCHREALTIME), read after the timed command ends.
secs() { local now=$EPOCHREALTIME; python3 -c 'import sys; print(f"{float(sys.argv[2])-float(sys.argv[1]):.4f}")' "$1" "$now"; }
t=$EPOCHREALTIME; "$bin" -q get bench/a:v1 -o "$work/got.img"; get_s=$(secs "$t")
rm -f "$work/got.img"
mkdir "$work/m"
"$bin" -q mount "$work/m" 2>"$work/mount.log" & mnt_pid=$!
for _ in $(seq 200); do [ -d "$work/m/by-id" ] && break; sleep 0.05; done
t=$EPOCHREALTIME; head -c1 "$work/m/bench/b/v1.img" >/dev/null; first_ms=$(python3 -c "print(round(($(secs "$t"))*1000))")
t=$EPOCHREALTIME; cat "$work/m/bench/a/v1.img" >/dev/null; mount_s=$(secs "$t")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$mnt_pid/status")
# 8 more images (192 MiB slices further in), read through the mount at once.
for i in 0 1 2 3 4 5 6 7; do
    dd if="$image" bs=1M skip=$(( size + 64 + i * 192 )) count=192 status=none | "$bin" -q put bench/p:$i -
done
for _ in $(seq 100); do [ -e "$work/m/bench/p/7.img" ] && break; sleep 0.05; done
t=$EPOCHREALTIME
for i in 0 1 2 3 4 5 6 7; do cat "$work/m/bench/p/$i.img" >/dev/null & done; wait $(jobs -p | grep -v "^$mnt_pid$")
eight_s=$(secs "$t")
hwm8=$(awk '/VmHWM/ {print $2}' "/proc/$mnt_pid/status")
# How much of each is zero runs (read without I/O): say what was measured.
zeros() { "$bin" --json inspect "$1" | python3 -c 'import json,sys; d=json.load(sys.stdin); z=100*d["zero_bytes"]/max(d["size"],1); print("%.0f%%" % z)'; }
echo "zero runs: bench/a:v1 $(zeros bench/a:v1), bench/p:0..7 $(for i in 0 1 2 3 4 5 6 7; do zeros bench/p:$i; done | tr '\n' ' ')"
python3 - "$size" "$get_s" "$mount_s" "$first_ms" "$hwm" "$eight_s" "$hwm8" <<'PY'
import sys
size, get_s, mount_s, first_ms, hwm = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], int(sys.argv[5])
eight_s, hwm8 = float(sys.argv[6]), int(sys.argv[7])
mib = size
print(f"image: {size} MiB")
print(f"get to a file:           {get_s:.2f} s  {mib/get_s:.0f} MiB/s")
print(f"sequential read, mount:  {mount_s:.2f} s  {mib/mount_s:.0f} MiB/s  ({get_s/mount_s:.2f}x get's speed)")
print(f"first byte, cold image:  {first_ms} ms")
print(f"mount peak RSS:          {hwm/1024:.0f} MiB")
print(f"8 x 192 MiB read at once: {eight_s:.2f} s  {8*192/eight_s:.0f} MiB/s; mount peak RSS then {hwm8/1024:.0f} MiB")
PY
