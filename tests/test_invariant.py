"""DESIGN.md's invariant under random operation sequences through a real mount:
once every handle is closed, the live ledger equals a fresh scan, in every bucket."""

from __future__ import annotations

import errno
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.mounting import Mount, ledger, scan, start_mount

LIMIT = 64 * 1024
#: Places within two buckets (X, Y), with hidden files and directories, and the
#: unbucketed top level (T).  Directories are made on demand.
PLACES = ["X/a", "X/b", "X/.tmp", "X/d/a", "X/d/.t", "X/.h/a", "X/.h/b",
          "Y/a", "Y/d/a", "Y/.h/a", "T/top"]
DIRS = ["X/d", "X/.h", "Y/d", "Y/.h", "X/d/e"]
EXPECTED = {errno.ENOSPC, errno.ENOENT, errno.EXDEV, errno.EEXIST, errno.ENOTDIR,
            errno.EISDIR, errno.ENOTEMPTY, errno.EINVAL, errno.EBADF}

place = st.sampled_from(PLACES)
size = st.integers(0, 40 * 1024)
slot = st.integers(0, 2)
OPS = st.one_of(
    st.tuples(st.just("write"), place, st.integers(0, 30 * 1024), size),
    st.tuples(st.just("truncate"), place, size),
    st.tuples(st.just("unlink"), place),
    st.tuples(st.just("rename"), place, place),
    st.tuples(st.just("rename_dir"), st.sampled_from(DIRS), st.sampled_from(DIRS)),
    st.tuples(st.just("link"), place, place),
    st.tuples(st.just("mkdir"), st.sampled_from(DIRS)),
    st.tuples(st.just("rmdir"), st.sampled_from(DIRS)),
    st.tuples(st.just("open"), slot, place, st.booleans()),
    st.tuples(st.just("fdwrite"), slot, size),
    st.tuples(st.just("close"), slot),
    st.tuples(st.just("pause")),
)


@pytest.fixture(scope="module", params=["plain", "evicting"])
def mnt(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Mount]:
    """As configured by default, and with a one-bucket cache flushed every 10 ms
    (buckets evicted and reloaded in the middle of the sequences)."""
    base = tmp_path_factory.mktemp("inv")
    options = ["bucket_cache=1", "flush_interval_ms=10"] if request.param == "evicting" else []
    m = start_mount(base / "backing", base / "s3", options=options,
                    env={"BUCKET_QUOTA_BYTES": str(LIMIT)})
    try:
        yield m
    finally:
        m.stop()


class Run:
    """One sequence in its own pair of fresh buckets."""

    def __init__(self, m: Mount) -> None:
        tag = uuid.uuid4().hex[:8]
        self.m = m
        self.roots = {"X": f"x-{tag}", "Y": f"y-{tag}", "T": f".t-{tag}"}
        for name in self.roots.values():
            os.mkdir(m.mnt / name)
        self.fds: dict[int, int] = {}

    def path(self, place: str) -> Path:
        top, _, rest = place.partition("/")
        return self.m.mnt / self.roots[top] / rest

    def apply(self, op: tuple) -> None:
        try:
            getattr(self, "op_" + op[0])(*op[1:])
        except OSError as e:
            if e.errno not in EXPECTED:
                raise

    def op_write(self, place: str, off: int, n: int) -> None:
        self.path(place).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path(place), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, b"w" * n, off)
        finally:
            os.close(fd)

    def op_truncate(self, place: str, n: int) -> None:
        os.truncate(self.path(place), n)

    def op_unlink(self, place: str) -> None:
        os.unlink(self.path(place))

    def op_rename(self, a: str, b: str) -> None:
        os.rename(self.path(a), self.path(b))

    op_rename_dir = op_rename

    def op_link(self, a: str, b: str) -> None:
        os.link(self.path(a), self.path(b))

    def op_mkdir(self, d: str) -> None:
        os.makedirs(self.path(d), exist_ok=True)

    def op_rmdir(self, d: str) -> None:
        os.rmdir(self.path(d))

    def op_open(self, slot: int, place: str, create: bool) -> None:
        self.op_close(slot)
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        self.fds[slot] = os.open(self.path(place), flags, 0o644)

    def op_fdwrite(self, slot: int, n: int) -> None:
        if slot in self.fds:
            os.write(self.fds[slot], b"f" * n)

    def op_pause(self) -> None:
        time.sleep(0.03)  # a few flushes: idle buckets are evicted

    def op_close(self, slot: int) -> None:
        fd = self.fds.pop(slot, None)
        if fd is not None:
            os.close(fd)

    def settle(self) -> None:
        for slot in list(self.fds):
            self.op_close(slot)
        time.sleep(0.01)  # FUSE releases are sent after close(2) returns

    def check(self) -> None:
        for top in ("X", "Y"):
            name = self.roots[top]
            live = ledger(self.m.mnt, name)
            for _ in range(50):  # the last release may still be on its way
                if live == scan(self.m.backing, name):
                    break
                time.sleep(0.01)
                live = ledger(self.m.mnt, name)
            assert live == scan(self.m.backing, name), f"drift in {top}"
            assert live[0] <= LIMIT, "over the hard limit"

    def remove(self) -> None:
        for name in self.roots.values():
            shutil.rmtree(self.m.mnt / name)


@given(seed=st.lists(st.integers(0, 8 * 1024), min_size=len(PLACES), max_size=len(PLACES)),
       ops=st.lists(OPS, min_size=1, max_size=25))
def test_ledger_equals_scan_after_random_operations(mnt: Mount, seed: list[int],
                                                   ops: list[tuple]) -> None:
    run = Run(mnt)
    try:
        for d in DIRS:
            run.apply(("mkdir", d))
        for where, n in zip(PLACES, seed, strict=True):  # most operations find their files
            run.apply(("write", where, 0, n))
        for op in ops:
            run.apply(op)
        run.settle()
        run.check()
    finally:
        run.settle()
        run.remove()
