"""What the FUSE adapter keeps per open file and directory, and the one
syscall the os module lacks (renameat2)."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

from .counting import Reading
from .inodes import Node

_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100


class Handle:
    """An open file: one backing fd per open, never one per inode."""

    __slots__ = ("fd", "node", "wrote", "reading", "opener", "check_sxid")

    def __init__(self, fd: int, node: Node, wrote: bool = False) -> None:
        self.fd = fd
        self.node = node
        self.wrote = wrote  # created, truncated or written through this handle
        self.reading = Reading.NOT_READING  # what its reads count as (counting.py)
        # Writable handles: who opened it (pid, uid, gid), and whether the next
        # write must look at set-ID bits (killpriv.py).
        self.opener: tuple[int, int, int] | None = None
        self.check_sxid = False


class DirHandle:
    __slots__ = ("node", "names")

    def __init__(self, node: Node) -> None:
        self.node = node
        self.names: list[bytes] | None = None  # read once per listing, then served from here


def pending_bytes(handles: Mapping[int, Handle]) -> dict[int, int]:
    """Bytes still charged for files unlinked while open, per bucket id."""
    pending: dict[int, int] = {}
    seen: set[int] = set()
    for handle in handles.values():
        node = handle.node
        bucket = node.load_bucket() if node.unlinked else None
        if bucket is not None and id(node) not in seen:
            seen.add(id(node))
            size = node.size if node.size is not None else os.fstat(handle.fd).st_size
            pending[id(bucket)] = pending.get(id(bucket), 0) + size
    return pending


def recheck_set_ids(handles: Mapping[int, Handle], node: Node) -> None:
    """Mode or owner changes: the next write through each writable handle of
    *node* looks at the set-ID bits again (killpriv.py)."""
    if node.open:
        for handle in handles.values():
            if handle.node is node and handle.opener is not None:
                handle.check_sxid = True


def renameat2(old: bytes, new: bytes, flags: int) -> None:
    """rename(2) with RENAME_NOREPLACE/RENAME_EXCHANGE flags."""
    if flags == 0:
        os.rename(old, new)
        return
    if _libc.renameat2(_AT_FDCWD, old, _AT_FDCWD, new, ctypes.c_uint(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
