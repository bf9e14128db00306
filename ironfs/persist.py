"""Writing dirty ledger entries to their ``.quota`` files.

A snapshot is taken on the trio thread (cheap, consistent); the writes (fsync)
run in a worker thread.  ``lock`` keeps a flush from writing into a bucket
directory that a handler is archiving or removing at that moment.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from .ledger import Bucket, Ledger
from .state import quota_json, save_quota, utc_now

log = logging.getLogger(__name__)

Item = tuple[Bucket, bytes, bytes]  # bucket, its name at snapshot time, payload


class StateStore:
    def __init__(self, root: bytes, ledger: Ledger) -> None:
        self.root = root
        self.ledger = ledger
        self.lock = threading.Lock()
        self.last_flush_seconds = 0.0
        self._failing: set[bytes] = set()

    def snapshot(self) -> list[Item]:
        """Payloads of the dirty buckets, marking them clean (trio thread only)."""
        now = utc_now()
        items: list[Item] = []
        for bucket in self.ledger:
            if bucket.dirty:
                bucket.dirty = False
                items.append((bucket, bucket.name, quota_json(bucket, now)))
        return items

    def write(self, items: list[Item]) -> list[Bucket]:
        """Write *items*; returns the buckets whose write failed (any thread)."""
        failed: list[Bucket] = []
        started = time.monotonic()
        with self.lock:
            for bucket, name, payload in items:
                try:
                    save_quota(self.root, name, payload)
                except OSError as e:
                    failed.append(bucket)
                    if name not in self._failing:
                        self._failing.add(name)
                        log.warning("flush of bucket %s failed: %s; retrying every tick",
                                    os.fsdecode(name), e.strerror)
                else:
                    if name in self._failing:
                        self._failing.discard(name)
                        log.info("flush of bucket %s works again", os.fsdecode(name))
        self.last_flush_seconds = time.monotonic() - started
        return failed

    def redirty(self, failed: list[Bucket]) -> None:
        """Mark failed buckets dirty again, unless they were deleted meanwhile (trio thread)."""
        for bucket in failed:
            if self.ledger.get(bucket.name) is bucket:
                bucket.dirty = True

    def flush_now(self) -> bool:
        """Synchronous flush of everything dirty; True if all of it was written."""
        failed = self.write(self.snapshot())
        self.redirty(failed)
        return not failed

    def flush_bucket(self, bucket: Bucket) -> None:
        """Write one bucket now, raising on failure (caller holds ``lock``)."""
        save_quota(self.root, bucket.name, quota_json(bucket, utc_now()))
        bucket.dirty = False
