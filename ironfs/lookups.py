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

#: A GET right after a hash read of its object starts (its first stat) within
#: this time of the hash's last read (two stats, an open): an older hash read
#: was another request's (a LIST's or a HEAD's, whose unit it keeps).  The
#: open may come much later (rclone descheduled: 300 ms, traced).
HASH_GET_GAP = 0.25

#: The objects of a directory whose inodes are older than some seconds (reads
#: it), or None if unknown.
NamesIn = Callable[[Node, float], frozenset[bytes] | None]

#: The most pieces one LIST interrupted longer than list_merge_gap is joined
#: from (a first object split off, the rest, a last one: the cases seen); a
#: run of one directory's chains ends there, so none is held longer than a
#: few HEAD_WAITs and a tick's work stays in proportion to its lookups.
MAX_FRAGMENTS = 3

#: What _names_at said, by directory and the time asked about: each read
#: once per tick.
Names = dict[tuple[Node, float], set[bytes] | None]


class Sweep:
    """Objects of one directory looked up one after the other, each soon after
    the last: a LIST if two or more of them are left, a HEAD if one."""

    __slots__ = ("bucket", "directory", "members", "first_seen", "last_seen")

    def __init__(self, bucket: Bucket, directory: Node, now: float) -> None:
        self.bucket = bucket
        self.directory = directory
        self.members: dict[Node, int] = {}  # object -> requests it stands for
        self.first_seen = self.last_seen = now


def _prefix_covered(there: set[bytes], seen: list[bytes]) -> bool:
    """Whether *seen* holds every name of *there* that begins with the prefix
    the names of *seen* share (what a LIST of that prefix stats)."""
    prefix = os.path.commonprefix(seen) or b""
    return {name for name in there if name.startswith(prefix)} <= set(seen)


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

    __slots__ = ("sweep", "at", "hashed", "hash_seen")

    def __init__(self, sweep: Sweep, at: float) -> None:
        self.sweep = sweep
        self.at = at  # when the lookup came
        self.hashed = False  # the server read the object whole to hash it
        self.hash_seen = 0.0  # when that hash read was last seen reading


