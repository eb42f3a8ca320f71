#!/usr/bin/env python3
"""Compare imgstore with cp, restic, borg and casync on the same image files.

    python3 benches/compare.py [--work DIR] [--tools cp,imgstore,restic,borg,casync]
                               [--imgstore BIN] [--json FILE] [--keep] IMAGE...

IMAGEs are given in commit order and grouped by extension (.sqfs, .ext3, or
any other): each extension is its own image history, e.g.

    python3 benches/compare.py $(python3 benches/corpus/gen.py --set small)

For each format and each tool, starting from an empty repository, every image
is put (backed up) in order, then the first and the last are got back
(restored) and compared with the original (cmp).  Before every timed command
the page cache is dropped (as root: sync; echo 3 > /proc/sys/vm/drop_caches);
the output says when it could not be.  Each command runs under
`/usr/bin/time -f '%e %U %S %M'` (user, sys CPU and peak RSS of the command
and its children); wall time is measured around it.  After the command, the
files it created or changed in the repository (or the restored file) are
made durable (syncfs(2) on the repository's filesystem after a put, fsync of
the restored file after a get), timed, and that time is added to the wall
time, so tools that do not fsync pay for it like the ones that do (`cp` runs
`cp && sync DEST` as given).
Repository size is `du -sb` (apparent bytes) of the repository directory; the
tool's local cache or index (restic cache, borg cache, imgstore index) is
reported apart.

Each tool runs with its defaults (borg with `-e none`); see benches/PEERS.md.
Prints markdown tables on stdout, progress on stderr.  A tool that fails on
one image is reported in the tables, and the run goes on.  Python 3 stdlib only.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

TOOLS = ["cp", "imgstore", "restic", "borg", "casync"]
FORMAT_NAMES = {".sqfs": "squashfs", ".ext3": "ext3"}
DEFAULT_IMGSTORE = "/root/.cache/imgstore-target/release/imgstore"
MiB = 1048576.0


def log(*a):
    print(*a, file=sys.stderr, flush=True)


IS_ROOT = os.geteuid() == 0


def drop_caches():
    if IS_ROOT:
        subprocess.run(["sync"], check=False)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


class Failed(Exception):
    pass


def timed(argv, env=None, cwd=None, stdout_path=None):
    """Runs argv under /usr/bin/time. Returns a dict; raises Failed on a non-zero exit."""
    tf = os.path.join(WORK_TMP, "time.out")
    full = ["/usr/bin/time", "-f", "%e %U %S %M", "-o", tf, "--"] + list(argv)
    e = dict(os.environ)
    if env:
        e.update(env)
    out = open(stdout_path, "wb") if stdout_path else subprocess.PIPE
    t0 = time.monotonic()
    try:
        p = subprocess.run(full, env=e, cwd=cwd, stdout=out, stderr=subprocess.PIPE)
    finally:
        if stdout_path:
            out.close()
    wall = time.monotonic() - t0
    try:
        last = open(tf).read().strip().splitlines()[-1].split()
        user, sys_, rss = float(last[1]), float(last[2]), int(last[3])
    except (OSError, IndexError, ValueError):
        user = sys_ = float("nan")
        rss = 0
    stdout = "" if stdout_path else p.stdout.decode(errors="replace")
    stderr = p.stderr.decode(errors="replace")
    if p.returncode != 0:
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        raise Failed(f"exit {p.returncode}: {' '.join(argv)[:200]}: {tail[:400]}")
    return {"wall": wall, "cpu": user + sys_, "user": user, "sys": sys_,
            "rss_kib": rss, "stdout": stdout, "stderr": stderr}


def snapshot(d):
    """{path: (size, mtime_ns)} of every file and directory under d."""
    res = {}
    stack = [d]
    while stack:
        cur = stack.pop()
        try:
            st = os.stat(cur)
            res[cur] = (st.st_size, st.st_mtime_ns)
            with os.scandir(cur) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif e.is_file(follow_symlinks=False):
                        s = e.stat(follow_symlinks=False)
                        res[e.path] = (s.st_size, s.st_mtime_ns)
        except FileNotFoundError:
            pass
    return res


def fsync_paths(paths):
    """fsyncs files and directories; returns the wall seconds it took."""
    t0 = time.monotonic()
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
    return time.monotonic() - t0


try:
    import ctypes
    _LIBC = ctypes.CDLL(None, use_errno=True)
    _SYNCFS = _LIBC.syncfs
except (OSError, AttributeError):
    _SYNCFS = None


def sync_repo(before, d):
    """Makes what a put wrote durable: syncfs(2) on the repository's filesystem
    (one batched writeback, the cheapest way for a tool that does not fsync);
    without syncfs, an fsync of each file and directory that changed.
    Returns (wall seconds, number of entries that changed)."""
    after = snapshot(d)
    changed = [p for p, v in after.items() if before.get(p) != v]
    if _SYNCFS is not None:
        t0 = time.monotonic()
        fd = os.open(d, os.O_RDONLY)
        try:
            _SYNCFS(fd)
        finally:
            os.close(fd)
        return time.monotonic() - t0, len(changed)
    # files first, then directories deepest first
    changed.sort(key=lambda p: (os.path.isdir(p), -p.count("/")))
    return fsync_paths(changed), len(changed)


def du(d, apparent=True):
    if not os.path.exists(d):
        return 0
    args = ["du", "-sb", d] if apparent else ["du", "-s", "-B1", d]
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        return int(p.stdout.split()[0])
    except (IndexError, ValueError):
        return 0


def same_bytes(a, b):
    return subprocess.run(["cmp", "-s", a, b]).returncode == 0


def rmtree(p):
    if os.path.lexists(p):
        shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------- tools
#
# Each tool: init(); put(i, img) -> (timed-result, extra dict); get(i, img, out)
# -> (timed-result, path of the restored file).  `repo` is what du measures,
# `cache` the tool's local cache/index (reported apart).


class Tool:
    name = "?"

    def __init__(self, base, args):
        self.base = base
        self.repo = os.path.join(base, "repo")
        self.cache = os.path.join(base, "cache")
        self.outdir = os.path.join(base, "out")
        self.args = args
        self.env = {}
        self.name = type(self).name

    def prepare(self):
        rmtree(self.base)
        os.makedirs(self.base)
        os.makedirs(self.cache)
        os.makedirs(self.outdir)

    def init(self):
        pass

    def init_cmds(self):
        return []

    def before_put(self, i, img, last):
        """Untimed housekeeping before put i (of `img`) of images 0..=last."""

    def repo_size(self, apparent=True):
        return du(self.repo, apparent)


class Cp(Tool):
    name = "cp"

    def init(self):
        os.makedirs(self.repo)
        self.dropped = {True: 0, False: 0}

    def before_put(self, i, img, last):
        # Only the first and last copies are got back; dropping the others
        # (counted as if kept) lets the full set's ~30 GiB of ext3 history fit
        # beside the other tools' repositories. A history is one extension,
        # so the previous copy's name follows from this image's.
        prev = i - 1
        if 0 < prev < last:
            d = self.dest(prev, img)
            for apparent in (True, False):
                self.dropped[apparent] += du(d, apparent)
            os.remove(d)

    def repo_size(self, apparent=True):
        return du(self.repo, apparent) + self.dropped[apparent]

    def dest(self, i, img):
        return os.path.join(self.repo, f"c{i}{os.path.splitext(img)[1]}")

    def put_cmd(self, i, img):
        d = self.dest(i, img)
        return ["sh", "-c", f"cp '{img}' '{d}' && sync '{d}'"]

    def put(self, i, img):
        return timed(self.put_cmd(i, img)), {}

    def get_cmd(self, i, img, out):
        return ["cp", self.dest(i, img), out]

    def get(self, i, img, out):
        return timed(self.get_cmd(i, img, out)), out


class Imgstore(Tool):
    name = "imgstore"

    def __init__(self, base, args):
        super().__init__(base, args)
        self.bin = args.imgstore
        self.env = {"IMGSTORE_STORE": self.repo, "IMGSTORE_INDEX_DIR": self.cache + "/idx"}

    def init_cmds(self):
        return [[self.bin, "init"]]

    def init(self):
        for c in self.init_cmds():
            timed(c, env=self.env)

    def put_cmd(self, i, img):
        return [self.bin, "--json", "put", f"bench/img:c{i}", img]

    def put(self, i, img):
        r = timed(self.put_cmd(i, img), env=self.env)
        extra = {}
        try:
            j = json.loads(r["stdout"])
            extra["stored_bytes"] = j["added"]["stored_bytes"]
            extra["self_seconds"] = j.get("seconds")
        except (ValueError, KeyError, TypeError):
            pass
        return r, extra

    def get_cmd(self, i, img, out):
        return [self.bin, "get", f"bench/img:c{i}", "-o", out]

    def get(self, i, img, out):
        return timed(self.get_cmd(i, img, out), env=self.env), out


class Restic(Tool):
    name = "restic"

    def __init__(self, base, args):
        super().__init__(base, args)
        self.env = {"RESTIC_PASSWORD": "x", "RESTIC_CACHE_DIR": self.cache}
        self.snaps = {}

    def init_cmds(self):
        return [["restic", "init", "--repo", self.repo]]

    def init(self):
        for c in self.init_cmds():
            timed(c, env=self.env)

    def put_cmd(self, i, img):
        return ["restic", "backup", "--repo", self.repo, "--tag", f"c{i}", "--json", img]

    def put(self, i, img):
        r = timed(self.put_cmd(i, img), env=self.env)
        extra = {}
        for line in r["stdout"].splitlines():
            try:
                j = json.loads(line)
            except ValueError:
                continue
            if j.get("message_type") == "summary":
                self.snaps[i] = j.get("snapshot_id")
                extra["data_added"] = j.get("data_added")
        if i not in self.snaps:  # fall back to the snapshot list
            p = subprocess.run(["restic", "snapshots", "--repo", self.repo, "--tag", f"c{i}", "--json"],
                               env={**os.environ, **self.env}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            try:
                self.snaps[i] = json.loads(p.stdout)[-1]["id"]
            except (ValueError, IndexError, KeyError):
                pass
        return r, extra

    def get_cmd(self, i, img, out):
        target = os.path.join(self.outdir, f"restore-c{i}")
        return ["restic", "restore", "--repo", self.repo, self.snaps.get(i, f"<snapshot-id-of-c{i}>"),
                "--target", target]

    def get(self, i, img, out):
        target = os.path.join(self.outdir, f"restore-c{i}")
        r = timed(self.get_cmd(i, img, out), env=self.env)
        return r, target + os.path.abspath(img)


class Borg(Tool):
    name = "borg"

    def __init__(self, base, args):
        super().__init__(base, args)
        self.env = {
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
            "BORG_CACHE_DIR": os.path.join(self.cache, "cache"),
            "BORG_CONFIG_DIR": os.path.join(self.cache, "config"),
            "BORG_PASSPHRASE": "",
        }

    def init_cmds(self):
        return [["borg", "init", "-e", "none", self.repo]]

    def init(self):
        for c in self.init_cmds():
            timed(c, env=self.env)

    def put_cmd(self, i, img):
        return ["borg", "create", f"{self.repo}::c{i}", img]

    def put(self, i, img):
        return timed(self.put_cmd(i, img), env=self.env), {}

    def get_cmd(self, i, img, out):
        return ["borg", "extract", f"{self.repo}::c{i}"]

    def get(self, i, img, out):
        d = os.path.join(self.outdir, f"extract-c{i}")
        os.makedirs(d, exist_ok=True)
        r = timed(self.get_cmd(i, img, out), env=self.env, cwd=d)
        return r, os.path.join(d, os.path.abspath(img).lstrip("/"))


class Casync(Tool):
    name = "casync"

    def init(self):
        os.makedirs(self.repo)

    def put_cmd(self, i, img):
        return ["casync", "make", f"--store={self.repo}/store", f"{self.repo}/c{i}.caibx", img]

    def put(self, i, img):
        return timed(self.put_cmd(i, img)), {}

    def get_cmd(self, i, img, out):
        return ["casync", "extract", f"--store={self.repo}/store", f"{self.repo}/c{i}.caibx", out]

    def get(self, i, img, out):
        return timed(self.get_cmd(i, img, out)), out


TOOL_CLASSES = {c.name: c for c in (Cp, Imgstore, Restic, Borg, Casync)}


# ---------------------------------------------------------------- run


def do_put(t, res, i, img, last):
    size = os.path.getsize(img)
    t.before_put(i, img, last)
    before = snapshot(t.repo)
    prev = res["puts"][-1]["repo_bytes"] if res["puts"] else res["empty_bytes"]
    drop_caches()
    entry = {"i": i, "image": os.path.basename(img), "size": size}
    try:
        r, extra = t.put(i, img)
        sync_s, nsync = sync_repo(before, t.repo)
        entry.update(ok=True, tool_wall=r["wall"], sync_wall=sync_s, changed=nsync,
                     wall=r["wall"] + sync_s, cpu=r["cpu"], user=r["user"], sys=r["sys"],
                     rss_kib=r["rss_kib"], **extra)
    except Failed as e:
        entry.update(ok=False, error=str(e))
        res["errors"].append(f"put c{i}: {e}")
        log(f"  {t.name}: put c{i} FAILED: {e}")
    entry["repo_bytes"] = t.repo_size()
    entry["added"] = entry["repo_bytes"] - prev
    res["puts"].append(entry)
    if entry.get("ok"):
        log(f"  {t.name:8} put c{i} {size / MiB:.0f} MiB: {entry['wall']:.2f}s "
            f"({size / 1e6 / entry['wall']:.0f} MB/s, syncfs {entry['sync_wall']:.2f}s), "
            f"+{entry['added'] / MiB:.1f} MiB, cpu {entry['cpu']:.2f}s, rss {entry['rss_kib'] / 1024:.0f} MiB")


def do_get(t, res, i, img):
    size = os.path.getsize(img)
    out = os.path.join(t.outdir, f"c{i}.out")
    entry = {"i": i, "image": os.path.basename(img), "size": size}
    drop_caches()
    try:
        r, path = t.get(i, img, out)
        sync_s = fsync_paths([path])
        entry.update(ok=True, tool_wall=r["wall"], sync_wall=sync_s, wall=r["wall"] + sync_s,
                     cpu=r["cpu"], user=r["user"], sys=r["sys"], rss_kib=r["rss_kib"])
        entry["identical"] = os.path.isfile(path) and same_bytes(path, img)
        if not entry["identical"]:
            res["errors"].append(f"get c{i}: bytes differ from the original")
        log(f"  {t.name:8} get c{i}: {entry['wall']:.2f}s ({size / 1e6 / entry['wall']:.0f} MB/s), "
            f"cpu {entry['cpu']:.2f}s, identical={entry['identical']}")
    except Failed as e:
        entry.update(ok=False, error=str(e))
        res["errors"].append(f"get c{i}: {e}")
        log(f"  {t.name}: get c{i} FAILED: {e}")
    res["gets"].append(entry)
    rmtree(t.outdir)
    os.makedirs(t.outdir, exist_ok=True)


def run_format(fmt, images, tools, args, t_start):
    """Every tool gets its own empty repository; the tools take turns image by
    image (all put image 0, then all put image 1, ...), so each ratio to cp is
    taken within the same minute even when the machine's load changes."""
    name = FORMAT_NAMES.get(fmt, fmt)
    live, results = {}, {}
    for tool in tools:
        cls = TOOL_CLASSES[tool]
        t = cls(os.path.join(args.work, fmt.strip("."), tool), args)
        res = {"tool": tool, "puts": [], "gets": [], "errors": [], "init_error": None,
               "repo_bytes": 0, "repo_disk_bytes": 0, "cache_bytes": 0}
        results[tool] = res
        try:
            t.prepare()
            t.init()
            res["empty_bytes"] = du(t.repo)
            res["cmds"] = {"init": [" ".join(c) for c in t.init_cmds()],
                           "put": " ".join(t.put_cmd(0, images[0])),
                           "get": " ".join(t.get_cmd(0, images[0], os.path.join(t.outdir, "c0.out")))}
            live[tool] = t
        except (Failed, OSError) as e:
            res["init_error"] = str(e)
            res["errors"].append(f"init: {e}")
            log(f"  {tool}: init FAILED: {e}")

    def guarded(tool, fn, *a):
        try:
            fn(live[tool], results[tool], *a)
        except Exception as e:  # keep going: report it
            results[tool]["errors"].append(f"crashed: {e!r}")
            log(f"  {tool}: crashed: {e!r}")

    for i, img in enumerate(images):
        log(f"[{name}] put c{i} {os.path.basename(img)} ({time.monotonic() - t_start:.0f}s elapsed)")
        for tool in live:
            guarded(tool, do_put, i, img, len(images) - 1)
    for tool, t in live.items():
        results[tool]["repo_bytes"] = t.repo_size()
        results[tool]["repo_disk_bytes"] = t.repo_size(apparent=False)
        results[tool]["cache_bytes"] = du(t.cache)
    last = len(images) - 1
    for i in sorted({0, last}):
        log(f"[{name}] get c{i} ({time.monotonic() - t_start:.0f}s elapsed)")
        for tool in live:
            guarded(tool, do_get, i, images[i])
    if not args.keep:
        for t in live.values():
            rmtree(t.base)
    return results


