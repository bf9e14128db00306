"""State files on the backing filesystem: formats, atomic writes, the mount lock,
the clean-shutdown marker and the archive of deleted buckets.

Plain synchronous Python; the flusher runs these in a worker thread.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from types import EllipsisType
from typing import Any

import orjson

from .ledger import Bucket, Ledger, Limits
from .rules import LIMITS_FILE, QUOTA_FILE, ROOT_STATE_DIR, STATE_PREFIX, STATS_DIR

log = logging.getLogger(__name__)

QUOTA_FORMAT = 1
LOCK_FILE = b"lock"
CLEAN_MARKER = b"clean"
ARCHIVE_DIR = b"archive"


class CorruptState(ValueError):
    """A state file that cannot be trusted; the caller sets it aside and rebuilds."""


class AlreadyMounted(RuntimeError):
    pass


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def fsync_dir(path: bytes) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(directory: bytes, name: bytes, data: bytes) -> None:
    """Write *directory*/*name* so that a crash leaves the old or the new content.

    Never creates *directory*: a bucket deleted meanwhile must stay deleted."""
    tmp = write_temp(directory, name, data, sync=True)
    try:
        os.rename(tmp, os.path.join(directory, name))
    except BaseException:
        unlink_quietly(tmp)
        raise
    fsync_dir(directory)


def write_temp(directory: bytes, name: bytes, data: bytes, *, sync: bool) -> bytes:
    """*name*'s new content in its temp file (fsynced if *sync*); returns its path."""
    tmp = os.path.join(directory, unfinished_name(name))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(tmp)
        raise
    os.close(fd)
    return tmp


_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(path: bytes) -> None:
    """Flush the whole filesystem holding *path* (one call for a batch of state
    writes instead of two fsyncs per file); raises its writeback error."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def unfinished_name(name: bytes) -> bytes:
    """The temp file ``atomic_write`` writes *name*'s new content to."""
    return STATE_PREFIX + b"-tmp" + name


def remove_unfinished_writes(directory: bytes, names: list[bytes] | None = None) -> list[bytes]:
    """Delete the temp files of atomic writes a crash interrupted in *directory*
    (the file each was replacing is intact): those of *names*, or every one when
    None (for small directories).  Returns the temp files' names."""
    if names is not None:
        candidates = [unfinished_name(n) for n in names]
    else:
        try:
            with os.scandir(directory) as it:
                candidates = [e.name for e in it if e.name.startswith(unfinished_name(b""))]
        except (FileNotFoundError, NotADirectoryError):
            return []
    removed = []
    for name in candidates:
        try:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not remove %s: %s", os.fsdecode(name), e.strerror)
    return removed


def unlink_quietly(path: bytes) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# -- .quota -------------------------------------------------------------------

@dataclass(slots=True)
class QuotaRecord:
    limits: Limits
    used_bytes: int
    objects: int


def quota_json(bucket: Bucket, now: datetime) -> bytes:
    """The seed's four fields first, then ironfs's own."""
    limits = bucket.limits
    return orjson.dumps({
        "max_size_bytes": limits.max_bytes,
        "current_usage_bytes": bucket.used_bytes,
        "object_count": bucket.objects,
        "last_updated": iso(now),
        "max_objects": limits.max_objects,
        "grace_bytes": limits.grace_bytes,
        "soft_bytes": limits.soft_bytes,
        "format": QUOTA_FORMAT,
    }, option=orjson.OPT_INDENT_2) + b"\n"


def _field(doc: dict[str, Any], key: str, *, nullable: bool,
           default: int | None | EllipsisType = ...) -> int | None:
    if key not in doc:
        if isinstance(default, EllipsisType):
            raise CorruptState(f"missing field {key!r}")
        return default
    value = doc[key]
    if value is None and nullable:
        return None
    if type(value) is not int or value < 0:
        raise CorruptState(f"field {key!r} must be a non-negative integer, not {value!r}")
    return value


def json_object(data: bytes) -> dict[str, Any]:
    """*data* parsed as a JSON object; CorruptState (a ValueError) otherwise."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise CorruptState(f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise CorruptState("not a JSON object")
    return doc


def _limits(doc: dict[str, Any], max_bytes_key: str) -> Limits:
    return Limits(
        max_bytes=_field(doc, max_bytes_key, nullable=True),
        max_objects=_field(doc, "max_objects", nullable=True, default=None),
        grace_bytes=_field(doc, "grace_bytes", nullable=False, default=0) or 0,
        soft_bytes=_field(doc, "soft_bytes", nullable=True, default=None),
    )


def _read_state(path: bytes) -> bytes | None:
    """A state file's bytes; None if missing.  Raises CorruptState if unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read(16 << 20)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CorruptState(f"unreadable: {e.strerror}") from None


def parse_quota(data: bytes) -> QuotaRecord:
    doc = json_object(data)
    fmt = doc.get("format", QUOTA_FORMAT)
    if fmt != QUOTA_FORMAT:
        raise CorruptState(f"unknown format {fmt!r}")
    limits = _limits(doc, "max_size_bytes")
    used = _field(doc, "current_usage_bytes", nullable=False)
    objects = _field(doc, "object_count", nullable=False)
    return QuotaRecord(limits, used or 0, objects or 0)


def load_quota(bucket_dir: bytes) -> QuotaRecord | None:
    """The bucket's ``.quota``; None if missing.  Raises CorruptState."""
    data = _read_state(os.path.join(bucket_dir, QUOTA_FILE))
    return None if data is None else parse_quota(data)


def set_aside(bucket_dir: bytes, name: bytes, now: datetime) -> bytes:
    """Move a corrupt state file out of the way, keeping it for inspection."""
    target = STATE_PREFIX + b"-corrupt" + name + b"." + now.strftime("%Y%m%dT%H%M%SZ").encode()
    os.rename(os.path.join(bucket_dir, name), os.path.join(bucket_dir, target))
    return target


# -- .ironfs-limits: the administrator's limits, written only when they change -------

def limits_json(limits: Limits, now: datetime) -> bytes:
    return orjson.dumps({**limits_doc(limits), "last_updated": iso(now), "format": QUOTA_FORMAT},
                        option=orjson.OPT_INDENT_2) + b"\n"


def load_limits(bucket_dir: bytes) -> Limits | None:
    """The bucket's ``.ironfs-limits``; None if missing.  Raises CorruptState."""
    data = _read_state(os.path.join(bucket_dir, LIMITS_FILE))
    return None if data is None else _limits(json_object(data), "max_bytes")


def limits_target(root: bytes, bucket_name: bytes) -> tuple[bytes, bytes]:
    return os.path.join(root, bucket_name), LIMITS_FILE


def save_quota(root: bytes, bucket_name: bytes, payload: bytes) -> None:
    atomic_write(*quota_target(root, bucket_name), payload)


def quota_target(root: bytes, bucket_name: bytes) -> tuple[bytes, bytes]:
    return os.path.join(root, bucket_name), QUOTA_FILE


# -- .stats/YYYY-MM.json --------------------------------------------------------

def stats_json(counters: dict[str, int], now: datetime) -> bytes:
    return orjson.dumps({**counters, "last_updated": iso(now)}, option=orjson.OPT_INDENT_2) + b"\n"


def parse_stats(data: bytes, names: tuple[str, ...]) -> list[int]:
    """Counter values in the order of *names*; a missing counter is 0."""
    doc = json_object(data)
    return [_field(doc, name, nullable=False, default=0) or 0 for name in names]


def stats_name(month: str) -> bytes:
    return month.encode() + b".json"


def load_stats(bucket_dir: bytes, month: str, names: tuple[str, ...]) -> list[int] | None:
    """A month's counters, None if there is no file.  Raises CorruptState."""
    data = _read_state(os.path.join(bucket_dir, STATS_DIR, stats_name(month)))
    return None if data is None else parse_stats(data, names)


def save_stats(root: bytes, bucket_name: bytes, month: str, payload: bytes) -> None:
    atomic_write(*stats_target(root, bucket_name, month), payload)


def stats_target(root: bytes, bucket_name: bytes, month: str) -> tuple[bytes, bytes]:
    """Where a month's file goes; creates ``.stats/`` but never the bucket itself."""
    stats_dir = os.path.join(root, bucket_name, STATS_DIR)
    try:
        os.mkdir(stats_dir, 0o755)
    except FileExistsError:
        pass
    return stats_dir, stats_name(month)


# -- .ironfs/accounts.json ------------------------------------------------------

ACCOUNTS_FILE = b"accounts.json"
_HEX = "hex:"


def name_to_json(name: bytes) -> str:
    """Bucket names are bytes; JSON wants text.  Non-UTF-8 names travel as hex."""
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return _HEX + name.hex()
    return _HEX + name.hex() if text.startswith(_HEX) else text


def name_from_json(text: str) -> bytes:
    if text.startswith(_HEX):
        try:
            return bytes.fromhex(text[len(_HEX):])
        except ValueError:
            raise CorruptState(f"bad bucket name {text!r}") from None
    return text.encode("utf-8")


@dataclass(slots=True)
class AccountRecord:
    name: str
    limits: Limits
    buckets: list[bytes]


def limits_doc(limits: Limits) -> dict[str, Any]:
    return {"max_bytes": limits.max_bytes, "max_objects": limits.max_objects,
            "grace_bytes": limits.grace_bytes, "soft_bytes": limits.soft_bytes}


def accounts_json(ledger: Ledger, now: datetime) -> bytes:
    accounts = {
        name: {**limits_doc(a.limits), "buckets": sorted(name_to_json(b) for b in a.buckets)}
        for name, a in sorted(ledger.accounts.items())
    }
    return orjson.dumps({"format": QUOTA_FORMAT, "last_updated": iso(now), "accounts": accounts},
                        option=orjson.OPT_INDENT_2) + b"\n"


def parse_accounts(data: bytes) -> list[AccountRecord]:
    doc = json_object(data)
    if not isinstance(doc.get("accounts"), dict):
        raise CorruptState("no 'accounts' object")
    records = []
    for name, entry in doc["accounts"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("buckets", []), list):
            raise CorruptState(f"account {name!r} is not an object with a bucket list")
        limits = _limits(entry, "max_bytes")
        buckets = entry.get("buckets", [])
        if not all(isinstance(b, str) for b in buckets):
            raise CorruptState(f"account {name!r}: bucket names must be strings")
        records.append(AccountRecord(name, limits, [name_from_json(b) for b in buckets]))
    return records


def load_accounts(root: bytes) -> list[AccountRecord]:
    """The accounts file; [] if there is none.  Raises CorruptState."""
    data = _read_state(os.path.join(state_dir(root), ACCOUNTS_FILE))
    return [] if data is None else parse_accounts(data)


def accounts_target(root: bytes) -> tuple[bytes, bytes]:
    return state_dir(root), ACCOUNTS_FILE


# -- mount-wide state -----------------------------------------------------------

def state_dir(root: bytes) -> bytes:
    return os.path.join(root, ROOT_STATE_DIR)


class MountLock:
    """``.ironfs/lock``, flock'ed for as long as the backing root is mounted."""

    def __init__(self, root: bytes) -> None:
        self.root = root
        self.fd: int | None = None

    def acquire(self) -> None:
        sdir = state_dir(self.root)
        os.makedirs(sdir, mode=0o700, exist_ok=True)
        path = os.path.join(sdir, LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                holder = read_lock_holder(self.root)
                raise AlreadyMounted(
                    f"{os.fsdecode(self.root)} is already served by ironfs (pid {holder or '?'})"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def read_lock_holder(root: bytes) -> int | None:
    try:
        with open(os.path.join(state_dir(root), LOCK_FILE), "rb") as f:
            return int(f.read().strip() or b"0") or None
    except (OSError, ValueError):
        return None


def is_locked(root: bytes) -> bool:
    """Whether a live ironfs holds the backing root (for offline tools)."""
    try:
        fd = os.open(os.path.join(state_dir(root), LOCK_FILE), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def take_clean_marker(root: bytes) -> float | None:
    """Remove the clean-shutdown marker; when the last shutdown ended (its
    time, as the filesystem recorded it) if it was clean, else None.

    Removed durably before serving, so a crash from now on is detected."""
    path = os.path.join(state_dir(root), CLEAN_MARKER)
    try:
        stopped = os.stat(path).st_ctime
        os.unlink(path)
    except FileNotFoundError:
        return None
    fsync_dir(state_dir(root))
    return stopped


def write_clean_marker(root: bytes, now: datetime) -> None:
    atomic_write(state_dir(root), CLEAN_MARKER, f"{iso(now)}\n".encode())


def archive_bucket_state(root: bytes, bucket_name: bytes, now: datetime) -> bytes | None:
    """Move a bucket's state entries to ``.ironfs/archive/<bucket>/<time>/``.

    Returns the archive directory, or None if there was nothing to keep."""
    bucket_dir = os.path.join(root, bucket_name)
    entries = [e for e in os.listdir(bucket_dir)]
    if not entries:
        return None
    target = os.path.join(state_dir(root), ARCHIVE_DIR, bucket_name,
                          now.strftime("%Y%m%dT%H%M%S.%fZ").encode())
    os.makedirs(target, mode=0o700)
    for name in entries:
        os.rename(os.path.join(bucket_dir, name), os.path.join(target, name))
    fsync_dir(target)
    fsync_dir(bucket_dir)
    return target


__all__ = [
    "AlreadyMounted", "CorruptState", "MountLock", "QuotaRecord", "STATS_DIR",
    "archive_bucket_state", "atomic_write", "is_locked", "load_quota", "parse_quota",
    "quota_json", "save_quota", "set_aside", "take_clean_marker", "utc_now",
    "write_clean_marker",
]
