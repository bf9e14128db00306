"""The S3 counting rules: which file operations are which S3 requests.

The kernel shows ironfs file operations, not S3 requests; each counter has a
written rule (README, "Operation statistics"), tuned by the server profile.
The FUSE adapter reports what happened (a lookup, an open, a close, a rename
that published a staging file, an unlink...) and this module decides what it
counts.  No pyfuse3, no trio, no I/O; the clock is injected so the time-based
rules (a lookup with no open after it is a HEAD) are tested without sleeping.

Per node it keeps two fields on :class:`~ironfs.inodes.Node` (``fresh`` and
``busy_at``), owned by this module only.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Callable
from enum import IntEnum

from .accounting import Accounting
from .inodes import Node
from .ledger import Bucket
from .lookups import Lookups, NamesIn
from .stats import BYTES_READ, BYTES_WRITTEN, DELETE, GET, HEAD, LIST, MULTIPART, PUT, REJECTIONS, StatsBook


class Reading(IntEnum):
    """What a handle's reads are, for the GET rule."""

    NOT_READING = 0  # opened for writing, or not an object
    COUNTED = 1  # a read-only handle counted as a GET
    PENDING = 2  # its first read decides (profile.hash_read_size)
    HASH = 3  # the server hashing the object: no GET, no bytes read
    SAME_GET = 4  # a second handle of a GET still being served (range GETs)


