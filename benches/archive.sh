#!/bin/sh
# The archive tier on a corpus history: what the store holds with all but
# the newest KEEP images archived, what each commit costs in either tier,
# and how fast archived images come back.
#
#   benches/archive.sh BIN CORPUS_DIR KEEP [WORK]
#
# BIN: a release imgstore. CORPUS_DIR: cNN-*.sqfs images in commit order
# (python3 benches/corpus/gen.py --set small --formats sqfs). KEEP: images
# each name keeps hot (0: archive all). Prints one line per step; raw JSON
# goes to WORK (default /tmp/imgstore-archive-bench). GETS="c00 c06" times
# only those archived images' gets (default: all), THREADS="2 1" the thread
# counts they run with (default: all cores, then one).
set -eu
bin=$1
corpus=$2
keep=$3
work=${4:-/tmp/imgstore-archive-bench}
rm -rf "$work"
mkdir -p "$work"
export IMGSTORE_STORE="$work/store" IMGSTORE_INDEX_DIR="$work/index" IMGSTORE_LEASE_SECS=2
"$bin" -q init
rss() { /usr/bin/time -f %M -o "$work/rss" "$@"; }

echo "# $(date -u +%FT%TZ) $(uname -n), $(nproc) cores; corpus $corpus; keep hot $keep"
for f in "$corpus"/c*.sqfs; do
    n=$(basename "$f" .sqfs)
    "$bin" --json put "lab/app:$n" "$f" >"$work/put-$n.json"
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("put %-14s %6.1f MiB, added %6.2f MiB stored" % (sys.argv[2], r["size"]/2**20, r["added"]["stored_bytes"]/2**20))' "$work/put-$n.json" "$n"
    sleep 1 # ref times have one-second resolution: the policy orders by them
done
"$bin" --json stats >"$work/stats-bytes.json"

rss "$bin" --json archive --keep-hot "$keep" >"$work/archive.json"
echo "archive peak RSS $(cat "$work/rss") KiB"
python3 - "$work/archive.json" <<'EOF'
import json, sys
for r in json.load(open(sys.argv[1]))["images"]:
    print("archive %s: %s, %d/%d blocks inflated, %d shared, %d other; stream %.1f MiB; added %.2f MiB; %.1f s (rebuild check %.1f s, %.1f MiB/s)" % (
        r["image"][7:19], r["tier"], r["inflated_blocks"], r["compressed_blocks"], r["shared_blocks"], r["other_blocks"],
        r["stream_size"] / 2**20, r["added"]["stored_bytes"] / 2**20, r["seconds"], r["rebuild_seconds"],
        r["size"] / 2**20 / max(r["rebuild_seconds"], 1e-9)))
EOF
for i in 1 2; do
    "$bin" -q gc --grace 0s
    sleep 3
done
"$bin" --json stats >"$work/stats-archive.json"
python3 - "$work/stats-bytes.json" "$work/stats-archive.json" <<'EOF'
import json, sys
b, a = (json.load(open(p)) for p in sys.argv[1:3])
print("stored live chunks: byte tier %.1f MiB, with archive %.1f MiB (%.1f%%); pack files %.1f -> %.1f MiB; %d images archived" % (
    b["live_stored_bytes"] / 2**20, a["live_stored_bytes"] / 2**20, 100 * a["live_stored_bytes"] / b["live_stored_bytes"],
    b["stored_bytes"] / 2**20, a["stored_bytes"] / 2**20, a["archived_images"]))
EOF

# Archived gets: every byte checked against the original, timed, on all
# cores and on one.
for f in "$corpus"/c*.sqfs; do
    n=$(basename "$f" .sqfs)
    tier=$("$bin" --json inspect "lab/app:$n" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tier"])')
    [ "$tier" = archive ] || continue
    case " ${GETS:-${n%%-*}} " in *" ${n%%-*} "*) ;; *) continue ;; esac
    for threads in ${THREADS:-$(nproc) 1}; do
        rm -f "$work/out"
        s=$(date +%s.%N)
        RAYON_NUM_THREADS=$threads rss "$bin" -q get "lab/app:$n" -o "$work/out"
        e=$(date +%s.%N)
        cmp "$work/out" "$f"
        python3 -c 'import sys; s,e,b=float(sys.argv[1]),float(sys.argv[2]),int(sys.argv[3]); print("get %-14s %d threads: %.2f s, %.1f MiB/s, peak RSS %s KiB, bytes identical" % (sys.argv[4], int(sys.argv[5]), e-s, b/2**20/(e-s), sys.argv[6]))' "$s" "$e" "$(stat -L -c %s "$f")" "$n" "$threads" "$(cat "$work/rss")"
    done
done
# The newest image, hot, for comparison.
newest=$(ls "$corpus"/c*.sqfs | tail -1)
rm -f "$work/out"
s=$(date +%s.%N)
rss "$bin" -q get "lab/app:$(basename "$newest" .sqfs)" -o "$work/out"
e=$(date +%s.%N)
cmp "$work/out" "$newest"
python3 -c 'import sys; s,e,b=float(sys.argv[1]),float(sys.argv[2]),int(sys.argv[3]); print("get %s (hot): %.2f s, %.1f MiB/s, peak RSS %s KiB, bytes identical" % (sys.argv[4], e-s, b/2**20/(e-s), sys.argv[5]))' "$s" "$e" "$(stat -L -c %s "$newest")" "$(basename "$newest" .sqfs)" "$(cat "$work/rss")"
"$bin" -q verify --read-data && echo "verify --read-data: clean"
