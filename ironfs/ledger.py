"""The in-memory ledger: per-bucket usage and limits, and the quota decision.

Plain synchronous Python, no FUSE.  Concurrency contract: the FUSE handlers run
as trio tasks on one thread, and every check-and-charge below is a plain method
call with no ``await`` inside, so two requests can never both pass a check that
only one of them fits.  A growth is charged *before* the I/O and refunded if the
I/O fails.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .stats import MonthCounters

from .limitlog import AT_HARD, OVER_SOFT, RefusalLog, hard_crossing, soft_crossing

log = logging.getLogger(__name__)

GiB = 1 << 30
DEFAULT_BUCKET_MAX_BYTES = 5 * GiB
DEFAULT_ACCOUNT_MAX_BYTES = 10 * GiB
#: The soft limit, unless set, is this fraction of ``max_bytes``.
DEFAULT_SOFT_FRACTION = 0.9


class QuotaExceeded(Exception):
    """A growth that does not fit a limit; mapped to ENOSPC/EDQUOT at the boundary."""

    def __init__(self, bucket: Bucket, meter: Meter, what: str) -> None:
        super().__init__(f"{meter.kind} {meter.display_name}: {what} limit reached")
        self.bucket = bucket  # the bucket the refused request was in
        self.meter = meter  # the bucket or account whose limit refused it
        self.what = what


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits of a bucket or an account; ``None`` means no limit at this level,
    0 is a real 0."""

    max_bytes: int | None = DEFAULT_BUCKET_MAX_BYTES
    max_objects: int | None = None
    grace_bytes: int = 0
    soft_bytes: int | None = None  # None: DEFAULT_SOFT_FRACTION of max_bytes


@functools.lru_cache(maxsize=4096)
def _shared(limits: Limits) -> Limits:
    """The first of equal Limits seen: buckets loaded from their own .quota
    files share one instance (and its ints) instead of one each."""
    return limits


@functools.lru_cache(maxsize=4096)
def _thresholds(limits: Limits) -> tuple[int | None, int | None]:
    """(hard limit, soft limit) in bytes.  Cached: buckets with equal limits
    share the two int objects (100,000 buckets would hold 200,000 copies)."""
    hard = None if limits.max_bytes is None else limits.max_bytes + limits.grace_bytes
    if limits.soft_bytes is not None:
        soft: int | None = limits.soft_bytes
    elif limits.max_bytes is not None:
        soft = int(limits.max_bytes * DEFAULT_SOFT_FRACTION)
    else:
        soft = None
    return hard, soft


class Meter:
    """Usage against limits: what buckets and accounts have in common."""

    __slots__ = ("name", "limits", "used_bytes", "objects", "dirty", "alerts",
                 "hard_bytes", "soft_limit")
    kind = "meter"

    def __init__(self, name: bytes | str, limits: Limits, used_bytes: int = 0, objects: int = 0):
        self.name = name
        self.used_bytes = used_bytes
        self.objects = objects
        self.dirty = True
        self.set_limits(limits)
        # Which limits the log has said it is over (limitlog.py): one int, not
        # two flags, for memory (10^5 buckets).
        self.alerts = OVER_SOFT if self.soft_limit is not None and used_bytes > self.soft_limit else 0

    def set_limits(self, limits: Limits) -> None:
        self.limits = _shared(limits)
        self.dirty = True
        self.hard_bytes, self.soft_limit = _thresholds(limits)

    @property
    def over_soft(self) -> bool:
        return bool(self.alerts & OVER_SOFT)

    @property
    def display_name(self) -> str:
        name = self.name
        return name.decode("utf-8", "backslashreplace") if isinstance(name, bytes) else name

    @property
    def state(self) -> str:
        """``ok``, ``soft`` (over the soft limit) or ``hard`` (at or over the hard limit)."""
        if self.hard_bytes is not None and self.used_bytes >= self.hard_bytes:
            return "hard"
        if self.limits.max_objects is not None and self.objects >= self.limits.max_objects:
            return "hard"
        return "soft" if self.over_soft else "ok"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, used={self.used_bytes}, objects={self.objects})"


