#!/usr/bin/env bash
# Blob pull over loopback, A/B: `imgstore serve` of two builds (OLD, NEW)
# on the same store, Debian's docker-registry serving the same blob from
# its filesystem storage, and `imgstore get` of the image to a file (NEW),
# interleaved in each round, same client (curl), in one run.
#
#   benches/serve_pull_ab.sh OLD_BIN NEW_BIN [SIZE_MIB=1536] [ROUNDS=3]
#
# The image is made as in serve_vs_registry.sh (half random 64 KiB blocks,
# half text; v2 = v1 with three 4 KiB rewrites); v1 then v2 are put with
# NEW's `imgstore put` (v2 mostly known), v2 is pushed to the registry.
# Pulls are warm (page cache not dropped), to /dev/null, the byte count
# checked; the sha256 of the first pull from each server is checked too.
# Prints every time, the medians and the ratios of the medians.
#
# Needs docker-registry, curl, python3.
set -euo pipefail
old=$(realpath "$1"); new=$(realpath "$2"); size=${3:-1536}; rounds=${4:-3}
work=$(mktemp -d -p "${BENCH_TMP:-$HOME/.cache}")
source "$(dirname "$0")/serve_common.sh"

make_pair "$work/v1" "$work/v2" "$size"
export IMGSTORE_STORE=$work/store IMGSTORE_INDEX_DIR=$work/index
"$new" -q init
"$new" -q put lab/app:v1 "$work/v1"
"$new" -q put lab/app:v2 "$work/v2"
rm "$work/v1"
bytes=$(stat -c %s "$work/v2")
digest=sha256:$(sha256sum "$work/v2" | cut -c1-64)

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
oport=$(free_port)
"$old" serve --listen 127.0.0.1:$oport --spool "$work/spool-old" >/dev/null 2>"$work/old.log" &
pids+=($!)
nport=$(free_port)
"$new" serve --listen 127.0.0.1:$nport --spool "$work/spool-new" >/dev/null 2>"$work/new.log" &
pids+=($!)
wait_port "$rport"; wait_port "$oport"; wait_port "$nport"

R=http://127.0.0.1:$rport
loc=$(curl -sf -D - -o /dev/null -X POST "$R/v2/lab/app/blobs/uploads/" | awk 'tolower($1)=="location:"{print $2}' | tr -d '\r')
case $loc in http*) ;; *) loc=$R$loc ;; esac
sep='?'; [[ $loc == *\?* ]] && sep='&'
curl -sf -X PUT -T "$work/v2" -H 'Expect:' -H 'Content-Type: application/octet-stream' "$loc${sep}digest=$digest" -o /dev/null
# Both servers compute the image's sha256 on the first manifest request.
for p in $oport $nport; do curl -sf "http://127.0.0.1:$p/v2/lab/app/manifests/v2" -o /dev/null; done
for p in $rport $oport $nport; do
    got=$(curl -sf "http://127.0.0.1:$p/v2/lab/app/blobs/$digest" | sha256sum | cut -c1-64)
    [ "sha256:$got" = "$digest" ] || { echo "port $p served wrong bytes: $got" >&2; exit 1; }
done

pull() { # PORT -> seconds (checks the byte count)
    local got t0 t1
    t0=$(now)
    got=$(curl -sf "http://127.0.0.1:$1/v2/lab/app/blobs/$digest" -o /dev/null -w '%{size_download}')
    t1=$(now)
    [ "$got" = "$bytes" ] || { echo "short pull from port $1: $got bytes" >&2; exit 1; }
    echo "$t1 - $t0" | bc
}
get() {
    local t0 t1
    t0=$(now)
    "$new" -q get lab/app:v2 -o "$work/out"
    t1=$(now)
    rm "$work/out"
    echo "$t1 - $t0" | bc
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mbps() { echo "scale=0; $bytes / $1 / 1000000" | bc; }
echo "image: $bytes bytes; rounds: $rounds; $(nproc) cores; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
rs=(); os=(); ns=(); gs=()
for _ in $(seq "$rounds"); do
    rs+=("$(pull "$rport")"); os+=("$(pull "$oport")"); ns+=("$(pull "$nport")"); gs+=("$(get)")
done
r=$(printf '%s\n' "${rs[@]}" | median); o=$(printf '%s\n' "${os[@]}" | median)
n=$(printf '%s\n' "${ns[@]}" | median); g=$(printf '%s\n' "${gs[@]}" | median)
echo "docker-registry pull: ${rs[*]} s; median $r s ($(mbps "$r") MB/s)"
echo "serve OLD pull:       ${os[*]} s; median $o s ($(mbps "$o") MB/s)"
echo "serve NEW pull:       ${ns[*]} s; median $n s ($(mbps "$n") MB/s)"
echo "get NEW to a file:    ${gs[*]} s; median $g s ($(mbps "$g") MB/s)"
echo "pull speed / registry's: OLD $(echo "scale=2; $r / $o" | bc), NEW $(echo "scale=2; $r / $n" | bc); NEW / OLD $(echo "scale=2; $o / $n" | bc); NEW pull / get $(echo "scale=2; $g / $n" | bc)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
