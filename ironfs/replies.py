"""pyfuse3's reply objects, filled from the backing filesystem's answers."""

from __future__ import annotations

import os
import stat

from pyfuse3 import EntryAttributes, StatvfsData

from .config import Config
from .inodes import Node

_STAT_FIELDS = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
                "st_blksize", "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns")
_STATVFS_FIELDS = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                   "f_files", "f_ffree", "f_favail", "f_namemax")


def entry(cfg: Config, node: Node, st: os.stat_result) -> EntryAttributes:
    """*node* as the kernel sees it: the backing file's attributes under the
    node's id and generation."""
    e = EntryAttributes()
    e.st_ino = node.ino
    e.generation = node.generation
    e.entry_timeout = cfg.entry_timeout
    e.attr_timeout = cfg.attr_timeout
    object_timeout = cfg.profile.object_timeout
    if object_timeout is not None and node.in_bucket and stat.S_ISREG(st.st_mode):
        e.entry_timeout = e.attr_timeout = object_timeout  # every stat of it reaches us
    for field in _STAT_FIELDS:
        setattr(e, field, getattr(st, field))
    return e


def negative(cfg: Config) -> EntryAttributes:
    """"No such entry", which the kernel may remember for entry_timeout: a
    server checks a key several times before it writes it."""
    e = EntryAttributes()
    e.st_ino = 0
    e.entry_timeout = cfg.entry_timeout
    return e


def statvfs(path: bytes) -> StatvfsData:
    """The backing filesystem's own figures (reads them)."""
    s = os.statvfs(path)
    d = StatvfsData()
    for field in _STATVFS_FIELDS:
        setattr(d, field, getattr(s, field))
    return d
