"""The administrator's interface: virtual ``user.ironfs.*`` attributes.

On a bucket directory: usage, limits, the month's counters and the bucket's
account.  On the mount root: accounts and reconcile.  Plain Python; the FUSE
layer maps ControlError to its errno.  Every write is validated whole before
anything changes, so a bad value changes nothing.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from .config import Config
from .ledger import Account, Bucket, Ledger, Limits, Meter
from .reconcile import reconcile
from .state import limits_doc, load_stats, name_from_json, name_to_json
from .stats import COUNTERS, MONTH_PATTERN, StatsBook
from .units import parse_count, parse_limit, parse_size

log = logging.getLogger(__name__)

ENOATTR = errno.ENODATA
#: The attributes of the admin interface (never listed, never stored).
ADMIN_PREFIX = b"user.ironfs."
ACCOUNT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LIMIT_FIELDS = ("max_bytes", "max_objects", "grace_bytes", "soft_bytes")


class ControlError(Exception):
    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or os.strerror(code))
        self.errno = code


def parse_limit_value(field: str, value: Any) -> int | None:
    """A limit from an xattr value or a JSON field: int, size text, or none/null."""
    if value is None:
        return 0 if field == "grace_bytes" else None
    if isinstance(value, bool):
        raise ValueError(f"{field}: not a number")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{field}: negative")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{field}: not a size")
    if field == "max_objects":
        return parse_count(value)
    if field == "grace_bytes":
        return 0 if value.strip().lower() == "none" else parse_size(value)
    return parse_limit(value)


def updated_limits(current: Limits, changes: Mapping[str, Any]) -> Limits:
    fields = limits_doc(current)
    for field, value in changes.items():
        fields[field] = parse_limit_value(field, value)
    return Limits(**fields)


def meter_doc(meter: Bucket | Account) -> dict[str, Any]:
    return {**limits_doc(meter.limits), "soft_limit": meter.soft_limit,
            "used_bytes": meter.used_bytes, "objects": meter.objects, "state": meter.state}


class Control:
    def __init__(self, cfg: Config, ledger: Ledger, book: StatsBook,
                 pending: Callable[[], Mapping[int, int]]) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.book = book
        self.pending = pending  # bytes of unlinked-but-open files, per bucket id
        self.last_reconcile: dict[str, Any] | None = None  # the report, or a running state
        self.last_finished: dict[str, Any] | None = None  # the last complete report
        self.show_progress = False  # the offline command shows one; the daemon logs
        # The daemon's reconcile, which scans beside the requests: (bucket names
        # or None for all, fix); None offline.
        self.live: Callable[[list[bytes] | None, bool], None] | None = None
        # A cluster node publishes limits set here to the other nodes.
        self.limits_changed: Callable[[Meter], None] | None = None
        # The daemon counts what has come due (HEADs, LISTs, DELETEs waiting out
        # their windows) before the counters are read, not up to a tick later.
        self.counts_due: Callable[[], None] | None = None

    def _admin(self, uid: int) -> None:
        if uid != 0 and uid != self.cfg.admin_uid:
            raise ControlError(errno.EPERM)

    # -- the attributes, as the FUSE adapter hands them over ------------------------------
    def get_attr(self, on_root: bool, bucket: Bucket | None, name: bytes) -> bytes:
        """``user.ironfs.<field>`` of the mount root or of a bucket directory."""
        field = _field(name)
        if on_root:
            return self.get_root(field)
        if bucket is None:
            raise ControlError(ENOATTR)
        return self.get_bucket(bucket, field)

    def set_attr(self, on_root: bool, bucket: Bucket | None, name: bytes, value: bytes,
                 uid: int) -> None:
        field = _field(name)
        if on_root:
            self.set_root(field, value, uid)
        elif bucket is not None:
            self.set_bucket(bucket, field, value, uid)
        else:
            raise ControlError(errno.ENOTSUP)

    # -- on a bucket directory ----------------------------------------------------
    def get_bucket(self, bucket: Bucket, field: str) -> bytes:
        if field == "quota":
            doc = {"bucket": name_to_json(bucket.name), **meter_doc(bucket),
                   "account": bucket.account.name if bucket.account else None}
            return orjson.dumps(doc)
        if field == "stats" or field.startswith("stats."):
            return self._stats(bucket, field[6:])
        if field == "account":
            if bucket.account is None:
                raise ControlError(ENOATTR)
            return bucket.account.name.encode()
        values = {"used_bytes": bucket.used_bytes, "objects": bucket.objects,
                  **limits_doc(bucket.limits), "soft_bytes": bucket.soft_limit}
        if field not in values:
            raise ControlError(ENOATTR)
        value = values[field]
        return b"none" if value is None else str(value).encode()

    def set_bucket(self, bucket: Bucket, field: str, value: bytes, uid: int) -> None:
        self._admin(uid)
        text = _text(value)
        if field == "account":
            account = None if text.lower() == "none" else self.ledger.accounts.get(text)
            if account is None and text.lower() != "none":
                raise ControlError(errno.EINVAL, f"no account {text!r}")
            self.ledger.assign(bucket, account)
            log.info("bucket %s: account set to %s by uid %d", bucket.display_name, text, uid)
            return
        if field not in LIMIT_FIELDS:
            raise ControlError(errno.EINVAL)
        try:
            limits = updated_limits(bucket.limits, {field: text})
        except ValueError as e:
            raise ControlError(errno.EINVAL, str(e)) from None
        self.ledger.set_limits(bucket, limits)
        if self.limits_changed is not None:
            self.limits_changed(bucket)
        log.info("bucket %s: %s set to %s by uid %d", bucket.display_name, field, text, uid)

    def _stats(self, bucket: Bucket, month: str) -> bytes:
        if self.counts_due is not None:
            self.counts_due()
        current = self.book.current(bucket)
        if month in ("", current.month):
            return orjson.dumps({"month": current.month, **current.as_dict()})
        for owner, counters in self.book.closed:
            if owner is bucket and counters.month == month:
                return orjson.dumps({"month": month, **counters.as_dict()})
        if not MONTH_PATTERN.fullmatch(month):
            raise ControlError(ENOATTR)
        values = load_stats(os.path.join(self.cfg.backing, bucket.name), month, COUNTERS)
        if values is None:
            raise ControlError(ENOATTR)
        return orjson.dumps({"month": month, **dict(zip(COUNTERS, values, strict=True))})

    # -- on the mount root ------------------------------------------------------------
    def get_root(self, field: str) -> bytes:
        if field == "accounts":
            return orjson.dumps({name: self._account_doc(a)
                                 for name, a in sorted(self.ledger.accounts.items())})
        if field.startswith("account."):
            account = self.ledger.accounts.get(field[8:])
            if account is None:
                raise ControlError(ENOATTR)
            return orjson.dumps(self._account_doc(account))
        if field == "reconcile":
            if self.last_reconcile is None:
                raise ControlError(ENOATTR)
            return orjson.dumps(self.last_reconcile)
        raise ControlError(ENOATTR)

    def set_root(self, field: str, value: bytes, uid: int) -> None:
        self._admin(uid)
        if field.startswith("account."):
            self._set_account(field[8:], value, uid)
        elif field == "reconcile":
            self._reconcile(_text(value))
        else:
            raise ControlError(errno.EINVAL)

    def remove_root(self, field: str, uid: int) -> None:
        self._admin(uid)
        name = field[8:] if field.startswith("account.") else None
        if name is None or name not in self.ledger.accounts:
            raise ControlError(ENOATTR)
        self.ledger.remove_account(name)
        log.info("account %s deleted by uid %d", name, uid)

    def _account_doc(self, account: Account) -> dict[str, Any]:
        return {"account": account.name, **meter_doc(account),
                "buckets": sorted(name_to_json(b) for b in account.buckets)}

    def _set_account(self, name: str, value: bytes, uid: int) -> None:
        """Create or update an account from JSON: limits and/or its bucket list."""
        if not ACCOUNT_NAME.fullmatch(name):
            raise ControlError(errno.EINVAL, f"bad account name {name!r}")
        try:
            doc = orjson.loads(value)
            if not isinstance(doc, dict) or set(doc) - {*LIMIT_FIELDS, "buckets"}:
                raise ValueError("expected an object with " + ", ".join((*LIMIT_FIELDS, "buckets")))
            account = self.ledger.accounts.get(name)
            base = account.limits if account is not None else Limits(self.cfg.account_max_bytes)
            limits = updated_limits(base, {k: v for k, v in doc.items() if k in LIMIT_FIELDS})
            members = self._members(doc["buckets"]) if "buckets" in doc else None
        except (ValueError, orjson.JSONDecodeError) as e:
            raise ControlError(errno.EINVAL, str(e)) from None
        if account is None:
            account = self.ledger.add_account(name, limits)
        else:
            account.set_limits(limits)
            self.ledger.accounts_dirty = True
        if self.limits_changed is not None and set(doc) & set(LIMIT_FIELDS):
            self.limits_changed(account)
        if members is not None:
            for bucket in [self.ledger.load(b) for b in list(account.buckets)]:
                if bucket is not None and bucket not in members:
                    self.ledger.assign(bucket, None)
            for bucket in members:
                self.ledger.assign(bucket, account)
        log.info("account %s set by uid %d: %s", name, uid, value.decode("utf-8", "replace"))

    def _members(self, names: Any) -> list[Bucket]:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("buckets must be a list of bucket names")
        buckets = []
        for text in names:
            bucket = self.ledger.load(name_from_json(text))
            if bucket is None:
                raise ValueError(f"no bucket {text!r}")
            buckets.append(bucket)
        return buckets

    def _reconcile(self, request: str) -> None:
        """``check`` or ``fix``, optionally ``:<bucket>``.  In the daemon the
        scans run beside the requests (``live``) and the report replaces the
        running state when they end; offline it runs to the end here."""
        mode, _, only = request.partition(":")
        if mode not in ("check", "fix"):
            raise ControlError(errno.EINVAL, "expected check[:BUCKET] or fix[:BUCKET]")
        names = None
        if only:
            name = name_from_json(only)
            if self.ledger.get(name) is None and name not in self.ledger.evicted:
                raise ControlError(errno.ENOENT, f"no bucket {only!r}")
            names = [name]
        if self.live is not None:
            if self.last_reconcile is not None and self.last_reconcile.get("state") == "running":
                raise ControlError(errno.EBUSY, "a reconcile is running")
            self.last_reconcile = {"state": "running", "started": time.time()}
            self.live(names, mode == "fix")
            return
        for name in names or list(self.ledger.evicted):  # every bucket, not only those in memory
            self.ledger.load(name)
        buckets = list(self.ledger) if names is None else [b for b in map(self.ledger.get, names) if b]
        self.finished(reconcile(self.ledger, self.cfg.backing, self.cfg.profile, buckets,
                                fix=mode == "fix", pending=self.pending(),
                                show_progress=self.show_progress, workers=self.cfg.scan_workers))

    def finished(self, report: dict[str, Any]) -> None:
        """A reconcile's report: kept for the attribute and the metrics, drift logged."""
        self.last_reconcile = report
        if report["state"] == "done":
            self.last_finished = report
        if report["state"] != "done":
            log.error("reconcile failed: %s", report.get("error"))
            return
        for row in report["buckets"]:
            if row["drift_bytes"] or row["drift_objects"]:
                log.warning("reconcile: bucket %s drifted by %+d bytes, %+d objects%s",
                            row["bucket"], row["drift_bytes"], row["drift_objects"],
                            " (fixed)" if report["fixed"] else "")
        log.info("reconcile of %d bucket(s) took %.3fs: %s", len(report["buckets"]), report["seconds"],
                 "drift found" if report["drift"] else "no drift")


def _field(name: bytes) -> str:
    return name[len(ADMIN_PREFIX):].decode("utf-8", "replace")


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ControlError(errno.EINVAL, "not UTF-8") from None
