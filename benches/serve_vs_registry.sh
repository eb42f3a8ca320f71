#!/usr/bin/env bash
# Pull and push over loopback: `imgstore serve` against Debian's
# docker-registry (the reference registry, filesystem storage), with the
# same client (curl) in the same run.
#
#   benches/serve_vs_registry.sh BIN [SIZE_MIB=512] [ROUNDS=3]
#
# Makes an image v1 of SIZE_MIB (half random 64 KiB blocks, half text) and
# v2 = v1 with three 4 KiB rewrites. For each server: pushes v1 (new), then
# v2 (mostly known to imgstore; docker-registry stores it whole), each a
# POST, one PUT of the whole blob with ?digest=, the `{}` config and the
# manifest. Then pulls v2's blob ROUNDS times from each, interleaved, warm
# (page cache not dropped), to /dev/null. Also times the first manifest
# request of an image put with `imgstore put` (its sha256 computed then).
# Prints seconds and MB/s (10^6 bytes) per step; medians over rounds.
#
# Needs docker-registry (apt-get install docker-registry), curl, python3.
set -euo pipefail
bin=$(realpath "$1"); size=${2:-512}; rounds=${3:-3}
work=$(mktemp -d)
source "$(dirname "$0")/serve_common.sh"

make_pair "$work/v1" "$work/v2" "$size"
printf '{}' >"$work/config"

rport=$(free_port)
mkdir -p "$work/reg"
cat >"$work/reg.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/reg
http:
  addr: 127.0.0.1:$rport
EOF
docker-registry serve "$work/reg.yml" >"$work/reg.log" 2>&1 &
pids+=($!)

export IMGSTORE_STORE=$work/store IMGSTORE_INDEX_DIR=$work/index
"$bin" -q init
iport=$(free_port)
"$bin" serve --listen 127.0.0.1:$iport --spool "$work/spool" >"$work/serve.out" 2>"$work/serve.log" &
pids+=($!)
wait_port "$rport"; wait_port "$iport"

upload() { # BASE NAME FILE
    local digest loc sep
    digest=sha256:$(sha256sum "$3" | cut -c1-64)
    loc=$(curl -sf -D - -o /dev/null -X POST "$1/v2/$2/blobs/uploads/" | awk 'tolower($1)=="location:"{print $2}' | tr -d '\r')
    case $loc in http*) ;; *) loc=$1$loc ;; esac
    sep='?'; [[ $loc == *\?* ]] && sep='&'
    curl -sf -X PUT -T "$3" -H 'Expect:' -H 'Content-Type: application/octet-stream' "$loc${sep}digest=$digest" -o /dev/null
}

push() { # BASE NAME TAG FILE -> seconds
    local t0 t1 digest len
    t0=$(now)
    upload "$1" "$2" "$4"
    upload "$1" "$2" "$work/config"
    digest=sha256:$(sha256sum "$4" | cut -c1-64); len=$(stat -c %s "$4")
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.sylabs.sif.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[{"mediaType":"application/vnd.sylabs.sif.layer.v1.sif","digest":"%s","size":%s}]}' "$digest" "$len" >"$work/m.json"
    curl -sf -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary @"$work/m.json" "$1/v2/$2/manifests/$3" -o /dev/null
    t1=$(now)
    echo "$t1 - $t0" | bc
}

pull() { # BASE NAME FILE -> seconds (checks the byte count)
    local digest got t0 t1
    digest=sha256:$(sha256sum "$3" | cut -c1-64)
    t0=$(now)
    got=$(curl -sf "$1/v2/$2/blobs/$digest" -o /dev/null -w '%{size_download}')
    t1=$(now)
    [ "$got" = "$(stat -c %s "$3")" ] || { echo "short pull: $got bytes" >&2; exit 1; }
    echo "$t1 - $t0" | bc
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mbps() { echo "scale=0; $(stat -c %s "$1") / $2 / 1000000" | bc; }

R=http://127.0.0.1:$rport; I=http://127.0.0.1:$iport
bytes=$(stat -c %s "$work/v1")
echo "image: $bytes bytes; rounds: $rounds; $(nproc) cores"
for step in v1 v2; do
    r=$(push "$R" lab/app "$step" "$work/$step"); i=$(push "$I" lab/app "$step" "$work/$step")
    echo "push $step: docker-registry ${r}s ($(mbps "$work/$step" "$r") MB/s), imgstore serve ${i}s ($(mbps "$work/$step" "$i") MB/s)"
done
rs=(); is=()
for _ in $(seq "$rounds"); do
    rs+=("$(pull "$R" lab/app "$work/v2")"); is+=("$(pull "$I" lab/app "$work/v2")")
done
r=$(printf '%s\n' "${rs[@]}" | median); i=$(printf '%s\n' "${is[@]}" | median)
echo "pull v2 (median of $rounds): docker-registry ${r}s ($(mbps "$work/v2" "$r") MB/s), imgstore serve ${i}s ($(mbps "$work/v2" "$i") MB/s); all: registry ${rs[*]} / serve ${is[*]}"
echo "imgstore serve / docker-registry pull speed: $(echo "scale=2; $r / $i" | bc)"

# An image put with `imgstore put`: its first manifest request streams it once.
cp "$work/v2" "$work/v3"; printf 'x' >>"$work/v3"
"$bin" -q put lab/put:v3 "$work/v3"
t0=$(now); curl -sf "$I/v2/lab/put/manifests/v3" -o /dev/null; t1=$(now)
t2=$(now); curl -sf "$I/v2/lab/put/manifests/v3" -o /dev/null; t3=$(now)
echo "first manifest request of a put image (sha256 computed): $(echo "$t1 - $t0" | bc)s; second: $(echo "$t3 - $t2" | bc)s"
echo "store: $(du -sb "$work/store" | cut -f1) bytes; docker-registry: $(du -sb "$work/reg" | cut -f1) bytes"