# ---------------------------------------------------------------- report


def med(v):
    v = [x for x in v if x == x]
    return statistics.median(v) if v else float("nan")


def mbps(e):
    return e["size"] / 1e6 / e["wall"] if e.get("ok") else float("nan")


def f(x, spec="{:.0f}", dash="–"):
    return dash if x != x else spec.format(x)


def report(fmt, images, results, out, sizes):
    name = FORMAT_NAMES.get(fmt, fmt)
    logical = sum(sizes)
    n = len(images)
    w = lambda s="": print(s, file=out)
    w(f"### {name}: {n} images, {logical / MiB:.0f} MiB logical")
    w()
    cp = results.get("cp")
    cp_put = [mbps(e) for e in cp["puts"]] if cp and cp["puts"] else None
    cp_get = {e["i"]: mbps(e) for e in cp["gets"]} if cp else {}

    def ratio(tool_mbps, cp_mbps):
        return tool_mbps / cp_mbps if cp_mbps and cp_mbps == cp_mbps else float("nan")

    w("| tool | put MB/s first | ×cp | put MB/s later (median) | ×cp | get MB/s (median of first, last) | ×cp "
      "| repo MiB | added per later commit, median MiB | dedup (logical/repo) | peak RSS MiB "
      "| first put CPU s / wall s | later put CPU s (median) | get CPU s (median) | local cache MiB | failures |")
    w("|---|" + "---:|" * 14 + "---|")
    for tool, r in results.items():
        if r["init_error"]:
            w(f"| {tool} |" + " – |" * 14 + f" init failed: {r['init_error'][:120]} |")
            continue
        puts, gets = r["puts"], r["gets"]
        first = puts[0] if puts else {}
        first_mbps = mbps(first) if first else float("nan")
        first_ratio = ratio(first_mbps, cp_put[0]) if cp_put else float("nan")
        later = puts[1:]
        later_mbps = med([mbps(e) for e in later])
        later_ratio = med([ratio(mbps(e), cp_put[e["i"]]) for e in later]) if cp_put else float("nan")
        get_mbps = med([mbps(e) for e in gets])
        get_ratio = med([ratio(mbps(e), cp_get.get(e["i"])) for e in gets])
        added_later = med([e["added"] for e in later]) / MiB if later else float("nan")
        rss = max([e.get("rss_kib", 0) for e in puts + gets] or [0]) / 1024
        cpu_wall = (f"{first['cpu']:.2f} / {first['wall']:.2f}" if first.get("ok") else "–")
        later_cpu = med([e["cpu"] for e in later if e.get("ok")])
        get_cpu = med([e["cpu"] for e in gets if e.get("ok")])
        dedup = logical / r["repo_bytes"] if r["repo_bytes"] else float("nan")
        fails = len(r["errors"])
        w(f"| {tool} | {f(first_mbps)} | {f(first_ratio, '{:.2f}')} | {f(later_mbps)} | {f(later_ratio, '{:.2f}')} "
          f"| {f(get_mbps)} | {f(get_ratio, '{:.2f}')} | {r['repo_bytes'] / MiB:.1f} | {f(added_later, '{:.1f}')} "
          f"| {f(dedup, '{:.2f}')} | {rss:.0f} | {cpu_wall} | {f(later_cpu, '{:.2f}')} | {f(get_cpu, '{:.2f}')} | {r['cache_bytes'] / MiB:.1f} | {fails or ''} |")
    w()
    tools = list(results)
    w(f"Bytes added to the repository per commit (MiB, `du -sb` growth; imgstore's own `added.stored_bytes` in brackets):")
    w()
    w("| commit | image MiB | " + " | ".join(tools) + " |")
    w("|---|---:|" + "---:|" * len(tools))
    for i, img in enumerate(images):
        cells = []
        for tool in tools:
            r = results[tool]
            e = r["puts"][i] if i < len(r["puts"]) else None
            if not e:
                cells.append("–")
                continue
            c = f"{e['added'] / MiB:.1f}"
            if "stored_bytes" in e:
                c += f" [{e['stored_bytes'] / MiB:.1f}]"
            if not e.get("ok"):
                c += " FAILED"
            cells.append(c)
        w(f"| {os.path.basename(img)} | {sizes[i] / MiB:.0f} | " + " | ".join(cells) + " |")
    w()
    w("Put MB/s per commit (wall incl. the syncfs after it; in brackets: seconds of that syncfs, peak RSS MiB):")
    w()
    w("| commit | " + " | ".join(tools) + " |")
    w("|---|" + "---:|" * len(tools))
    for i, img in enumerate(images):
        cells = []
        for tool in tools:
            r = results[tool]
            e = r["puts"][i] if i < len(r["puts"]) else None
            cells.append("–" if not e else (f"{mbps(e):.0f} [{e['sync_wall']:.2f} s, {e['rss_kib'] / 1024:.0f}]" if e.get("ok") else "FAILED"))
        w(f"| {os.path.basename(img)} | " + " | ".join(cells) + " |")
    w()
    w("Gets (MB/s, CPU s / wall s, peak RSS MiB, bytes identical):")
    w()
    got = sorted({0, len(images) - 1})
    w("| tool | " + " | ".join(f"c{i}" for i in got) + " |")
    w("|---|" + "---|" * len(got))
    for tool, r in results.items():
        cells = []
        for e in r["gets"]:
            if e.get("ok"):
                cells.append(f"{mbps(e):.0f} MB/s, {e['cpu']:.2f}/{e['wall']:.2f} s, {e['rss_kib'] / 1024:.0f} MiB, "
                             f"{'identical' if e['identical'] else 'DIFFERENT'}")
            else:
                cells.append("FAILED")
        w(f"| {tool} | " + " | ".join(cells) + " |")
    w()
    errs = [(t, e) for t, r in results.items() for e in r["errors"]]
    if errs:
        w("Failures:")
        w()
        for t, e in errs:
            w(f"- {t}: {e}")
        w()


