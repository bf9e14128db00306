"""Walk bucket directories and compute their usage under the rules in ``rules``.

The scanner and the live ledger must agree to the byte: the invariant tests
compare them after random operation sequences.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import TextIO

from .inodes import LONG_PATH
from .rules import Profile, hides, is_bucket_state

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Usage:
    used_bytes: int = 0
    objects: int = 0


class Progress:
    """Counts scanned entries across threads and shows them now and then:
    a bar-like line on a terminal, a log line every 10 s otherwise."""

    def __init__(self, total_buckets: int, stream: TextIO | None = None) -> None:
        self.total_buckets = total_buckets
        self.done_buckets = 0
        self.files = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._last = self.started

    def add(self, files: int) -> None:
        with self._lock:
            self.files += files
            now = time.monotonic()
            if now - self._last >= (0.5 if self._tty else 10.0):
                self._last = now
                self._show(now)

    def bucket_done(self) -> None:
        with self._lock:
            self.done_buckets += 1

    def _show(self, now: float) -> None:
        rate = self.files / max(now - self.started, 1e-9)
        text = (f"scanning: {self.done_buckets}/{self.total_buckets} buckets, "
                f"{self.files} files, {rate:,.0f} files/s")
        if self._tty:
            self._stream.write("\r" + text + "\x1b[K")
            self._stream.flush()
        else:
            log.info("%s", text)

    def finish(self) -> None:
        if self._tty and self.files:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


@dataclass(slots=True)
class _DirResult:
    used_bytes: int = 0
    objects: int = 0
    files: int = 0
    linked: list[tuple[tuple[int, int], int]] = field(default_factory=list)  # (inode key, size): nlink > 1
    subdirs: list[tuple[bytes, bool]] = field(default_factory=list)


def _scan_dir(path: bytes, dir_hidden: bool, is_bucket_top: bool, profile: Profile) -> _DirResult:
    """One directory, not its subdirectories (they are returned for the caller)."""
    result = _DirResult()
    is_object_name = profile.is_object_name
    try:
        it = os.scandir(path)
    except (FileNotFoundError, NotADirectoryError):
        return result  # removed while we walked
    with it:
        for entry in it:
            name = entry.name
            if is_bucket_top and is_bucket_state(name):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    result.subdirs.append((entry.path, dir_hidden or hides(name)))
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            result.files += 1
            if not dir_hidden and is_object_name(name):
                result.objects += 1
            if st.st_nlink > 1:
                result.linked.append(((st.st_dev, st.st_ino), st.st_size))
            else:
                result.used_bytes += st.st_size
    return result


class _Anchor:
    """An O_PATH fd of a directory, closed when no pending path needs it: paths
    deeper than PATH_MAX are walked as /proc/self/fd/N/rest."""

    __slots__ = ("fd",)

    def __init__(self, path: bytes) -> None:
        self.fd = -1
        self.fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def __del__(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)


#: What one subtree holds: (bytes of singly-linked files, objects, files,
#: {inode key: size} of hard-linked ones).
_Part = tuple[int, int, int, dict[tuple[int, int], int]]


@dataclass(slots=True)
class _Totals:
    """One bucket's scan so far; done when no unit of it is left."""

    used: int
    objects: int
    linked: dict[tuple[int, int], int] | None  # no dict unless it has hard links
    units_left: int


def _walk(path: bytes, hidden: bool, is_bucket_top: bool, profile: Profile) -> _Part:
    """A whole subtree, in one thread: (bytes of singly-linked files, objects,
    files, {inode key: size} of hard-linked ones)."""
    used = objects = files = 0
    linked: dict[tuple[int, int], int] = {}
    stack: list[tuple[bytes, bool, bool, _Anchor | None]] = [(path, hidden, is_bucket_top, None)]
    while stack:
        p, h, top, anchor = stack.pop()
        r = _scan_dir(p, h, top, profile)
        used += r.used_bytes
        objects += r.objects
        files += r.files
        linked.update(r.linked)
        subdirs = r.subdirs
        if subdirs and len(p) > LONG_PATH:
            try:
                anchor = _Anchor(p)
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed while we walked
            base = b"/proc/self/fd/%d/" % anchor.fd
            subdirs = [(base + os.path.basename(sub), sub_hidden) for sub, sub_hidden in subdirs]
        stack.extend((sub, sub_hidden, False, anchor) for sub, sub_hidden in subdirs)
        del anchor
    return used, objects, files, linked


def scan_tree(top: bytes, profile: Profile, *, bucket_top: bool = True, hidden: bool = False,
              progress: Progress | None = None) -> Usage:
    """Usage of the tree under *top*, in this thread.

    ``bucket_top``: *top* is a bucket directory, so its state entries are skipped.
    ``hidden``: *top* itself lies below a dot directory (its files are no objects).
    """
    used, objects, files, linked = _walk(top, hidden, bucket_top, profile)
    if progress is not None:
        progress.add(files)
    return Usage(used + sum(linked.values()), objects)


def scan_buckets(root: bytes, names: Iterable[bytes], profile: Profile, *,
                 workers: int = 4, show_progress: bool = True,
                 on_done: Callable[[bytes, Usage], None] | None = None) -> dict[bytes, Usage]:
    """Scan several buckets with *workers* processes.

    Each bucket's top directory is read here; its subdirectories are the units of
    work, so one big bucket is spread over every core (threads would serialise on
    the GIL).  Hard links are counted once per bucket across units."""
    names = list(names)
    progress = Progress(len(names)) if show_progress else None
    units: list[tuple[int, bytes, bool]] = []
    totals: list[_Totals] = []
    for i, name in enumerate(names):
        first = _scan_dir(os.path.join(root, name), False, True, profile)
        subdirs = first.subdirs
        # No dict per bucket unless it has hard links: 10^5 empty ones would
        # stay in the daemon's heap as fragmentation after the scan.
        totals.append(_Totals(first.used_bytes, first.objects,
                              dict(first.linked) if first.linked else None, len(subdirs)))
        units.extend((i, path, hidden) for path, hidden in subdirs)
        if progress is not None:
            progress.add(first.files)
    results: dict[bytes, Usage] = {}

    def finish(i: int) -> None:
        t = totals[i]
        linked = sum(t.linked.values()) if t.linked else 0
        usage = results[names[i]] = Usage(t.used + linked, t.objects)
        if progress is not None:
            progress.bucket_done()
        if on_done is not None:
            on_done(names[i], usage)

    def merge(i: int, part: _Part) -> None:
        t = totals[i]
        t.used += part[0]
        t.objects += part[1]
        if part[3]:
            if t.linked is None:
                t.linked = {}
            t.linked.update(part[3])
        t.units_left -= 1
        if progress is not None:
            progress.add(part[2])
        if t.units_left == 0:
            finish(i)

    for i, t in enumerate(totals):
        if t.units_left == 0:
            finish(i)
    if units:
        _run_units(units, profile, workers, merge)
    if progress is not None:
        progress.finish()
    return results


def _run_units(units: list[tuple[int, bytes, bool]], profile: Profile, workers: int,
               merge: Callable[[int, _Part], None]) -> None:
    if workers <= 1 or len(units) < 2:
        for i, path, hidden in units:
            merge(i, _walk(path, hidden, False, profile))
        return
    # forkserver: never fork the daemon itself (it may hold threads and a FUSE fd).
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(_walk, path, hidden, False, profile): i for i, path, hidden in units}
        for future in as_completed(futures):
            merge(futures[future], future.result())
