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
from .stats import BYTES_READ, BYTES_WRITTEN, DELETE, GET, HEAD, LIST, MULTIPART, PUT, REJECTIONS, StatsBook

#: A lookup of an object counts as HEAD (or LIST) unless a GET of it follows
#: within this time.
HEAD_WAIT = 0.5


class Reading(IntEnum):
    """What a handle's reads are, for the GET rule."""

    NOT_READING = 0  # opened for writing, or not an object
    COUNTED = 1  # a read-only handle counted as a GET
    PENDING = 2  # its first read decides (profile.hash_read_size)
    HASH = 3  # the server hashing the object: no GET, no bytes read
    SAME_GET = 4  # a second handle of a GET still being served (range GETs)


class Sweep:
    """Objects of one directory looked up one after the other, each soon after
    the last: a LIST if two or more of them are left, a HEAD if one."""

    __slots__ = ("bucket", "directory", "members", "first_seen", "last_seen")

    def __init__(self, bucket: Bucket, directory: Node, now: float) -> None:
        self.bucket = bucket
        self.directory = directory
        self.members: dict[Node, int] = {}  # object -> requests it stands for
        self.first_seen = self.last_seen = now


def _ancestors(directory: Node) -> list[Node]:
    """*directory* and the directories above it, up to its bucket's."""
    chain = [directory]
    while chain[-1].parent is not None and chain[-1].parent.parent is not None:
        chain.append(chain[-1].parent)
    return chain


def _related(a: Node, b: Node) -> bool:
    """Whether one LIST can go from directory *a* to *b*: the same, one below
    the other, or two below one prefix of the bucket (a LIST recurses)."""
    if a is b:
        return True
    up_a, up_b = _ancestors(a), _ancestors(b)
    if a in up_b or b in up_a:
        return True
    common = set(up_a[:-1]) & set(up_b[:-1])  # the bucket directory itself does not join
    return bool(common)


class Unit:
    """One request's stats of one object, not yet known to be part of a GET,
    a DELETE or an overwrite: a HEAD, or one object of a LIST."""

    __slots__ = ("sweep", "hashed")

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep
        self.hashed = False  # the server read the object whole to hash it