class Bucket(Meter):
    __slots__ = ("stats", "account", "evicted", "limits_dirty", "__weakref__")
    kind = "bucket"
    name: bytes

    def __init__(self, name: bytes, limits: Limits, used_bytes: int = 0, objects: int = 0):
        super().__init__(name, limits, used_bytes, objects)
        self.limits_dirty = True  # .ironfs-limits to be written (loaders clear it)
        self.stats: MonthCounters | None = None  # this month's counters, owned by stats.StatsBook
        self.account: Account | None = None
        # Once evicted: the ledger that will reload it, then the reloaded bucket.
        self.evicted: Ledger | Bucket | None = None

    def set_limits(self, limits: Limits) -> None:
        super().set_limits(limits)
        self.limits_dirty = True

    def load_live(self) -> Bucket:
        """This bucket, or once evicted, the live bucket that replaced it
        (reloaded from its state file on first use: disk I/O)."""
        b = self
        while b.evicted is not None:
            nxt = b.evicted
            b = nxt if isinstance(nxt, Bucket) else nxt.load_evicted(b)
        return b


class Account(Meter):
    """A named group of buckets with limits of its own; usage is the buckets' sum."""

    __slots__ = ("buckets",)
    kind = "account"
    name: str

    def __init__(self, name: str, limits: Limits) -> None:
        super().__init__(name, limits)
        self.buckets: set[bytes] = set()


class Gate(Protocol):
    def check(self, bucket: Bucket, meter: Meter, nbytes: int, nobjects: int) -> None:
        """Raise QuotaExceeded if a growth of *meter* must not be admitted."""


