"""Memory and caches (issue 7, part 5): the bucket cache evicts idle buckets
and reloads them exactly; long create/delete runs leave nothing behind."""

from __future__ import annotations

import errno
import json
import os
import re
import time
from pathlib import Path

from ironfs.bench import bucket_memory
from tests.mounting import (
    assert_invariant,
    expect_errno,
    ledger,
    reconcile_via_xattr,
    scan,
    start_mount,
    wait_for,
)


def metric(textfile: Path, name: str, labels: str = "") -> float:
    pattern = re.compile(rf"^{name}{re.escape(labels)} (\S+)$", re.M)
    found = pattern.search(textfile.read_text()) if textfile.exists() else None
    return float(found.group(1)) if found else -1.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_memory_per_tracked_bucket_at_100k() -> None:
    assert bucket_memory(100_000) < 512


def test_daemon_memory_per_bucket_with_100k_buckets(tmp_path: Path) -> None:
    """RSS of a daemon serving 100,000 buckets (after a clean restart, so usage
    comes from .quota) against one serving none, in the same run."""
    n = 100_000
    backing = tmp_path / "backing"
    backing.mkdir()
    for i in range(n):
        os.mkdir(backing / f"bucket-{i:06d}")
    options = ["flush_interval_ms=3600000"]
    start_mount(backing, tmp_path / "s3", options=options).stop()  # scan, write every .quota
    empty = start_mount(tmp_path / "empty", tmp_path / "s3-empty", options=options)
    try:
        m = start_mount(backing, tmp_path / "s3", options=options)
        try:
            time.sleep(0.5)
            per_bucket = (rss_kib(m.proc.pid) - rss_kib(empty.proc.pid)) * 1024 / n
            assert int(os.getxattr(m.mnt / "bucket-099999", b"user.ironfs.used_bytes")) == 0
        finally:
            m.stop()
    finally:
        empty.stop()
    print(f"daemon RSS per bucket at {n:,} buckets: {per_bucket:.0f} B")
    assert per_bucket < 512


