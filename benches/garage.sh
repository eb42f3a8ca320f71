#!/usr/bin/env bash
# imgstore on a real distributed object store: a 3-node Garage cluster on
# loopback (replication factor 3), two imgstore "hosts" putting and getting
# at once with a gc loop, one Garage node stopped in the middle and brought
# back, then every image verified. Garage accepts If-None-Match/If-Match
# writes that should fail: the case imgstore's design must survive (it uses
# no conditional writes).
#
#   benches/garage.sh BIN [ROUNDS=12] [SIZE_MIB=32]
#
# Needs garage 2.5.0 (`cargo install garage --version 2.5.0 --locked
# --root ~/.cache/garage`, ~7 min) and python3. Not run in CI.
set -euo pipefail
bin=$(realpath "$1"); rounds=${2:-12}; size=${3:-32}
garage=${GARAGE:-$HOME/.cache/garage/bin/garage}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
for n in 1 2 3; do
    mkdir -p "$work/n$n"
    cat >"$work/n$n.toml" <<TOML
metadata_dir = "$work/n$n/meta"
data_dir = "$work/n$n/data"
db_engine = "sqlite"
replication_factor = 3
rpc_bind_addr = "127.0.0.1:$((3901 + 10 * n))"
rpc_public_addr = "127.0.0.1:$((3901 + 10 * n))"
rpc_secret = "$secret"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$((3900 + 10 * n))"
root_domain = ".s3.garage.localhost"
TOML
done
start_node() {
    "$garage" -c "$work/n$1.toml" server >>"$work/n$1.log" 2>&1 &
    pids[$1]=$!
}
g() { "$garage" -c "$work/n1.toml" "$@"; }
for n in 1 2 3; do start_node $n; done
sleep 3
for n in 2 3; do
    id=$("$garage" -c "$work/n$n.toml" node id -q 2>/dev/null)
    g node connect "$id" >/dev/null
done
for n in 1 2 3; do
    id=$("$garage" -c "$work/n$n.toml" node id -q 2>/dev/null | cut -d@ -f1)
    g layout assign -z dc1 -c 1G "$id" >/dev/null
done
g layout apply --version 1 >/dev/null
g bucket create imgstore >/dev/null
keys=$(g key create imgstore-key)
export AWS_ACCESS_KEY_ID=$(echo "$keys" | awk '/Key ID/ {print $NF}')
export AWS_SECRET_ACCESS_KEY=$(echo "$keys" | awk '/Secret key/ {print $NF}')
g bucket allow --read --write --owner imgstore --key imgstore-key >/dev/null
export AWS_REGION=garage IMGSTORE_S3_ALLOW_HTTP=1 IMGSTORE_STORE=s3://imgstore/store
# Each imgstore host talks to its own Garage node's S3 endpoint.
host() { IMGSTORE_S3_ENDPOINT=http://127.0.0.1:$((3900 + 10 * $1)) IMGSTORE_INDEX_DIR=$work/index-$1 IMGSTORE_HOSTNAME=host-$1 "$bin" "${@:2}"; }
host 1 -q init
head -c $((size << 20)) /dev/urandom >"$work/base.img"
echo "3-node Garage up; $rounds rounds of puts and gets on two hosts, gc looping, node 3 stopped at round $((rounds / 3)) and back at round $((2 * rounds / 3))"
started=$(date +%s)
( while [ ! -e "$work/stop" ]; do
    if host 1 -q gc --grace 0s --wait; then echo ok >>"$work/gc-runs"; else echo failed >>"$work/gc-runs"; echo "gc failed (retried next loop)"; fi
    sleep 1
done ) &
gc_loop=$!
failures=0
for r in $(seq 1 "$rounds"); do
    [ "$r" = $((rounds / 3)) ] && { kill "${pids[3]}"; echo "round $r: node 3 stopped"; }
    [ "$r" = $((2 * rounds / 3)) ] && { start_node 3; echo "round $r: node 3 started again"; }
    puts=()
    for h in 1 2; do
        cp "$work/base.img" "$work/h$h.img"
        printf 'round %d host %d' "$r" "$h" | dd of="$work/h$h.img" bs=1 seek=$((r * 4096 + h)) conv=notrunc 2>/dev/null
        host $h -q put "lab/h$h:r$r" "$work/h$h.img" &
        puts+=($!)
    done
    for p in "${puts[@]}"; do
        wait "$p" || { failures=$((failures + 1)); echo "round $r: a put failed"; }
    done
    for h in 1 2; do
        host $((3 - h)) -q get "lab/h$h:r$r" -o "$work/back.img" && cmp -s "$work/back.img" "$work/h$h.img" || { failures=$((failures + 1)); echo "round $r: image of host $h wrong or missing via the other host"; }
    done
    [ $((r % 4)) = 0 ] && host 1 -q rm "lab/h1:r$((r - 3))"
done
touch "$work/stop"; wait "$gc_loop"
echo "$((2 * rounds)) puts and $((2 * rounds)) cross-host gets in $(( $(date +%s) - started )) s; gc runs: $(grep -c ok "$work/gc-runs" || true) ok, $(grep -c failed "$work/gc-runs" || true) failed"
echo "verify --read-data, from host 2:"
host 2 verify --read-data || failures=$((failures + 1))
host 2 stats | head -12
echo "failures: $failures"
[ "$failures" = 0 ]
