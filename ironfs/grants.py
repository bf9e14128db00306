"""How much of a cluster-wide limit one node may hold: the grant policy.

In the spirit of Lustre's quota slaves: a node admits growth only within the
grant it holds for a bucket (or account); the grant is its usage plus some
headroom taken from what no node holds, and the headroom shrinks as that pool
empties, so the last bytes of a limit are spread in small pieces instead of
sitting unused on one node.  The sum of the grants never exceeds the limit
(plus grace): that is the invariant, and :func:`grant_for` keeps it by
construction.  Pure arithmetic: no database, no I/O (clusterdb.py runs it
inside the transaction that holds the limit's row).
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class Sizing:
    """The headroom a node asks for beyond its usage, in one dimension."""

    smallest: int
    largest: int

    def headroom(self, pool: int, nodes: int) -> int:
        """A fair piece of *pool* (what no node holds): half of an equal share
        among *nodes*, within [smallest, largest], never more than the pool."""
        share = pool // (2 * max(1, nodes))
        return max(0, min(pool, max(self.smallest, min(self.largest, share))))


BYTES = Sizing(smallest=1 * MiB, largest=256 * MiB)
OBJECTS = Sizing(smallest=16, largest=4096)


def grant_for(limit: int | None, held_by_others: int, used: int, want: int, nodes: int,
              sizing: Sizing, floor: int = 0) -> int | None:
    """The grant a node gets in one dimension (bytes or objects).

    *limit* is the cluster-wide limit plus grace (None: unlimited, no grant
    needed); *held_by_others* the sum of the other nodes' grants; *used* this
    node's usage; *want* the growth it needs now (0 for a refill ahead of
    need); *nodes* how many nodes hold grants for it.  The result is at most
    ``limit - held_by_others``, so the sum of the grants stays within the limit
    whatever the arguments; it covers ``used + want`` when that fits, with
    headroom on top, and is as much as there is otherwise (the caller then
    refuses the growth, or asks the others to release what they do not use).
    """
    if limit is None:
        return None
    ceiling = max(0, limit - held_by_others)
    needed = max(used + max(0, want), floor)
    if needed >= ceiling:
        return ceiling
    return needed + sizing.headroom(ceiling - needed, nodes)


def released(used: int, grant: int | None) -> int | None:
    """What a node keeps when it gives back what it does not use (idle, or a
    clean stop): its usage, never more than it held."""
    return None if grant is None else min(grant, used)