class Ledger:
    """All buckets and accounts of one mount.  ``enforce=False`` tracks but never refuses."""

    def __init__(self, enforce: bool = True) -> None:
        self.enforce = enforce
        self._buckets: dict[bytes, Bucket] = {}
        self.accounts: dict[str, Account] = {}
        self.accounts_dirty = False
        # Buckets evicted from memory (their state on disk is exact), with the
        # account that still counts their usage; reloaded by ``loader``.
        self.evicted: dict[bytes, tuple[Account | None, int, int]] = {}
        self._stubs: weakref.WeakValueDictionary[bytes, Bucket] = weakref.WeakValueDictionary()
        self.loader: Callable[[bytes], Bucket] | None = None
        self.refusals = RefusalLog()
        # In a cluster, what this node holds of each limit (cluster.py): asked
        # after the local limits, for every growth.
        self.gate: Gate | None = None
        self.touched: set[Bucket] = set()  # see take_touched
        # Buckets being counted by a scan beside the requests, and accounts with
        # such members (by id: counts); rare, so not a field of every bucket.
        self._scanning: dict[int, int] = {}

    # -- membership -------------------------------------------------------
    def add(self, name: bytes, limits: Limits, used_bytes: int = 0, objects: int = 0, *,
            touch: bool = True) -> Bucket:
        """Track a bucket.  *touch*: have the next flush look at it (a bulk load
        passes False and touches only what it leaves dirty: memory)."""
        if name in self._buckets:
            raise KeyError(f"bucket {name!r} already tracked")
        if name in self.evicted:
            self._forget_evicted(name)
        bucket = Bucket(name, limits, used_bytes, objects)
        self._buckets[name] = bucket
        if touch:
            self.touched.add(bucket)
        stub = self._stubs.pop(name, None)
        if stub is not None:
            stub.evicted = bucket
        for account in self.accounts.values():  # a known member came back (adopted, loaded)
            if name in account.buckets:
                self._join(bucket, account)
        return bucket

    def get(self, name: bytes) -> Bucket | None:
        """The bucket if it is in memory (see ``load``); no I/O."""
        return self._buckets.get(name)

    def load(self, name: bytes) -> Bucket | None:
        """The bucket, reloaded from its ``.quota`` first if it was evicted (disk
        I/O, and a scan if that file is gone); None if unknown."""
        bucket = self._buckets.get(name)
        if bucket is None and name in self.evicted:
            bucket = self._reload(name)
        return bucket

    def known(self) -> int:
        """Buckets tracked, in memory or evicted."""
        return len(self._buckets) + len(self.evicted)

    # -- eviction -------------------------------------------------------------
    def evict(self, bucket: Bucket) -> None:
        """Drop a clean bucket from memory: its state file must hold exactly its
        usage.  Its account keeps counting it; nodes still holding the object
        find the reloaded bucket through ``Bucket.load_live``."""
        del self._buckets[bucket.name]
        self.evicted[bucket.name] = (bucket.account, bucket.used_bytes, bucket.objects)
        bucket.evicted = self
        self._stubs[bucket.name] = bucket

    def placeholder(self, name: bytes) -> Bucket:
        """A stand-in for the evicted bucket *name* that reloads it on first
        use (``Bucket.load_live``): listing the buckets reloads none of them."""
        stub = self._stubs.get(name)
        if stub is None:
            stub = Bucket(name, Limits(max_bytes=None))
            stub.evicted = self
            self._stubs[name] = stub
        return stub

    def load_evicted(self, stub: Bucket) -> Bucket:
        return self._buckets.get(stub.name) or self._reload(stub.name)

    def _reload(self, name: bytes) -> Bucket:
        assert self.loader is not None, "evicted buckets need a loader"
        bucket = self.loader(name)
        stub = self._stubs.pop(name, None)
        if stub is not None:
            stub.evicted = bucket
        return bucket

    def readmit(self, name: bytes, limits: Limits, used_bytes: int, objects: int) -> Bucket:
        """Bring an evicted bucket back with the usage its state file holds."""
        account, old_bytes, old_objects = self.evicted.pop(name)
        bucket = Bucket(name, limits, used_bytes, objects)
        bucket.dirty = (used_bytes, objects) != (old_bytes, old_objects)
        self._buckets[name] = bucket
        self.touched.add(bucket)
        if account is not None and self._still_counts(account, name):
            bucket.account = account  # it never stopped counting this bucket
            self._apply(account, used_bytes - old_bytes, objects - old_objects)
        else:
            for other in self.accounts.values():
                if name in other.buckets:
                    self._join(bucket, other)
        return bucket

    def _still_counts(self, account: Account, name: bytes) -> bool:
        return self.accounts.get(account.name) is account and name in account.buckets

    def _forget_evicted(self, name: bytes) -> None:
        """An evicted bucket comes back by another path (a scan): its account
        stops counting the usage recorded at eviction."""
        account, old_bytes, old_objects = self.evicted.pop(name)
        if account is not None and self._still_counts(account, name):
            self._apply(account, -old_bytes, -old_objects)

    def remove(self, name: bytes) -> Bucket:
        """A deleted bucket: gone from its account at once."""
        if name in self.evicted:
            self._reload(name)
        bucket = self._buckets.pop(name)
        if bucket.account is not None:
            self.assign(bucket, None)
        return bucket

    def rename(self, old: bytes, new: bytes) -> None:
        """A bucket's directory was renamed; its usage, limits and account travel with it."""
        if new in self._buckets:
            raise KeyError(f"bucket {new!r} already tracked")
        bucket = self._buckets.pop(old)
        bucket.name = new
        bucket.dirty = True
        self.touched.add(bucket)
        self._buckets[new] = bucket
        if bucket.account is not None:
            bucket.account.buckets.discard(old)
            bucket.account.buckets.add(new)
            self.accounts_dirty = True

    def exchange(self, a: bytes, b: bytes) -> None:
        """Two bucket directories swapped names (RENAME_EXCHANGE)."""
        ba, bb = self._buckets[a], self._buckets[b]
        ba.name, bb.name = b, a
        ba.dirty = bb.dirty = True
        self.touched.update((ba, bb))
        self._buckets[a], self._buckets[b] = bb, ba
        for bucket, old in ((ba, a), (bb, b)):
            if bucket.account is not None:
                bucket.account.buckets.discard(old)
        for bucket in (ba, bb):
            if bucket.account is not None:
                bucket.account.buckets.add(bucket.name)
        self.accounts_dirty = True

    def __iter__(self) -> Iterator[Bucket]:
        return iter(list(self._buckets.values()))

    def __len__(self) -> int:
        return len(self._buckets)

    # -- accounts -----------------------------------------------------------
    def add_account(self, name: str, limits: Limits) -> Account:
        if name in self.accounts:
            raise KeyError(f"account {name!r} exists")
        account = self.accounts[name] = Account(name, limits)
        self.accounts_dirty = True
        return account

    def remove_account(self, name: str) -> None:
        account = self.accounts.pop(name)
        for bucket_name in list(account.buckets):
            bucket = self._buckets.get(bucket_name)
            if bucket is not None:
                bucket.account = None
        self.accounts_dirty = True

    def assign(self, bucket: Bucket, account: Account | None) -> None:
        """Move *bucket* (with its usage) into *account*, or out of any.  An
        administrator's decision: never refused, even over the account's limit."""
        old = bucket.account
        if old is account:
            return
        if old is not None:
            old.buckets.discard(bucket.name)
            bucket.account = None
            if self.is_scanning(bucket):
                self._count_scan(old, -1)
            self._apply(old, -bucket.used_bytes, -bucket.objects)
        if account is not None:
            account.buckets.add(bucket.name)
            self._join(bucket, account)
        self.accounts_dirty = True

    def _join(self, bucket: Bucket, account: Account) -> None:
        bucket.account = account
        if self.is_scanning(bucket):
            self._count_scan(account, 1)
        self._apply(account, bucket.used_bytes, bucket.objects)

    # -- usage being counted by a scan beside the requests ----------------------------
    def begin_scan(self, bucket: Bucket) -> None:
        """*bucket*'s usage is unknown until ``end_scan``: growth against a limit
        of the bucket or its account is refused meanwhile (never overshoot)."""
        self._count_scan(bucket, 1)
        if bucket.account is not None:
            self._count_scan(bucket.account, 1)

    def end_scan(self, bucket: Bucket, used_bytes: int, objects: int) -> None:
        """The scan's figures, exact now (taken on the request loop)."""
        self.set_usage(bucket, used_bytes, objects)
        self._count_scan(bucket, -1)
        if bucket.account is not None:
            self._count_scan(bucket.account, -1)

    def is_scanning(self, meter: Meter) -> bool:
        return id(meter) in self._scanning

    def _count_scan(self, meter: Meter, n: int) -> None:
        left = self._scanning.get(id(meter), 0) + n
        if left:
            self._scanning[id(meter)] = left
        else:
            self._scanning.pop(id(meter), None)

    # -- the quota decision -----------------------------------------------
    def charge(self, bucket: Bucket, nbytes: int, nobjects: int = 0) -> None:
        """Check and apply a change to a bucket and its account; raise
        QuotaExceeded (and change nothing) if a growth does not fit either.
        Shrinking always succeeds."""
        account = bucket.account
        if self.enforce:
            self._check(bucket, bucket, nbytes, nobjects)
            if account is not None:
                self._check(bucket, account, nbytes, nobjects)
        self._apply_bucket(bucket, nbytes, nobjects)

    def refund(self, bucket: Bucket, nbytes: int, nobjects: int = 0) -> None:
        """Undo a charge, or record a shrink; never refuses."""
        self._apply_bucket(bucket, -nbytes, -nobjects)

    def charge_many(self, changes: Iterable[tuple[Bucket, int, int]]) -> list[tuple[Bucket, int, int]]:
        """Check every change (per bucket and per account, netted) first, then
        apply them all: all or nothing.  Returns the changes merged per bucket,
        to hand to ``refund_many`` if the I/O they were reserved for fails."""
        merged: dict[int, tuple[Bucket, int, int]] = {}
        for bucket, nbytes, nobjects in changes:
            _, b0, o0 = merged.get(id(bucket), (bucket, 0, 0))
            merged[id(bucket)] = (bucket, b0 + nbytes, o0 + nobjects)
        done = list(merged.values())
        if self.enforce:
            per_account: dict[int, tuple[Bucket, Account, int, int]] = {}
            for bucket, nbytes, nobjects in done:
                self._check(bucket, bucket, nbytes, nobjects)
                if bucket.account is not None:
                    _, _, b0, o0 = per_account.get(id(bucket.account), (bucket, bucket.account, 0, 0))
                    per_account[id(bucket.account)] = (bucket, bucket.account, b0 + nbytes, o0 + nobjects)
            for bucket, account, nbytes, nobjects in per_account.values():
                self._check(bucket, account, nbytes, nobjects)
        for bucket, nbytes, nobjects in done:
            self._apply_bucket(bucket, nbytes, nobjects)
        return done

    def refund_many(self, changes: Iterable[tuple[Bucket, int, int]]) -> None:
        for bucket, nbytes, nobjects in changes:
            self.refund(bucket, nbytes, nobjects)

    def set_usage(self, bucket: Bucket, used_bytes: int, objects: int) -> None:
        """Reconcile: replace a bucket's counters with what a scan found."""
        self._apply_bucket(bucket, used_bytes - bucket.used_bytes, objects - bucket.objects)

    def set_limits(self, bucket: Bucket, limits: Limits) -> None:
        bucket.set_limits(limits)
        self.touched.add(bucket)

    def take_touched(self) -> set[Bucket]:
        """Buckets whose usage, limits or name changed since the last call (the
        flusher's tick looks at these, not at every bucket)."""
        touched, self.touched = self.touched, set()
        return touched

    def _apply_bucket(self, bucket: Bucket, nbytes: int, nobjects: int) -> None:
        self._apply(bucket, nbytes, nobjects)
        self.touched.add(bucket)
        if bucket.account is not None:
            self._apply(bucket.account, nbytes, nobjects)

    def _check(self, bucket: Bucket, meter: Meter, nbytes: int, nobjects: int) -> None:
        if self._scanning and id(meter) in self._scanning and (
                nbytes > 0 and meter.hard_bytes is not None
                or nobjects > 0 and meter.limits.max_objects is not None):
            raise QuotaExceeded(bucket, meter, "usage (still being scanned)")
        if nbytes > 0:
            hard = meter.hard_bytes
            if hard is not None and meter.used_bytes + nbytes > hard:
                raise QuotaExceeded(bucket, meter, "bytes")
        if nobjects > 0:
            limit = meter.limits.max_objects
            if limit is not None and meter.objects + nobjects > limit:
                raise QuotaExceeded(bucket, meter, "objects")
        if self.gate is not None and (nbytes > 0 or nobjects > 0):
            self.gate.check(bucket, meter, nbytes, nobjects)

    def _apply(self, meter: Meter, nbytes: int, nobjects: int) -> None:
        used = meter.used_bytes + nbytes
        scanning = bool(self._scanning) and id(meter) in self._scanning
        if used < 0 and not scanning:  # (while scanning, end_scan sets it right)
            # Only possible after changes made behind the mount's back; reconcile
            # repairs it.  Never let the ledger go negative.
            log.warning("%s %s: usage would drop below zero; clamped", meter.kind, meter.display_name)
            used = 0
        meter.used_bytes = used
        objects = meter.objects + nobjects
        meter.objects = objects if objects > 0 or scanning else 0
        meter.dirty = True
        soft = meter.soft_limit
        if soft is not None and (used > soft) != bool(meter.alerts & OVER_SOFT):
            soft_crossing(meter)
        hard = meter.hard_bytes
        if meter.alerts & AT_HARD or (hard is not None and used >= hard) or (
                nobjects > 0 and meter.limits.max_objects is not None
                and meter.objects >= meter.limits.max_objects):
            hard_crossing(meter)
