"""The buckets' lifecycle: finding them on the backing root and bringing them
into the ledger (trusting ``.quota`` after a clean shutdown, rescanning
otherwise), making them (mkdir), adopting those made behind the mount's back,
reloading evicted ones, and deleting them with their state archived.

Everything here touches the disk; the FUSE adapter calls it for the few
requests that change the set of buckets."""

from __future__ import annotations

import errno
import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .config import Config
from .ledger import Bucket, Ledger, Limits
from .rules import LIMITS_FILE, QUOTA_FILE, STATS_DIR, is_bucket_name, is_bucket_state
from .scanner import Usage, scan_buckets, scan_tree
from .state import (
    AccountRecord,
    CorruptState,
    QuotaRecord,
    archive_bucket_state,
    load_accounts,
    load_limits,
    load_quota,
    load_stats,
    remove_unfinished_writes,
    set_aside,
    state_dir,
    stats_name,
    utc_now,
)
from .stats import COUNTERS, StatsBook
from .store import StateStore

log = logging.getLogger(__name__)
T = TypeVar("T")


def default_limits(cfg: Config) -> Limits:
    return _shared_limits(cfg.bucket_max_bytes)


@functools.lru_cache(maxsize=16)
def _shared_limits(max_bytes: int | None) -> Limits:
    # Limits are immutable: every bucket on the defaults shares one instance.
    return Limits(max_bytes=max_bytes)


def bucket_names(root: bytes) -> list[bytes]:
    """Top-level directories (not symlinks) whose names do not start with a dot."""
    with os.scandir(root) as it:
        return sorted(e.name for e in it
                      if is_bucket_name(e.name) and e.is_dir(follow_symlinks=False))


@dataclass(slots=True)
class StoredState:
    """What a bucket's state files say (reads them)."""

    record: QuotaRecord | None  # usage and limits from .quota, if usable
    limits: Limits  # the limits to apply
    limits_dirty: bool  # .ironfs-limits is to be (re)written


def read_state(cfg: Config, name: bytes, set_aside_corrupt: bool = True) -> StoredState:
    """A bucket's ``.quota`` and its limits.  The limits come from ``.quota``,
    else from ``.ironfs-limits`` (which a lost ``.quota`` leaves intact), else
    they are the defaults -- logged as an error when a limit file existed and
    neither can be read."""
    bucket_dir = os.path.join(cfg.backing, name)
    record, quota_corrupt = _read_state_file(bucket_dir, QUOTA_FILE, load_quota, set_aside_corrupt)
    if record is not None:
        # .quota rules; the limit file is only written if missing (cheaper than
        # reading it: a start may load 10^5 buckets).
        return StoredState(record, record.limits,
                           not os.path.exists(os.path.join(bucket_dir, LIMITS_FILE)))
    saved, limits_corrupt = _read_state_file(bucket_dir, LIMITS_FILE, load_limits, set_aside_corrupt)
    if saved is not None:
        if quota_corrupt:
            log.warning("bucket %s: limits recovered from %s", os.fsdecode(name), os.fsdecode(LIMITS_FILE))
        return StoredState(None, saved, False)
    if quota_corrupt or limits_corrupt:
        log.error("bucket %s: its limits cannot be recovered (.quota and %s are unusable); the "
                  "default limits apply until an administrator sets them again",
                  os.fsdecode(name), os.fsdecode(LIMITS_FILE))
    return StoredState(None, default_limits(cfg), True)


def _read_state_file(bucket_dir: bytes, name: bytes, load: Callable[[bytes], T | None],
                     set_aside_corrupt: bool) -> tuple[T | None, bool]:
    """(content, whether it was corrupt); a corrupt file is set aside and logged."""
    try:
        return load(bucket_dir), False
    except CorruptState as e:
        shown = os.fsdecode(os.path.join(os.path.basename(bucket_dir), name))
        if not set_aside_corrupt:
            log.warning("%s is corrupt (%s)", shown, e)
            return None, True
        try:
            kept = set_aside(bucket_dir, name, utc_now())
            log.error("%s is corrupt (%s); kept as %s, rebuilding it", shown, e, os.fsdecode(kept))
        except OSError as err:
            log.error("%s is corrupt (%s) and could not be set aside (%s); rebuilding it",
                      shown, e, err.strerror)
        return None, True


