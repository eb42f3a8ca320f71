#!/usr/bin/env python3
"""Build a realistic per-commit history of container images for imgstore benches.

Each "commit" of a made-up project is built into a root filesystem tree and
emitted the two ways Singularity/Apptainer images exist on disk:

  cNN-KIND.sqfs  squashfs as in a SIF: mksquashfs TREE OUT -comp gzip -noappend
  cNN-KIND.ext3  ext3 image:           mke2fs -q -t ext3 -d TREE -F IMG SIZE

The tree holds
  /usr/...                  base OS: real files sampled from this machine's /usr
  /opt/venv/.../site-packages
                            big binary wheels (numpy, scipy, NVIDIA CUDA libs,
                            fetched once with `pip download --no-deps`), with
                            .pyc files as pip would compile them; when pip
                            cannot fetch a wheel, a same-sized sample of local
                            /usr/lib files stands in for it
  /opt/app                  the application: generated Python modules, C
                            sources and libapp.so compiled from them with gcc
  /.singularity.d, /etc     small per-build metadata (labels.json, env, def file)

Commit 0 is the initial build. Later commits are one of
  edit      a few Python and C modules change; libapp.so is rebuilt
  adddep    edit + a new wheel is installed
  rebuild   nothing changes but every app/site-packages file gets a new
            mtime and all .pyc are regenerated (their headers embed it)
  upgrade   edit + one wheel is swapped for another version of it
  osupdate  edit + ~4% of the base OS files are replaced by "new package
            versions" (diffuse byte changes and small insertions)

Everything random comes from a fixed seed, file mtimes are set explicitly,
mksquashfs gets -mkfs-time and mke2fs a fixed UUID, hash seed and
E2FSPROGS_FAKE_TIME, and ext3 inode atime/ctime are reset with debugfs, so a
set is the same bytes on every run on the same machine (the base OS and local
fallbacks are this machine's files, so other machines differ).

Results are cached: a finished set is listed from its manifest.json without
rebuilding. Prints the image paths made (squashfs in commit order, then ext3)
on stdout, progress on stderr.

Usage:  gen.py [--set small|medium|full] [--commits N] [--out DIR] [--force]
"""

import argparse
import hashlib
import importlib.util
import json
import os
import py_compile
import random
import shutil
import stat
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

GEN_VERSION = 1
SEED = 20240611
T0 = 1_700_000_000  # build time of commit 0 (2023-11-14)
MIB = 1 << 20
CACHE_ROOT = Path(os.path.expanduser("~/.cache/imgstore-corpus"))
SITE = "opt/venv/lib/python3.11/site-packages"
PIP_TARGET = ["--platform", "manylinux2014_x86_64", "--python-version", "3.11",
              "--implementation", "cp", "--only-binary=:all:", "--no-deps"]

# Each wheel is (requirement, approx unpacked MiB); the size is what a local
# fallback copies when pip cannot fetch the wheel.
SETS = {
    # ~100 MiB trees: 6 x (~40 MiB squashfs + ~130 MiB ext3) ~ 1 GiB in all.
    "small": {
        "commits": 6,
        "base": [("/usr/bin", 6), ("/usr/lib/x86_64-linux-gnu", 12), ("/usr/share", 6)],
        "wheels": [("numpy==1.26.3", 61)],
        "adds": [("pillow==10.2.0", 13)],
        "upgrade": ("numpy==1.26.3", "numpy==1.26.4"),
        "py_modules": 30,
        "c_modules": 8,
    },
    # ~550 MiB trees, 8 commits: ~7 GiB in all.
    "medium": {
        "commits": 8,
        "base": [("/usr/bin", 50), ("/usr/lib/x86_64-linux-gnu", 110), ("/usr/share", 40)],
        "wheels": [("numpy==1.26.3", 61), ("scipy==1.11.4", 105),
                   ("nvidia-cuda-runtime-cu12==12.1.105", 3),
                   ("nvidia-cuda-nvrtc-cu12==12.1.55", 60),
                   ("nvidia-curand-cu12==10.3.2.106", 94)],
        "adds": [("pillow==10.2.0", 13)],
        "upgrade": ("nvidia-cuda-nvrtc-cu12==12.1.55", "nvidia-cuda-nvrtc-cu12==12.1.105"),
        "py_modules": 80,
        "c_modules": 24,
    },
    # ~2.5 GiB trees, 10 commits: ~40 GiB in all, ~2 GiB of wheels to fetch.
    "full": {
        "commits": 10,
        "base": [("/usr/bin", 120), ("/usr/lib/x86_64-linux-gnu", 230), ("/usr/share", 100)],
        "wheels": [("numpy==1.26.3", 61), ("scipy==1.11.4", 105),
                   ("nvidia-cuda-runtime-cu12==12.1.105", 3),
                   ("nvidia-cuda-nvrtc-cu12==12.1.105", 60),
                   ("nvidia-curand-cu12==10.3.2.106", 94),
                   ("nvidia-cublas-cu12==12.1.0.26", 600),
                   ("nvidia-cudnn-cu12==8.9.2.26", 870)],
        "adds": [("nvidia-cufft-cu12==11.0.2.54", 280), ("pillow==10.2.0", 13)],
        "upgrade": ("nvidia-cublas-cu12==12.1.0.26", "nvidia-cublas-cu12==12.1.3.1"),
        "py_modules": 150,
        "c_modules": 40,
    },
}