class Counting:
    def __init__(self, book: StatsBook, objects: Accounting,
                 clock: Callable[[], float] = time.monotonic,
                 names_in: NamesIn = lambda directory, age: None) -> None:
        self.book = book
        self.objects = objects
        self.profile = objects.profile
        self.clock = clock
        self.lookups = Lookups(self.profile, names_in)  # HEADs and LISTs not counted yet
        self.serving: dict[Node, int] = {}  # open handles counted as a GET, per node
        self.ranged: set[Node] = set()  # whose latest GET is a range GET (no check after it)
        self.reading_dirs: dict[Node, int] = {}  # open directory handles, per directory
        # Objects unlinked within overwrite_window, not yet counted as DELETE:
        # (directory key, name) -> (when, bucket, the object's node if known).
        self.unlinked: dict[tuple[tuple[int, int], bytes], tuple[float, Bucket, Node | None]] = {}

    # -- what the adapter reports ------------------------------------------------
    def looked_at(self, node: Node, lookup: bool) -> None:
        """A regular file was looked up (*lookup*) or its attributes asked for:
        a HEAD (or part of a LIST) unless a GET follows.  With object_timeout 0
        every stat(2) of an object is a LOOKUP, and the GETATTR after it says
        nothing more."""
        if not node.in_bucket or (not lookup and self.profile.object_timeout == 0):
            return
        now = self.clock()
        if not self.profile.stats_before_get and self.lookups.seen(node, now):
            return  # one request per object until HEAD_WAIT
        if node in self.serving or node.parent in self.reading_dirs:
            return  # (a server's directory read stats each entry)
        if node.open and not self.profile.stats_before_get:
            return  # a stat of a file being written or read is no HEAD (a profile
            # matching stats to requests by count sees hash reads still open)
        if now - node.busy_at < self.profile.quiet_after_use:
            if not self.profile.checks_after_use:
                return
            if node.owed:  # the server's own check after the request that used it
                node.owed -= 1
                return
        bucket = node.load_bucket()
        if bucket is None or not self.objects.node_is_object(node):
            return
        self.lookups.add(bucket, node, now)

    def opened(self, node: Node, reading: bool) -> Reading:
        """A handle was opened on *node*; returns what its reads count as."""
        if not node.in_bucket:
            return Reading.NOT_READING
        if not reading or not self.objects.node_is_object(node):
            if node.parent is not None:
                self.lookups.touch(node.parent, self.clock())  # (an upload staged in it, say)
            self._used(node)
            self.lookups.drop(node)
            return Reading.NOT_READING
        if not self.profile.hash_read_size:
            self._count_get(node)
            return Reading.COUNTED
        if node in self.serving:  # the server's second handle of a range GET (its
            self._ranged(node)  # stats came while serving: no units to drop)
            return Reading.SAME_GET
        return Reading.PENDING  # (a hash read is no use of the object: busy_at stays)

    def first_read(self, node: Node, offset: int, size: int) -> Reading:
        """The first read of a PENDING handle: a hash read or a GET."""
        if offset == 0 and size == self.profile.hash_read_size:
            self.lookups.hashing(node, self.profile.stats_after_hash, self.clock())
            return Reading.HASH
        if node in self.serving:
            self._ranged(node)
            return Reading.SAME_GET
        self._count_get(node, seeked=offset > 0)
        return Reading.COUNTED

    def hash_read(self, node: Node) -> None:
        """A read (or the release) of a hash read of *node*: a sweep goes on after
        it (the kernel may send the release after the server's next stat)."""
        self.lookups.seen(node, self.clock())

    def _used(self, node: Node, checks: int = 0) -> None:
        node.busy_at = self.clock()
        node.owed = checks

    def _count_get(self, node: Node, seeked: bool = False) -> None:
        self._used(node)
        more = self.profile.stats_before_seek if seeked else 0
        self.lookups.drop_for_get(node, self.profile.stats_before_get + more,
                                  self.profile.stats_after_hash + more, self.clock())
        self.serving[node] = self.serving.get(node, 0) + 1
        if seeked:
            self._ranged(node)
        else:
            self.ranged.discard(node)  # (a second handle may still make it one)
        self._add(node, GET)

    def _ranged(self, node: Node) -> None:
        """*node* serves a range GET: rclone stats an object once more after a
        GET read to its end through one handle, never after a range GET (two
        handles; traced, a range ending at the last byte too)."""
        self.ranged.add(node)
        node.owed = 0

    def written(self, node: Node) -> None:
        """New content (created, truncated or written): a PUT when it is closed."""
        if node.fresh is None:
            node.fresh = self.clock()

    def closed(self, node: Node, wrote: bool, reading: Reading) -> None:
        """A handle of *node* was released."""
        if not node.in_bucket:
            return
        now = self.clock()
        if reading != Reading.HASH and reading != Reading.PENDING:
            node.busy_at = now
        if reading == Reading.COUNTED:
            left = self.serving.pop(node) - 1
            if left:
                self.serving[node] = left
        elif reading == Reading.HASH:
            self.hash_read(node)
        if wrote and node.fresh is not None and not node.unlinked and self.objects.node_is_object(node):
            node.fresh = None
            self._add(node, PUT)
            self._landed(node, node)

    def published(self, parent: Node, name: bytes, node: Node | None, components: list[bytes]) -> None:
        """A staging file (at *components* inside its bucket) was renamed onto
        the visible name *parent*/*name*: one upload completed, multipart if the
        profile says so (and the unlink of the object it replaces was no DELETE,
        unless that unlink came before this upload began: a DELETE, then a PUT)."""
        self.lookups.touch(parent, self.clock())
        replaced = self.unlinked.pop((parent.key, name), None)
        if replaced is not None and node is not None and node.fresh is not None and node.fresh > replaced[0]:
            self.book.add(replaced[1], DELETE)
        elif replaced is not None and replaced[2] is not None:  # the overwrite's other stats
            extra = self.profile.stats_before_overwrite - self.profile.stats_before_delete
            self.lookups.drop(replaced[2], extra)
        self._add(parent, MULTIPART if self.profile.is_multipart(components) else PUT)
        if node is not None:
            node.fresh = None
            self._used(node, self.profile.checks_after_use)
            self.lookups.drop(node)
            self._landed(parent, node)

    def deleted(self, parent: Node, name: bytes, mode: int, node: Node | None = None,
                age: float | None = None) -> None:
        """The name *parent*/*name* (a file of *mode*, *node* if known, its
        inode changed *age* seconds before) was unlinked: a DELETE if it was an
        object."""
        now = self.clock()
        self.lookups.touch(parent, now)
        if node is not None:
            self.lookups.drop(node, self.profile.stats_before_delete)
        if stat.S_ISREG(mode) and self.objects.is_object(parent, name):
            bucket = parent.load_bucket()
            if bucket is None:
                return
            if age is not None:
                self.lookups.unlinked(parent, name, now, now - age)
            if self.profile.overwrite_window:  # counted unless an upload takes its place
                self.unlinked[(parent.key, name)] = (now, bucket, node)
            else:
                self.book.add(bucket, DELETE)

    def removed_directory(self, key: tuple[int, int]) -> None:
        """The directory *key* (st_dev, st_ino) was removed: nothing can be
        published into it any more, so the unlinks held there are DELETEs now.
        (rclone removes a prefix's directory with its last object, and the next
        mkdir, of any prefix, may get the same inode number: an upload into it
        must not pass for the overwrite of an object unlinked in the old one.)"""
        for held, (_, owner, _) in list(self.unlinked.items()):
            if held[0] == key:
                del self.unlinked[held]
                self.book.add(owner.load_live(), DELETE)

    def listed(self, directory: Node) -> None:
        """A directory was opened for reading: inside a bucket, a LIST unless
        the profile counts LISTs from lookups (list_gap)."""
        self.reading_dirs[directory] = self.reading_dirs.get(directory, 0) + 1
        self.lookups.touch(directory, self.clock())
        if self.profile.list_gap:
            return
        if directory.in_bucket and not directory.is_state and not self.objects.in_hidden_dir(directory):
            bucket = directory.load_bucket()
            if bucket is not None:
                self.book.add(bucket, LIST)

    def unlisted(self, directory: Node) -> None:
        """A directory handle was released."""
        left = self.reading_dirs.pop(directory) - 1
        if left:
            self.reading_dirs[directory] = left

    def forgotten(self, node: Node) -> None:
        """*node* lost its name: a pending lookup of it is no HEAD (unless the
        profile matches lookups to requests by count: deleted() did)."""
        if not self.profile.stats_before_get:
            self.lookups.drop(node)

    def bytes_read(self, node: Node, n: int, at_end: bool) -> None:
        """A GET's read of *n* bytes (*at_end*: it reached the end of the object,
        after which the server checks the object once more)."""
        bucket = node.load_bucket()
        if bucket is not None:
            self.book.add(bucket, BYTES_READ, n)
        if at_end and node not in self.ranged:
            node.owed = self.profile.checks_after_use

    def bytes_written(self, node: Node, n: int) -> None:
        """*n* bytes landed in *node*: counted when its upload completes (a PUT),
        never if it is refused or abandoned."""
        node.written += n

    def _landed(self, where: Node, node: Node) -> None:
        if node.written:
            self._add(where, BYTES_WRITTEN, node.written)
            node.written = 0

    def rejected(self, bucket: Bucket) -> None:
        self.book.add(bucket, REJECTIONS)

    # -- the flusher's tick -------------------------------------------------------
    def commit_heads(self, everything: bool = False) -> None:
        """Count the lookups that no GET followed within HEAD_WAIT (LISTs and
        HEADs, lookups.py), and the unlinks that no upload replaced within the
        profile's overwrite window."""
        now = self.clock()
        self.ranged = {node for node in self.ranged if node.open}
        window = self.profile.overwrite_window
        for key, (at, owner, _) in list(self.unlinked.items()):
            if everything or now - at >= window:
                del self.unlinked[key]
                self.book.add(owner.load_live(), DELETE)  # (reloaded if evicted meanwhile)
        for bucket, is_list, units in self.lookups.due(now, everything):
            if is_list:
                self.book.add(bucket, LIST)
            else:
                self.book.add(bucket, HEAD, units)

    def _add(self, node: Node, counter: int, n: int = 1) -> None:
        bucket = node.load_bucket()
        if bucket is not None:
            self.book.add(bucket, counter, n)
