#!/usr/bin/env bash
# A new image put by imgstore and by `borg create` (borg init -e none),
# interleaved, a fresh store and repository each round, each followed by
# `sync -f`; as root the page cache is dropped before each (not otherwise).
# Prints wall s, user s, sys s, peak RSS KiB.
# Usage: benches/ab_borg.sh ROUNDS IMAGE IMGSTORE_BIN
set -euo pipefail
rounds=$1 img=$2 bin=$3
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT; drop() { sync; [ "$(id -u)" = 0 ] && echo 3 > /proc/sys/vm/drop_caches || true; }
for r in $(seq 1 $rounds); do
  rm -rf "${W:?}"/*
  $bin --store $W/store --index-dir $W/index -q init
  drop; /usr/bin/time -f "%e %U %S %M" -o $W/t sh -c "$bin --store $W/store --index-dir $W/index -q put lab/ab:new $img && sync -f $W/store"
  echo "round $r imgstore new put $(cat $W/t)"
  borg init -e none $W/borg >/dev/null 2>&1
  drop; /usr/bin/time -f "%e %U %S %M" -o $W/t sh -c "borg create $W/borg::c0 $img && sync -f $W/borg"
  echo "round $r borg new put $(cat $W/t)"
done
