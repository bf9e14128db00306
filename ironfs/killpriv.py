"""Clearing set-user-ID and set-group-ID bits on write, as ext4 does.

The kernel clears them itself only on its cached write path; on the direct-I/O
path (write-only handles, see fs.py) it leaves that to the filesystem, and the
daemon writes as root, so the backing filesystem never clears them either.  The
rule (the VFS's ``setattr_should_drop_suidgid``): a write by a process without
CAP_FSETID clears S_ISUID always, and S_ISGID if the group may execute the file
or the writer is not in the file's group.

pyfuse3 tells the write handler nothing of the writer, so the opener of the
handle stands for it (an fd handed to another process keeps its opener's
treatment).  Plain Python; ``read_writer`` and ``clear_set_ids`` do I/O.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

CAP_FSETID = 4
SXID = stat.S_ISUID | stat.S_ISGID


@dataclass(frozen=True, slots=True)
class Writer:
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()
    may_keep_sxid: bool = False  # CAP_FSETID in its effective set


def bits_to_clear(mode: int, file_gid: int, writer: Writer) -> int:
    """The set-ID bits of a file of *mode* (group *file_gid*) that a write by
    *writer* clears."""
    if not stat.S_ISREG(mode) or not mode & SXID or writer.may_keep_sxid:
        return 0
    clear = mode & stat.S_ISUID
    if mode & stat.S_ISGID and (mode & stat.S_IXGRP or not in_group(writer, file_gid)):
        clear |= stat.S_ISGID
    return clear


def in_group(writer: Writer, gid: int) -> bool:
    return writer.gid == gid or gid in writer.groups


def parse_status(text: str, uid: int, gid: int) -> Writer:
    """A Writer from a ``/proc/PID/status`` text (supplementary groups and the
    effective capabilities); the request's own uid and gid are authoritative."""
    groups: frozenset[int] = frozenset()
    caps = 0 if uid else 1 << CAP_FSETID
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "Groups":
            groups = frozenset(int(g) for g in value.split())
        elif key == "CapEff":
            caps = int(value.strip(), 16)
    return Writer(uid, gid, groups, bool(caps & (1 << CAP_FSETID)))


def read_writer(pid: int, uid: int, gid: int) -> Writer:
    """The writer behind a request of process *pid* (reads /proc).  If the
    process is gone, root keeps the bits and anyone else loses them."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return parse_status(f.read(), uid, gid)
    except OSError:
        return Writer(uid, gid, frozenset(), uid == 0)


def clear_set_ids(fd: int, opener: tuple[int, int, int] | None) -> None:
    """A write through *fd*, opened by *opener* (pid, uid, gid), is about to
    happen: clear the set-ID bits it may not keep (touches the file)."""
    st = os.fstat(fd)
    if opener is None or not st.st_mode & SXID:
        return
    clear = bits_to_clear(st.st_mode, st.st_gid, read_writer(*opener))
    if clear:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~clear)
