#!/usr/bin/env python3
"""How much zstd gains from context beyond one chunk.

Cuts the first MIB MiB of IMAGE into 32 KiB pieces (imgstore's average
chunk size; fixed cuts stand in for FastCDC's), drops all-zero pieces
(imgstore stores those as zero runs) and compresses them one by one and in
groups of consecutive pieces, each piece or group as its own zstd frame, at
several levels. Prints stored bytes (a frame larger than its input counts as
stored raw) and compression speed on one core.

    pip install zstandard
    python3 benches/zstd_groups.py IMAGE [MIB] [LEVEL:GROUP_KIB ...]
"""
import sys
import time

import zstandard

PIECE = 32 << 10


def main():
    path = sys.argv[1]
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 4096
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
