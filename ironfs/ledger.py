"""The in-memory ledger: per-bucket usage and limits, and the quota decision.

Plain synchronous Python, no FUSE.  Concurrency contract: the FUSE handlers run
as trio tasks on one thread, and every check-and-charge below is a plain method
call with no ``await`` inside, so two requests can never both pass a check that
only one of them fits.  A growth is charged *before* the I/O and refunded if the
I/O fails.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

GiB = 1 << 30
DEFAULT_BUCKET_MAX_BYTES = 5 * GiB
#: The soft limit, unless set, is this fraction of ``max_bytes``.
DEFAULT_SOFT_FRACTION = 0.9


class QuotaExceeded(Exception):
    """A growth that does not fit a limit; mapped to ENOSPC/EDQUOT at the boundary."""

    def __init__(self, bucket: Bucket, what: str) -> None:
        super().__init__(f"bucket {bucket.name!r}: {what} limit reached")
        self.bucket = bucket
        self.what = what


@dataclass(slots=True)
class Limits:
    """A bucket's limits; ``None`` means no limit at this level, 0 is a real 0."""

    max_bytes: int | None = DEFAULT_BUCKET_MAX_BYTES
    max_objects: int | None = None
    grace_bytes: int = 0
    soft_bytes: int | None = None  # None: DEFAULT_SOFT_FRACTION of max_bytes


class Bucket:
    """Usage and limits of one bucket.  ``hard_bytes`` caches max + grace."""

    __slots__ = (
        "name", "limits", "used_bytes", "objects", "dirty", "over_soft",
        "hard_bytes", "soft_limit", "stats",
    )

    def __init__(self, name: bytes, limits: Limits, used_bytes: int = 0, objects: int = 0):
        self.name = name
        self.used_bytes = used_bytes
        self.objects = objects
        self.dirty = True
        self.stats: Any = None  # this month's counters, owned by stats.StatsBook
        self.set_limits(limits)
        self.over_soft = self.soft_limit is not None and used_bytes > self.soft_limit

    def set_limits(self, limits: Limits) -> None:
        self.limits = limits
        self.dirty = True
        if limits.max_bytes is None:
            self.hard_bytes = None
        else:
            self.hard_bytes = limits.max_bytes + limits.grace_bytes
        if limits.soft_bytes is not None:
            self.soft_limit: int | None = limits.soft_bytes
        elif limits.max_bytes is not None:
            self.soft_limit = int(limits.max_bytes * DEFAULT_SOFT_FRACTION)
        else:
            self.soft_limit = None

    @property
    def display_name(self) -> str:
        return self.name.decode("utf-8", "backslashreplace")

    def __repr__(self) -> str:
        return f"Bucket({self.name!r}, used={self.used_bytes}, objects={self.objects})"


class Ledger:
    """All buckets of one mount.  ``enforce=False`` tracks but never refuses."""

    def __init__(self, enforce: bool = True) -> None:
        self.enforce = enforce
        self._buckets: dict[bytes, Bucket] = {}

    # -- membership -------------------------------------------------------
    def add(self, name: bytes, limits: Limits, used_bytes: int = 0, objects: int = 0) -> Bucket:
        if name in self._buckets:
            raise KeyError(f"bucket {name!r} already tracked")
        bucket = Bucket(name, limits, used_bytes, objects)
        self._buckets[name] = bucket
        return bucket

    def get(self, name: bytes) -> Bucket | None:
        return self._buckets.get(name)

    def remove(self, name: bytes) -> Bucket:
        return self._buckets.pop(name)

    def rename(self, old: bytes, new: bytes) -> None:
        """A bucket's directory was renamed; its usage and limits travel with it."""
        if new in self._buckets:
            raise KeyError(f"bucket {new!r} already tracked")
        bucket = self._buckets.pop(old)
        bucket.name = new
        bucket.dirty = True
        self._buckets[new] = bucket

    def exchange(self, a: bytes, b: bytes) -> None:
        """Two bucket directories swapped names (RENAME_EXCHANGE)."""
        ba, bb = self._buckets[a], self._buckets[b]
        ba.name, bb.name = b, a
        ba.dirty = bb.dirty = True
        self._buckets[a], self._buckets[b] = bb, ba

    def __iter__(self) -> Iterator[Bucket]:
        return iter(list(self._buckets.values()))

    def __len__(self) -> int:
        return len(self._buckets)

    # -- the quota decision -----------------------------------------------
    def charge(self, bucket: Bucket, nbytes: int, nobjects: int = 0) -> None:
        """Check and apply a change; raise QuotaExceeded (and change nothing) if a
        growth does not fit.  Shrinking always succeeds."""
        if self.enforce:
            self._check(bucket, nbytes, nobjects)
        self._apply(bucket, nbytes, nobjects)

    def refund(self, bucket: Bucket, nbytes: int, nobjects: int = 0) -> None:
        """Undo a charge, or record a shrink; never refuses."""
        self._apply(bucket, -nbytes, -nobjects)

    def charge_many(self, changes: Iterable[tuple[Bucket, int, int]]) -> list[tuple[Bucket, int, int]]:
        """Check every change first, then apply them all (all or nothing).

        Returns the changes merged per bucket, to hand to ``refund_many`` if the
        I/O they were reserved for fails."""
        merged: dict[int, tuple[Bucket, int, int]] = {}
        for bucket, nbytes, nobjects in changes:
            _, b0, o0 = merged.get(id(bucket), (bucket, 0, 0))
            merged[id(bucket)] = (bucket, b0 + nbytes, o0 + nobjects)
        done = list(merged.values())
        if self.enforce:
            for bucket, nbytes, nobjects in done:
                self._check(bucket, nbytes, nobjects)
        for bucket, nbytes, nobjects in done:
            self._apply(bucket, nbytes, nobjects)
        return done

    def refund_many(self, changes: Iterable[tuple[Bucket, int, int]]) -> None:
        for bucket, nbytes, nobjects in changes:
            self._apply(bucket, -nbytes, -nobjects)

    @staticmethod
    def _check(bucket: Bucket, nbytes: int, nobjects: int) -> None:
        if nbytes > 0:
            hard = bucket.hard_bytes
            if hard is not None and bucket.used_bytes + nbytes > hard:
                raise QuotaExceeded(bucket, "bytes")
        if nobjects > 0:
            limit = bucket.limits.max_objects
            if limit is not None and bucket.objects + nobjects > limit:
                raise QuotaExceeded(bucket, "objects")

    def _apply(self, bucket: Bucket, nbytes: int, nobjects: int) -> None:
        used = bucket.used_bytes + nbytes
        if used < 0:
            # Only possible after changes made behind the mount's back; reconcile
            # repairs it.  Never let the ledger go negative.
            log.warning("bucket %s: usage would drop below zero; clamped", bucket.display_name)
            used = 0
        bucket.used_bytes = used
        objects = bucket.objects + nobjects
        bucket.objects = objects if objects > 0 else 0
        bucket.dirty = True
        soft = bucket.soft_limit
        if soft is not None and (used > soft) != bucket.over_soft:
            self._soft_crossed(bucket)

    def _soft_crossed(self, bucket: Bucket) -> None:
        bucket.over_soft = not bucket.over_soft
        if bucket.over_soft:
            log.warning("bucket %s is over its soft limit: %d of %s bytes",
                        bucket.display_name, bucket.used_bytes, bucket.soft_limit)
        else:
            log.info("bucket %s is back under its soft limit", bucket.display_name)
