"""The generic profile's counting rules, through a real mount with plain syscalls."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.mounting import Mount, start_mount


def counters(m: Mount, bucket: str) -> dict:
    time.sleep(0.7)  # let pending lookups become HEADs (or not)
    return orjson.loads(os.getxattr(m.mnt / bucket, "user.ironfs.stats"))


def delta(m: Mount, bucket: str, before: dict) -> dict:
    after = counters(m, bucket)
    return {k: after[k] - before[k] for k in after if k.endswith("_count") and after[k] != before[k]}


def test_write_and_close_is_one_put(mount: Mount, bucket: str, bpath: Path) -> None:
    before = counters(mount, bucket)
    with open(bpath / "obj", "wb") as f:
        f.write(b"a" * 100)
        f.flush()
        f.write(b"b" * 100)
    assert delta(mount, bucket, before) == {"put_count": 1}


def test_staging_file_published_by_rename_is_one_put(mount: Mount, bucket: str, bpath: Path) -> None:
    before = counters(mount, bucket)
    (bpath / ".upload").write_bytes(b"data")
    os.rename(bpath / ".upload", bpath / "obj")
    assert delta(mount, bucket, before) == {"put_count": 1}


def test_read_is_a_get_and_no_head(mount: Mount, bucket: str, bpath: Path) -> None:
    (bpath / "obj").write_bytes(b"data")
    time.sleep(1.1)
    before = counters(mount, bucket)
    assert (bpath / "obj").read_bytes() == b"data"
    assert delta(mount, bucket, before) == {"get_count": 1}


def test_stat_without_open_is_a_head(mount: Mount, bucket: str, bpath: Path) -> None:
    (bpath / "obj").write_bytes(b"data")
    time.sleep(1.2)  # past the kernel's attribute cache and the quiet time after use
    before = counters(mount, bucket)
    os.stat(bpath / "obj")
    assert delta(mount, bucket, before) == {"head_count": 1}


def test_listing_a_directory_is_a_list(mount: Mount, bucket: str, bpath: Path) -> None:
    (bpath / "d").mkdir()
    (bpath / ".hidden").mkdir()
    before = counters(mount, bucket)
    os.listdir(bpath)
    os.listdir(bpath / "d")
    os.listdir(bpath / ".hidden")  # not an S3-visible prefix
    assert delta(mount, bucket, before) == {"list_count": 2}


def test_unlink_of_an_object_is_a_delete(mount: Mount, bucket: str, bpath: Path) -> None:
    (bpath / "obj").write_bytes(b"data")
    (bpath / ".tmp").write_bytes(b"data")
    before = counters(mount, bucket)
    os.unlink(bpath / "obj")
    os.unlink(bpath / ".tmp")
    assert delta(mount, bucket, before) == {"delete_count": 1}


def test_bytes_and_other_months_via_xattr(mount: Mount, bucket: str, bpath: Path) -> None:
    (bpath / "obj").write_bytes(b"x" * 1234)
    (bpath / "obj").read_bytes()
    got = counters(mount, bucket)
    assert got["bytes_written"] == 1234 and got["bytes_read"] == 1234
    try:
        os.getxattr(bpath, "user.ironfs.stats.1999-01")
        raise AssertionError("a month without a file must be ENODATA")
    except OSError as e:
        assert e.errno == errno.ENODATA


def run_stats(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ironfs", "stats", *args],
                          capture_output=True, text=True, timeout=30)


def test_stats_command_online(mount: Mount, bucket: str, bpath: Path) -> None:
    (bpath / "obj").write_bytes(b"x")
    time.sleep(0.1)
    r = run_stats(str(bpath), "--json")
    assert r.returncode == 0, r.stderr
    doc = orjson.loads(r.stdout)
    assert doc["put_count"] == 1 and len(doc["month"]) == 7
    table = run_stats(str(bpath))
    assert table.returncode == 0 and "put_count" in table.stdout and bucket in table.stdout
    old = run_stats(str(bpath), "--month", "2001-02", "--json")
    assert orjson.loads(old.stdout)["put_count"] == 0
    assert run_stats(str(bpath), "--month", "2001-13").returncode == 2
    assert run_stats(str(bpath / "nope")).returncode == 1


def test_bytes_written_counts_only_what_landed(mount: Mount, bucket: str, bpath: Path) -> None:
    before = counters(mount, bucket)
    refused = 0
    with open(bpath / "big", "wb", buffering=0) as f:
        for _ in range(32):  # 2 MiB in 64 KiB writes into a 1 MiB bucket
            try:
                f.write(b"w" * 65536)
            except OSError as e:
                assert e.errno == errno.ENOSPC
                refused += 1
    after = counters(mount, bucket)
    assert refused == 16
    assert after["bytes_written"] - before["bytes_written"] == (bpath / "big").stat().st_size == 1 << 20
    assert after["quota_rejections"] - before["quota_rejections"] == 16


@pytest.mark.parametrize("profile", ["generic", "rclone"])
def test_counts_that_came_due_are_read_without_waiting_for_a_flush(tmp_path: Path, profile: str) -> None:
    """A HEAD (no GET within 0.5 s) and, under rclone, a DELETE (no upload onto
    the name within 0.25 s) are in the counters read after those waits, even
    when the next flush is a minute away."""
    m = start_mount(tmp_path / "backing", tmp_path / "mnt",
                    options=["flush_interval_ms=60000", f"profile={profile}"])
    try:
        (m.mnt / "b").mkdir()
        (m.mnt / "b" / "obj").write_bytes(b"data")
        (m.mnt / "b" / "gone").write_bytes(b"data")
        time.sleep(2.5)  # past the kernel's caches and the quiet time after use
        os.stat(m.mnt / "b" / "obj")
        os.unlink(m.mnt / "b" / "gone")
        time.sleep(0.7)
        got = orjson.loads(os.getxattr(m.mnt / "b", "user.ironfs.stats"))
        assert (got["head_count"], got["delete_count"], got["put_count"]) == (1, 1, 2), got
    finally:
        m.stop()


def test_deletes_survive_directories_that_reuse_inode_numbers(tmp_path: Path) -> None:
    """rclone's pattern (found in the mixed workload): a DELETE of a prefix's
    last object removes its directory, and another prefix's new directory often
    gets the same inode number, then an upload of the same key name lands there.
    Each DELETE is counted, whether or not the number was reused."""
    m = start_mount(tmp_path / "backing", tmp_path / "mnt",
                    options=["flush_interval_ms=200", "profile=rclone"])
    b = m.mnt / "b"

    def upload(key: Path, serial: int) -> None:
        temp = key.parent / f".rclone_temp_put_{serial}"
        temp.write_bytes(b"data")
        os.rename(temp, key)

    try:
        b.mkdir()
        reused = 0
        for i in range(10):
            (b / f"a{i}").mkdir()
            upload(b / f"a{i}" / "k", 2 * i)
            time.sleep(0.3)
            inode = os.stat(b / f"a{i}").st_ino
            os.unlink(b / f"a{i}" / "k")  # the DELETE ...
            os.rmdir(b / f"a{i}")  # ... and rclone's removal of the empty prefix
            (b / f"c{i}").mkdir()
            reused += os.stat(b / f"c{i}").st_ino == inode
            upload(b / f"c{i}" / "k", 2 * i + 1)
        time.sleep(0.7)
        got = orjson.loads(os.getxattr(b, "user.ironfs.stats"))
        assert (got["delete_count"], got["put_count"]) == (10, 20), (got, reused)
    finally:
        m.stop()
