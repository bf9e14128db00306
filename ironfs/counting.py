"""The S3 counting rules: which file operations are which S3 requests.

The kernel shows ironfs file operations, not S3 requests; each counter has a
written rule (README, "Operation statistics"), tuned by the server profile.
The FUSE adapter reports what happened (a lookup, an open, a close, a rename
that published a staging file, an unlink...) and this module decides what it
counts.  No pyfuse3, no trio, no I/O; the clock is injected so the time-based
rules (a lookup with no open after it is a HEAD) are tested without sleeping.

Per node it keeps three fields on :class:`~ironfs.inodes.Node` (``fresh``,
``busy_at``, ``read_at``), owned by this module only.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Callable
from enum import IntEnum

from .accounting import Accounting
from .inodes import Node
from .ledger import Bucket
from .stats import BYTES_READ, BYTES_WRITTEN, DELETE, GET, HEAD, LIST, MULTIPART, PUT, REJECTIONS, StatsBook

#: A lookup of an object counts as HEAD unless an open follows within this time…
HEAD_WAIT = 0.5
#: …or the object was opened, closed or published this recently (a server's own
#: check around a GET or PUT).
QUIET_AFTER_USE = 1.0


class Reading(IntEnum):
    """What a handle's reads are, for the GET rule."""

    NOT_READING = 0  # opened for writing, or not an object
    COUNTED = 1  # a read-only open counted as a GET
    REREAD = 2  # the server's second read of the same GET (profile.reread_window)


class Counting:
    def __init__(self, book: StatsBook, objects: Accounting,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.book = book
        self.objects = objects
        self.profile = objects.profile
        self.clock = clock
        self.heads: dict[Node, float] = {}  # objects looked up, not yet opened
        # Objects unlinked within overwrite_window, not yet counted as DELETE:
        # (directory key, name) -> (when, bucket).
        self.unlinked: dict[tuple[tuple[int, int], bytes], tuple[float, Bucket]] = {}

    # -- what the adapter reports ------------------------------------------------
    def looked_at(self, node: Node) -> None:
        """A regular file's attributes were asked for: a HEAD, unless an open follows."""
        if not node.in_bucket:
            return
        now = self.clock()
        if node.open or now - node.busy_at < QUIET_AFTER_USE or node in self.heads:
            return
        if self.objects.node_is_object(node):
            self.heads[node] = now

    def opened(self, node: Node, reading: bool) -> Reading:
        """A handle was opened on *node*; returns what its reads count as."""
        if not node.in_bucket:
            return Reading.NOT_READING
        now = self.clock()
        node.busy_at = now
        self.heads.pop(node, None)
        if not reading or not self.objects.node_is_object(node):
            return Reading.NOT_READING
        window = self.profile.reread_window
        if window and now - node.read_at < window:
            return Reading.REREAD
        self._add(node, GET)
        return Reading.COUNTED

    def written(self, node: Node) -> None:
        """New content (created, truncated or written): a PUT when it is closed."""
        node.fresh = True

    def closed(self, node: Node, wrote: bool, reading: Reading) -> None:
        """A handle of *node* was released."""
        if not node.in_bucket:
            return
        now = self.clock()
        node.busy_at = now
        if reading:
            node.read_at = now if reading == Reading.COUNTED else 0.0
        if wrote and node.fresh and not node.unlinked and self.objects.node_is_object(node):
            node.fresh = False
            self._add(node, PUT)

    def published(self, parent: Node, name: bytes, node: Node | None, components: list[bytes]) -> None:
        """A staging file (at *components* inside its bucket) was renamed onto
        the visible name *parent*/*name*: one upload completed, multipart if the
        profile says so (and the unlink of the object it replaces was no DELETE)."""
        self.unlinked.pop((parent.key, name), None)
        self._add(parent, MULTIPART if self.profile.is_multipart(components) else PUT)
        if node is not None:
            node.fresh = False
            node.busy_at = self.clock()
            self.heads.pop(node, None)

    def deleted(self, parent: Node, name: bytes, mode: int) -> None:
        """The name *parent*/*name* (a file of *mode*) was unlinked: a DELETE if
        it was an object."""
        if stat.S_ISREG(mode) and self.objects.is_object(parent, name):
            bucket = parent.load_bucket()
            if bucket is None:
                return
            if self.profile.overwrite_window:  # counted unless an upload takes its place
                self.unlinked[(parent.key, name)] = (self.clock(), bucket)
            else:
                self.book.add(bucket, DELETE)

    def listed(self, directory: Node) -> None:
        """A directory inside a bucket was opened for reading."""
        if directory.in_bucket and not directory.is_state and not self.objects.in_hidden_dir(directory):
            bucket = directory.load_bucket()
            if bucket is not None:
                self.book.add(bucket, LIST)

    def forgotten(self, node: Node) -> None:
        """*node* lost its name: a pending lookup of it is no HEAD."""
        self.heads.pop(node, None)

    def bytes_read(self, node: Node, n: int) -> None:
        bucket = node.load_bucket()
        if bucket is not None:
            self.book.add(bucket, BYTES_READ, n)

    def bytes_written(self, bucket: Bucket, n: int) -> None:
        self.book.add(bucket, BYTES_WRITTEN, n)

    def rejected(self, bucket: Bucket) -> None:
        self.book.add(bucket, REJECTIONS)

    # -- the flusher's tick -------------------------------------------------------
    def commit_heads(self, everything: bool = False) -> None:
        """Count the lookups that no open followed within HEAD_WAIT, and the
        unlinks that no upload replaced within the profile's overwrite window."""
        now = self.clock()
        window = self.profile.overwrite_window
        for key, (at, owner) in list(self.unlinked.items()):
            if everything or now - at >= window:
                del self.unlinked[key]
                self.book.add(owner.load_live(), DELETE)  # (reloaded if evicted meanwhile)
        for node, at in list(self.heads.items()):
            if everything or now - at >= HEAD_WAIT:
                del self.heads[node]
                bucket = node.load_bucket()
                if bucket is not None:
                    self.book.add(bucket, HEAD)

    def _add(self, node: Node, counter: int) -> None:
        bucket = node.load_bucket()
        if bucket is not None:
            self.book.add(bucket, counter)