def attach_stats(root: bytes, book: StatsBook, bucket: Bucket, set_aside_corrupt: bool = True) -> None:
    """Continue this month's counters from ``.stats/`` (a corrupt file is set
    aside); a bucket without any gets them when it first counts something."""
    month = book.month_now()
    bucket.stats = None  # (fresh counters, made when first used)
    stats_dir = os.path.join(root, bucket.name, b".stats")
    try:
        values = load_stats(os.path.join(root, bucket.name), month, COUNTERS)
    except CorruptState as e:
        if not set_aside_corrupt:
            return
        name = stats_name(month)
        kept = name + b".corrupt-" + utc_now().strftime("%Y%m%dT%H%M%SZ").encode()
        try:
            os.rename(os.path.join(stats_dir, name), os.path.join(stats_dir, kept))
        except OSError:
            pass
        log.error("bucket %s: .stats/%s is corrupt (%s); kept as %s, counting from zero",
                  bucket.display_name, os.fsdecode(name), e, os.fsdecode(kept))
        return
    if values is not None:
        book.attach(bucket, values)


def new_bucket(cfg: Config, ledger: Ledger, name: bytes) -> Bucket:
    """A bucket made through the mount (mkdir): default limits, no usage."""
    return ledger.add(name, default_limits(cfg))


def made_bucket(cfg: Config, ledger: Ledger, name: bytes) -> None:
    """A top-level directory *name* was just made through the mount: a new
    bucket, unless the ledger already knows one of that name (reloaded from
    its ``.quota`` if evicted: disk I/O)."""
    if ledger.load(name) is None:
        new_bucket(cfg, ledger, name)
        log.info("bucket %s created", os.fsdecode(name))


#: Starts counting a bucket's usage beside the requests (the daemon, while it
#: serves); without one, the bucket is scanned there and then.
ScanBeside = Callable[[Bucket], None]


def bucket_of_dir(cfg: Config, ledger: Ledger, book: StatsBook, name: bytes,
                  scan_beside: ScanBeside | None = None) -> Bucket:
    """The bucket of the top-level directory *name*.  An evicted one stays on
    disk (a placeholder reloads it on first real use, not on a listing); one
    made behind the mount's back is adopted, which scans it."""
    bucket = ledger.get(name)
    if bucket is None:
        if name in ledger.evicted:
            return ledger.placeholder(name)
        bucket = adopt_bucket(cfg, ledger, book, name, scan_beside)
    return bucket


def delete_bucket(cfg: Config, store: StateStore, bucket: Bucket, path: bytes) -> None:
    """DeleteBucket (rmdir of a bucket directory): allowed when only ironfs's
    state is left; that state is archived under ``.ironfs/archive/`` so the
    month's figures survive.  Raises ENOTEMPTY otherwise.  The caller has
    claimed the bucket (``StateStore.claim_for_delete``)."""
    if any(not is_bucket_state(n) for n in os.listdir(path)):
        raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY))
    store.flush_bucket(bucket)
    archive = archive_bucket_state(cfg.backing, bucket.name, utc_now())
    try:
        os.rmdir(path)
    except OSError:
        if archive is not None:
            for n in os.listdir(archive):
                os.rename(os.path.join(archive, n), os.path.join(path, n))
        raise
    store.ledger.remove(bucket.name)
    log.info("bucket %s deleted; state archived in %s", bucket.display_name,
             os.fsdecode(archive or b"(nothing to archive)"))


def load_buckets(cfg: Config, ledger: Ledger, book: StatsBook, *, trust_usage: bool,
                 show_progress: bool = True) -> None:
    """Fill *ledger* with every bucket of the backing root before serving."""
    started = time.monotonic()
    to_scan: dict[bytes, StoredState] = {}
    if not trust_usage:
        _remove_unfinished(cfg.backing, state_dir(cfg.backing))
    for name in bucket_names(cfg.backing):
        if not trust_usage:
            bucket_dir = os.path.join(cfg.backing, name)
            # The bucket's top may hold millions of objects: only the state files' temp names.
            _remove_unfinished(cfg.backing, bucket_dir, [QUOTA_FILE, LIMITS_FILE])
            _remove_unfinished(cfg.backing, os.path.join(bucket_dir, STATS_DIR))
        state = read_state(cfg, name)
        record = state.record
        if record is not None and trust_usage:
            bucket = ledger.add(name, state.limits, record.used_bytes, record.objects, touch=False)
            bucket.dirty = False
            bucket.limits_dirty = state.limits_dirty
            if bucket.limits_dirty:
                ledger.touched.add(bucket)
        else:
            to_scan[name] = state
    if to_scan:
        log.info("scanning %d bucket(s)", len(to_scan))

    def done(name: bytes, usage: Usage) -> None:
        state = to_scan[name]
        record = state.record
        bucket = ledger.add(name, state.limits, usage.used_bytes, usage.objects, touch=False)
        bucket.limits_dirty = state.limits_dirty
        # A .quota that already says what the scan found needs no rewrite: a
        # restart after a crash rewrites only the buckets that changed.
        bucket.dirty = record is None or (record.used_bytes, record.objects) != (
            usage.used_bytes, usage.objects)
        if bucket.dirty or bucket.limits_dirty:
            ledger.touched.add(bucket)

    scan_buckets(cfg.backing, to_scan, cfg.profile, workers=cfg.scan_workers,
                 show_progress=show_progress, on_done=done)
    for bucket in ledger:
        attach_stats(cfg.backing, book, bucket)
    total = sum(b.used_bytes for b in ledger)
    log.info("%d bucket(s) ready (%d scanned, %d bytes in all) in %.2fs",
             len(ledger), len(to_scan), total, time.monotonic() - started)


