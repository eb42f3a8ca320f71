#!/usr/bin/env bash
# Moves a directory store of the benchmark corpus into object storage: puts
# every image of CORPUS_DIR (*.ext3, *.sif, *.sqfs) into a local store, then
# `imgstore copy --from` that store into s3s-fs on loopback, then
# `verify --read-data` on the copy and a get of every image compared with its
# file. Prints wall time and peak RSS (GNU time) of each step and the
# stats of both stores.
#
#   benches/copy_to_s3.sh BIN CORPUS_DIR
#
# Needs s3s-fs (.ci/run installs it) and python3. Uses ${BENCH_DIR:-/var/tmp}.
set -euo pipefail
bin=$(realpath "$1"); corpus=$(realpath "$2")
s3s=${IMGSTORE_S3S_FS:-$HOME/.cache/s3s-fs/bin/s3s-fs}
work=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}")
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/s3/corpus"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$s3s" --host 127.0.0.1 --port "$port" --access-key benchkey --secret-key benchsecret "$work/s3" >"$work/s3s.log" 2>&1 &
server=$!
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
export IMGSTORE_S3_ENDPOINT=http://127.0.0.1:$port IMGSTORE_S3_ALLOW_HTTP=1
dir=("$bin" --store "$work/store" --index-dir "$work/index-dir")
s3=("$bin" --store s3://corpus/store --index-dir "$work/index-s3")
timed() { local what=$1; shift; /usr/bin/time -f "$what: %e s wall, %M KiB peak RSS" "$@"; }
"${dir[@]}" -q init
"${s3[@]}" -q init
images=$(ls "$corpus" | grep -E '\.(ext3|sif|sqfs)$')
for f in $images; do
    timed "put $f (directory)" "${dir[@]}" -q put "corpus/${f%%.*}:${f##*.}" "$corpus/$f"
done
timed "copy of every image into s3s-fs" "${s3[@]}" copy --from "$work/store"
timed "verify --read-data on the copy" "${s3[@]}" verify --read-data
for f in $images; do
    "${s3[@]}" -q get "corpus/${f%%.*}:${f##*.}" -o - | cmp -s - "$corpus/$f" && echo "get $f from the copy: same bytes" || { echo "get $f from the copy: OTHER BYTES" >&2; exit 1; }
done
echo "directory store:"; "${dir[@]}" stats
echo "copy in s3s-fs:"; "${s3[@]}" stats
echo "on disk: directory $(du -sb "$work/store" | cut -f1) B, s3s-fs bucket $(du -sb "$work/s3/corpus" | cut -f1) B"
