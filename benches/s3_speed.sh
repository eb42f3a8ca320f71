#!/usr/bin/env bash
# imgstore on a directory vs the same imgstore on S3 (s3s-fs on loopback,
# its files on the same disk) vs restic's S3 backend on the same server, in
# one run, interleaved, cold cache (as root the page cache is dropped before
# each timed command). For each: put of NEW (every chunk new), put of KNOWN
# (mostly the same bytes), get/restore of KNOWN. Prints wall s, user s,
# sys s, peak RSS KiB (GNU time) per step.
#
#   benches/s3_speed.sh BIN ROUNDS NEW_IMAGE KNOWN_IMAGE
#
# Needs s3s-fs (.ci/run installs it), restic (Debian), python3.
set -euo pipefail
bin=$(realpath "$1"); rounds=$2; new=$(realpath "$3"); known=$(realpath "$4")
s3s=${IMGSTORE_S3S_FS:-$HOME/.cache/s3s-fs/bin/s3s-fs}
work=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}")
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/s3"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$s3s" --host 127.0.0.1 --port "$port" --access-key benchkey --secret-key benchsecret "$work/s3" >"$work/s3s.log" 2>&1 &
server=$!
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export IMGSTORE_S3_ENDPOINT=http://127.0.0.1:$port IMGSTORE_S3_ALLOW_HTTP=1 RESTIC_PASSWORD=bench
drop() { sync; [ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches || true; }
timed() { drop; /usr/bin/time -f "%e %U %S %M" -o "$work/time" "$@" > /dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }; cat "$work/time"; }
for r in $(seq 1 "$rounds"); do
    # imgstore on a directory, then on S3.
    for kind in dir s3; do
        rm -rf "$work/store" "$work/index" "$work/out" "$work/s3/b$r$kind"
        if [ $kind = dir ]; then loc=$work/store; else mkdir "$work/s3/b$r$kind"; loc=s3://b$r$kind/store; fi
        run=("$bin" --store "$loc" --index-dir "$work/index" -q)
        "${run[@]}" init
        a=$(timed "${run[@]}" put lab/ab:new "$new")
        b=$(timed "${run[@]}" put lab/ab:known "$known")
        c=$(timed "${run[@]}" get lab/ab:known -o "$work/out")
        cmp -s "$work/out" "$known" || { echo "imgstore $kind: get gave other bytes" >&2; exit 1; }
        echo "round $r imgstore-$kind | new put $a | known put $b | get $c"
    done
    # restic's S3 backend on the same server.
    mkdir "$work/s3/b${r}restic"; rm -rf "$work/restore"
    repo=s3:http://127.0.0.1:$port/b${r}restic/repo
    restic -q -r "$repo" init >/dev/null
    cp "$new" "$work/img"; a=$(timed restic -q -r "$repo" backup "$work/img")
    cp "$known" "$work/img"; b=$(timed restic -q -r "$repo" backup "$work/img")
    c=$(timed restic -q -r "$repo" restore latest --target "$work/restore")
    cmp -s "$work/restore$work/img" "$known" || { echo "restic: restore gave other bytes" >&2; exit 1; }
    echo "round $r restic-s3 | new put $a | known put $b | get $c"
    rm -f "$work/img"
done