def test_bucket_cache_evicts_idle_buckets_and_reloads_them_exactly(tmp_path: Path) -> None:
    textfile = tmp_path / "metrics.prom"
    options = ["flush_interval_ms=50", "bucket_cache=2", f"metrics_file={textfile}"]
    m = start_mount(tmp_path / "backing", tmp_path / "s3", options=options)
    names = [f"b{i}" for i in range(6)]
    try:
        for i, name in enumerate(names):
            (m.mnt / name).mkdir()
            if name != "b5":
                (m.mnt / name / "obj").write_bytes(b"x" * (1000 * (i + 1)))
        os.setxattr(m.mnt / "b0", b"user.ironfs.max_bytes", b"1500")
        os.setxattr(m.mnt, b"user.ironfs.account.acme",
                    json.dumps({"max_bytes": 6000, "buckets": ["b1", "b2"]}).encode())
        wait_for(lambda: metric(textfile, "ironfs_buckets", '{where="evicted"}') == 4)
        assert metric(textfile, "ironfs_buckets", '{where="memory"}') == 2
        # Listing and stat'ing the buckets (S3 ListBuckets/HeadBucket) reloads none.
        reloads = m.log_text().count(" reloaded")
        assert sorted(os.listdir(m.mnt)) == names
        for name in names:
            assert os.stat(m.mnt / name).st_nlink >= 2
        assert m.log_text().count(" reloaded") == reloads
        # The account still counts its evicted members, and enforces on them.
        acct = json.loads(os.getxattr(m.mnt, b"user.ironfs.account.acme"))
        assert acct["used_bytes"] == 5000
        expect_errno(errno.ENOSPC, (m.mnt / "b1" / "more").write_bytes, b"y" * 1001)
        (m.mnt / "b2" / "more").write_bytes(b"y" * 1000)
        # A limit set before eviction holds after the reload.
        expect_errno(errno.ENOSPC, (m.mnt / "b0" / "more").write_bytes, b"z" * 501)
        assert ledger(m.mnt, "b0") == (1000, 2)  # the refused write left an empty file
        # Rename and delete buckets that were evicted.
        wait_for(lambda: metric(textfile, "ironfs_buckets", '{where="evicted"}') == 4)
        os.rename(m.mnt / "b3", m.mnt / "b3-renamed")
        os.rmdir(m.mnt / "b5")
        assert sorted(os.listdir(m.mnt)) == sorted([*names[:3], "b3-renamed", "b4"])
        assert ledger(m.mnt, "b3-renamed") == (4000, 1)
        assert_invariant(m, "b0", "b1", "b2", "b3-renamed", "b4")
        acct = json.loads(os.getxattr(m.mnt, b"user.ironfs.account.acme"))
        assert acct["used_bytes"] == scan(m.backing, "b1")[0] + scan(m.backing, "b2")[0] == 6000
        # A reconcile of everything covers the evicted buckets too.
        wait_for(lambda: metric(textfile, "ironfs_buckets", '{where="evicted"}') == 3)
        (m.backing / "b4" / "behind").write_bytes(b"q" * 700)
        report = reconcile_via_xattr(m.mnt, "fix")
        rows = {row["bucket"]: row for row in report["buckets"]}
        assert set(rows) == {"b0", "b1", "b2", "b3-renamed", "b4"}
        assert (rows["b4"]["drift_bytes"], rows["b4"]["drift_objects"]) == (700, 1)
        assert ledger(m.mnt, "b4") == scan(m.backing, "b4") == (5700, 2)
    finally:
        assert m.stop() == 0
    m = start_mount(tmp_path / "backing", tmp_path / "s3")
    try:
        assert_invariant(m, "b0", "b1", "b2", "b3-renamed", "b4")
        assert int(os.getxattr(m.mnt / "b0", b"user.ironfs.max_bytes")) == 1500
    finally:
        m.stop()


def test_no_growth_over_create_delete_cycles(tmp_path: Path) -> None:
    textfile = tmp_path / "metrics.prom"
    m = start_mount(tmp_path / "backing", tmp_path / "s3",
                    options=["flush_interval_ms=50", "bucket_cache=50", f"metrics_file={textfile}"])

    def cycles(start: int, n: int) -> None:
        for i in range(start, start + n):
            bucket = m.mnt / f"c{i}"
            bucket.mkdir()
            (bucket / "obj").write_bytes(b"o" * 3000)
            assert (bucket / "obj").read_bytes() == b"o" * 3000
            with open(bucket / "held", "wb") as f:  # unlinked while open
                f.write(b"h" * 100)
                os.unlink(bucket / "held")
            os.rename(bucket / "obj", bucket / "obj2")
            os.unlink(bucket / "obj2")
            os.rmdir(bucket)

    def settled() -> tuple[float, float]:
        time.sleep(0.3)  # a few flushes: metrics written
        return (metric(textfile, "ironfs_inodes"), metric(textfile, "ironfs_open_files"))

    try:
        cycles(0, 200)
        inodes, handles = settled()
        rss = rss_kib(m.proc.pid)
        cycles(200, 1000)
        inodes2, handles2 = settled()
        rss2 = rss_kib(m.proc.pid)
        assert handles == handles2 == 0
        assert inodes2 <= inodes <= 4, (inodes, inodes2)
        assert rss2 - rss < 2048, f"RSS grew by {rss2 - rss} KiB over 1000 cycles"
        assert os.listdir(m.mnt) == []
        assert metric(textfile, "ironfs_buckets", '{where="memory"}') == 0
        print(f"1200 cycles: inodes {inodes}->{inodes2}, RSS {rss}->{rss2} KiB")
    finally:
        m.stop()
    # Only the archived state of the deleted buckets is left on the backing root.
    assert os.listdir(tmp_path / "backing") == [".ironfs"]
