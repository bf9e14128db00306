"""Nodes without a backing filesystem: a real InodeTable fed with made-up stat
results, and a ledger with two buckets, for the rules' unit tests."""

from __future__ import annotations

import os
import stat

from ironfs.accounting import Accounting
from ironfs.inodes import InodeTable, Node
from ironfs.ledger import Bucket, Ledger, Limits
from ironfs.rules import PROFILES

DEV = 1
_next_ino = iter(range(100, 10**9))


def fake_stat(mode: int, size: int = 0, nlink: int = 1, ino: int | None = None) -> os.stat_result:
    return os.stat_result((mode, ino if ino is not None else next(_next_ino), DEV, nlink,
                           0, 0, size, 0, 0, 0))


def reg(size: int = 0, nlink: int = 1, ino: int | None = None) -> os.stat_result:
    return fake_stat(stat.S_IFREG | 0o644, size, nlink, ino)


def directory() -> os.stat_result:
    return fake_stat(stat.S_IFDIR | 0o755)


class World:
    """Two buckets (b1 limited, b2 not), a hidden staging directory in b1, a
    visible subdirectory in b2 and an unbucketed top-level dot-directory."""

    def __init__(self, b1_max: int | None = 1000, profile: str = "generic") -> None:
        self.ledger = Ledger()
        self.b1 = self.ledger.add(b"b1", Limits(max_bytes=b1_max))
        self.b2 = self.ledger.add(b"b2", Limits(max_bytes=None))
        self.inodes = InodeTable(b"/nonexistent", (DEV, 1))
        root = self.root = self.inodes.root
        self.acct = Accounting(self.ledger, PROFILES[profile], root)
        self.d1 = self.inodes.remember(root, b"b1", directory(), self.b1, False)
        self.stage = self.inodes.remember(self.d1, b".stage", directory(), self.b1, False)
        self.d2 = self.inodes.remember(root, b"b2", directory(), self.b2, False)
        self.sub = self.inodes.remember(self.d2, b"sub", directory(), self.b2, False)
        self.top = self.inodes.remember(root, b".top", directory(), None, False)

    def file(self, parent: Node, name: bytes, size: int = 0) -> tuple[Node, os.stat_result]:
        """A file that exists (charged as a scan would have found it)."""
        s = reg(size)
        bucket = parent.load_bucket()
        if bucket is not None:
            self.ledger.charge(bucket, size, 1 if self.acct.is_object(parent, name) else 0)
        return self.inodes.remember(parent, name, s, bucket, False), s

    def usage(self, bucket: Bucket) -> tuple[int, int]:
        return bucket.used_bytes, bucket.objects

    def no_count(self, parent: Node, name: bytes) -> int:
        raise AssertionError("no subtree count expected")
