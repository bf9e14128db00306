"""Walk bucket directories and compute their usage under the rules in ``rules``.

The scanner and the live ledger must agree to the byte: the invariant tests
compare them after random operation sequences.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .rules import Profile, hides, is_bucket_state

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Usage:
    used_bytes: int = 0
    objects: int = 0


class Progress:
    """Counts scanned entries across threads and shows them now and then:
    a bar-like line on a terminal, a log line every 10 s otherwise."""

    def __init__(self, total_buckets: int, stream=None) -> None:
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


def scan_tree(top: bytes, profile: Profile, *, bucket_top: bool = True,
              hidden: bool = False, progress: Progress | None = None) -> Usage:
    """Usage of the tree under *top*.

    ``bucket_top``: *top* is a bucket directory, so its state entries are skipped.
    ``hidden``: *top* itself lies below a dot directory (its files are no objects).
    """
    usage = Usage()
    seen: set[tuple[int, int]] = set()  # inodes with st_nlink > 1 already counted
    stack: list[tuple[bytes, bool, bool]] = [(top, hidden, bucket_top)]
    while stack:
        path, dir_hidden, is_bucket_top = stack.pop()
        try:
            it = os.scandir(path)
        except FileNotFoundError:
            continue  # removed while we walked
        files = 0
        with it:
            for entry in it:
                name = entry.name
                if is_bucket_top and is_bucket_state(name):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((entry.path, dir_hidden or hides(name), False))
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                files += 1
                if not dir_hidden and profile.is_object_name(name):
                    usage.objects += 1
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                usage.used_bytes += st.st_size
        if progress is not None:
            progress.add(files)
    return usage


def scan_buckets(root: bytes, names: Iterable[bytes], profile: Profile, *,
                 workers: int = 4, show_progress: bool = True,
                 on_done: Callable[[bytes, Usage], None] | None = None) -> dict[bytes, Usage]:
    """Scan several buckets in parallel (the syscalls release the GIL)."""
    names = list(names)
    progress = Progress(len(names)) if show_progress else None

    def one(name: bytes) -> tuple[bytes, Usage]:
        usage = scan_tree(os.path.join(root, name), profile, progress=progress)
        if progress is not None:
            progress.bucket_done()
        return name, usage

    results: dict[bytes, Usage] = {}
    if not names:
        return results
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(names)))) as pool:
        for name, usage in pool.map(one, names):
            results[name] = usage
            if on_done is not None:
                on_done(name, usage)
    if progress is not None:
        progress.finish()
    return results