SPECIALS = ["adddep", "rebuild", "upgrade", "osupdate"]


def log(msg):
    print(f"gen: {msg}", file=sys.stderr, flush=True)


def rng_for(*parts):
    return random.Random(":".join(str(p) for p in (SEED,) + parts))


def commit_time(k):
    return T0 + k * 86400 + rng_for("time", k).randrange(3600, 30000)


def schedule(n, n_adds):
    """Kinds of commits 0..n-1: init, then edits with the specials spread out."""
    slots = n - 1
    if slots <= 0:
        return ["init"][:n]
    if slots <= 5:
        kinds = (["edit"] + SPECIALS)[:slots]
    else:
        kinds = ["edit"] * slots
        for j, kind in enumerate(SPECIALS):
            kinds[(j + 1) * slots // 5] = kind
        extra = n_adds - 1
        for i in range(slots - 1, 0, -1):
            if extra <= 0:
                break
            if kinds[i] == "edit" and kinds.count("edit") > 2:
                kinds[i] = "adddep"
                extra -= 1
    return ["init"] + kinds


# ---------------------------------------------------------------- tree helpers

def set_time(path, t):
    os.utime(path, (t, t), follow_symlinks=False)


def write_file(path, data, t, mode=0o644):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    set_time(path, t)


def tree_walk(root):
    """Every path under root (not root itself), sorted, as (rel, abs)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            out.append((os.path.relpath(p, root), p))
    return out


def normalize_dir_times(root, default_t):
    """Directory mtime = newest entry in it, so it never depends on wall time."""
    newest = {}
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        t = default_t
        for name in filenames:
            t = max(t, int(os.lstat(os.path.join(dirpath, name)).st_mtime))
        for name in dirnames:
            p = os.path.join(dirpath, name)
            t = max(t, newest.get(p, default_t))
        newest[dirpath] = t
        if int(os.lstat(dirpath).st_mtime) != t:
            os.utime(dirpath, (t, t))


def tree_stats(root):
    data = files = dirs = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirs += 1 + len([d for d in dirnames if os.path.islink(os.path.join(dirpath, d))])
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            files += 1
            if stat.S_ISREG(st.st_mode):
                data += (st.st_size + 4095) // 4096 * 4096
            elif stat.S_ISLNK(st.st_mode) and st.st_size >= 60:
                data += 4096
    return data, files, dirs


# ---------------------------------------------------------------- base OS

def sample_host_dir(src, budget, rng, exclude_prefix=None):
    """A seeded random sample of regular files and symlinks under src."""
    cands = []
    cap = max(budget // 4, MIB)
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        if exclude_prefix and dirpath.startswith(exclude_prefix):
            dirnames[:] = []
            continue
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                cands.append((p, 0))
            elif stat.S_ISREG(st.st_mode) and st.st_size <= cap and os.access(p, os.R_OK):
                cands.append((p, st.st_size))
    rng.shuffle(cands)
    picked, used = [], 0
    for p, size in cands:
        if used + size > budget:
            continue
        picked.append(p)
        used += size
        if used >= budget * 0.98:
            break
    return sorted(picked)


def copy_host_file(src, dest):
    """Copy one host file or symlink; keeps its mode and host mtime."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dest)
    else:
        shutil.copyfile(src, dest)
        os.chmod(dest, stat.S_IMODE(st.st_mode) & 0o7755)
    set_time(dest, int(st.st_mtime))


def build_base(tree, cfg):
    files = []
    for src, mib in cfg["base"]:
        picked = sample_host_dir(src, mib * MIB, rng_for("base", src))
        for p in picked:
            rel = os.path.relpath(p, "/")
            try:
                copy_host_file(p, tree / rel)
            except OSError as e:
                log(f"skip {p}: {e}")
                continue
            files.append(rel)
    for d in ["proc", "sys", "dev", "tmp", "home", "root", "var/tmp", "var/log", "mnt", "srv"]:
        (tree / d).mkdir(parents=True, exist_ok=True)
    for name, target in [("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "usr/sbin")]:
        os.symlink(target, tree / name)
        set_time(tree / name, T0 - 86400 * 30)
    os_release = Path("/etc/os-release").read_text() if Path("/etc/os-release").exists() else 'NAME="Linux"\n'
    write_file(tree / "etc/os-release", os_release, T0 - 86400 * 30)
    files.append("etc/os-release")
    write_file(tree / "etc/passwd", "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n", T0 - 86400 * 30)
    write_file(tree / "etc/group", "root:x:0:\nnogroup:x:65534:\n", T0 - 86400 * 30)
    write_file(tree / "etc/hostname", "imgstore-corpus\n", T0 - 86400 * 30)
    return files


def perturb_binary(data, rng):
    """A rebuilt binary: a byte changed every few KiB (moved addresses), plus
    a few small insertions that shift everything after them."""
    b = bytearray(data)
    pos = rng.randrange(0, 8192)
    while pos < len(b):
        b[pos] = rng.randrange(256)
        pos += rng.randrange(2048, 24576)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(b) + 1)
        b[at:at] = rng.randbytes(rng.randrange(8, 512))
    return bytes(b)


def perturb_text(data, rng, k):
    lines = data.split(b"\n")
    if lines:
        i = rng.randrange(len(lines))
        lines[i] = lines[i] + b" (updated)"
    head = [b"# package update %d: security fix %d" % (k, rng.randrange(10000))] * rng.randint(1, 4)
    return b"\n".join(head + lines)


def os_update(tree, base_files, k, t):
    rng = rng_for("osupdate", k)
    regular = [f for f in base_files if (tree / f).is_file() and not (tree / f).is_symlink()]
    total = sum((tree / f).stat().st_size for f in regular)
    target, changed, done = total * 0.04, 0, set()
    while changed < target and len(done) < len(regular):
        start = rng.randrange(len(regular))
        for f in regular[start:start + rng.randint(2, 8)]:
            if f in done:
                continue
            done.add(f)
            p = tree / f
            data = p.read_bytes()
            mode = stat.S_IMODE(p.stat().st_mode)
            new = perturb_text(data, rng, k) if b"\0" not in data[:8192] else perturb_binary(data, rng)
            p.unlink()
            write_file(p, new, t, mode)
            changed += len(data)
    rel = tree / "etc/os-release"
    write_file(rel, rel.read_text() + f"IMAGE_OS_UPDATE={k}\n", t)
    return f"{len(done)} base files ({changed / MIB:.1f} MiB) replaced"


# ---------------------------------------------------------------- wheels

def parse_req(req):
    name, _, version = req.partition("==")
    return name, version


def fetch_wheel(req, wheel_dir, no_pip):
    name, version = parse_req(req)
    wheel_dir.mkdir(parents=True, exist_ok=True)

    prefix = f"{name.replace('-', '_').lower()}-{version}-"

    def cached():
        hits = sorted(p for p in wheel_dir.glob("*.whl") if p.name.lower().startswith(prefix))
        return hits[0] if hits else None

    hit = cached()
    if hit or no_pip:
        return hit
    log(f"pip download {req}")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "-d", str(wheel_dir)] + PIP_TARGET + [req]
    r = subprocess.run(["nice"] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        log(f"pip download {req} failed ({r.stderr.strip().splitlines()[-1:] or r.returncode}); using local fallback")
        return None
    return cached()


def compile_pyc(tree, rels):
    """Compile .py files the way pip does at install time (timestamp pycs)."""
    for rel in rels:
        if not rel.endswith(".py"):
            continue
        src = tree / rel
        cfile = importlib.util.cache_from_source(str(src))
        try:
            py_compile.compile(str(src), cfile=cfile, dfile="/" + rel, doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
        except (py_compile.PyCompileError, SyntaxError, ValueError, OSError):
            continue
        set_time(cfile, int(src.stat().st_mtime))


def pyc_of(tree, rel):
    return os.path.relpath(importlib.util.cache_from_source(str(tree / rel)), tree)


class Installed:
    """A package installed into site-packages: its files, relative to the tree."""

    def __init__(self, req, source, files):
        self.req, self.source, self.files = req, source, files


def install_wheel(tree, whl, t):
    files = []
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            if info.is_dir():
                continue
            rel = f"{SITE}/{info.filename}"
            mode = (info.external_attr >> 16) & 0o777 or 0o644
            write_file(tree / rel, z.read(info), t, mode | 0o444)
            files.append(rel)
    compile_pyc(tree, files)
    files += [pyc_of(tree, f) for f in files if f.endswith(".py") and (tree / pyc_of(tree, f)).exists()]
    return files


def fallback_pool():
    pool = []
    for src in ["/usr/lib", "/usr/libexec"]:
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            if dirpath.startswith("/usr/lib/x86_64-linux-gnu"):
                dirnames[:] = []
                continue
            for name in sorted(filenames):
                p = os.path.join(dirpath, name)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_size >= 65536 and os.access(p, os.R_OK):
                    with open(p, "rb") as f:
                        if f.read(4) != b"\x7fELF":  # compiled code only
                            continue
                    pool.append((p, st.st_size))
    return pool


_POOL = None


def install_fallback(tree, req, mib, t):
    """Stand-in for a wheel pip could not fetch: real compiled bytes from
    local /usr/lib; another version of it = the same files, perturbed."""
    global _POOL
    if _POOL is None:
        _POOL = fallback_pool()
    name, version = parse_req(req)
    cands = list(_POOL)
    rng_for("fallback", name).shuffle(cands)
    budget, used, files = mib * MIB, 0, []
    prng = rng_for("fallback-version", name, version)
    first = SETS_FIRST_VERSION.get(name) == version
    pkg = name.replace("-", "_")
    for p, size in cands:
        if used + size > budget:
            continue
        rel = f"{SITE}/{pkg}/lib/{p.lstrip('/').replace('/', '_')}"
        data = Path(p).read_bytes()
        if not first:
            data = perturb_binary(data, prng)
        write_file(tree / rel, data, t, 0o755)
        files.append(rel)
        used += size
        if used >= budget * 0.98:
            break
    rel = f"{SITE}/{pkg}-{version}.dist-info/METADATA"
    write_file(tree / rel, f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", t)
    return files + [rel]


SETS_FIRST_VERSION = {}


def install_pkg(tree, req, mib, t, wheel_dir, no_pip):
    whl = fetch_wheel(req, wheel_dir, no_pip)
    if whl:
        return Installed(req, f"wheel {whl.name}", install_wheel(tree, whl, t))
    return Installed(req, "local fallback (pip failed)", install_fallback(tree, req, mib, t))


def uninstall(tree, pkg):
    for rel in pkg.files:
        p = tree / rel
        if p.exists() or p.is_symlink():
            p.unlink()
    for rel in sorted({os.path.dirname(r) for r in pkg.files}, key=len, reverse=True):
        d = tree / rel
        while d != tree and d.is_dir() and not any(d.iterdir()):
            d.rmdir()
            d = d.parent


# ---------------------------------------------------------------- the app

WORDS = ("frame batch tensor sample grid mesh cell flux kernel shard block stream "
         "record field vector matrix index cache queue token layer model weight bias "
         "signal window filter buffer packet route node edge graph path score label "
         "event trace span metric gauge probe voxel pixel spectrum phase orbit").split()


def ident(rng):
    return "_".join(rng.sample(WORDS, rng.randint(2, 3)))


def py_function(fname, fseed):
    r = random.Random(fseed)
    args = ", ".join(r.sample(WORDS, r.randint(1, 4)))
    lines = [f"def {fname}({args}, *, scale={r.randint(1, 99)}):",
             f'    """{r.choice(WORDS).capitalize()} the {r.choice(WORDS)} of each {r.choice(WORDS)}.',
             "",
             f"    Returns a {r.choice(['list', 'dict', 'float', 'tuple'])} suitable for "
             f"{ident(r)}() (added in build {r.randint(100, 999)}).",
             '    """']
    for _ in range(r.randint(3, 12)):
        v, a, b = r.choice(WORDS), r.choice(WORDS), r.randint(2, 4096)
        lines.append(r.choice([
            f"    {v}_acc = [x * {b} for x in range({r.randint(2, 64)}) if x % {r.randint(2, 9)}]",
            f"    if scale > {b}:\n        scale = scale // {r.randint(2, 8)} + {r.randint(0, 50)}",
            f"    {v}_map = {{k: k ** 2 % {b} for k in range({r.randint(3, 40)})}}",
            f"    for {v}_i in range({r.randint(2, 16)}):\n        scale += {v}_i * {b} % {r.randint(3, 97)}",
            f"    {v}_name = \"{a}-{v}-{b}\".upper()",
            f"    log.debug(\"{a} {v} %s\", scale * {b})",
        ]))
    lines.append(f"    return scale * {r.random():.6f}")
    return "\n".join(lines) + "\n"


def c_function(fname, fseed):
    r = random.Random(fseed)
    ops = []
    for _ in range(r.randint(3, 10)):
        c1, c2, s = r.getrandbits(64) | 1, r.getrandbits(32), r.randint(1, 63)
        ops.append(r.choice([
            f"        acc = (acc ^ x[i]) * 0x{c1:016x}ULL + (acc >> {s});",
            f"        if ((acc % {r.randint(3, 997)}u) == 0u) acc += tbl[(i + {c2 % 251}u) % TBL_N];",
            f"        acc = (acc << {s}) | (acc >> {64 - s});",
            f"        acc += (uint64_t)(x[i] > 0x{c2:08x}u ? {r.randint(1, 1 << 20)} : {r.randint(1, 1 << 20)});",
            f"        for (unsigned j = 0; j < {r.randint(2, 9)}u; j++) acc = acc * 0x{c1:016x}ULL ^ j;",
        ]))
    body = "\n".join(ops)
    return (f"uint64_t {fname}(const uint64_t *x, size_t n)\n{{\n"
            f"    uint64_t acc = 0x{r.getrandbits(64):016x}ULL;\n"
            f"    for (size_t i = 0; i < n; i++) {{\n{body}\n    }}\n    return acc;\n}}\n")


def func_name(rng):
    return f"{ident(rng)}_{rng.getrandbits(24):06x}"


def new_module(rng, n_lo, n_hi):
    return {"funcs": [[func_name(rng), rng.getrandbits(48)] for _ in range(rng.randint(n_lo, n_hi))],
            "table_seed": rng.getrandbits(48)}


def render_py(name, spec):
    head = (f'"""{name}: part of the imgstore-corpus demo application."""\n\n'
            "import logging\nimport math\n\nlog = logging.getLogger(__name__)\n\n"
            f"TABLE = {[random.Random(spec['table_seed']).randint(0, 9999) for _ in range(24)]}\n\n\n")
    return head + "\n\n".join(py_function(f, s) for f, s in spec["funcs"])


def render_c(name, spec):
    r = random.Random(spec["table_seed"])
    tbl = ", ".join(f"0x{r.getrandbits(32):08x}u" for _ in range(512))
    return (f"/* {name}.c: part of the imgstore-corpus demo application. */\n"
            "#include <stdint.h>\n#include <stddef.h>\n\n#define TBL_N 512u\n"
            f"static const uint32_t tbl[TBL_N] = {{{tbl}}};\n\n"
            + "\n".join(c_function(f"{name}_{f}", s) for f, s in spec["funcs"]))


def edit_module(spec, rng):
    funcs = spec["funcs"]
    for _ in range(rng.randint(1, 3)):
        funcs[rng.randrange(len(funcs))][1] = rng.getrandbits(48)
    if rng.random() < 0.4:
        funcs.insert(rng.randrange(len(funcs) + 1), [func_name(rng), rng.getrandbits(48)])
    if rng.random() < 0.15 and len(funcs) > 3:
        funcs.pop(rng.randrange(len(funcs)))
    if rng.random() < 0.2:
        spec["table_seed"] = rng.getrandbits(48)


class App:
    def __init__(self, cfg):
        rng = rng_for("app")
        self.py = {f"mod_{i:03d}_{ident(rng)}": new_module(rng, 6, 20) for i in range(cfg["py_modules"])}
        self.c = {f"k{i:03d}_{rng.choice(WORDS)}": new_module(rng, 20, 60) for i in range(cfg["c_modules"])}

    def py_rel(self, name):
        return f"opt/app/src/app/{name}.py"

    def c_rel(self, name):
        return f"opt/app/csrc/{name}.c"

    def write_all(self, tree, t):
        for name, spec in self.py.items():
            write_file(tree / self.py_rel(name), render_py(name, spec), t)
        for name, spec in self.c.items():
            write_file(tree / self.c_rel(name), render_c(name, spec), t)
        write_file(tree / "opt/app/src/app/__init__.py", '"""imgstore-corpus demo app."""\n', t)
        write_file(tree / "opt/app/bin/app", "#!/opt/venv/bin/python\nfrom app import main\nmain()\n", t, 0o755)
        compile_pyc(tree, [self.py_rel(n) for n in self.py] + ["opt/app/src/app/__init__.py"])
        self.build_so(tree, t)

    def edit(self, tree, k, t):
        rng = rng_for("edit", k)
        py_names = rng.sample(sorted(self.py), min(len(self.py), rng.randint(2, 4)))
        c_names = rng.sample(sorted(self.c), min(len(self.c), rng.randint(1, 2)))
        for name in py_names:
            edit_module(self.py[name], rng)
            write_file(tree / self.py_rel(name), render_py(name, self.py[name]), t)
        for name in c_names:
            edit_module(self.c[name], rng)
            write_file(tree / self.c_rel(name), render_c(name, self.c[name]), t)
        compile_pyc(tree, [self.py_rel(n) for n in py_names])
        self.build_so(tree, t)
        return f"edited {len(py_names)} .py ({', '.join(py_names)}) and {len(c_names)} .c ({', '.join(c_names)}); libapp.so rebuilt"

    def build_so(self, tree, t):
        app = tree / "opt/app"
        out = app / "lib/libapp.so"
        out.parent.mkdir(parents=True, exist_ok=True)
        srcs = [f"csrc/{n}.c" for n in sorted(self.c)]
        gcc = shutil.which("gcc") or shutil.which("cc")
        if gcc:
            r = subprocess.run(["nice", gcc, "-O2", "-fPIC", "-shared", "-g0", "-o", "lib/libapp.so"] + srcs,
                               cwd=app, stderr=subprocess.PIPE, text=True)
            if r.returncode != 0:
                raise SystemExit(f"gcc failed: {r.stderr[-2000:]}")
        else:
            # No compiler: per-module pseudo-code whose bytes follow the source.
            blob = b"".join(random.Random(hashlib.sha256((app / s).read_bytes()).digest()).randbytes(40000)
                            for s in srcs)
            out.write_bytes(b"\x7fELF" + blob)
        os.chmod(out, 0o755)
        set_time(out, t)


# ---------------------------------------------------------------- per-build metadata

def write_build_meta(tree, k, kind, t, reqs):
    commit = hashlib.sha1(f"{SEED}:{k}".encode()).hexdigest()
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    sd = tree / ".singularity.d"
    labels = {"org.label-schema.build-date": date, "org.label-schema.schema-version": "1.0",
              "org.label-schema.usage.singularity.deffile.bootstrap": "docker",
              "org.label-schema.usage.singularity.deffile.from": "debian:12",
              "org.opencontainers.image.revision": commit, "imgstore.corpus.kind": kind}
    write_file(sd / "labels.json", json.dumps(labels, indent=4) + "\n", t)
    deffile = ("Bootstrap: docker\nFrom: debian:12\n\n%files\n    app /opt/app\n\n%post\n"
               "    python3 -m venv /opt/venv\n    /opt/venv/bin/pip install -r /opt/app/requirements.txt\n\n"
               f"%labels\n    Revision {commit}\n\n%runscript\n    exec /opt/app/bin/app \"$@\"\n")
    write_file(sd / "Singularity", deffile, t)
    write_file(sd / "runscript", "#!/bin/sh\nexec /opt/app/bin/app \"$@\"\n", t, 0o755)
    write_file(sd / "env/90-environment.sh",
               "#!/bin/sh\nexport PATH=/opt/venv/bin:/opt/app/bin:$PATH\nexport PYTHONPATH=/opt/app/src\n", t, 0o755)
    write_file(sd / "env/01-base.sh", "#!/bin/sh\n# base environment\n", T0, 0o755)
    for action in ["exec", "run", "shell", "start", "test"]:
        write_file(sd / "actions" / action, f"#!/bin/sh\n# {action} action\n", T0, 0o755)
    if not (tree / "singularity").is_symlink():
        os.symlink(".singularity.d/runscript", tree / "singularity")
        set_time(tree / "singularity", T0)
    write_file(tree / "opt/app/VERSION", f"0.{k}.0+{commit[:12]}\n", t)
    write_file(tree / "opt/app/requirements.txt", "".join(f"{r}\n" for r in sorted(reqs)), t)


def touch_rebuild(tree, t):
    """A no-cache rebuild: same content, new mtimes, regenerated .pyc."""
    rels = []
    for rel, p in tree_walk(tree / "opt"):
        rel = f"opt/{rel}"
        if os.path.isfile(p) and not os.path.islink(p) and not rel.endswith(".pyc"):
            set_time(p, t)
            rels.append(rel)
    compile_pyc(tree, rels)
    return f"{len(rels)} files under /opt re-stamped, .pyc regenerated"


# ---------------------------------------------------------------- image writers

def make_sqfs(tree, out, t, jobs):
    tmp = out.with_suffix(".sqfs.tmp")
    if tmp.exists():
        tmp.unlink()
    cmd = ["nice", "mksquashfs", str(tree), str(tmp), "-comp", "gzip", "-noappend",
           "-no-xattrs", "-mkfs-time", str(t), "-processors", str(jobs), "-quiet", "-no-progress"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    tmp.rename(out)


def make_ext3(tree, out, t, set_name, k):
    data, files, dirs = tree_stats(tree)
    inodes = (files + dirs) * 6 // 5 + 1024
    blocks = (data * 6 // 5) // 4096 + inodes * 256 // 4096 + dirs
    journal = 1024 if blocks < 32768 else 4096 if blocks < 262144 else 8192 if blocks < 524288 else 16384 if blocks < 4194304 else 32768
    blocks = (blocks + journal + 2048 + 1023) // 1024 * 1024  # 4 MiB granularity
    h = hashlib.sha256(f"{SEED}:{set_name}:{k}".encode()).digest()
    fs_uuid, hash_seed = str(uuid.UUID(bytes=h[:16], version=4)), str(uuid.UUID(bytes=h[16:], version=4))
    tmp = out.with_suffix(".ext3.tmp")
    if tmp.exists():
        tmp.unlink()
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(t))
    cmd = ["nice", "mke2fs", "-q", "-t", "ext3", "-b", "4096", "-N", str(inodes), "-U", fs_uuid,
           "-E", f"hash_seed={hash_seed},root_owner=0:0", "-d", str(tree), "-F", str(tmp), f"{blocks * 4}k"]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    # mke2fs copies st_atime/st_ctime, which the host sets to "now": pin
    # both to the file's mtime so the image does not depend on when it ran.
    script = []
    for rel, p in tree_walk(tree):
        if '"' in rel or "\n" in rel:
            continue
        m = int(os.lstat(p).st_mtime)
        script.append(f'sif "/{rel}" ctime @{m}\nsif "/{rel}" atime @{m}\n')
    script_path = out.with_suffix(".debugfs")
    script_path.write_text("".join(script))
    subprocess.run(["nice", "debugfs", "-w", "-f", str(script_path), str(tmp)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    script_path.unlink()
    tmp.rename(out)


# ---------------------------------------------------------------- driver

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", default="small", choices=sorted(SETS))
    ap.add_argument("--commits", type=int, help="number of commits (default: per set)")
    ap.add_argument("--out", type=Path, help="output dir (default ~/.cache/imgstore-corpus/SET[-cN])")
    ap.add_argument("--wheels", type=Path, default=CACHE_ROOT / "wheels", help="wheel download cache")
    ap.add_argument("--formats", default="sqfs,ext3", help="comma list of sqfs, ext3")
    ap.add_argument("--jobs", type=int, default=1, help="mksquashfs -processors (default 1)")
    ap.add_argument("--no-pip", action="store_true", help="never call pip; use cached wheels or local fallbacks")
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument("--keep-tree", action="store_true", help="keep the last commit's tree in OUT/.work")
    args = ap.parse_args()

    cfg = SETS[args.set]
    n = args.commits or cfg["commits"]
    if n < 1:
        ap.error("--commits must be >= 1")
    formats = [f for f in args.formats.split(",") if f]
    if not set(formats) <= {"sqfs", "ext3"}:
        ap.error("--formats takes sqfs and/or ext3")
    out = args.out or CACHE_ROOT / (args.set if args.commits in (None, cfg["commits"]) else f"{args.set}-c{n}")
    kinds = schedule(n, len(cfg["adds"]))
    fingerprint = json.loads(json.dumps({"gen_version": GEN_VERSION, "seed": SEED, "set": args.set,
                                         "config": cfg, "commits": n, "kinds": kinds, "formats": formats}))
    names = {fmt: [out / f"c{k:02d}-{kind}.{fmt}" for k, kind in enumerate(kinds)] for fmt in formats}
    all_images = [p for fmt in formats for p in names[fmt]]
    manifest_path = out / "manifest.json"

    manifest = None
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            manifest = None
    if manifest and manifest.get("fingerprint") != fingerprint:
        manifest = None
    if manifest and not args.force and manifest.get("complete") and all(p.exists() for p in all_images):
        log(f"cached: {out}")
        print("\n".join(str(p) for p in all_images))
        return
    done = set() if (args.force or not manifest) else set(manifest.get("done", []))
    manifest = {"fingerprint": fingerprint, "complete": False, "done": sorted(done), "commits": []}
    out.mkdir(parents=True, exist_ok=True)

    SETS_FIRST_VERSION.clear()
    for req, _ in cfg["wheels"] + cfg["adds"]:
        name, version = parse_req(req)
        SETS_FIRST_VERSION.setdefault(name, version)

    work = out / ".work"
    if work.exists():
        shutil.rmtree(work)
    tree = work / "tree"
    tree.mkdir(parents=True)
    os.chmod(tree, 0o755)
    started = time.time()
    installed = {}
    adds = list(cfg["adds"])
    app = App(cfg)
    base_files = []
    wheel_mib = dict(cfg["wheels"] + cfg["adds"] + [(cfg["upgrade"][1], dict(cfg["wheels"]).get(cfg["upgrade"][0], 50))])

    for k, kind in enumerate(kinds):
        t = commit_time(k)
        notes = []
        if kind == "init":
            base_files = build_base(tree, cfg)
            notes.append(f"base OS: {len(base_files)} host files")
            for req, mib in cfg["wheels"]:
                pkg = install_pkg(tree, req, mib, t, args.wheels, args.no_pip)
                installed[parse_req(req)[0]] = pkg
                notes.append(f"{req}: {pkg.source}")
            app.write_all(tree, t)
            notes.append(f"app: {len(app.py)} .py, {len(app.c)} .c, libapp.so")
        elif kind == "rebuild":
            app.build_so(tree, t)
            notes.append(touch_rebuild(tree, t))
        else:
            notes.append(app.edit(tree, k, t))
        if kind == "adddep" and adds:
            req, mib = adds.pop(0)
            pkg = install_pkg(tree, req, mib, t, args.wheels, args.no_pip)
            installed[parse_req(req)[0]] = pkg
            notes.append(f"added {req}: {pkg.source}")
        if kind == "upgrade":
            old, new = cfg["upgrade"]
            name = parse_req(old)[0]
            if name in installed:
                uninstall(tree, installed.pop(name))
            pkg = install_pkg(tree, new, wheel_mib[new], t, args.wheels, args.no_pip)
            installed[name] = pkg
            notes.append(f"upgraded {old} -> {new}: {pkg.source}")
        if kind == "osupdate":
            notes.append(os_update(tree, base_files, k, t))
        write_build_meta(tree, k, kind, t, [p.req for p in installed.values()])
        normalize_dir_times(tree, T0)
        data, files, dirs = tree_stats(tree)
        entry = {"commit": k, "kind": kind, "time": t, "tree_bytes": data, "files": files,
                 "dirs": dirs, "changes": notes, "images": {}}
        for fmt in formats:
            img = names[fmt][k]
            if img.name in done and img.exists():
                entry["images"][fmt] = {"path": str(img), "bytes": img.stat().st_size, "cached": True}
                continue
            t_img = time.time()
            if fmt == "sqfs":
                make_sqfs(tree, img, t, args.jobs)
            else:
                make_ext3(tree, img, t, args.set, k)
            entry["images"][fmt] = {"path": str(img), "bytes": img.stat().st_size,
                                    "sha256_16": sha256_16(img)}
            done.add(img.name)
            log(f"c{k:02d} {kind:8s} {fmt}: {img.stat().st_size / MIB:8.1f} MiB in {time.time() - t_img:5.1f}s")
        log(f"c{k:02d} {kind}: tree {data / MIB:.1f} MiB, {files} files; " + "; ".join(notes))
        manifest["commits"].append(entry)
        manifest["done"] = sorted(done)
        manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")

    manifest["complete"] = True
    manifest["seconds"] = round(time.time() - started, 1)
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    if not args.keep_tree:
        shutil.rmtree(work)
    total = sum(p.stat().st_size for p in all_images)
    log(f"done in {time.time() - started:.0f}s: {len(all_images)} images, {total / MIB:.0f} MiB in {out}")
    print("\n".join(str(p) for p in all_images))


def sha256_16(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


if __name__ == "__main__":
    main()
