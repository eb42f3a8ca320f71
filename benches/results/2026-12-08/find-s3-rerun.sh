#!/usr/bin/env bash
# find timings against the existing 1,001-image S3 store, with a fresh local index.
set -euo pipefail
export AWS_ACCESS_KEY_ID=k1 AWS_SECRET_ACCESS_KEY=s1secret AWS_REGION=us-east-1 IMGSTORE_S3_ENDPOINT=http://127.0.0.1:39517 IMGSTORE_S3_ALLOW_HTTP=1 IMGSTORE_STORE=s3://findbench/store
BIN=~/.cache/imgstore-target-hA-rel/release/imgstore
export IMGSTORE_INDEX_DIR=/tmp/fscale/s3idx2
rm -rf $IMGSTORE_INDEX_DIR
secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
five() { local runs; runs=$(for _ in 1 2 3 4 5; do secs "$@"; done | sort -n); echo "best $(echo "$runs" | head -1) s, median $(echo "$runs" | sed -n 3p) s"; }
echo "first find, fresh local index (catch-up of 1,001 images): $(secs $BIN find --deffile 'numpy==1[0-9]\.') s"
echo "warm find --deffile: $(five $BIN find --deffile 'numpy==1[0-9]\.')"
echo "warm find --deffile --label --name --since: $(five $BIN find --deffile '(?i)PIP INSTALL (torch|jax)' --label team=ml --name 'scale/app[1-5]' --since 1d)"
echo "warm find --json (every ref): $(five $BIN find --json)"
echo "ls (refs alone): $(five $BIN ls)"
$BIN find --json --deffile 'numpy==1[0-9]\.' | grep -c '"ref"'