class Counting:
    def __init__(self, book: StatsBook, objects: Accounting,
                 clock: Callable[[], float] = time.monotonic,
                 names_in: Callable[[Node, float], frozenset[bytes] | None] = lambda d, a: None,
                 ) -> None:
        self.book = book
        # The objects of a directory older than some seconds (reads it), None if unknown.
        self.names_in = names_in
        self.objects = objects
        self.profile = objects.profile
        self.clock = clock
        # Objects looked up and not yet matched to another request: their units,
        # oldest first (one per lookup when the profile counts stats per request).
        self.heads: dict[Node, list[Unit]] = {}
        self.sweeps: list[Sweep] = []
        self.serving: dict[Node, int] = {}  # open handles counted as a GET, per node
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
        units = self.heads.get(node)
        if units and not self.profile.stats_before_get:
            units[-1].sweep.last_seen = now  # one request per object until HEAD_WAIT
            return
        if node in self.serving or node.parent in self.reading_dirs:
            return  # (a server's directory read stats each entry)
        if now - node.busy_at < self.profile.quiet_after_use:
            if not self.profile.checks_after_use:
                return
            if node.owed:  # the server's own check after the request that used it
                node.owed -= 1
                return
        bucket = node.load_bucket()
        if bucket is None or not self.objects.node_is_object(node):
            return
        sweep = self._sweep_for(bucket, node, now)
        sweep.members[node] = sweep.members.get(node, 0) + 1
        self.heads.setdefault(node, []).append(Unit(sweep))

    def _sweep_for(self, bucket: Bucket, node: Node, now: float) -> Sweep:
        """The sweep *node*'s lookup continues (one of its directory, last seen
        within the profile's list_gap, not holding it yet), or a new one."""
        gap = self.profile.list_gap
        best: Sweep | None = None
        if gap:
            for sweep in self.sweeps:
                if (sweep.directory is node.parent and now - sweep.last_seen <= gap
                        and node not in sweep.members
                        and (best is None or sweep.last_seen > best.last_seen)):
                    best = sweep
        if best is None:
            assert node.parent is not None  # an object has a directory
            best = Sweep(bucket, node.parent, now)
            self.sweeps.append(best)
        best.last_seen = now
        return best

    def opened(self, node: Node, reading: bool) -> Reading:
        """A handle was opened on *node*; returns what its reads count as."""
        if not node.in_bucket:
            return Reading.NOT_READING
        if not reading or not self.objects.node_is_object(node):
            self._used(node)
            self._drop_units(node)
            return Reading.NOT_READING
        if not self.profile.hash_read_size:
            self._count_get(node)
            return Reading.COUNTED
        if node in self.serving:  # the server's second handle of a range GET
            self._drop_units(node, self.profile.stats_after_hash)
            return Reading.SAME_GET
        return Reading.PENDING  # (a hash read is no use of the object: busy_at stays)

    def first_read(self, node: Node, offset: int, size: int) -> Reading:
        """The first read of a PENDING handle: a hash read or a GET."""
        if offset == 0 and size == self.profile.hash_read_size:
            self._hashing(node)
            return Reading.HASH
        if node in self.serving:
            return Reading.SAME_GET
        self._count_get(node, seeked=offset > 0)
        return Reading.COUNTED

    def hash_read(self, node: Node) -> None:
        """A read (or the release) of a hash read of *node*: a sweep goes on after
        it (the kernel may send the release after the server's next stat)."""
        units = self.heads.get(node)
        if units:
            units[-1].sweep.last_seen = self.clock()

    def _hashing(self, node: Node) -> None:
        """The server hashes *node* after stats_after_hash stats of it: those
        are one request (a HEAD, a LIST's, or the start of a GET)."""
        tail = self._plain_tail(node, self.profile.stats_after_hash)
        if tail:
            tail[0].hashed = True
            for unit in tail[1:]:
                self._drop_unit(node, unit)

    def _used(self, node: Node, checks: int = 0) -> None:
        node.busy_at = self.clock()
        node.owed = checks

    def _count_get(self, node: Node, seeked: bool = False) -> None:
        self._used(node)
        more = self.profile.stats_before_seek if seeked else 0
        got = self._drop_units(node, self.profile.stats_before_get + more)
        if got == self.profile.stats_after_hash + more:
            units = self.heads.get(node)
            if units and units[-1].hashed:  # the hash read was this GET's
                self._drop_unit(node, units[-1])
        self.serving[node] = self.serving.get(node, 0) + 1
        self._add(node, GET)

    def written(self, node: Node) -> None:
        """New content (created, truncated or written): a PUT when it is closed."""
        node.fresh = True

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
        if wrote and node.fresh and not node.unlinked and self.objects.node_is_object(node):
            node.fresh = False
            self._add(node, PUT)
            self._landed(node, node)

    def published(self, parent: Node, name: bytes, node: Node | None, components: list[bytes]) -> None:
        """A staging file (at *components* inside its bucket) was renamed onto
        the visible name *parent*/*name*: one upload completed, multipart if the
        profile says so (and the unlink of the object it replaces was no DELETE)."""
        replaced = self.unlinked.pop((parent.key, name), None)
        if replaced is not None and replaced[2] is not None:  # the overwrite's other stats
            extra = self.profile.stats_before_overwrite - self.profile.stats_before_delete
            self._drop_units(replaced[2], extra)
        self._add(parent, MULTIPART if self.profile.is_multipart(components) else PUT)
        if node is not None:
            node.fresh = False
            self._used(node, self.profile.checks_after_use)
            self._drop_units(node)
            self._landed(parent, node)

    def deleted(self, parent: Node, name: bytes, mode: int, node: Node | None = None) -> None:
        """The name *parent*/*name* (a file of *mode*, *node* if known) was
        unlinked: a DELETE if it was an object."""
        if node is not None:
            self._drop_units(node, self.profile.stats_before_delete)
        if stat.S_ISREG(mode) and self.objects.is_object(parent, name):
            bucket = parent.load_bucket()
            if bucket is None:
                return
            if self.profile.overwrite_window:  # counted unless an upload takes its place
                self.unlinked[(parent.key, name)] = (self.clock(), bucket, node)
            else:
                self.book.add(bucket, DELETE)

    def listed(self, directory: Node) -> None:
        """A directory was opened for reading: inside a bucket, a LIST unless
        the profile counts LISTs from lookups (list_gap)."""
        self.reading_dirs[directory] = self.reading_dirs.get(directory, 0) + 1
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
            self._drop_units(node)

    def _plain_tail(self, node: Node, most: int) -> list[Unit]:
        """*node*'s latest units up to *most*, back to its last hashed one."""
        units = self.heads.get(node, [])
        tail: list[Unit] = []
        for unit in reversed(units[-most:] if most else []):
            if unit.hashed:
                break
            tail.insert(0, unit)
        return tail

    def _drop_units(self, node: Node, most: int = 0) -> int:
        """*node*'s latest *most* units (all of them for 0; only those since its
        last hash read otherwise) were part of another request (a GET, a PUT, a
        DELETE): no HEAD and no LIST.  Returns how many were dropped."""
        if not most or not self.profile.stats_before_get:
            units = self.heads.pop(node, [])
            for unit in units:
                self._leave(node, unit)
            return len(units)
        tail = self._plain_tail(node, most)
        for unit in tail:
            self._drop_unit(node, unit)
        return len(tail)

    def _drop_unit(self, node: Node, unit: Unit) -> None:
        units = self.heads[node]
        units.remove(unit)
        if not units:
            del self.heads[node]
        self._leave(node, unit)

    @staticmethod
    def _leave(node: Node, unit: Unit) -> None:
        members = unit.sweep.members
        left = members.pop(node) - 1
        if left:
            members[node] = left

    def bytes_read(self, node: Node, n: int, at_end: bool) -> None:
        """A GET's read of *n* bytes (*at_end*: it reached the end of the object,
        after which the server checks the object once more)."""
        bucket = node.load_bucket()
        if bucket is not None:
            self.book.add(bucket, BYTES_READ, n)
        if at_end:
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
        """Count the sweeps of lookups that no GET followed within HEAD_WAIT (a
        LIST, or a HEAD if one object is left), and the unlinks that no upload
        replaced within the profile's overwrite window."""
        now = self.clock()
        window = self.profile.overwrite_window
        for key, (at, owner, _) in list(self.unlinked.items()):
            if everything or now - at >= window:
                del self.unlinked[key]
                self.book.add(owner.load_live(), DELETE)  # (reloaded if evicted meanwhile)
        ready: list[Sweep] = []
        waiting: list[Sweep] = []
        for sweep in self.sweeps:
            if sweep.members and not everything and now - sweep.last_seen < HEAD_WAIT:
                waiting.append(sweep)
            elif sweep.members:
                ready.append(sweep)
        held: set[int] = set()
        for chain in self._chains(ready):
            if any(self._may_continue(chain[-1], later) for later in waiting):
                held.update(map(id, chain))  # a fragment of it is still open
                continue
            self._count_chain(chain)
        self.sweeps = [s for s in self.sweeps if id(s) in held] + waiting

    def _chains(self, sweeps: list[Sweep]) -> list[list[Sweep]]:
        """*sweeps* (in the order they started) joined into LISTs: a server
        descheduled in the middle of one makes a gap longer than list_gap, but
        what follows is still the same directory's other objects."""
        chains: list[list[Sweep]] = []
        for sweep in sweeps:
            going = [c for c in chains if self._may_continue(c[-1], sweep, c)]
            if going:
                max(going, key=lambda c: c[-1].last_seen).append(sweep)
            else:
                chains.append([sweep])
        return chains

    def _may_continue(self, last: Sweep, later: Sweep, chain: list[Sweep] | None = None) -> bool:
        """Whether *later* goes on *chain* (ending with *last*): a related
        directory, soon enough, objects not in it yet."""
        if not later.members or not _related(later.directory, last.directory):
            return False
        if later.first_seen - last.last_seen > self.profile.list_merge_gap:
            return False
        return not any(s.members.keys() & later.members.keys() for s in chain or [last])

    def _is_list(self, chain: list[Sweep]) -> bool:
        """A chain is a LIST if one of its sweeps holds two objects or more, or
        if its lone lookups are of every object that was in the directory."""
        if any(len(s.members) > 1 for s in chain):
            return True
        if len(chain) < 2 or any(s.directory is not chain[0].directory for s in chain):
            return False
        # (objects made since the LIST began were not in it; those deleted since are gone)
        names = self.names_in(chain[0].directory, self.clock() - chain[0].first_seen)
        return names is not None and names <= {n.name for s in chain for n in s.members}

    def _count_chain(self, chain: list[Sweep]) -> None:
        for sweep in chain:
            for node in sweep.members:
                units = [u for u in self.heads.get(node, []) if u.sweep is not sweep]
                if units:
                    self.heads[node] = units
                else:
                    self.heads.pop(node, None)
        bucket = chain[0].bucket.load_live()
        if self._is_list(chain):
            self.book.add(bucket, LIST)
        else:
            self.book.add(bucket, HEAD, sum(n for s in chain for n in s.members.values()))

    def _add(self, node: Node, counter: int, n: int = 1) -> None:
        bucket = node.load_bucket()
        if bucket is not None:
            self.book.add(bucket, counter, n)
