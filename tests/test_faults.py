"""Faults on the state path (issue 7, part 6): the backing filesystem fails a
flush.  The flush fails and is logged once, is retried every tick, user
requests keep working, and the state already on disk stays whole.

ENOSPC is real (the backing root is a small tmpfs filled up behind the
mount's back); EIO cannot be provoked on a healthy disk, so it is injected
into the state writer in-process."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import threading
import time
from pathlib import Path

import orjson
import pytest

from ironfs import state
from ironfs.ledger import Ledger, Limits
from ironfs.stats import PUT, StatsBook
from ironfs.store import StateStore
from tests.mounting import assert_invariant, quota_file, start_mount, unavailable, wait_for


@pytest.fixture
def small_fs(tmp_path: Path):
    if os.geteuid() != 0:
        unavailable("mounting a tmpfs needs root")
    where = tmp_path / "tmpfs"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> None:
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC


def test_full_backing_disk_fails_flushes_not_requests(small_fs: Path, tmp_path: Path) -> None:
    backing = small_fs / "backing"
    m = start_mount(backing, tmp_path / "s3", options=["flush_interval_ms=50"])
    try:
        (m.mnt / "b").mkdir()
        (m.mnt / "b" / "obj").write_bytes(b"o" * 100_000)
        wait_for(lambda: (backing / "b" / ".quota").exists()
                 and quota_file(backing, "b")["current_usage_bytes"] == 100_000)
        before = (backing / "b" / ".quota").read_bytes()
        fill(backing / ".filler")  # the disk is full, behind the mount's back
        (m.mnt / "b" / "empty").touch()  # needs no block, changes the ledger
        wait_for(lambda: "flush of bucket b failed: No space left on device" in m.log_text())
        time.sleep(0.3)  # several more ticks: retried, logged once
        assert m.log_text().count("flush of bucket b failed") == 1
        assert (backing / "b" / ".quota").read_bytes() == before  # whole, and the old one
        assert not list((backing / "b").glob(".ironfs-tmp*"))
        # User requests keep working: reads, listings, attributes, deletes;
        # writes get the backing filesystem's own answer.
        assert (m.mnt / "b" / "obj").read_bytes() == b"o" * 100_000
        assert sorted(os.listdir(m.mnt / "b")) == ["empty", "obj"]
        assert int(os.getxattr(m.mnt / "b", b"user.ironfs.objects")) == 2
        with pytest.raises(OSError) as info:
            (m.mnt / "b" / "big").write_bytes(b"x" * 1_000_000)
        assert info.value.errno == errno.ENOSPC
        assert_invariant(m, "b")
        (backing / ".filler").unlink()
        wait_for(lambda: "flush of bucket b works again" in m.log_text())
        wait_for(lambda: quota_file(backing, "b")["object_count"] == 3)
        assert_invariant(m, "b")
    finally:
        assert m.stop() == 0
    assert (backing / ".ironfs" / "clean").exists()


def test_eio_while_writing_state_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    root = os.fsencode(tmp_path)
    (tmp_path / "b").mkdir()
    ledger, book = Ledger(), StatsBook()
    bucket = ledger.add(b"b", Limits(max_bytes=1000), 10, 1)
    book.attach(bucket)
    store = StateStore(root, ledger, book)
    assert store.flush_now()
    good = (tmp_path / "b" / ".quota").read_bytes()

    real_fsync = os.fsync
    failing = {"on": True}

    def fsync(fd: int) -> None:
        if failing["on"]:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(state.os, "fsync", fsync)
    ledger.charge(bucket, 90, 1)
    book.add(bucket, PUT)
    with caplog.at_level(logging.WARNING, logger="ironfs.store"):
        for _ in range(3):
            assert not store.flush_now()
    assert [r.getMessage() for r in caplog.records] == [
        "flush of bucket b failed: Input/output error; retrying every tick"]
    assert (tmp_path / "b" / ".quota").read_bytes() == good
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [".ironfs-limits", ".quota", ".stats"]
    assert bucket.dirty  # still owed to the disk
    failing["on"] = False
    assert store.flush_now()
    assert orjson.loads((tmp_path / "b" / ".quota").read_bytes())["current_usage_bytes"] == 100


def _many_buckets(tmp_path: Path, n: int = 40) -> tuple[Ledger, StatsBook, StateStore, list]:
    ledger, book = Ledger(), StatsBook()
    buckets = []
    for i in range(n):
        (tmp_path / f"b{i}").mkdir()
        bucket = ledger.add(f"b{i}".encode(), Limits(max_bytes=None), i, 1)
        book.attach(bucket)
        buckets.append(bucket)
    store = StateStore(os.fsencode(tmp_path), ledger, book)
    store.batch_from = 32
    return ledger, book, store, buckets


def test_batched_flush_writes_all_but_the_failing_item(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    ledger, book, store, buckets = _many_buckets(tmp_path)
    (tmp_path / "b7").rmdir()  # deleted behind the flush's back: its write fails
    with caplog.at_level(logging.WARNING, logger="ironfs.store"):
        assert not store.flush_now()
    assert [r.getMessage() for r in caplog.records] == [
        "flush of bucket b7 failed: No such file or directory; retrying every tick"]
    for i in range(40):
        if i != 7:
            assert quota_file(tmp_path, f"b{i}")["current_usage_bytes"] == i
    assert not list(tmp_path.glob("*/.ironfs-tmp*"))
    assert buckets[7].dirty and not buckets[8].dirty


def test_batched_flush_with_a_failing_sync_keeps_the_old_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger, book, store, buckets = _many_buckets(tmp_path)
    assert store.flush_now()
    before = {p: p.read_bytes() for p in tmp_path.glob("*/.quota")}
    for bucket in buckets:
        ledger.charge(bucket, 1000)

    def failing_syncfs(path: bytes) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    from ironfs import store as store_module
    monkeypatch.setattr(store_module, "syncfs", failing_syncfs)
    assert not store.flush_now()
    assert {p: p.read_bytes() for p in tmp_path.glob("*/.quota")} == before
    assert not list(tmp_path.glob("*/.ironfs-tmp*"))
    assert all(b.dirty for b in buckets)
    monkeypatch.undo()
    assert store.flush_now()
    assert quota_file(tmp_path, "b3")["current_usage_bytes"] == 1003


def test_a_delete_waits_only_for_its_own_bucket_never_for_a_batch(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from ironfs import store as store_module
    ledger, book = Ledger(), StatsBook()
    for i in range(3):
        (tmp_path / f"b{i}").mkdir()
        book.attach(ledger.add(f"b{i}".encode(), Limits()))
    store = StateStore(os.fsencode(tmp_path), ledger, book)
    store.batch_from = 2  # a batch: temp files, syncfs, renames, syncfs
    in_sync, go_on = threading.Event(), threading.Event()

    def slow_syncfs(path: bytes) -> None:  # 100,000 state files took 13 s here
        in_sync.set()
        go_on.wait(10)

    monkeypatch.setattr(store_module, "syncfs", slow_syncfs)
    items = [i for i in store.snapshot() if i.name != b"b2"]
    writer = threading.Thread(target=store.write, args=(items,))
    writer.start()
    try:
        assert in_sync.wait(10)
        assert store.claim_for_delete(b"b2")  # not in the batch: at once
        assert not store.claim_for_delete(b"b0")  # in it: after the batch
    finally:
        go_on.set()
        writer.join()
    assert store.claim_for_delete(b"b0")
    store.release_delete(b"b0")
    store.release_delete(b"b2")
    assert store.write(store.snapshot()) == []
