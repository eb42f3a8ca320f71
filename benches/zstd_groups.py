#!/usr/bin/env python3
"""How much zstd gains from context beyond one chunk.

Cuts the first MIB MiB of IMAGE into 32 KiB pieces (imgstore's average
chunk size; fixed cuts stand in for FastCDC's), drops all-zero pieces
(imgstore stores those as zero runs) and compresses them one by one and in
groups of consecutive pieces, each piece or group as its own zstd frame, at
several levels. Prints stored bytes (a frame larger than its input counts as
stored raw) and compression speed on one core.

With `sweep` instead of LEVEL:GROUP_KIB, compresses 1 MiB groups with
levels 1 and 2 and then a grid of zstd's own parameters near them (fast and
dfast strategies, hash log 14-18, chain log, min match 4-6; window log 20,
search log 1), each twice, the faster pass kept: is there a setting that is
faster than level 2 for the same bytes?

    pip install zstandard
    python3 benches/zstd_groups.py IMAGE [MIB] [LEVEL:GROUP_KIB ...]
    python3 benches/zstd_groups.py IMAGE [MIB] sweep
"""
import sys
import time

import zstandard

PIECE = 32 << 10


def sweep(pieces):
    """Levels 1 and 2 and a grid of zstd parameters, on 1 MiB groups."""
    groups = [b"".join(pieces[i:i + 32]) for i in range(0, len(pieces), 32)]
    raw = sum(map(len, groups))
    settings = [("level 1", zstandard.ZstdCompressor(level=1, write_content_size=False, write_checksum=False)),
                ("level 2", zstandard.ZstdCompressor(level=2, write_content_size=False, write_checksum=False))]
    for strategy, name, chain_logs in [(zstandard.STRATEGY_FAST, "fast", [12]),
                                       (zstandard.STRATEGY_DFAST, "dfast", [14, 16])]:
        for hash_log in [14, 15, 16, 17, 18]:
            for chain_log in chain_logs:
                for min_match in [4, 5, 6]:
                    params = zstandard.ZstdCompressionParameters(
                        window_log=20, hash_log=hash_log, chain_log=chain_log, search_log=1,
                        min_match=min_match, target_length=0, strategy=strategy,
                        write_content_size=0, write_checksum=0)
                    settings.append((f"{name} hash {hash_log} chain {chain_log} min match {min_match}",
                                     zstandard.ZstdCompressor(compression_params=params)))
    for label, c in settings:
        best = None
        for _ in range(2):
            start, out = time.process_time(), 0
            for g in groups:
                out += min(len(c.compress(g)), len(g))
            dt = time.process_time() - start
            best = dt if best is None else min(best, dt)
        print(f"{label:38s} {out / raw * 100:6.2f}% {raw / best / 1e6:5.0f} MB/s", flush=True)


def main():
    path = sys.argv[1]
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 4096
    if sys.argv[3:] == ["sweep"]:
        with open(path, "rb") as f:
            data = f.read(mib << 20)
        pieces = [data[i:i + PIECE] for i in range(0, len(data), PIECE)]
        sweep([p for p in pieces if p.count(0) != len(p)])
        return
    runs = [tuple(int(x) for x in a.split(":")) for a in sys.argv[3:]] or [
        (3, 32), (3, 128), (3, 256), (3, 512), (3, 1024), (1, 32), (1, 256), (1, 1024), (-1, 1024)]
    with open(path, "rb") as f:
        data = f.read(mib << 20)
    pieces = [data[i:i + PIECE] for i in range(0, len(data), PIECE)]
    pieces = [p for p in pieces if p.count(0) != len(p)]
    raw = sum(map(len, pieces))
    for level, group_kib in runs:
        n = max(1, (group_kib << 10) // PIECE)
        c = zstandard.ZstdCompressor(level=level, write_content_size=False, write_checksum=False)
        start, out = time.process_time(), 0
        for i in range(0, len(pieces), n):
            g = b"".join(pieces[i:i + n])
            out += min(len(c.compress(g)), len(g))
        dt = time.process_time() - start
        print(f"level {level:2d} group {n * 32:5d} KiB: {raw / 1e6:.0f} MB -> {out / 1e6:.1f} MB "
              f"({out / raw * 100:.2f}%), {raw / dt / 1e6:.0f} MB/s", flush=True)


if __name__ == "__main__":
    main()
