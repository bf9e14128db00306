"""Exact scans of a bucket (or of a directory in one) while it is in use.

No request waits for a scan: a worker thread lists and stats the tree a chunk
at a time (I/O only), and the request loop adds each chunk up between requests
(no I/O, no await), so adding up never overlaps a request.  What requests change
meanwhile is accounted, with the ledger's own rules, so that the result is
what a scan of a quiet tree would find at the moment it ends:

- A file's bytes count once, when it is first met: by the scan, or by a request
  that gives it a new name (create, link, rename into the scanned tree).  The
  set of counted inodes tells the two apart, so a file met twice (a renamed
  directory is walked again) counts once.
- A request that changes a counted file (write, truncate, unlink, rename)
  changes the totals as it changes the ledger; one that changes a file not yet
  counted is left to the scan, which will see the result.
- Entries that a request touched while their chunk was being read are stat'ed
  again when the chunk is added up.
- A directory renamed during the scan is walked again from its new place; a
  rename that makes a directory hidden or visible restarts the scan.
- Names of files with several links are remembered as (directory, name), so
  that each name counts as an object once.

Plain Python: the caller (``scans.py``) runs ``read_chunk`` in a thread and
``add`` on the request loop.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from .rules import Profile, hides, is_bucket_state

#: Entries listed and stat'ed per chunk: the longest the loop spends adding up.
CHUNK = 512

Key = tuple[int, int]


class _Listing(Iterator[os.DirEntry[str]], Protocol):
    """What os.scandir returns: entries, and close()."""

    def close(self) -> None: ...


class InodeSet:
    """Inode numbers, a bit each (a million files cost a few hundred KiB)."""

    __slots__ = ("_chunks",)
    BITS = 1 << 15

    def __init__(self) -> None:
        self._chunks: dict[tuple[int, int], bytearray] = {}

    def _where(self, key: Key) -> tuple[tuple[int, int], int]:
        dev, ino = key
        return (dev, ino // self.BITS), ino % self.BITS

    def add(self, key: Key) -> None:
        chunk, bit = self._where(key)
        bits = self._chunks.get(chunk)
        if bits is None:
            bits = self._chunks[chunk] = bytearray(self.BITS // 8)
        bits[bit >> 3] |= 1 << (bit & 7)

    def discard(self, key: Key) -> None:
        chunk, bit = self._where(key)
        bits = self._chunks.get(chunk)
        if bits is not None:
            bits[bit >> 3] &= ~(1 << (bit & 7)) & 0xFF

    def __contains__(self, key: Key) -> bool:
        chunk, bit = self._where(key)
        bits = self._chunks.get(chunk)
        return bits is not None and bool(bits[bit >> 3] & (1 << (bit & 7)))


@dataclass(slots=True)
class Chunk:
    """Up to CHUNK entries of one directory, as the worker found them."""

    fd: int  # the directory, open until its last chunk is added up
    rel: bytes  # its path below the scan's root
    key: Key
    hidden: bool
    top: bool  # the bucket directory itself (its state entries are skipped)
    entries: list[tuple[bytes, os.stat_result | None]] = field(default_factory=list)  # None: a dir
    last: bool = False


def key_of(st: os.stat_result) -> Key:
    return st.st_dev, st.st_ino


class LiveScan:
    def __init__(self, root_fd: int, profile: Profile, *, bucket_top: bool = True,
                 hidden: bool = False) -> None:
        self.root_fd = root_fd  # the tree's top, whatever it is renamed to meanwhile
        self.profile = profile
        self.used_bytes = 0
        self.objects = 0
        self.counted = InodeSet()
        self.linked_names: set[tuple[Key, bytes]] = set()  # counted names of multi-link files
        self.queue: deque[tuple[bytes, bool, bool]] = deque([(b"", hidden, bucket_top)])
        self.restart = False  # a rename made a directory hidden or visible
        self._recent_names: set[tuple[Key, bytes]] = set()
        self._recent_inodes: set[Key] = set()
        self._current: tuple[int, bytes, Key, bool, bool, _Listing] | None = None

    # -- the worker thread: I/O only ----------------------------------------------------
    def read_chunk(self) -> Chunk | None:
        """The next chunk of entries, or None when the tree is done."""
        while self._current is None:
            if not self.queue:
                return None
            rel, hidden, top = self.queue.popleft()
            self._current = self._open(rel, hidden, top)
        fd, rel, key, hidden, top, it = self._current
        chunk = Chunk(fd, rel, key, hidden, top)
        for entry in it:  # (listing an fd gives str names: fsencode restores the bytes)
            try:
                if entry.is_dir(follow_symlinks=False):
                    chunk.entries.append((os.fsencode(entry.name), None))
                elif entry.is_file(follow_symlinks=False):
                    chunk.entries.append((os.fsencode(entry.name), entry.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue
            if len(chunk.entries) >= CHUNK:
                return chunk
        it.close()
        self._current = None
        chunk.last = True
        return chunk

    def _open(self, rel: bytes, hidden: bool, top: bool
              ) -> tuple[int, bytes, Key, bool, bool, _Listing] | None:
        try:
            fd = open_below(self.root_fd, rel)
        except (FileNotFoundError, NotADirectoryError):
            return None  # removed or renamed meanwhile (a rename walks it again)
        try:
            return fd, rel, key_of(os.fstat(fd)), hidden, top, os.scandir(fd)
        except OSError:
            os.close(fd)
            raise

    # -- the request loop: adding up ------------------------------------------------------
    def starting_chunk(self) -> None:
        """A chunk is about to be read: start noting what requests touch."""
        self._recent_names.clear()
        self._recent_inodes.clear()

    def add(self, chunk: Chunk) -> None:
        try:
            for name, st in chunk.entries:
                if chunk.top and is_bucket_state(name):
                    continue
                if st is None or (chunk.key, name) in self._recent_names or \
                        key_of(st) in self._recent_inodes:
                    st = self._stat_again(chunk.fd, name)
                    if st is None:
                        continue
                if stat.S_ISDIR(st.st_mode):
                    self.queue.append((chunk.rel + b"/" + name if chunk.rel else name,
                                       chunk.hidden or hides(name), False))
                elif stat.S_ISREG(st.st_mode):
                    self._meet(chunk.key, name, st, not chunk.hidden and self.profile.is_object_name(name))
        finally:
            if chunk.last:
                os.close(chunk.fd)

    @staticmethod
    def _stat_again(dir_fd: int, name: bytes) -> os.stat_result | None:
        try:
            return os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return None

    def _meet(self, dir_key: Key, name: bytes, st: os.stat_result, visible: bool) -> None:
        key = key_of(st)
        if st.st_nlink <= 1:
            if key in self.counted:
                return
            self.counted.add(key)
            self.used_bytes += st.st_size
            self.objects += visible
            return
        if key not in self.counted:
            self.counted.add(key)
            self.used_bytes += st.st_size
        if (dir_key, name) not in self.linked_names:
            self.linked_names.add((dir_key, name))
            self.objects += visible

    def close(self) -> None:
        """Give up (the worker is not reading): close what is open."""
        if self._current is not None:
            os.close(self._current[0])
            self._current[5].close()
            self._current = None

    # -- what requests did meanwhile (request loop) -------------------------------------
    def _touch(self, dir_key: Key | None, name: bytes | None, key: Key | None) -> None:
        if dir_key is not None and name is not None:
            self._recent_names.add((dir_key, name))
        if key is not None:
            self._recent_inodes.add(key)

    def resized(self, key: Key, old: int, new: int) -> None:
        """A file's size changed (write, truncate, O_TRUNC)."""
        self._touch(None, None, key)
        if key in self.counted:
            self.used_bytes += new - old

    def named(self, dir_key: Key, name: bytes, key: Key, size: int, nlink: int,
              visible: bool) -> None:
        """A file got the name *dir_key*/*name* (create, mknod, link, or the
        new name of a rename) and now has *nlink* names."""
        self._touch(dir_key, name, key)
        if key not in self.counted:
            self.counted.add(key)
            self.used_bytes += size
        elif nlink > 1 and (dir_key, name) in self.linked_names:
            return
        if nlink > 1:
            self.linked_names.add((dir_key, name))
        self.objects += visible

    def became_linked(self, dir_key: Key, name: bytes, key: Key) -> None:
        """A counted single-name file gets a second name: its first name is
        remembered as counted."""
        if key in self.counted:
            self.linked_names.add((dir_key, name))

    def unnamed(self, dir_key: Key, name: bytes, key: Key, size: int, nlink: int,
                visible: bool) -> None:
        """The name *dir_key*/*name* of a file with *nlink* names (before) is
        gone (unlink, replaced, or the old name of a rename)."""
        self._touch(dir_key, name, key)
        if key not in self.counted:
            return
        if nlink <= 1:
            self.counted.discard(key)
            self.used_bytes -= size
            self.objects -= visible
        elif (dir_key, name) in self.linked_names:
            self.linked_names.discard((dir_key, name))
            self.objects -= visible

    def dir_moved(self, rel: bytes, hidden: bool, visibility_changed: bool) -> None:
        """A directory now at *rel* (below the root) was renamed: walk it again."""
        if visibility_changed:
            self.restart = True
        self.queue.append((rel, hidden, False))


def open_below(root_fd: int, rel: bytes) -> int:
    """An fd of the directory *rel* below the directory *root_fd*, one
    component at a time when the path is too long for one call."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(rel or b".", flags, dir_fd=root_fd)
    except OSError as e:
        if e.errno != errno.ENAMETOOLONG:
            raise
    fd = os.open(b".", flags, dir_fd=root_fd)
    try:
        for part in rel.split(b"/"):
            nxt = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd
