"""The one reader of ``/proc/self/mountinfo`` (proc(5)): which paths are mounted,
and with which filesystem type."""

from __future__ import annotations

import re
from typing import NamedTuple

MOUNTINFO = "/proc/self/mountinfo"
_ESCAPE = re.compile(rb"\\([0-7]{3})")


class MountEntry(NamedTuple):
    mountpoint: bytes
    fstype: bytes


def unescape(field: bytes) -> bytes:
    r"""The kernel writes space, tab, newline and backslash in paths as ``\040``,
    ``\011``, ``\012`` and ``\134``."""
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field)


def parse(text: bytes) -> list[MountEntry]:
    """Mount points and types of a mountinfo text; malformed lines are skipped."""
    entries = []
    for line in text.splitlines():
        left, sep, right = line.partition(b" - ")
        fields = left.split(b" ")
        if not sep or len(fields) < 5 or not right:
            continue
        entries.append(MountEntry(unescape(fields[4]), right.split(b" ", 1)[0]))
    return entries


def read_mounts() -> list[MountEntry]:
    """This process's mounts (reads /proc; empty if that is not possible)."""
    try:
        with open(MOUNTINFO, "rb") as f:
            return parse(f.read())
    except OSError:
        return []


def is_fuse_mount(path: bytes) -> bool:
    """Whether *path* (as given, not resolved) is a FUSE mount point now."""
    return any(e.mountpoint == path and e.fstype.startswith(b"fuse") for e in read_mounts())


def ironfs_mounts() -> list[bytes]:
    """Mount points of every ironfs mount, in mount order."""
    return [e.mountpoint for e in read_mounts() if e.fstype == b"fuse.ironfs"]
