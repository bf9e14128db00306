"""``ironfs stats``: a bucket's monthly counters, from a live mount (through the
``user.ironfs.stats`` attributes) or from a backing root (the files themselves)."""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from typing import Any

import orjson

from .state import CorruptState, json_object, load_stats
from .stats import COUNTERS, MONTH_PATTERN, month_of


def stats_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ironfs stats",
                                description="Show a bucket's operation counters for one month.")
    p.add_argument("bucket", metavar="BUCKET_DIR",
                   help="the bucket's directory, on the mount or on the backing root")
    p.add_argument("--month", help="YYYY-MM (UTC); default: the current month")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def read_stats(bucket_dir: str, month: str | None) -> dict[str, Any]:
    """The month's counters; raises LookupError/ValueError with a message for people."""
    path = os.fsencode(bucket_dir)
    if not os.path.isdir(path):
        raise LookupError(f"{bucket_dir}: not a directory")
    try:
        current = json_object(os.getxattr(path, b"user.ironfs.stats"))
    except OSError as e:
        if e.errno not in (errno.ENODATA, errno.ENOTSUP):
            raise LookupError(f"{bucket_dir}: {e.strerror}") from None
    else:  # a bucket on a live mount
        if not month or month == current["month"]:
            return current
        try:
            return json_object(os.getxattr(path, b"user.ironfs.stats." + month.encode()))
        except OSError as e:
            if e.errno != errno.ENODATA:
                raise LookupError(f"{bucket_dir}: {e.strerror}") from None
            return {"month": month, **dict.fromkeys(COUNTERS, 0)}
    # Not on a live mount: read the backing root's files.
    month = month or month_of(time.time())[0]
    try:
        values = load_stats(path, month, COUNTERS)
    except CorruptState as e:
        raise ValueError(f"{bucket_dir}/.stats/{month}.json is corrupt: {e}") from None
    return {"month": month, **dict(zip(COUNTERS, values or [0] * len(COUNTERS), strict=True))}


def stats_main(argv: list[str]) -> int:
    args = stats_parser().parse_args(argv)
    if args.month and not MONTH_PATTERN.fullmatch(args.month):
        print(f"ironfs stats: --month must be YYYY-MM, not {args.month!r}", file=sys.stderr)
        return 2
    try:
        doc = read_stats(args.bucket, args.month)
    except (LookupError, ValueError) as e:
        print(f"ironfs stats: {e.args[0]}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
        return 0
    bucket = os.path.basename(os.path.normpath(args.bucket))
    print(f"bucket {bucket}, month {doc['month']} (UTC)")
    width = max(len(c) for c in COUNTERS)
    for counter in COUNTERS:
        print(f"  {counter:<{width}}  {doc.get(counter, 0):>14,}")
    return 0
