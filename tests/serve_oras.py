#!/usr/bin/env python3
"""The `oras` Python client (0.2.43) against `imgstore serve`, for tests/serve.rs.

usage: serve_oras.py HOST:PORT push|push-chunked NAME:TAG FILE
       serve_oras.py HOST:PORT pull NAME:TAG OUTDIR     (prints the pulled file)

A push writes the manifest bytes the client sent to pushed-manifest.json.
Files are relative to the working directory (oras checks that).
"""
import sys

import oras.client

SIF_LAYER = "application/vnd.sylabs.sif.layer.v1.sif"
SIF_CONFIG = "application/vnd.sylabs.sif.config.v1+json"


def main():
    addr, cmd, ref = sys.argv[1:4]
    client = oras.client.OrasClient(hostname=addr, insecure=True)
    target = f"{addr}/{ref}"
    if cmd in ("push", "push-chunked"):
        with open("config.json", "w") as f:
            f.write("{}")
        resp = client.push(
            target=target,
            files=[f"{sys.argv[4]}:{SIF_LAYER}"],
            manifest_config=f"config.json:{SIF_CONFIG}",
            do_chunked=cmd == "push-chunked",
            chunk_size=1 << 20,
            quiet=True,
        )
        if resp.status_code != 201:
            sys.exit(f"manifest PUT answered {resp.status_code}: {resp.text}")
        body = resp.request.body
        with open("pushed-manifest.json", "wb") as f:
            f.write(body if isinstance(body, bytes) else body.encode())
    elif cmd == "pull":
        files = client.pull(target=target, outdir=sys.argv[4])
        if len(files) != 1:
            sys.exit(f"pulled {files}, expected one file")
        print(files[0])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