class Lookups:
    def __init__(self, profile: Profile, names_in: NamesIn) -> None:
        self.profile = profile
        self.names_in = names_in
        # Objects unlinked since the oldest sweep began, per directory: (when,
        # name, when it was made): a LIST that began before was of them too.
        self.gone: dict[Node, list[tuple[float, bytes, float]]] = {}
        # When each directory was changed or read since the oldest sweep began:
        # no LIST goes on across that (see _runs).
        self.touched: dict[Node, list[float]] = {}
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
        self.units.setdefault(node, []).append(Unit(sweep, now))

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

    def touch(self, directory: Node, now: float) -> None:
        """*directory* was changed (an object made, published or unlinked in
        it) or opened for reading."""
        if self.profile.list_gap:
            self.touched.setdefault(directory, []).append(now)

    def _touched_between(self, directory: Node, start: float, end: float) -> bool:
        return any(start < at < end for at in self.touched.get(directory, ()))

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
        the hash read's unit before them if that hash read had just ended when
        they began."""
        dropped = self.drop(node, before)
        start = dropped[0].at if dropped else now
        if len(dropped) == after_hash:
            units = self.units.get(node)
            if units and units[-1].hashed and start - units[-1].hash_seen <= HASH_GET_GAP:
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

    def drop(self, node: Node, most: int = 0) -> list[Unit]:
        """*node*'s latest *most* units (all of them for 0; only those since its
        last hash read otherwise) were part of another request (a GET, a PUT, a
        DELETE): no HEAD and no LIST.  Returns those dropped, oldest first."""
        if not most or not self.profile.stats_before_get:
            units = self.units.pop(node, [])
            for unit in units:
                self._leave(node, unit)
            return units
        tail = self._plain_tail(node, most)
        for unit in tail:
            self._drop_unit(node, unit)
        return tail

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
        names: Names = {}
        starts = [s.first_seen for s in waiting]
        chains = self._chains(ready)
        if not self.profile.list_merge_gap:  # (no chains, no runs: each sweep on its own)
            runs = [[chain] for chain in chains]
        else:
            runs = self._runs(chains)
        by_dir: dict[Node, list[Sweep]] = {}  # every sweep, in the order they started
        for sweep in self.sweeps:
            by_dir.setdefault(sweep.directory, []).append(sweep)
        waiting_ids = {id(s) for s in waiting}
        for run in runs:
            if any(self._still_open(chain, waiting, starts) for chain in run) \
                    or self._run_goes_on(run, by_dir, waiting_ids):
                held.update(id(s) for chain in run for s in chain)  # a fragment of it is still open
                continue
            for chain in self._completed(run, now, names):
                done.append(self._close(chain, now, names))
        self.sweeps = [s for s in self.sweeps if id(s) in held] + waiting
        if self.profile.list_gap:
            self.latest = {s.directory: s for s in self.sweeps}
            oldest = min((s.first_seen for s in self.sweeps), default=now)
            self.gone = {d: kept for d, gone in self.gone.items()
                         if (kept := [g for g in gone if g[0] >= oldest])}
            self.touched = {d: recent for d, touched in self.touched.items()
                            if (recent := [at for at in touched if at >= oldest])}
        return done

    @staticmethod
    def _directory_of(chain: list[Sweep]) -> Node | None:
        """The one directory *chain* is in, None if it spans several."""
        directory = chain[0].directory
        return directory if all(s.directory is directory for s in chain) else None

    def _runs(self, chains: list[list[Sweep]]) -> list[list[list[Sweep]]]:
        """*chains* (in the order they started) as runs: chains of one
        directory one after the other, each of objects after the last one's in
        name order and starting within HEAD_WAIT of its end (the fragments of
        one LIST that the server was descheduled in the middle of, longer than
        list_merge_gap), with no change to the directory and no read of it
        in between (rclone's LIST waits for neither: a client's request
        before one made them, and the LIST's own stat of an object may hide
        in a directory read); any other chain is a run of its own."""
        runs: list[list[list[Sweep]]] = []
        last: dict[Node, list[list[Sweep]]] = {}  # each directory's latest run
        for chain in chains:
            directory = self._directory_of(chain)
            run = last.get(directory) if directory is not None else None
            end = run[-1][-1].last_seen if run is not None else 0.0
            if run is not None and len(run) < MAX_FRAGMENTS and chain[0].first_seen - end <= HEAD_WAIT \
                    and self._after(run, chain[0]) \
                    and not self._touched_between(chain[0].directory, end, chain[0].first_seen):
                run.append(chain)
                continue
            runs.append([chain])
            for sweep in chain:  # (a chain spanning directories ends their runs)
                last.pop(sweep.directory, None)
            if directory is not None:
                last[directory] = runs[-1]
        return runs

    @staticmethod
    def _after(run: list[list[Sweep]], sweep: Sweep) -> bool:
        """Whether *sweep*'s objects all come after *run*'s in name order (a
        run's chains ascend: its last one holds its last name)."""
        last = max(n.name for s in run[-1] for n in s.members)
        return min(n.name for n in sweep.members) > last

    def _run_goes_on(self, run: list[list[Sweep]], by_dir: dict[Node, list[Sweep]],
                     waiting_ids: set[int]) -> bool:
        """Whether the next sweep of *run*'s directory (*by_dir*: each
        directory's sweeps in the order they started) is not due yet
        (*waiting_ids*) and may be its next fragment."""
        directory = self._directory_of(run[-1])
        if directory is None or len(run) >= MAX_FRAGMENTS:
            return False
        last = run[-1][-1]
        mine = {id(s) for chain in run for s in chain}
        sweeps = by_dir.get(directory, [])
        i = bisect.bisect_left(sweeps, last.first_seen, key=lambda s: s.first_seen)
        after = next((sweeps[k] for k in range(i, len(sweeps)) if id(sweeps[k]) not in mine), None)
        return after is not None and id(after) in waiting_ids \
            and after.first_seen - last.last_seen <= HEAD_WAIT and self._after(run, after) \
            and not self._touched_between(directory, last.last_seen, after.first_seen)

    def _completed(self, run: list[list[Sweep]], now: float, names: Names) -> list[list[Sweep]]:
        """*run*'s chains, consecutive ones joined into one LIST where they
        complete each other: together every object that begins with their
        common prefix (three or more), one of them a sweep of two or more or a
        chain of three or more, and one of them no LIST of every object of its
        own common prefix (a LIST stats every object its prefix matches, in
        name order: an incomplete one was interrupted, and its other fragments
        are the chains next to it)."""
        if len(run) < 2:
            return run
        out: list[list[Sweep]] = []
        i = 0
        while i < len(run):
            for j in range(min(len(run), i + MAX_FRAGMENTS), i + 1, -1):
                if self._complete(run[i:j], now, names):
                    out.append([s for chain in run[i:j] for s in chain])
                    i = j
                    break
            else:
                out.append(run[i])
                i += 1
        return out

    def _complete(self, group: list[list[Sweep]], now: float, names: Names) -> bool:
        seen = [n.name for chain in group for s in chain for n in s.members]
        if len(seen) < 3 or not any(len(s.members) > 1 or sum(len(t.members) for t in chain) > 2
                                    for chain in group for s in chain):
            return False  # (no sweep of two, no chain of three: HEADs as likely)
        return self._covers(seen, group[0][0], now, names) and not all(
            self._whole(chain, now, names) for chain in group)

    def _whole(self, chain: list[Sweep], now: float, names: Names) -> bool:
        """Whether *chain* stands on its own: one lookup (a HEAD), or a LIST
        (_is_list) of every object of its common prefix.  Lone lookups of some
        of a directory's objects are no LIST on their own, however long the
        prefix their names happen to share (k41 to k44, after k32: the rest of
        a LIST whose first stat came 17 ms before, traced)."""
        seen = [n.name for s in chain for n in s.members]
        return self._covers(seen, chain[0], now, names) \
            and (len(seen) < 2 or self._is_list(chain, now, names))

    def _covers(self, seen: list[bytes], first: Sweep, now: float, names: Names) -> bool:
        """Whether *seen* is every object of *first*'s directory, when it
        began, that begins with their common prefix (False if unknown)."""
        there = self._names_at(first, now, names)
        return there is not None and _prefix_covered(there, seen)

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

    def _is_list(self, chain: list[Sweep], now: float, names: Names) -> bool:
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
        there = self._names_at(chain[0], now, names)
        if there is None:  # too large to read: a sweep of two is a LIST, lone lookups HEADs
            return swept
        return _prefix_covered(there, seen) if swept else there <= set(seen)

    def _names_at(self, first: Sweep, now: float, names: Names) -> set[bytes] | None:
        """The objects in *first*'s directory when it began (reads it, once a
        tick: *names*): those there now and made before, and those unlinked
        since; None if it is too large to read."""
        directory, start = first.directory, first.first_seen
        key = (directory, start)
        if key not in names:
            there = self.names_in(directory, now - start)
            names[key] = None if there is None else set(there) | {
                name for at, name, made in self.gone.get(directory, ()) if made < start <= at}
        return names[key]

    def _close(self, chain: list[Sweep], now: float, names: Names) -> tuple[Bucket, bool, int]:
        """*chain* is counted: its units are forgotten."""
        for sweep in chain:
            for node in sweep.members:
                left = [u for u in self.units.get(node, []) if u.sweep is not sweep]
                if left:
                    self.units[node] = left
                else:
                    self.units.pop(node, None)
        count = sum(n for s in chain for n in s.members.values())
        return chain[0].bucket.load_live(), self._is_list(chain, now, names), count
