#!/usr/bin/env bash
# `find` at scale: N small SIF images (a shared 1 MiB partition plus 64 KiB
# of its own; a deffile that installs one of 20 packages at a version; labels
# in the SIF), then the wall time of:
#   - the first `find` after the N puts: the catch-up, reading every image's
#     manifest once into the report view;
#   - the same `find --deffile` warm (best and median of 5);
#   - warm with --label, --name and --since too, and a find that matches nothing;
#   - the first find after one more put (catching up one image);
#   - `ls` of the same store, for the cost of reading the refs alone.
# Usage:
#   benches/find_scale.sh [N] [WORKDIR]    (default 1000, a temp dir; WORKDIR is deleted after)
# Needs the release binary: cargo build --release --bin imgstore
set -euo pipefail
N=${1:-1000}
WORK=${2:-$(mktemp -d)}
BIN=${IMGSTORE_BIN:-${CARGO_TARGET_DIR:-target}/release/imgstore}
export IMGSTORE_STORE=${IMGSTORE_STORE:-$WORK/store} IMGSTORE_INDEX_DIR=$WORK/index
mkdir -p "$WORK"
rm -rf "$WORK/store" "$IMGSTORE_INDEX_DIR"
"$BIN" init -q
head -c 1048576 /dev/urandom > "$WORK/base"

# Writes a SIF (github.com/sylabs/sif/v2 layout: 128-byte header, 585-byte
# descriptors) with a deffile, a labels object and a partition to $1, for image $2.
mksif() {
    python3 - "$1" "$2" "$WORK/base" <<'PY'
import json, os, struct, sys
out, i, base = sys.argv[1], int(sys.argv[2]), sys.argv[3]
pkgs = ["numpy", "scipy", "pandas", "torch", "jax", "sklearn", "xarray", "dask", "numba", "polars",
        "pyarrow", "h5py", "netcdf4", "matplotlib", "seaborn", "sympy", "statsmodels", "biopython", "astropy", "mpi4py"]
deffile = ("Bootstrap: docker\nFrom: python:3.12\n%post\n  apt-get update\n"
           f"  pip install {pkgs[i % 20]}=={i // 20}.{i % 7}\n  pip install requests\n"
           f"%labels\n  commit c{i}\n%runscript\n  exec python -m app \"$@\"\n").encode()
labels = json.dumps({"commit": f"c{i}", "team": ["ml", "sim", "bio"][i % 3]}).encode()
part = open(base, "rb").read() + os.urandom(65536)
objs = [(0x4001, deffile, b""), (0x4003, labels, b""),
        (0x4004, part, struct.pack("<ii3s", 1, 2, b"02\0"))]
data_off = 128 + 585 * len(objs)
hdr = bytearray(128)
hdr[0:31] = b"#!/usr/bin/env run-singularity\n"
hdr[32:42] = b"SIF_MAGIC\0"; hdr[42:45] = b"01\0"; hdr[45:48] = b"02\0"
struct.pack_into("<qqqqqq", hdr, 80, 0, len(objs), 128, 585 * len(objs), data_off,
                 sum(len(o[1]) for o in objs))
table, at = bytearray(), data_off
for n, (t, d, extra) in enumerate(objs):
    desc = bytearray(585)
    struct.pack_into("<i?III qqq", desc, 0, t, True, n + 1, 0xf0000001, 0, at, len(d), len(d))
    desc[201:201 + len(extra)] = extra
    table += desc
    at += len(d)
with open(out, "wb") as f:
    f.write(hdr + table + b"".join(o[1] for o in objs))
PY
}

# Wall seconds of one run of the command.
secs() {
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null 2>&1
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc
}

# Best and median of 5 runs.
five() {
    local runs
    runs=$(for _ in 1 2 3 4 5; do secs "$@"; done | sort -n)
    echo "best $(echo "$runs" | head -1) s, median $(echo "$runs" | sed -n 3p) s"
}

# One image: made, put, deleted (PUTS of them at once: puts are concurrent-safe).
one() {
    mksif "$WORK/img$1.sif" "$1"
    "$BIN" put -q "scale/app$(($1 % 10)):c$1" "$WORK/img$1.sif"
    rm -f "$WORK/img$1.sif"
}
export -f one mksif
export WORK BIN
start=$(date +%s)
seq 1 "$N" | xargs -P "${PUTS:-4}" -I{} bash -c 'one {}'
echo "put $N SIF images in $(( $(date +%s) - start ))s (${PUTS:-4} at a time)"
t0=$(date +%s.%N)
"$BIN" find --json --deffile 'numpy==1[0-9]\.' > "$WORK/first.json"
t1=$(date +%s.%N)
hits=$(grep -c '"ref"' "$WORK/first.json" || true)
echo "first find after $N puts (catch-up): $(echo "$t1 - $t0" | bc) s ($hits refs match)"
echo "warm find --deffile: $(five "$BIN" find --deffile 'numpy==1[0-9]\.')"
echo "warm find --deffile --label --name --since: $(five "$BIN" find --deffile '(?i)PIP INSTALL (torch|jax)' --label team=ml --name 'scale/app[1-5]' --since 1d)"
echo "warm find matching nothing: $(five "$BIN" find --deffile 'tensorflow')"
echo "warm find --json (every ref, no filter): $(five "$BIN" find --json)"
one $((N + 1))
echo "first find after one more put: $(secs "$BIN" find --deffile numpy) s"
echo "ls (refs alone): $(five "$BIN" ls)"
du -sh "$WORK/store" "$IMGSTORE_INDEX_DIR" 2>/dev/null || true
rm -rf "$WORK"
