#!/usr/bin/env bash
# The load case of issue #27: PULLS concurrent pulls of a SIZE_MIB image
# and PUSHES concurrent pushes into `imgstore serve`, while `imgstore gc`
# runs in a loop; every pulled blob's sha256 checked, every push read back
# and checked; the server's peak RSS (VmHWM) and its RSS sampled every
# 0.2 s. Not a CI test: it moves gigabytes.
#
#   benches/serve_load.sh BIN [SIZE_MIB=1536] [PULLS=8] [PUSHES=2]
#
# Images are slices of the corpus (~/.cache/imgstore-corpus/full, or
# $CORPUS): the pulled one is the first SIZE_MIB of c00-init.ext3, put with
# `imgstore put`; push i is the first SIZE_MIB of the i-th next image
# (c01-edit.ext3, c02-adddep.ext3, ...: mostly known to the store), sent by
# curl as one POST and one PUT ?digest= of the whole body, then the `{}`
# config and a manifest. Before the load, a 256 MiB image is put and
# removed, so gc has garbage to condemn and delete. The server runs with
# IMGSTORE_LEASE_SECS=20 (renewed every 10 s) so gc may delete while the
# pulls run; gc runs `--grace 0s --wait` from its own index directory.
#
# Needs curl, python3.
set -euo pipefail
bin=$(realpath "$1"); size=${2:-1536}; pulls=${3:-8}; pushes=${4:-2}
corpus=${CORPUS:-$HOME/.cache/imgstore-corpus/full}
work=$(mktemp -d -p "${BENCH_TMP:-$HOME/.cache}")
source "$(dirname "$0")/serve_common.sh"
mib() { echo $(( $1 / 1024 )); }  # kB -> MiB
images=("$corpus"/c0*.ext3)
slice() { head -c "${size}M" "${images[$1]}"; }

export IMGSTORE_STORE=$work/store IMGSTORE_INDEX_DIR=$work/index
"$bin" -q init
slice 0 | "$bin" -q put lab/sif:v1 -
want=$(slice 0 | sha256sum | cut -c1-64)
bytes=$(( size << 20 ))
head -c 256M "${images[5]}" | tail -c 128M | "$bin" -q put lab/old:v1 -
"$bin" -q rm lab/old:v1
push_digest=()
for i in $(seq "$pushes"); do push_digest[i]=$(slice "$i" | sha256sum | cut -c1-64); done

port=$(free_port)
IMGSTORE_LEASE_SECS=20 "$bin" serve --listen 127.0.0.1:$port --spool "$work/spool" >/dev/null 2>"$work/serve.log" &
spid=$!; pids+=($spid)
wait_port "$port"
U=http://127.0.0.1:$port
# The image's sha256 is computed on the first manifest request, before the load.
layer=$(curl -sf "$U/v2/lab/sif/manifests/v1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["layers"][0]["digest"])')
[ "$layer" = "sha256:$want" ] || { echo "manifest names $layer, want sha256:$want" >&2; exit 1; }
status() { awk -v k="$1:" '$1==k {print $2}' "/proc/$spid/status"; }
echo "image: $bytes bytes ($size MiB of $(basename "${images[0]}")); $pulls pulls, $pushes pushes; $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "server RSS before the load: $(mib "$(status VmRSS)") MiB (peak so far $(mib "$(status VmHWM)") MiB)"

upload() { # NAME DIGEST: the body on stdin
    local loc sep
    loc=$(curl -sf -D - -o /dev/null -X POST "$U/v2/$1/blobs/uploads/" | awk 'tolower($1)=="location:"{print $2}' | tr -d '\r')
    case $loc in http*) ;; *) loc=$U$loc ;; esac
    sep='?'; [[ $loc == *\?* ]] && sep='&'
    curl -sf -X PUT -T - -H 'Expect:' -H 'Content-Type: application/octet-stream' "$loc${sep}digest=sha256:$2" -o /dev/null
}
push() { # I
    local t0 d=${push_digest[$1]}
    t0=$(now)
    slice "$1" | upload "lab/push$1" "$d"
    printf '{}' | upload "lab/push$1" 44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.sylabs.sif.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[{"mediaType":"application/vnd.sylabs.sif.layer.v1.sif","digest":"sha256:%s","size":%s}]}' "$d" "$bytes" |
        curl -sf -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary @- "$U/v2/lab/push$1/manifests/v1" -o /dev/null
    echo "push $1: $(echo "$(now) - $t0" | bc) s"
}
pull() { # I
    local t0 got
    t0=$(now)
    got=$(curl -sf "$U/v2/lab/sif/blobs/sha256:$want" | sha256sum | cut -c1-64)
    [ "$got" = "$want" ] || { echo "pull $1: sha256 $got, want $want" >&2; return 1; }
    echo "pull $1: $(echo "$(now) - $t0" | bc) s, sha256 ok"
}

: >"$work/rss"
( while kill -0 "$spid" 2>/dev/null; do status VmRSS >>"$work/rss" 2>/dev/null || true; sleep 0.2; done ) &
sampler=$!; pids+=($sampler)
touch "$work/gc.run"
( n=0; while [ -e "$work/gc.run" ]; do
      IMGSTORE_INDEX_DIR=$work/index-gc "$bin" gc --grace 0s --wait >>"$work/gc.log" 2>&1 || { echo "gc failed: $(tail -1 "$work/gc.log")"; exit 1; }
      n=$((n + 1))
  done; echo "gc: $n runs, all succeeded" ) >"$work/gc.out" &
gcpid=$!; pids+=($gcpid)

t0=$(now)
jobs=()
for i in $(seq "$pulls"); do pull "$i" >"$work/pull$i.out" 2>&1 & jobs+=($!); done
for i in $(seq "$pushes"); do push "$i" >"$work/push$i.out" 2>&1 & jobs+=($!); done
failed=0
for j in "${jobs[@]}"; do wait "$j" || failed=$((failed + 1)); done
elapsed=$(echo "$(now) - $t0" | bc)
rm "$work/gc.run"; wait "$gcpid" || failed=$((failed + 1))
cat "$work"/pull*.out "$work/gc.out"; [ "$pushes" = 0 ] || cat "$work"/push*.out
echo "gc runs that deleted packs: $(grep -c "delete [1-9]" "$work/gc.log" || true)"; grep "delete [1-9]" "$work/gc.log" || true
echo "all pulls and pushes done in $elapsed s; failed jobs: $failed"
echo "server peak RSS (VmHWM): $(mib "$(status VmHWM)") MiB; RSS samples during the load: max $(mib "$(sort -n "$work/rss" | tail -1)") MiB, $(wc -l <"$work/rss") samples"

# Every push reads back whole and right.
for i in $(seq "$pushes"); do
    got=$(curl -sf "$U/v2/lab/push$i/blobs/sha256:${push_digest[i]}" | sha256sum | cut -c1-64)
    [ "$got" = "${push_digest[i]}" ] && echo "push $i reads back: sha256 ok" || { echo "push $i reads back wrong: $got" >&2; failed=$((failed + 1)); }
done
echo "server peak RSS after reading the pushes back: $(mib "$(status VmHWM)") MiB"
echo "store: $(du -sb "$work/store" | cut -f1) bytes; load average $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$failed" = 0 ]