def targets(runs, out):
    """The issue's targets, per run and pooled over runs, from --json files."""
    w = lambda s="": print(s, file=out)
    pooled = {}
    w("| run | format | known put ×cp, commits 1.. | median | new put ×borg | get ×cp | first put CPU s / wall s "
      "| peak RSS MiB | commits stored in no more bytes than the best peer |")
    w("|---|---|---|---:|---:|---|---:|---:|---|")
    for name, saved in runs:
        for fmt, g in saved["formats"].items():
            r = g["results"]
            im, cp, borg = r["imgstore"], r.get("cp"), r.get("borg")
            ratio = lambda a, b: mbps(a) / mbps(b)  # same image: b's wall time / a's; nan if either failed
            known = [ratio(e, cp["puts"][e["i"]]) for e in im["puts"][1:]] if cp else []
            new = ratio(im["puts"][0], borg["puts"][0]) if borg and borg["puts"] else float("nan")
            cp_gets = {e["i"]: e for e in cp["gets"]} if cp else {}
            gets = [ratio(e, cp_gets[e["i"]]) for e in im["gets"] if e["i"] in cp_gets]
            first = im["puts"][0]
            rss = max(e.get("rss_kib", 0) for e in im["puts"] + im["gets"]) / 1024
            peers = [t for t in ("restic", "borg", "casync") if t in r]
            won = []
            for e in im["puts"]:
                best = min((r[t]["puts"][e["i"]]["added"] for t in peers if e["i"] < len(r[t]["puts"])), default=None)
                if best is not None:
                    won.append(f"c{e['i']:02d} {'yes' if e['added'] <= best else 'no'} ({(e['added'] - best) / MiB:+.1f} MiB)")
            w(f"| {name} | {FORMAT_NAMES.get(fmt, fmt)} | {' '.join(f(x, '{:.2f}') for x in known)} "
              f"| {f(med(known), '{:.2f}')} | {f(new, '{:.2f}')} | {' '.join(f(x, '{:.2f}') for x in gets)} "
              f"| {first['cpu']:.2f} / {first['wall']:.2f} = {first['cpu'] / first['wall']:.2f} | {rss:.0f} "
              f"| {', '.join(won) or '–'} |")
            p = pooled.setdefault(FORMAT_NAMES.get(fmt, fmt), {"known": [], "new": [], "get": []})
            p["known"] += known
            p["new"].append(new)
            p["get"] += gets
    w()
    for fmt, p in pooled.items():
        w(f"- {fmt}, pooled over {len(runs)} run(s): known put ×cp median {f(med(p['known']), '{:.2f}')} "
          f"({sum(x >= 1 for x in p['known'])} of {len(p['known'])} at or above 1.0), new put ×borg median "
          f"{f(med(p['new']), '{:.2f}')}, get ×cp median {f(med(p['get']), '{:.2f}')} ({len(p['get'])} gets)")