def _remove_unfinished(root: bytes, directory: bytes, names: list[bytes] | None = None) -> None:
    for name in remove_unfinished_writes(directory, names):
        log.warning("removed %s, a state write the last crash interrupted",
                    os.fsdecode(os.path.relpath(os.path.join(directory, name), root)))


def load_account_file(cfg: Config, ledger: Ledger) -> None:
    """Accounts from ``.ironfs/accounts.json``; a corrupt file is set aside (and
    the accounts' limits are then gone until an administrator sets them again)."""
    try:
        records = load_accounts(cfg.backing)
    except CorruptState as e:
        try:
            kept = set_aside(state_dir(cfg.backing), b"accounts.json", utc_now())
        except OSError:
            kept = b"(could not be moved)"
        log.error("accounts.json is corrupt (%s); kept as %s; NO ACCOUNT LIMITS apply until "
                  "they are set again", e, os.fsdecode(kept))
        ledger.accounts_dirty = False
        return
    add_accounts(ledger, records)
    if records:
        log.info("%d account(s) loaded", len(records))


def add_accounts(ledger: Ledger, records: list[AccountRecord]) -> None:
    """Accounts as stored, with the buckets of theirs that still exist."""
    for record in records:
        account = ledger.add_account(record.name, record.limits)
        for name in record.buckets:
            bucket = ledger.get(name)
            if bucket is None:
                log.warning("account %s: bucket %s no longer exists; dropped from the account",
                            record.name, os.fsdecode(name))
                continue
            ledger.assign(bucket, account)
    ledger.accounts_dirty = False


def adopt_bucket(cfg: Config, ledger: Ledger, book: StatsBook, name: bytes,
                 scan_beside: ScanBeside | None = None) -> Bucket:
    """A bucket directory that appeared behind the mount's back: track it, its
    usage counted by a scan (beside the requests when *scan_beside* is given)."""
    state = read_state(cfg, name)
    if scan_beside is not None:
        log.warning("bucket %s appeared on the backing root; tracking it, scanning it beside "
                    "the requests", os.fsdecode(name))
        bucket = ledger.add(name, state.limits)
        scan_beside(bucket)
    else:
        usage = scan_tree(os.path.join(cfg.backing, name), cfg.profile)
        log.warning("bucket %s appeared on the backing root; tracking it (%d bytes, %d objects)",
                    os.fsdecode(name), usage.used_bytes, usage.objects)
        bucket = ledger.add(name, state.limits, usage.used_bytes, usage.objects)
    bucket.limits_dirty = state.limits_dirty
    attach_stats(cfg.backing, book, bucket)
    return bucket


def reload_bucket(cfg: Config, ledger: Ledger, book: StatsBook, name: bytes,
                  scan_beside: ScanBeside | None = None) -> Bucket:
    """An evicted bucket is used again: its ``.quota`` was written exactly at
    eviction, so it is trusted; if it has gone missing or corrupt since, scan."""
    state = read_state(cfg, name)
    record = state.record
    if record is None and scan_beside is not None:
        log.warning("bucket %s: no usable .quota to reload it from; scanning it beside the "
                    "requests", os.fsdecode(name))
        _, used, objects = ledger.evicted[name]  # what it held when evicted, until the scan ends
        bucket = ledger.readmit(name, state.limits, used, objects)
        scan_beside(bucket)
    elif record is None:
        log.warning("bucket %s: no usable .quota to reload it from; scanning", os.fsdecode(name))
        usage = scan_tree(os.path.join(cfg.backing, name), cfg.profile)
        bucket = ledger.readmit(name, state.limits, usage.used_bytes, usage.objects)
    else:
        bucket = ledger.readmit(name, state.limits, record.used_bytes, record.objects)
    bucket.limits_dirty = state.limits_dirty
    attach_stats(cfg.backing, book, bucket)
    log.debug("bucket %s reloaded", bucket.display_name)
    return bucket
