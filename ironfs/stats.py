"""Monthly operation counters per bucket, in memory; plain Python, no I/O.

An increment is a list update after one clock read: when the UTC month has
ended, the bucket's counters are closed out (queued for their own month's file)
and a fresh month starts, so nothing is ever added to the wrong month.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

from .ledger import Bucket

COUNTERS = ("get_count", "put_count", "delete_count", "list_count", "head_count",
            "multipart_count", "bytes_written", "bytes_read", "quota_rejections")
#: ``YYYY-MM``, the name of a month's counters file.
MONTH_PATTERN = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
GET, PUT, DELETE, LIST, HEAD, MULTIPART, BYTES_WRITTEN, BYTES_READ, REJECTIONS = range(len(COUNTERS))


def month_of(ts: float) -> tuple[str, float]:
    """The UTC month holding *ts* (``YYYY-MM``) and the timestamp it ends at."""
    d = datetime.fromtimestamp(ts, UTC)
    start_next = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=UTC)
    return f"{d.year:04d}-{d.month:02d}", start_next.timestamp()


class MonthCounters:
    __slots__ = ("month", "until", "values", "dirty")

    def __init__(self, month: str, until: float, values: list[int] | None = None) -> None:
        self.month = month
        self.until = until
        self.values = values if values is not None else [0] * len(COUNTERS)
        self.dirty = False

    def as_dict(self) -> dict[str, int]:
        return dict(zip(COUNTERS, self.values, strict=True))


class StatsBook:
    """Counters of every bucket; ``closed`` holds finished months not yet written."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.closed: list[tuple[Bucket, MonthCounters]] = []
        self._month: tuple[float, str, float] = (0.0, "", 0.0)  # start, name, end
        self.touched: set[Bucket] = set()  # buckets whose counters changed since take_touched
        # The same for a cluster node's reports to the database (None: not one).
        self.cluster_touched: set[Bucket] | None = None

    def take_touched(self) -> set[Bucket]:
        touched, self.touched = self.touched, set()
        return touched

    def _month_at(self, now: float) -> tuple[str, float]:
        """month_of(now), sharing one name and one end among all buckets."""
        start, name, until = self._month
        if not start <= now < until:
            name, until = month_of(now)
            d = datetime.fromtimestamp(now, UTC)
            start = datetime(d.year, d.month, 1, tzinfo=UTC).timestamp()
            self._month = (start, name, until)
        return name, until

    def month_now(self) -> str:
        return self._month_at(self.clock())[0]

    def attach(self, bucket: Bucket, values: list[int] | None = None) -> MonthCounters:
        """Give *bucket* counters for the current month: fresh, or continuing
        *values* read from the month's file.  (A bucket with neither has none
        until it counts something: 10^5 idle buckets need no zeros each.)"""
        current, until = self._month_at(self.clock())
        counters = MonthCounters(current, until, values)
        bucket.stats = counters
        return counters

    def current(self, bucket: Bucket) -> MonthCounters:
        counters = bucket.stats
        if counters is None or self.clock() >= counters.until:
            counters = self._roll(bucket, counters)
        return counters

    def add(self, bucket: Bucket, counter: int, n: int = 1) -> None:
        counters = bucket.stats
        if counters is None or self.clock() >= counters.until:
            counters = self._roll(bucket, counters)
        counters.values[counter] += n
        counters.dirty = True
        self.touched.add(bucket)
        if self.cluster_touched is not None:
            self.cluster_touched.add(bucket)

    def _roll(self, bucket: Bucket, old: MonthCounters | None) -> MonthCounters:
        if old is not None and old.dirty:
            self.closed.append((bucket, old))
        return self.attach(bucket)

    def take_closed(self) -> list[tuple[Bucket, MonthCounters]]:
        closed, self.closed = self.closed, []
        return closed
