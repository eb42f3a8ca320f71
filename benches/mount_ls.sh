#!/usr/bin/env bash
# `ls -l` through `imgstore mount` of a store with N small images (20 names,
# N/20 tags each, 16 KiB of random bytes apiece). Prints the time until the
# mount answers, then `ls -lR` of the whole tree right after (cold: the
# kernel has no names or attributes cached), again at once (warm), again
# after the 1 s refresh, and a `stat` of one file after the refresh. Needs
# root (or fusermount3) and /dev/fuse. Usage:
#   benches/mount_ls.sh BIN [N=1000] [PUT_BIN=BIN]
# PUT_BIN makes the store (any build that writes this format: put is not
# what is measured). With KEEP=DIR the store is made in DIR once and reused
# by later runs (1,000 puts take minutes).
set -euo pipefail
bin=$(realpath "$1"); n=${2:-1000}; put_bin=$(realpath "${3:-$1}")
work=$(mktemp -d)
cleanup() {
    [ -n "${mnt_pid:-}" ] && kill "$mnt_pid" 2>/dev/null && wait "$mnt_pid" 2>/dev/null || true
    mountpoint -q "$work/m" 2>/dev/null && umount -l "$work/m"
    rm -rf "$work"
}
trap cleanup EXIT
keep=${KEEP:-$work}
export IMGSTORE_STORE=$keep/store IMGSTORE_INDEX_DIR=$keep/index
if [ ! -e "$keep/made-$n" ]; then
    rm -rf "$IMGSTORE_STORE" "$IMGSTORE_INDEX_DIR"
    "$put_bin" -q init
    t=$(date +%s)
    for i in $(seq 0 $((n - 1))); do
        head -c 16384 /dev/urandom | "$put_bin" -q put "scale/app$((i % 20)):t$((i / 20))" -
    done
    echo "made $n images in $(( $(date +%s) - t )) s"
    touch "$keep/made-$n"
fi
secs() { local now=$EPOCHREALTIME; python3 -c 'import sys; print(f"{float(sys.argv[2])-float(sys.argv[1]):.3f}")' "$1" "$now"; }
mkdir "$work/m"
t=$EPOCHREALTIME
"$bin" -q mount "$work/m" 2>"$work/mount.log" & mnt_pid=$!
for _ in $(seq 2000); do [ -d "$work/m/by-id" ] && break; sleep 0.01; done
echo "mount answers after:       $(secs "$t") s"
t=$EPOCHREALTIME; lines=$(ls -lR "$work/m" | wc -l); echo "ls -lR, cold ($lines lines):  $(secs "$t") s"
t=$EPOCHREALTIME; ls -lR "$work/m" >/dev/null; echo "ls -lR, warm:              $(secs "$t") s"
sleep 1.2
t=$EPOCHREALTIME; ls -lR "$work/m" >/dev/null; echo "ls -lR, after the refresh: $(secs "$t") s"
sleep 1.2
t=$EPOCHREALTIME; stat "$work/m/scale/app7/t3.img" >/dev/null; echo "stat of one file, after the refresh: $(secs "$t") s"
echo "mount peak RSS: $(awk '/VmHWM/ {print $2}' "/proc/$mnt_pid/status") KiB"
