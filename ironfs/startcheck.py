"""Was a bucket changed behind ironfs's back while it was stopped?

After a clean stop, ``.quota`` is trusted at the next start.  Changes made to
the backing directory in between (a restore, a copy, a careless script) would
stay unseen until a reconcile, so each bucket is sampled beside the requests:
its directory, its first entries and those of its first subdirectories.  An
entry whose change time falls between the clean stop and this start is proof
of such a change, and the bucket is rescanned.  The sample is bounded, so the
check costs the same for 10 objects or 10^6 (a sample, not a proof of absence:
``ironfs reconcile`` remains the full check).  I/O only; plain Python.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .rules import is_bucket_state

#: Entries sampled per directory, and subdirectories looked into.
SAMPLE = 32
SUBDIRS = 8


def changed_between(bucket_dir: bytes, stopped: float, started: float) -> bytes | None:
    """The first entry found changed after *stopped* and before *started*
    (the bucket directory itself: its path), or None."""
    def changed(st: os.stat_result) -> bool:
        return stopped < st.st_ctime < started or stopped < st.st_mtime < started

    try:
        if changed(os.lstat(bucket_dir)):
            return bucket_dir
        subdirs: list[bytes] = []
        found = _sample(bucket_dir, True, changed, subdirs)
        for sub in subdirs[:SUBDIRS]:
            if found is not None:
                break
            found = _sample(sub, False, changed, [])
        return found
    except FileNotFoundError:
        return None  # deleted meanwhile


def _sample(path: bytes, top: bool, changed: Callable[[os.stat_result], bool],
            subdirs: list[bytes]) -> bytes | None:
    with os.scandir(path) as it:
        for i, entry in enumerate(it):
            if i >= SAMPLE:
                break
            if top and is_bucket_state(entry.name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if changed(st):
                return entry.path
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.path)
    return None
