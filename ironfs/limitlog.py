"""What the log says about limits: each crossing once, refusals summarised.

A bucket that hovers at its soft limit would otherwise log a line per request:
crossing back under a limit counts only once usage has dropped a margin below
it (hysteresis).  Refusals are counted and logged as one line per bucket per
interval.  Plain Python; the clock is injected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .ledger import Meter, QuotaExceeded

log = logging.getLogger("ironfs.ledger")

#: Meter.alerts: what the log has said a meter is over (one int, for memory).
OVER_SOFT, AT_HARD = 1, 2

#: Back under a limit only below this fraction of it.
HYSTERESIS = 0.95
#: Refusals are summed up and logged at most this often, per bucket.
SUMMARY_SECONDS = 60.0


def below(value: int, limit: int) -> bool:
    """Whether *value* is far enough under *limit* to count as back under it."""
    return value <= limit * HYSTERESIS


def soft_crossing(meter: Meter) -> None:
    """Usage passed the soft limit one way (called only when it may have)."""
    soft = meter.soft_limit
    if soft is None:
        return
    if not meter.alerts & OVER_SOFT and meter.used_bytes > soft:
        meter.alerts |= OVER_SOFT
        log.warning("%s %s is over its soft limit: %d of %d bytes",
                    meter.kind, meter.display_name, meter.used_bytes, soft)
    elif meter.alerts & OVER_SOFT and below(meter.used_bytes, soft):
        meter.alerts &= ~OVER_SOFT
        log.info("%s %s is back under its soft limit", meter.kind, meter.display_name)


def hard_crossing(meter: Meter) -> None:
    """Usage reached the hard limit, or left it far enough behind."""
    hard, max_objects = meter.hard_bytes, meter.limits.max_objects
    full_bytes = hard is not None and meter.used_bytes >= hard
    full_objects = max_objects is not None and meter.objects >= max_objects
    if not meter.alerts & AT_HARD and (full_bytes or full_objects):
        meter.alerts |= AT_HARD
        log.warning("%s %s reached its hard limit (%s): growth is refused",
                    meter.kind, meter.display_name, "bytes" if full_bytes else "objects")
    elif meter.alerts & AT_HARD and (hard is None or below(meter.used_bytes, hard)) and (
            max_objects is None or below(meter.objects, max_objects)):
        meter.alerts &= ~AT_HARD
        log.info("%s %s is below its hard limit again", meter.kind, meter.display_name)


class RefusalLog:
    """Refused requests per bucket, logged as one summary line per interval."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 interval: float = SUMMARY_SECONDS) -> None:
        self.clock = clock
        self.interval = interval
        self._since = clock()
        self._counts: dict[str, int] = {}  # per bucket
        self._why: dict[str, str] = {}  # the limit that refused the last one

    def refused(self, e: QuotaExceeded) -> None:
        if not e.meter.alerts & AT_HARD:
            hard_crossing(e.meter)  # (not if only a too large request was refused)
        name = e.bucket.display_name
        self._counts[name] = self._counts.get(name, 0) + 1
        self._why[name] = f"{e.meter.kind} {e.meter.display_name}'s {e.what} limit"

    def tick(self, force: bool = False) -> None:
        """Log the summary if the interval has passed (the flusher's tick)."""
        now = self.clock()
        if not self._counts or (not force and now - self._since < self.interval):
            if not self._counts:
                self._since = now
            return
        seconds = now - self._since
        for bucket, count in sorted(self._counts.items()):
            log.warning("bucket %s: %d request(s) refused in the last %.0f s (%s)",
                        bucket, count, seconds, self._why[bucket])
        self._counts.clear()
        self._why.clear()
        self._since = now
