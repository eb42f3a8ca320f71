#!/usr/bin/env python3
"""Writes GIB GiB of new but compressible bytes to stdout, for memory runs.

Streams IMAGE... over and over and stamps a running counter into the first
8 bytes of every 4 KiB page, so no chunk repeats (every chunk of a put is
new and goes through zstd) while the bytes compress about as well as the
images do. Used to show a put's peak RSS on a 1 GiB and a 16 GiB input that
zstd has to work on (benches/rss_size.sh uses random bytes, which are
stored raw). IMAGE can be any compressible file, e.g. a tar of /usr/lib:

    python3 benches/unique_stream.py 16 c00-init.ext3 | /usr/bin/time -v imgstore put rss/zstd:16g -
"""
import struct
import sys

PAGE = 4096
BLOCK = 1 << 20


def main():
    gib, images = int(sys.argv[1]), sys.argv[2:]
    if not images:
        sys.exit("usage: unique_stream.py GIB IMAGE...")
    left, page = gib << 30, 0
    out = sys.stdout.buffer
    while left > 0:
        for path in images:
            with open(path, "rb") as f:
                while left > 0:
                    block = bytearray(f.read(min(BLOCK, left)))
                    if not block:
                        break
                    for off in range(0, len(block) - 7, PAGE):
                        struct.pack_into("<Q", block, off, page)
                        page += 1
                    out.write(block)
                    left -= len(block)


if __name__ == "__main__":
    main()
