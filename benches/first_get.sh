#!/usr/bin/env bash
# First get on a new host vs a warm one, on a store in object storage.
#
# Starts s3s-fs on a loopback port, puts N commits of one image (each a few
# edits of the last) into s3://bench/store, then gets the newest image twice
# with a fresh local index directory (a host that never saw the store) and
# once more with that now-warm index. Prints wall time, requests and bytes
# fetched for each.
#
#   benches/first_get.sh BIN [N=200] [SIZE_MIB=64]
#
# Needs s3s-fs (`.ci/run` installs it at ~/.cache/s3s-fs/bin/s3s-fs) and
# python3.
set -euo pipefail
bin=$(realpath "$1"); n=${2:-200}; size=${3:-64}
s3s=${IMGSTORE_S3S_FS:-$HOME/.cache/s3s-fs/bin/s3s-fs}
work=$(mktemp -d); trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/s3/bench"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$s3s" --host 127.0.0.1 --port "$port" --access-key benchkey --secret-key benchsecret "$work/s3" >"$work/s3s.log" 2>&1 &
server=$!
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
export IMGSTORE_S3_ENDPOINT=http://127.0.0.1:$port IMGSTORE_S3_ALLOW_HTTP=1
export IMGSTORE_STORE=s3://bench/store IMGSTORE_INDEX_DIR=$work/index-putter
"$bin" -q init
python3 - "$work/img" "$size" <<'PY'
import os, random, sys
random.seed(1)
words = [b"cuda", b"lib", b"init", b"blas", b"fft", b"torch", b"np", b"def"]
out = bytearray()
while len(out) < int(sys.argv[2]) << 20:
    out += random.randbytes(65536) if random.random() < 0.5 else b" ".join(random.choice(words) for _ in range(12000))
open(sys.argv[1], "wb").write(out[: int(sys.argv[2]) << 20])
PY
start=$(date +%s)
for i in $(seq 1 "$n"); do
    # A commit: three 4 KiB rewrites at random places.
    python3 - "$work/img" "$i" <<'PY'
import os, random, sys
random.seed(int(sys.argv[2]))
with open(sys.argv[1], "r+b") as f:
    size = os.fstat(f.fileno()).st_size
    for _ in range(3):
        f.seek(random.randrange(size - 4096)); f.write(random.randbytes(4096))
PY
    "$bin" -q put "lab/app:c$i" "$work/img"
done
echo "put $n images of $size MiB in $(( $(date +%s) - start )) s"
report() {
    python3 - "$@" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
r = d["requests"]
total = sum(r[k] for k in ("put", "get", "head", "list", "delete"))
print(f"{sys.argv[2]:<10} {float(sys.argv[3]):7.2f} s  {total:5d} requests ({r['get']} GET, {r['head']} HEAD, {r['list']} LIST)  {r['bytes_in'] / 2**20:8.1f} MiB fetched")
PY
}
echo "step       wall        requests                   fetched"
for round in first warm; do
    [ "$round" = first ] && export IMGSTORE_INDEX_DIR=$work/index-new-host
    t0=$(date +%s.%N)
    "$bin" --json get "lab/app:c$n" -o "$work/out" >"$work/$round.json"
    t1=$(date +%s.%N)
    report "$work/$round.json" "$round get" "$(echo "$t1 - $t0" | bc)"
    cmp -s "$work/img" "$work/out" || { echo "get returned different bytes" >&2; exit 1; }
done
