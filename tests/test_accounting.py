"""The quota rules (accounting.py) on their own: no mount, no root, no disk.

Nodes come from a real InodeTable fed with made-up stat results; the syscall
each rule guards is a lambda.  The property test at the end drives the rules
with random operations against a model filesystem and checks the invariant:
the ledger equals what a scan of the model computes.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ironfs.inodes import Node
from ironfs.ledger import Bucket, Limits, QuotaExceeded
from tests.fakefs import World, directory, fake_stat, reg


def failing() -> int:
    raise OSError(errno.EIO, "injected")


def test_create_charges_one_object_only_for_visible_names() -> None:
    w = World()
    assert w.acct.new_file(w.d1, b"k", stat.S_IFREG) == [(w.b1, 0, 1)]
    assert w.acct.new_file(w.stage, b"k", stat.S_IFREG) == []  # in a hidden directory
    assert w.acct.new_file(w.d1, b".tmp", stat.S_IFREG) == []  # a hidden name
    assert w.acct.new_file(w.top, b"k", stat.S_IFREG) == []  # unbucketed
    assert w.acct.new_file(w.d1, b"fifo", stat.S_IFIFO) == []  # not a regular file


def test_reserve_refunds_when_the_syscall_fails() -> None:
    w = World()
    with pytest.raises(OSError), w.acct.reserve([(w.b1, 10, 1), (w.b2, 5, 0)]):
        failing()
    assert w.usage(w.b1) == (0, 0) and w.usage(w.b2) == (0, 0)


def test_reserve_refused_changes_nothing_and_runs_nothing() -> None:
    w = World(b1_max=10)
    ran = []
    with pytest.raises(QuotaExceeded), w.acct.reserve([(w.b2, 5, 0), (w.b1, 11, 0)]):
        ran.append(1)
    assert ran == [] and w.usage(w.b1) == (0, 0) and w.usage(w.b2) == (0, 0)


def test_write_inside_the_file_charges_nothing() -> None:
    w = World(b1_max=10)
    node, _ = w.file(w.d1, b"k", 10)
    assert w.acct.write(w.b1, node, 10, 0, 10, lambda: 10) == 10
    assert w.usage(w.b1) == (10, 1)


def test_write_past_eof_charges_the_growth_and_a_sparse_write_the_hole_too() -> None:
    w = World()
    node, _ = w.file(w.d1, b"k", 10)
    assert w.acct.write(w.b1, node, 10, 5, 10, lambda: 10) == 10  # 5 inside, 5 past EOF
    assert w.usage(w.b1) == (15, 1) and node.size == 15
    w.acct.write(w.b1, node, 15, 100, 10, lambda: 10)  # a hole of 85 bytes counts (st_size)
    assert w.usage(w.b1) == (110, 1) and node.size == 110


def test_write_over_the_limit_is_refused_and_writes_nothing() -> None:
    w = World(b1_max=100)
    node, _ = w.file(w.d1, b"k", 90)
    with pytest.raises(QuotaExceeded):
        w.acct.write(w.b1, node, 90, 90, 11, failing)  # failing() would raise OSError if called
    assert w.usage(w.b1) == (90, 1) and node.size == 90


def test_short_write_keeps_only_what_landed() -> None:
    w = World()
    node, _ = w.file(w.d1, b"k", 10)
    assert w.acct.write(w.b1, node, 10, 8, 10, lambda: 4) == 4  # landed up to 12
    assert w.usage(w.b1) == (12, 1) and node.size == 12


def test_failed_write_refunds_and_keeps_the_size() -> None:
    w = World()
    node, _ = w.file(w.d1, b"k", 10)
    with pytest.raises(OSError):
        w.acct.write(w.b1, node, 10, 10, 10, failing)
    assert w.usage(w.b1) == (10, 1) and node.size == 10


def test_truncate_up_is_checked_and_down_always_allowed() -> None:
    w = World(b1_max=100)
    node, _ = w.file(w.d1, b"k", 50)
    assert w.acct.resize(node, 50, 100) == [(w.b1, 50, 0)]
    with w.acct.reserve(w.acct.resize(node, 50, 100)):
        pass
    with pytest.raises(QuotaExceeded), w.acct.reserve(w.acct.resize(node, 100, 101)):
        pass
    w.b1.set_limits(Limits(max_bytes=0))  # a limit below usage: shrinking still works
    with w.acct.reserve(w.acct.resize(node, 100, 0)):  # also what O_TRUNC does
        pass
    assert w.usage(w.b1) == (0, 1)


def test_unlink_of_the_last_link_refunds_bytes_and_object() -> None:
    w = World()
    node, s = w.file(w.d1, b"k", 40)
    assert w.acct.removal(w.d1, b"k", s, node) == [(w.b1, -40, -1)]


def test_unlink_of_one_of_two_hard_links_keeps_the_bytes() -> None:
    w = World()
    node, _ = w.file(w.d1, b"k", 40)
    linked = reg(40, nlink=2, ino=node.key[1])
    assert w.acct.new_file(w.d1, b"k2", linked.st_mode) == [(w.b1, 0, 1)]
    assert w.acct.removal(w.d1, b"k", linked, node) == [(w.b1, 0, -1)]


def test_unlink_while_open_keeps_the_bytes_until_the_last_close() -> None:
    w = World()
    node, s = w.file(w.d1, b"k", 40)
    node.open = 1
    w.acct.apply(w.acct.removal(w.d1, b"k", s, node))
    assert w.usage(w.b1) == (40, 0)
    w.acct.apply(w.acct.last_close(node, 40))
    assert w.usage(w.b1) == (0, 0)


def test_unlink_outside_buckets_and_of_non_files_changes_nothing() -> None:
    w = World()
    assert w.acct.removal(w.top, b"k", reg(40), None) == []
    assert w.acct.removal(w.d1, b"d", directory(), None) == []
    assert w.acct.removal(w.d1, b"l", fake_stat(stat.S_IFLNK | 0o777, 9), None) == []


def rename(w: World, op: Node, on: bytes, s: os.stat_result, np: Node, nn: bytes,
           dst: os.stat_result | None = None, exchange: bool = False,
           noreplace: bool = False, count: int | None = None) -> list[tuple[Bucket, int, int]]:
    counter = w.no_count if count is None else (lambda p, n: count)
    return w.acct.rename(op, on, s, np, nn, dst, exchange=exchange, noreplace=noreplace,
                         dst_node=None, count_objects=counter)


def test_rename_within_a_bucket_changes_nothing() -> None:
    w = World()
    _, s = w.file(w.d2, b"a", 10)
    assert sum(n for _, n, _ in rename(w, w.d2, b"a", s, w.sub, b"b")) == 0
    assert sum(o for _, _, o in rename(w, w.d2, b"a", s, w.sub, b"b")) == 0


def test_rename_across_buckets_moves_bytes_and_object() -> None:
    w = World()
    _, s = w.file(w.d2, b"a", 10)
    changes = rename(w, w.d2, b"a", s, w.d1, b"a")
    assert sorted(changes, key=lambda c: c[0].name) == sorted(
        [(w.b2, -10, 0), (w.b1, 10, 0), (w.b2, 0, -1), (w.b1, 0, 1)], key=lambda c: c[0].name)


def test_rename_into_a_full_bucket_is_refused() -> None:
    w = World(b1_max=5)
    _, s = w.file(w.d2, b"a", 10)
    with pytest.raises(QuotaExceeded), w.acct.reserve(rename(w, w.d2, b"a", s, w.d1, b"a")):
        pass
    assert w.usage(w.b2) == (10, 1) and w.usage(w.b1) == (0, 0)


def test_rename_from_unbucketed_space_charges_the_bucket() -> None:
    w = World()
    s = reg(7)
    assert rename(w, w.top, b"f", s, w.d1, b"k") == [(w.b1, 7, 0), (w.b1, 0, 1)]


def test_hard_linked_file_cannot_cross_buckets() -> None:
    w = World()
    s = reg(7, nlink=2)
    with pytest.raises(OSError) as info:
        rename(w, w.d2, b"a", s, w.d1, b"a")
    assert info.value.errno == errno.EXDEV


def test_publishing_a_staging_file_adds_the_object() -> None:
    w = World()
    _, s = w.file(w.stage, b"upload", 10)
    assert rename(w, w.stage, b"upload", s, w.d1, b"key") == [(w.b1, 0, 1)]
    assert w.acct.publishes(w.stage, b"upload", s, w.d1, b"key", exchange=False)
    assert not w.acct.publishes(w.d1, b"a", s, w.d1, b"b", exchange=False)


def test_rename_over_an_existing_object_refunds_the_replaced_one() -> None:
    w = World()
    _, src = w.file(w.stage, b"upload", 10)
    _, dst = w.file(w.d1, b"key", 30)
    changes = rename(w, w.stage, b"upload", src, w.d1, b"key", dst)
    assert changes == [(w.b1, 0, 1), (w.b1, -30, -1)]
    with w.acct.reserve(changes):
        pass
    assert w.usage(w.b1) == (10, 1)


def test_rename_noreplace_and_exchange() -> None:
    w = World()
    _, a = w.file(w.d1, b"a", 10)
    _, b = w.file(w.d2, b"b", 30)
    assert rename(w, w.d1, b"a", a, w.d2, b"b", b, noreplace=True) == [
        (w.b1, -10, 0), (w.b2, 10, 0), (w.b1, 0, -1), (w.b2, 0, 1)]
    changes = rename(w, w.d1, b"a", a, w.d2, b"b", b, exchange=True)
    with w.acct.reserve(changes):
        pass
    assert w.usage(w.b1) == (30, 1) and w.usage(w.b2) == (10, 1)


def test_directory_renames() -> None:
    w = World()
    d = directory()
    with pytest.raises(OSError) as info:  # between buckets: mv copies instead
        rename(w, w.d1, b"d", d, w.d2, b"d")
    assert info.value.errno == errno.EXDEV
    with pytest.raises(OSError):  # out of a bucket's top level into unbucketed space
        rename(w, w.root, b"b1", d, w.top, b"b1")
    assert rename(w, w.root, b"b1", d, w.root, b"b3") == []  # a bucket renamed
    assert rename(w, w.d1, b"x", d, w.d1, b"y") == []  # visible to visible: no scan
    assert rename(w, w.d1, b".x", d, w.d1, b"y", count=4) == [(w.b1, 0, 4)]  # published whole
    assert rename(w, w.d1, b"y", d, w.d1, b".x", count=4) == [(w.b1, 0, -4)]  # hidden whole


def test_renaming_onto_a_bucket_is_refused() -> None:
    w = World()
    with pytest.raises(OSError) as info:
        rename(w, w.root, b"b1", directory(), w.root, b"b2", directory())
    assert info.value.errno == errno.ENOTEMPTY


def test_account_limits_bind_across_buckets() -> None:
    w = World(b1_max=None)
    acct = w.ledger.add_account("a", Limits(max_bytes=100))
    w.ledger.assign(w.b1, acct)
    w.ledger.assign(w.b2, acct)
    _, s = w.file(w.d2, b"a", 60)
    with w.acct.reserve(rename(w, w.d2, b"a", s, w.d1, b"a")):  # a move inside the account nets out
        pass
    n1, _ = w.file(w.d1, b"b", 40)
    with pytest.raises(QuotaExceeded):
        w.acct.write(w.b1, n1, 40, 40, 1, lambda: 1)
    assert acct.used_bytes == 100


# -- the property test: random operations against a model filesystem ----------------

@dataclass
class MFile:
    node: Node
    size: int = 0
    names: set[tuple[str, bytes]] = field(default_factory=set)
    open: int = 0


class Model:
    """A filesystem in memory, the accounting rules driving the ledger."""

    DIRS = ("b1", "b1/.stage", "b2", "b2/sub", ".top")

    def __init__(self, limited: bool) -> None:
        self.w = World(b1_max=3000 if limited else None)
        w = self.w
        self.dir_nodes = {"b1": w.d1, "b1/.stage": w.stage, "b2": w.d2, "b2/sub": w.sub, ".top": w.top}
        self.files: list[MFile] = []
        self.entries: dict[tuple[str, bytes], MFile] = {}

    def bucket_of(self, d: str) -> Bucket | None:
        return self.dir_nodes[d].load_bucket()

    def st(self, f: MFile) -> os.stat_result:
        return reg(f.size, nlink=len(f.names), ino=f.node.key[1])

    def create(self, d: str, name: bytes) -> None:
        if (d, name) in self.entries:
            return
        parent = self.dir_nodes[d]
        try:
            with self.w.acct.reserve(self.w.acct.new_file(parent, name, stat.S_IFREG)):
                pass
        except QuotaExceeded:
            return
        s = reg()
        f = MFile(self.w.inodes.remember(parent, name, s, parent.load_bucket(), False))
        f.names.add((d, name))
        self.files.append(f)
        self.entries[(d, name)] = f

    def write(self, f: MFile, off: int, length: int) -> None:
        if not f.names and not f.open:
            return
        bucket = f.node.load_bucket()
        try:
            if bucket is not None:  # (outside buckets the adapter just writes)
                self.w.acct.write(bucket, f.node, f.size, off, length, lambda: length)
        except QuotaExceeded:
            return
        f.size = max(f.size, off + length)

    def truncate(self, f: MFile, size: int) -> None:
        if not f.names and not f.open:
            return
        try:
            with self.w.acct.reserve(self.w.acct.resize(f.node, f.size, size)):
                pass
        except QuotaExceeded:
            return
        f.size = size

    def unlink(self, key: tuple[str, bytes]) -> None:
        f = self.entries.get(key)
        if f is None:
            return
        d, name = key
        self.w.acct.apply(self.w.acct.removal(self.dir_nodes[d], name, self.st(f), f.node))
        del self.entries[key]
        f.names.discard(key)
        if not f.names and f.open:
            f.node.unlinked = True

    def link(self, f: MFile, d: str, name: bytes) -> None:
        if not f.names or (d, name) in self.entries:
            return
        (src_dir, _), = list(f.names)[:1]
        if self.bucket_of(src_dir) is not self.bucket_of(d):
            return  # EXDEV
        try:
            with self.w.acct.reserve(self.w.acct.new_file(self.dir_nodes[d], name, stat.S_IFREG)):
                pass
        except QuotaExceeded:
            return
        f.names.add((d, name))
        self.entries[(d, name)] = f

    def rename(self, key: tuple[str, bytes], d: str, name: bytes) -> None:
        f = self.entries.get(key)
        if f is None or (d, name) == key:
            return
        old = self.entries.get((d, name))
        if old is f:
            return
        od, on = key
        try:
            changes = self.w.acct.rename(
                self.dir_nodes[od], on, self.st(f), self.dir_nodes[d], name,
                self.st(old) if old is not None else None, exchange=False, noreplace=False,
                dst_node=old.node if old is not None else None, count_objects=self.w.no_count)
            with self.w.acct.reserve(changes):
                pass
        except (QuotaExceeded, OSError):
            return
        if old is not None:
            del self.entries[(d, name)]
            old.names.discard((d, name))
            if not old.names and old.open:
                old.node.unlinked = True
        del self.entries[key]
        f.names.discard(key)
        f.names.add((d, name))
        self.entries[(d, name)] = f
        f.node.set_bucket(self.bucket_of(d))

    def open(self, f: MFile) -> None:
        if f.names:
            f.open += 1
            f.node.open += 1

    def close(self, f: MFile) -> None:
        if not f.open:
            return
        if f.open == 1 and f.node.unlinked:
            f.node.unlinked = False
            self.w.acct.apply(self.w.acct.last_close(f.node, f.size))
        f.open -= 1
        f.node.open -= 1

    def scan(self) -> dict[bytes, tuple[int, int]]:
        """What a fresh scan finds, plus bytes of files unlinked while open
        (charged until their last close: the invariant's rule)."""
        out = {b"b1": [0, 0], b"b2": [0, 0]}
        for f in self.files:
            buckets = {d.split("/")[0].encode() for d, _ in f.names} - {b".top"}
            bucket = f.node.load_bucket()
            if not f.names and f.open and bucket is not None:
                buckets = {bucket.name}
            for b in buckets:
                out[b][0] += f.size
            for d, name in f.names:
                if d in ("b1", "b2", "b2/sub") and not name.startswith(b"."):
                    out[d.split("/")[0].encode()][1] += 1
        return {k: (v[0], v[1]) for k, v in out.items()}


names = st.sampled_from([b"k1", b"k2", b".tmp1", b".tmp2"])
dirs = st.sampled_from(Model.DIRS)
ops = st.one_of(
    st.tuples(st.just("create"), dirs, names),
    st.tuples(st.just("write"), st.integers(0, 20), st.integers(0, 1500), st.integers(1, 1500)),
    st.tuples(st.just("truncate"), st.integers(0, 20), st.integers(0, 2500)),
    st.tuples(st.just("unlink"), st.integers(0, 20)),
    st.tuples(st.just("link"), st.integers(0, 20), dirs, names),
    st.tuples(st.just("rename"), st.integers(0, 20), dirs, names),
    st.tuples(st.just("open"), st.integers(0, 20)),
    st.tuples(st.just("close"), st.integers(0, 20)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=60), st.booleans())
def test_random_operations_keep_the_ledger_equal_to_a_scan(sequence: list[tuple], limited: bool) -> None:
    m = Model(limited)
    for op in sequence:
        kind, *args = op
        if kind == "create":
            m.create(args[0], args[1])
        elif kind in ("unlink", "rename"):
            if m.entries:  # an existing name, picked by index
                key = sorted(m.entries)[args[0] % len(m.entries)]
                m.unlink(key) if kind == "unlink" else m.rename(key, args[1], args[2])
        elif m.files:
            f = m.files[args[0] % len(m.files)]
            getattr(m, kind)(f, *args[1:])
        if limited:
            assert m.w.b1.used_bytes <= 3000  # never past the limit
        found = m.scan()  # the invariant holds after every step, not only at rest
        assert (m.w.usage(m.w.b1), m.w.usage(m.w.b2)) == (found[b"b1"], found[b"b2"])
    for f in m.files:
        while f.open:
            m.close(f)
    found = m.scan()
    assert m.w.usage(m.w.b1) == found[b"b1"]
    assert m.w.usage(m.w.b2) == found[b"b2"]


def test_the_rules_import_neither_pyfuse3_nor_trio() -> None:
    code = ("import sys, ironfs.accounting, ironfs.counting, ironfs.lookups, ironfs.tree, "
            "ironfs.livescan, "
            "ironfs.limitlog, ironfs.killpriv, ironfs.startcheck, ironfs.ledger; "
            "print(sorted(m for m in ('pyfuse3', 'trio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
