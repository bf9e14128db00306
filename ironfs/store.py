"""Writing dirty ledger entries and counters to their state files.

A snapshot is taken on the trio thread (cheap, consistent); the writes (fsync)
run in a worker thread.  A flush never writes into a bucket directory that a
DeleteBucket is archiving at that moment (``claim_for_delete``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from .ledger import Bucket, Ledger
from .state import (
    accounts_json,
    accounts_target,
    atomic_write,
    limits_json,
    limits_target,
    quota_json,
    quota_target,
    save_quota,
    save_stats,
    stats_json,
    stats_target,
    syncfs,
    unlink_quietly,
    utc_now,
    write_temp,
)
from .stats import MonthCounters, StatsBook

log = logging.getLogger(__name__)

#: A flush of at least this many files is written as one batch (see _write_batch):
#: after a rescan or at a stop with many buckets changed.  Not lower: syncfs
#: also pushes out every object's dirty pages, which a steady one-second flush
#: of a few buckets should not do.
BATCH = 256


@dataclass(slots=True)
class Item:
    bucket: Bucket | None  # None: the accounts file
    name: bytes  # the bucket's name when the snapshot was taken
    payload: bytes
    counters: MonthCounters | None = None  # None: the .quota file (or .ironfs-limits)
    limits: bool = False  # the .ironfs-limits file

    def target(self, root: bytes) -> tuple[bytes, bytes]:
        """(directory, file name) of the state file."""
        if self.bucket is None:
            return accounts_target(root)
        if self.limits:
            return limits_target(root, self.name)
        if self.counters is None:
            return quota_target(root, self.name)
        return stats_target(root, self.name, self.counters.month)

    def write(self, root: bytes) -> None:
        atomic_write(*self.target(root), self.payload)


class StateStore:
    def __init__(self, root: bytes, ledger: Ledger, book: StatsBook) -> None:
        self.root = root
        self.ledger = ledger
        self.book = book
        # Bucket names a flush is writing, and those being deleted (rmdir):
        # a DeleteBucket waits only for its own bucket's files, never for a batch.
        self._names = threading.Lock()
        self._in_flight: dict[bytes, int] = {}
        self._deleting: set[bytes] = set()
        self.last_flush_seconds = 0.0
        self.last_flush_at = 0.0  # wall clock, for the metrics
        self._failing: set[bytes] = set()
        self.batch_from = BATCH
        # Buckets by last change, least recent first: the eviction order, kept
        # only with a bucket cache (about 100 bytes a bucket).
        self.evicting = False
        self._recency: OrderedDict[int, Bucket] = OrderedDict()

    def snapshot(self) -> list[Item]:
        """Payloads of everything changed, marked clean (trio thread only)."""
        now = utc_now()
        items: list[Item] = []
        for bucket in self.ledger.take_touched() | self.book.take_touched():
            if self.ledger.get(bucket.name) is not bucket:
                continue  # evicted or deleted since
            counters = self.book.current(bucket)  # closes out a finished month
            if self.evicting:
                self._recency[id(bucket)] = bucket
                self._recency.move_to_end(id(bucket))
            if bucket.limits_dirty:
                bucket.limits_dirty = False
                items.append(Item(bucket, bucket.name, limits_json(bucket.limits, now), limits=True))
            if bucket.dirty:
                bucket.dirty = False
                items.append(Item(bucket, bucket.name, quota_json(bucket, now)))
            if counters.dirty:
                counters.dirty = False
                items.append(Item(bucket, bucket.name, stats_json(counters.as_dict(), now), counters))
        for bucket, counters in self.book.take_closed():
            if self.ledger.get(bucket.name) is bucket:
                items.append(Item(bucket, bucket.name, stats_json(counters.as_dict(), now), counters))
        if self.ledger.accounts_dirty:
            self.ledger.accounts_dirty = False
            items.append(Item(None, b".ironfs/accounts.json", accounts_json(self.ledger, now)))
        return items

    def write(self, items: list[Item]) -> list[Item]:
        """Write *items*; returns those that failed (any thread).  Items of a
        bucket being deleted are left out (its state is archived as it is)."""
        started = time.monotonic()
        items = self._claim(items)
        try:
            if len(items) >= self.batch_from:
                failed = self._write_batch(items)
            else:
                failed = []
                for item in items:
                    try:
                        item.write(self.root)
                    except OSError as e:
                        failed.append(item)
                        self._failed(item, e)
                    else:
                        self._worked(item)
        finally:
            self._release(items)
        self.last_flush_seconds = time.monotonic() - started
        self.last_flush_at = time.time()
        return failed

    # -- a flush and a DeleteBucket never touch the same bucket at once ----------------
    def _claim(self, items: list[Item]) -> list[Item]:
        with self._names:
            kept = [item for item in items if item.name not in self._deleting]
            for item in kept:
                self._in_flight[item.name] = self._in_flight.get(item.name, 0) + 1
        return kept

    def _release(self, items: list[Item]) -> None:
        with self._names:
            for item in items:
                left = self._in_flight[item.name] - 1
                if left:
                    self._in_flight[item.name] = left
                else:
                    del self._in_flight[item.name]

    def claim_for_delete(self, name: bytes) -> bool:
        """Whether bucket *name* may be archived now (no flush is writing it);
        if so, flushes leave it alone until ``release_delete``."""
        with self._names:
            if name in self._in_flight:
                return False
            self._deleting.add(name)
            return True

    def release_delete(self, name: bytes) -> None:
        with self._names:
            self._deleting.discard(name)

    def _write_batch(self, items: list[Item]) -> list[Item]:
        """Many files at once (a start after a crash, a stop): every temp file,
        one syncfs, every rename, one syncfs -- instead of two fsyncs each.  A
        crash still leaves each file old or new: no rename precedes the sync of
        its content."""
        failed: list[Item] = []
        staged: list[tuple[Item, bytes, bytes]] = []
        for item in items:
            try:
                directory, name = item.target(self.root)
                staged.append((item, write_temp(directory, name, item.payload, sync=False),
                               os.path.join(directory, name)))
            except OSError as e:
                failed.append(item)
                self._failed(item, e)
        try:
            syncfs(self.root)
        except OSError as e:
            for item, tmp, _ in staged:
                unlink_quietly(tmp)
                failed.append(item)
                self._failed(item, e)
            return failed
        renamed: list[Item] = []
        for item, tmp, final in staged:
            try:
                os.rename(tmp, final)
            except OSError as e:
                unlink_quietly(tmp)
                failed.append(item)
                self._failed(item, e)
            else:
                renamed.append(item)
        try:
            syncfs(self.root)  # the renames
        except OSError as e:
            for item in renamed:  # in place, but not known durable: write again
                failed.append(item)
                self._failed(item, e)
            return failed
        for item in renamed:
            self._worked(item)
        return failed

    def _failed(self, item: Item, e: OSError) -> None:
        if item.name not in self._failing:
            self._failing.add(item.name)
            log.warning("flush of bucket %s failed: %s; retrying every tick",
                        os.fsdecode(item.name), e.strerror)

    def _worked(self, item: Item) -> None:
        if item.name in self._failing:
            self._failing.discard(item.name)
            log.info("flush of bucket %s works again", os.fsdecode(item.name))

    def redirty(self, failed: list[Item]) -> None:
        """Retry failed items next tick, unless their bucket is gone (trio thread)."""
        for item in failed:
            bucket = item.bucket
            if bucket is None:
                self.ledger.accounts_dirty = True
                continue
            if self.ledger.get(bucket.name) is not bucket:
                continue
            self.ledger.touched.add(bucket)
            if item.limits:
                bucket.limits_dirty = True
            elif item.counters is None:
                bucket.dirty = True
            elif item.counters is bucket.stats:
                item.counters.dirty = True
            else:
                self.book.closed.append((bucket, item.counters))

    def evict_idle(self, keep: int) -> int:
        """Drop the least recently active buckets until at most *keep* are in
        memory (trio thread, after a flush).  Only buckets whose state on disk
        is exact qualify: nothing changed since their last successful write."""
        excess = len(self.ledger) - keep
        if excess <= 0:
            return 0
        owed = {id(b) for b, _ in self.book.closed}
        victims: list[int] = []
        stale: list[int] = []
        for key, bucket in self._recency.items():  # least recently changed first
            if len(victims) == excess:
                break
            if self.ledger.get(bucket.name) is not bucket:
                stale.append(key)  # deleted or evicted since
            elif not (bucket.dirty or bucket.limits_dirty or self.ledger.is_scanning(bucket)
                      or id(bucket) in owed
                      or (bucket.stats is not None and bucket.stats.dirty)
                      or bucket.name in self._failing):
                victims.append(key)
        for key in stale:
            del self._recency[key]
        for key in victims:
            self.ledger.evict(self._recency.pop(key))
        return len(victims)

    def flush_now(self) -> bool:
        """Synchronous flush of everything changed; True if all of it was written."""
        failed = self.write(self.snapshot())
        self.redirty(failed)
        return not failed

    def flush_bucket(self, bucket: Bucket) -> None:
        """Write one bucket's state now, raising on failure (the caller has
        claimed it with ``claim_for_delete``)."""
        now = utc_now()
        save_quota(self.root, bucket.name, quota_json(bucket, now))
        bucket.dirty = False
        atomic_write(*limits_target(self.root, bucket.name), limits_json(bucket.limits, now))
        bucket.limits_dirty = False
        pending = [c for b, c in self.book.closed if b is bucket]
        self.book.closed = [(b, c) for b, c in self.book.closed if b is not bucket]
        current = self.book.current(bucket)
        for counters in [*pending, current]:
            save_stats(self.root, bucket.name, counters.month, stats_json(counters.as_dict(), now))
            counters.dirty = False
