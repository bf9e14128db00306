"""Reconcile: compare the ledger with a fresh scan, per bucket and per account,
and optionally correct the ledger.  Plain Python, used by ``ironfs reconcile``
on an unmounted backing root (offline); the daemon scans live (scans.py) and
compares with the same functions."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from .ledger import Bucket, Ledger
from .rules import Profile
from .scanner import scan_buckets
from .state import name_to_json


def reconcile(ledger: Ledger, root: bytes, profile: Profile, buckets: Iterable[Bucket], *,
              fix: bool, pending: Mapping[int, int] | None = None,
              show_progress: bool = False, workers: int = 1) -> dict[str, Any]:
    """Scan *buckets* and compare.  *pending*: bytes still charged per bucket (by
    ``id``) for files unlinked while open, which a scan cannot see."""
    started = time.monotonic()
    pending = pending or {}
    buckets = list(buckets)
    usages = scan_buckets(root, [b.name for b in buckets], profile, workers=workers,
                          show_progress=show_progress)
    rows = [compare(ledger, bucket, usages[bucket.name].used_bytes + pending.get(id(bucket), 0),
                    usages[bucket.name].objects, fix=fix) for bucket in buckets]
    return report(rows, started, fix)


def compare(ledger: Ledger, bucket: Bucket, scan_bytes: int, scan_objects: int, *,
            fix: bool) -> dict[str, Any]:
    """One bucket's row (what the scan found, with the bytes of files unlinked
    while open added); with *fix*, the ledger takes the scan's figures."""
    drift_bytes = scan_bytes - bucket.used_bytes
    drift_objects = scan_objects - bucket.objects
    row = {
        "bucket": name_to_json(bucket.name),
        "account": bucket.account.name if bucket.account is not None else None,
        "ledger_bytes": bucket.used_bytes, "ledger_objects": bucket.objects,
        "scan_bytes": scan_bytes, "scan_objects": scan_objects,
        "drift_bytes": drift_bytes, "drift_objects": drift_objects,
    }
    if fix and (drift_bytes or drift_objects):
        ledger.set_usage(bucket, scan_bytes, scan_objects)
    return row


def report(rows: list[dict[str, Any]], started: float, fix: bool) -> dict[str, Any]:
    account_drift: dict[str, list[int]] = {}
    for row in rows:
        if row["account"] is not None:
            acc = account_drift.setdefault(row["account"], [0, 0])
            acc[0] += row["drift_bytes"]
            acc[1] += row["drift_objects"]
    drift = any(r["drift_bytes"] or r["drift_objects"] for r in rows)
    return {
        "state": "done",
        "buckets": rows,
        "accounts": [{"account": name, "drift_bytes": b, "drift_objects": o}
                     for name, (b, o) in sorted(account_drift.items())],
        "drift": drift,
        "fixed": fix and drift,
        "seconds": round(time.monotonic() - started, 3),
        "at": time.time(),
    }
