"""What each filesystem operation does to usage: the quota rules, in one place.

The FUSE adapter (``fs.py``) looks at the backing filesystem (stat results,
names, the node tree) and asks this module what an operation charges or
refunds; it then runs the syscall inside :meth:`Accounting.reserve`, which
charges before the I/O and refunds if the I/O fails.  No pyfuse3, no trio, no
I/O of its own: every rule is tested by calling it (``tests/test_accounting.py``).

Concurrency contract: everything here is synchronous.  The adapter calls a
rule, ``reserve`` and the syscall with no ``await`` in between, so a check and
the charge it admits are never separated by another request.

A change is ``(bucket, bytes, objects)``; positive grows, negative shrinks.
Growth is checked against the bucket and its account (QuotaExceeded); a shrink
is never refused.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from .inodes import Node
from .ledger import Bucket, Ledger
from .rules import Profile, hides, is_bucket_name

Change = tuple[Bucket, int, int]


def cross_bucket(what: str) -> OSError:
    """The error of a move the ledger cannot follow: callers such as mv(1) then copy."""
    return OSError(errno.EXDEV, what)


class Accounting:
    """The quota rules of one mount: which names are objects, and what each
    namespace or size change charges to which bucket."""

    def __init__(self, ledger: Ledger, profile: Profile, root: Node) -> None:
        self.ledger = ledger
        self.profile = profile
        self.root = root

    # -- what counts as an object ------------------------------------------------
    def in_hidden_dir(self, directory: Node) -> bool:
        """Whether files in *directory* are hidden from the object count (below a
        dot-directory of the bucket, or in a directory that lost its name)."""
        node = directory
        while node.parent is not self.root:
            if node.parent is None or hides(node.name):
                return True
            node = node.parent
        return False

    def is_object(self, parent: Node, name: bytes) -> bool:
        """Whether a regular file *parent*/*name* is an object (its bucket's count)."""
        if not parent.in_bucket or parent.is_state:
            return False
        return self.profile.is_object_name(name) and not self.in_hidden_dir(parent)

    def node_is_object(self, node: Node) -> bool:
        return node.parent is not None and self.is_object(node.parent, node.name)

    def is_bucket_position(self, parent: Node, name: bytes, st: os.stat_result) -> bool:
        """Whether *parent*/*name* is (or would be) a bucket directory."""
        return parent is self.root and is_bucket_name(name) and stat.S_ISDIR(st.st_mode)

    # -- the reserve helper ---------------------------------------------------------
    @contextmanager
    def reserve(self, changes: Sequence[Change]) -> Iterator[None]:
        """Charge *changes* (all or nothing; QuotaExceeded changes nothing), run
        the body (the syscall), and refund them all if it raises."""
        if not changes:
            yield
            return
        if len(changes) == 1:  # the write path: one bucket, no merging to do
            bucket, nbytes, nobjects = changes[0]
            self.ledger.charge(bucket, nbytes, nobjects)
            done: Sequence[Change] = changes
        else:
            done = self.ledger.charge_many(changes)
        try:
            yield
        except BaseException:
            self.ledger.refund_many(done)
            raise

    def apply(self, changes: Sequence[Change]) -> None:
        """Record changes that need no I/O of their own (a refund at last close)."""
        if changes:
            self.ledger.charge_many(changes)

    # -- rules: making names ----------------------------------------------------------
    def new_file(self, parent: Node, name: bytes, mode: int) -> list[Change]:
        """create/mknod/link of *name* in *parent*: a new object, if it is one
        (its bytes are charged as they are written)."""
        if stat.S_ISREG(mode) and self.is_object(parent, name):
            return [(self._bucket_of(parent), 0, 1)]
        return []

    # -- rules: sizes ----------------------------------------------------------------
    def resize(self, node: Node, old_size: int, new_size: int) -> list[Change]:
        """A truncate (up or down) or an O_TRUNC open of a file of *old_size*."""
        bucket = node.load_bucket()
        if bucket is None or new_size == old_size:
            return []
        return [(bucket, new_size - old_size, 0)]

    def write(self, bucket: Bucket, node: Node, size: int, off: int, length: int,
              pwrite: Callable[[], int]) -> int:
        """A write of *length* bytes at *off* into *node* (of *bucket*), a file
        of *size* bytes: growth past EOF is reserved, the rest of a short write
        given back.  Keeps ``node.size`` (the open file's apparent size) up to
        date.  (``reserve`` spelled out: this runs for every WRITE.)"""
        end = off + length
        if end <= size:
            return pwrite()
        node.size = end
        charged = False
        try:
            self.ledger.charge(bucket, end - size)  # may refuse: QuotaExceeded
            charged = True
            n = pwrite()
        except BaseException:
            node.size = size
            if charged:
                self.ledger.refund(bucket, end - size)
            raise
        if n < length:  # short write: what did not land is not charged
            landed = max(size, off + n)
            node.size = landed
            self.ledger.refund(bucket, end - landed)
        return n

    # -- rules: removing names ---------------------------------------------------------
    def removal(self, parent: Node, name: bytes, st: os.stat_result,
                node: Node | None) -> list[Change]:
        """What removing the name *parent*/*name* (found with *st*; *node* if
        the kernel knows it) gives back: the object, and its bytes if this was
        its last name and no handle is open (else at the last close)."""
        if not parent.in_bucket or not stat.S_ISREG(st.st_mode):
            return []
        objects = 1 if self.is_object(parent, name) else 0
        nbytes = 0
        if st.st_nlink <= 1 and (node is None or node.open == 0):
            nbytes = st.st_size
        return [(self._bucket_of(parent), -nbytes, -objects)]

    def last_close(self, node: Node, size: int) -> list[Change]:
        """The last handle of a file unlinked while open is released: its bytes go."""
        bucket = node.load_bucket()
        if bucket is None:
            return []
        return [(bucket, -size, 0)]

    # -- rules: renames ------------------------------------------------------------------
    def rename(self, old_parent: Node, old_name: bytes, src: os.stat_result,
               new_parent: Node, new_name: bytes, dst: os.stat_result | None, *,
               exchange: bool, noreplace: bool, dst_node: Node | None,
               count_objects: Callable[[Node, bytes], int]) -> list[Change]:
        """Every change of a rename (or exchange), replacing *dst* if it exists.

        *count_objects(parent, name)* counts the objects below a directory; it is
        called only when a directory crosses between hidden and visible.  Raises
        EXDEV where usage cannot follow, ENOTEMPTY onto a bucket (a bucket
        always holds its state)."""
        changes = self.move(old_parent, old_name, src, new_parent, new_name, count_objects)
        if exchange and dst is not None:
            changes += self.move(new_parent, new_name, dst, old_parent, old_name, count_objects)
        elif dst is not None and not noreplace:
            if self.is_bucket_position(new_parent, new_name, dst):
                raise OSError(errno.ENOTEMPTY, "a bucket always holds its state")
            changes += self.removal(new_parent, new_name, dst, dst_node)
        return changes

    def move(self, src_parent: Node, src_name: bytes, st: os.stat_result,
             dst_parent: Node, dst_name: bytes,
             count_objects: Callable[[Node, bytes], int]) -> list[Change]:
        """Usage changes of moving one entry."""
        if stat.S_ISDIR(st.st_mode):
            return self._move_dir(src_parent, src_name, dst_parent, dst_name, count_objects)
        if not stat.S_ISREG(st.st_mode):
            return []
        src_b, dst_b = src_parent.load_bucket(), dst_parent.load_bucket()
        changes: list[Change] = []
        if src_b is not dst_b:
            if st.st_nlink > 1:
                raise cross_bucket("its other names would stay behind")
            if src_b is not None:
                changes.append((src_b, -st.st_size, 0))
            if dst_b is not None:
                changes.append((dst_b, st.st_size, 0))
        if src_b is not None and self.is_object(src_parent, src_name):
            changes.append((src_b, 0, -1))
        if dst_b is not None and self.is_object(dst_parent, dst_name):
            changes.append((dst_b, 0, 1))
        return changes

    def _move_dir(self, src_parent: Node, src_name: bytes, dst_parent: Node, dst_name: bytes,
                  count_objects: Callable[[Node, bytes], int]) -> list[Change]:
        src_is_bucket = src_parent is self.root and is_bucket_name(src_name)
        dst_is_bucket = dst_parent is self.root and is_bucket_name(dst_name)
        if src_is_bucket or dst_is_bucket:
            if src_is_bucket and dst_is_bucket:
                return []  # renaming a bucket: its usage travels with it
            raise cross_bucket("a directory into or out of a bucket's top level")
        bucket = src_parent.load_bucket()
        if bucket is not dst_parent.load_bucket():
            raise cross_bucket("a directory between buckets")
        if bucket is None:
            return []
        was_hidden = self.in_hidden_dir(src_parent) or hides(src_name)
        now_hidden = self.in_hidden_dir(dst_parent) or hides(dst_name)
        if was_hidden == now_hidden:
            return []
        # A staging directory published (or hidden) whole: its files change count.
        n = count_objects(src_parent, src_name)
        return [(bucket, 0, n if was_hidden else -n)]

    def publishes(self, old_parent: Node, old_name: bytes, src: os.stat_result,
                  new_parent: Node, new_name: bytes, exchange: bool) -> bool:
        """Whether a rename makes a hidden (staging) file a visible object."""
        return (stat.S_ISREG(src.st_mode) and not exchange
                and self.is_object(new_parent, new_name)
                and not self.is_object(old_parent, old_name))

    @staticmethod
    def _bucket_of(node: Node) -> Bucket:
        bucket = node.load_bucket()
        assert bucket is not None, "callers check in_bucket first"
        return bucket
