"""Lookups of objects not (yet) matched to a GET, a PUT or a DELETE: the
HEADs, and the stats of a LIST.

A server that answers HEAD and LIST from a stat of each object (rclone) shows
ironfs nothing but lookups.  Each lookup of an object is a *unit*; units that
another request accounts for are dropped (counting.py says which); those left
when HEAD_WAIT has passed are grouped: lookups of distinct objects of one
directory close together form a *sweep*, sweeps of related directories close
together a *chain*, and a chain is one LIST or as many HEADs as it has units.
No pyfuse3, no trio; the time comes from the caller.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable

from .inodes import Node
from .ledger import Bucket
from .rules import Profile

#: A lookup of an object counts as HEAD (or LIST) unless a GET of it follows
#: within this time.
HEAD_WAIT = 0.5

#: A GET right after a hash read of its object starts within this time of the
#: hash's last read (two stats, an open): an older hash read was another
#: request's (a LIST's or a HEAD's, whose unit it keeps).
HASH_GET_GAP = 0.25

#: The objects of a directory whose inodes are older than some seconds (reads
#: it), or None if unknown.
NamesIn = Callable[[Node, float], frozenset[bytes] | None]


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

    __slots__ = ("sweep", "hashed", "hash_seen")

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep
        self.hashed = False  # the server read the object whole to hash it
        self.hash_seen = 0.0  # when that hash read was last seen reading


class Lookups:
    def __init__(self, profile: Profile, names_in: NamesIn) -> None:
        self.profile = profile
        self.names_in = names_in
        # Objects unlinked since the oldest sweep began, per directory: (when,
        # name, when it was made): a LIST that began before was of them too.
        self.gone: dict[Node, list[tuple[float, bytes, float]]] = {}
        # Objects looked up and not yet matched to another request: their units,
        # oldest first (one per lookup when the profile counts stats per request).
        self.units: dict[Node, list[Unit]] = {}
        self.sweeps: list[Sweep] = []  # in the order they started
        self.latest: dict[Node, Sweep] = {}  # each directory's latest sweep (list_gap)

    def seen(self, node: Node, now: float) -> bool:
        """Keeps *node*'s latest sweep going; whether it has a unit."""
        units = self.units.get(node)
        if units:
            if units[-1].hashed:
                units[-1].hash_seen = now
            sweep = units[-1].sweep
            sweep.last_seen = now
            if self.profile.list_gap:
                self.latest[sweep.directory] = sweep  # the one a sweep goes on with
        return bool(units)

    def add(self, bucket: Bucket, node: Node, now: float) -> None:
        """One more unit: a lookup of the object *node*."""
        sweep = self._sweep_for(bucket, node, now)
        sweep.members[node] = sweep.members.get(node, 0) + 1
        self.units.setdefault(node, []).append(Unit(sweep))

    def _sweep_for(self, bucket: Bucket, node: Node, now: float) -> Sweep:
        """The sweep *node*'s lookup continues (its directory's latest, last
        seen within the profile's list_gap, *node* after its objects in name
        order: a LIST stats them ascending), or a new one."""
        directory = node.parent
        assert directory is not None  # an object has a directory
        gap = self.profile.list_gap
        if gap:
            sweep = self.latest.get(directory)
            if sweep is not None and now - sweep.last_seen <= gap and node not in sweep.members \
                    and (not sweep.members or next(reversed(sweep.members)).name < node.name):
                sweep.last_seen = now
                return sweep
        sweep = Sweep(bucket, directory, now)
        self.sweeps.append(sweep)
        if gap:
            self.latest[directory] = sweep
        return sweep

    def unlinked(self, directory: Node, name: bytes, now: float, made: float) -> None:
        """The object *directory*/*name*, made at *made*, was unlinked."""
        if self.profile.list_gap:
            self.gone.setdefault(directory, []).append((now, name, made))

    def hashing(self, node: Node, stats: int, now: float) -> None:
        """The server hashes *node* after *stats* stats of it: those are one
        request (a HEAD, a LIST's, or the start of a GET)."""
        tail = self._plain_tail(node, stats)
        if tail:
            tail[0].hashed = True
            tail[0].hash_seen = now
            for unit in tail[1:]:
                self._drop_unit(node, unit)

    def drop_for_get(self, node: Node, before: int, after_hash: int, now: float) -> None:
        """A GET of *node*: its last *before* units, or *after_hash* of them and
        the hash read's unit before them if that hash read just ended."""
        if self.drop(node, before) == after_hash:
            units = self.units.get(node)
            if units and units[-1].hashed and now - units[-1].hash_seen <= HASH_GET_GAP:
                self._drop_unit(node, units[-1])  # the hash read was this GET's

    def _plain_tail(self, node: Node, most: int) -> list[Unit]:
        """*node*'s latest units up to *most*, back to its last hashed one."""
        units = self.units.get(node, [])
        tail: list[Unit] = []
        for unit in reversed(units[-most:] if most else []):
            if unit.hashed:
                break
            tail.insert(0, unit)
        return tail

    def drop(self, node: Node, most: int = 0) -> int:
        """*node*'s latest *most* units (all of them for 0; only those since its
        last hash read otherwise) were part of another request (a GET, a PUT, a
        DELETE): no HEAD and no LIST.  Returns how many were dropped."""
        if not most or not self.profile.stats_before_get:
            units = self.units.pop(node, [])
            for unit in units:
                self._leave(node, unit)
            return len(units)
        tail = self._plain_tail(node, most)
        for unit in tail:
            self._drop_unit(node, unit)
        return len(tail)

    def _drop_unit(self, node: Node, unit: Unit) -> None:
        units = self.units[node]
        units.remove(unit)
        if not units:
            del self.units[node]
        self._leave(node, unit)

    @staticmethod
    def _leave(node: Node, unit: Unit) -> None:
        members = unit.sweep.members
        left = members.pop(node) - 1
        if left:
            members[node] = left

    def due(self, now: float, everything: bool = False) -> list[tuple[Bucket, bool, int]]:
        """The chains no GET followed within HEAD_WAIT, each as (bucket, is a
        LIST, units); they are forgotten."""
        done: list[tuple[Bucket, bool, int]] = []
        ready: list[Sweep] = []
        waiting: list[Sweep] = []
        # In the order they started (chains are joined in that order, and
        # ascending): a held chain's sweeps were put before the waiting ones.
        self.sweeps.sort(key=lambda s: s.first_seen)
        for sweep in self.sweeps:
            if sweep.members and not everything and now - sweep.last_seen < HEAD_WAIT:
                waiting.append(sweep)
            elif sweep.members:
                ready.append(sweep)
        held: set[int] = set()
        starts = [s.first_seen for s in waiting]
        for chain in self._chains(ready):
            if self._still_open(chain, waiting, starts):
                held.update(map(id, chain))  # a fragment of it is still open
                continue
            done.append(self._close(chain, now))
        self.sweeps = [s for s in self.sweeps if id(s) in held] + waiting
        if self.profile.list_gap:
            self.latest = {s.directory: s for s in self.sweeps}
            oldest = min((s.first_seen for s in self.sweeps), default=now)
            self.gone = {d: kept for d, gone in self.gone.items()
                         if (kept := [g for g in gone if g[0] >= oldest])}
        return done

    def _still_open(self, chain: list[Sweep], waiting: list[Sweep], starts: list[float]) -> bool:
        """Whether a sweep not due yet may go on *chain* (*starts*: the waiting
        sweeps' first_seen, ascending)."""
        gap = self.profile.list_merge_gap
        if not gap:
            return False
        last = chain[-1]
        i = bisect.bisect_left(starts, last.last_seen - HEAD_WAIT)
        return any(self._may_continue(last, later, chain) for later in waiting[i:]
                   if later.first_seen - last.last_seen <= gap)

    def _chains(self, sweeps: list[Sweep]) -> list[list[Sweep]]:
        """*sweeps* (in the order they started) joined into LISTs: a server
        descheduled in the middle of one makes a gap longer than list_gap, but
        what follows is still the same directory's other objects."""
        gap = self.profile.list_merge_gap
        if not gap:
            return [[sweep] for sweep in sweeps]
        chains: list[list[Sweep]] = []
        recent: list[list[Sweep]] = []  # chains a later sweep may still go on
        for sweep in sweeps:
            recent = [c for c in recent if sweep.first_seen - c[-1].last_seen <= gap]
            going = [c for c in recent if self._may_continue(c[-1], sweep, c)]
            if going:
                max(going, key=lambda c: c[-1].last_seen).append(sweep)
            else:
                chains.append([sweep])
                recent.append(chains[-1])
        return chains

    def _may_continue(self, last: Sweep, later: Sweep, chain: list[Sweep] | None = None) -> bool:
        """Whether *later* goes on *chain* (ending with *last*): a related
        directory, soon enough, objects not in it yet and, in a directory the
        chain has been in, after its objects there in name order (rclone stats
        a directory's objects ascending; a client's request just before a LIST
        is of any object, often one after the LIST's first)."""
        if not later.members or not _related(later.directory, last.directory):
            return False
        if later.first_seen - last.last_seen > self.profile.list_merge_gap:
            return False
        sweeps = chain or [last]
        if any(s.members.keys() & later.members.keys() for s in sweeps):
            return False
        before = next((s for s in reversed(sweeps) if s.directory is later.directory and s.members), None)
        return before is None or next(reversed(before.members)).name < next(iter(later.members)).name

    def _is_list(self, chain: list[Sweep], now: float) -> bool:
        """A chain is a LIST if one of its sweeps holds two objects or more, or
        if its lone lookups are of every object that was in its directory (a
        chain's objects of one directory come in ascending name order: see
        _may_continue).  A sweep of just two objects is a LIST only if they are
        every object there that begins with their common prefix (a LIST's, of
        that prefix or a shorter one; rclone stats only the objects a LIST's
        prefix matches): a client's HEAD right after another, its stat within
        list_gap of the first's hash read, shares that sweep."""
        seen = [n.name for s in chain for n in s.members]
        swept = any(len(s.members) > 1 for s in chain)
        directory = chain[0].directory
        if len(seen) < 2 or any(s.directory is not directory for s in chain):
            return swept
        if swept and len(seen) > 2:
            return True
        names = self._names_then(directory, chain[0].first_seen, now)
        if names is None:  # too large to read: a sweep of two is a LIST, lone lookups HEADs
            return swept
        if swept:
            prefix = os.path.commonprefix(seen) or b""
            names = {name for name in names if name.startswith(prefix)}
        return names <= set(seen)

    def _names_then(self, directory: Node, start: float, now: float) -> set[bytes] | None:
        """The objects in *directory* at *start* (reads it): those there now and
        made before, and those unlinked since; None if it is too large to read."""
        names = self.names_in(directory, now - start)
        if names is None:
            return None
        return set(names) | {name for at, name, made in self.gone.get(directory, ())
                             if made < start <= at}

    def _close(self, chain: list[Sweep], now: float) -> tuple[Bucket, bool, int]:
        """*chain* is counted: its units are forgotten."""
        for sweep in chain:
            for node in sweep.members:
                left = [u for u in self.units.get(node, []) if u.sweep is not sweep]
                if left:
                    self.units[node] = left
                else:
                    self.units.pop(node, None)
        count = sum(n for s in chain for n in s.members.values())
        return chain[0].bucket.load_live(), self._is_list(chain, now), count