def versions(args):
    def first_line(cmd):
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
            return p.stdout.decode(errors="replace").strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "not found"
    return {
        "cp": first_line(["cp", "--version"]),
        "imgstore": first_line([args.imgstore, "--version"]) + f" ({args.imgstore})",
        "restic": first_line(["restic", "version"]),
        "borg": first_line(["borg", "--version"]),
        "casync": first_line(["casync", "--version"]),
    }


def main():
    global WORK_TMP
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="*", help="image files in commit order (grouped by extension)")
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/imgstore-compare"))
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--imgstore", default=DEFAULT_IMGSTORE, help="the imgstore release binary")
    ap.add_argument("--json", help="also write all raw measurements to this file")
    ap.add_argument("--from-json", metavar="FILE", help="only print the tables of an earlier run's --json file")
    ap.add_argument("--targets", metavar="FILE", nargs="+",
                    help="only print the issue's targets, per run and pooled, from earlier runs' --json files")
    ap.add_argument("--keep", action="store_true", help="keep the repositories")
    args = ap.parse_args()
    out = sys.stdout
    w = lambda s="": print(s, file=out, flush=True)
    if args.targets:
        runs = []
        for path in args.targets:
            with open(path) as fh:
                runs.append((os.path.basename(path), json.load(fh)))
        targets(runs, out)
        return
    if args.from_json:
        with open(args.from_json) as fh:
            saved = json.load(fh)
        for line in saved.get("header", []):
            w(line)
        for fmt, g in saved["formats"].items():
            report(fmt, g["images"], g["results"], out, g["sizes"])
        for line in saved.get("footer", []):
            w(line)
        return
    if not args.images:
        ap.error("give image files (or --from-json FILE)")
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    for t in tools:
        if t not in TOOL_CLASSES:
            ap.error(f"unknown tool {t!r}; known: {', '.join(TOOLS)}")
    if not os.access("/usr/bin/time", os.X_OK):
        sys.exit("compare.py: /usr/bin/time is missing (apt-get install -y time)")
    args.work = os.path.abspath(args.work)
    os.makedirs(args.work, exist_ok=True)
    WORK_TMP = args.work
    groups = {}
    for p in args.images:
        p = os.path.abspath(p)
        if not os.path.isfile(p):
            sys.exit(f"compare.py: not a file: {p}")
        groups.setdefault(os.path.splitext(p)[1], []).append(p)

    vers = versions(args)
    header = [
        f"## imgstore vs peers: {len(args.images)} images, tools {', '.join(tools)}",
        "",
        f"- host: {platform.node()}, {os.cpu_count()} CPUs, kernel {platform.release()}, "
        f"load average at start {' '.join(open('/proc/loadavg').read().split()[:3])}",
        f"- page cache: {'dropped before every timed command' if IS_ROOT else 'NOT dropped (not root): reads may come from cache'}",
        "- put wall time includes a syncfs(2) of the repository's filesystem after the command, get wall time an fsync "
        "of the restored file (cp put: `cp && sync DEST`); MB/s = image bytes / wall seconds; "
        "×cp = same image, cp in the same run; CPU s = user + sys of the command and its children",
        "- repo = `du -sb` of the repository directory; local cache (restic cache, borg cache, imgstore index) apart",
    ] + [f"- {k}: {vers[k]}" for k in tools] + [""]
    for line in header:
        w(line)
    all_results = {}
    t_start = time.monotonic()
    for fmt, imgs in groups.items():
        sizes = [os.path.getsize(p) for p in imgs]
        results = run_format(fmt, imgs, tools, args, t_start)
        report(fmt, imgs, results, out, sizes)
        out.flush()
        all_results[fmt] = {"images": imgs, "sizes": sizes, "results": results}
    footer = [f"Total run time {time.monotonic() - t_start:.0f} s; load average at end "
              f"{' '.join(open('/proc/loadavg').read().split()[:3])}.", "",
              "Commands (first image shown; `cN` is the commit number):", ""]
    for fmt, g in all_results.items():
        for tool, r in g["results"].items():
            for k, c in r.get("cmds", {}).items():
                if isinstance(c, list):
                    c = " ; ".join(c)
                if c:
                    footer.append(f"- {tool} {k}: `{c}`")
        break
    for line in footer:
        w(line)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"versions": vers, "root": IS_ROOT, "header": header, "footer": footer,
                       "formats": all_results}, fh, indent=1)


WORK_TMP = "/tmp"

if __name__ == "__main__":
    main()
