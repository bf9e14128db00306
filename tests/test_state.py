"""State files: formats, atomic writes, the lock, the marker, the archive."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from ironfs.ledger import Ledger, Limits
from ironfs.state import (
    AlreadyMounted,
    CorruptState,
    MountLock,
    archive_bucket_state,
    atomic_write,
    is_locked,
    load_quota,
    parse_quota,
    quota_json,
    take_clean_marker,
    write_clean_marker,
)

NOW = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)


def test_quota_round_trip_and_seed_fields() -> None:
    b = Ledger().add(b"b", Limits(max_bytes=5000, max_objects=7, grace_bytes=3, soft_bytes=None),
                     used_bytes=1234, objects=5)
    doc = orjson.loads(quota_json(b, NOW))
    assert doc["max_size_bytes"] == 5000 and doc["current_usage_bytes"] == 1234
    assert doc["object_count"] == 5 and doc["last_updated"] == "2026-11-23T10:00:00Z"
    rec = parse_quota(quota_json(b, NOW))
    assert (rec.limits, rec.used_bytes, rec.objects) == (b.limits, 1234, 5)


def test_seed_only_file_is_accepted() -> None:
    rec = parse_quota(b'{"max_size_bytes": 5368709120, "current_usage_bytes": 1, '
                      b'"object_count": 42, "last_updated": "2025-01-27T10:00:00Z"}')
    assert rec.limits == Limits(max_bytes=5368709120) and rec.objects == 42


@pytest.mark.parametrize("data", [
    b"", b"{", b"null", b"[1]", b'{"current_usage_bytes": 1, "object_count": 1}',
    b'{"max_size_bytes": -1, "current_usage_bytes": 1, "object_count": 1}',
    b'{"max_size_bytes": 1, "current_usage_bytes": true, "object_count": 1}',
    b'{"max_size_bytes": 1, "current_usage_bytes": 1.5, "object_count": 1}',
    b'{"max_size_bytes": 1, "current_usage_bytes": 1, "object_count": 1, "format": 99}',
    b'{"max_size_bytes": 1, "current_usage_bytes": 1, "object_count": 1, "grace_bytes": null}',
])
def test_corrupt_quota_is_rejected(data: bytes) -> None:
    with pytest.raises(CorruptState):
        parse_quota(data)


def test_missing_quota_is_none(tmp_path: Path) -> None:
    assert load_quota(os.fsencode(tmp_path)) is None


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    d = os.fsencode(tmp_path)
    atomic_write(d, b".quota", b"one")
    atomic_write(d, b".quota", b"two")
    assert os.listdir(d) == [b".quota"] and (tmp_path / ".quota").read_bytes() == b"two"


def test_atomic_write_never_creates_the_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(os.fsencode(tmp_path / "deleted-bucket"), b".quota", b"x")
    assert not (tmp_path / "deleted-bucket").exists()


def test_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    first = MountLock(root)
    first.acquire()
    try:
        assert is_locked(root)
        with pytest.raises(AlreadyMounted, match=f"pid {os.getpid()}"):
            MountLock(root).acquire()
    finally:
        first.release()
    assert not is_locked(root)
    again = MountLock(root)
    again.acquire()
    again.release()


def test_clean_marker(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    (tmp_path / ".ironfs").mkdir()
    assert take_clean_marker(root) is None
    write_clean_marker(root, NOW)
    stopped = take_clean_marker(root)
    assert stopped is not None and abs(stopped - time.time()) < 60
    assert take_clean_marker(root) is None  # taken: a crash from now on is detected


def test_archive_moves_state_out_of_the_bucket(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    (tmp_path / "b" / ".stats").mkdir(parents=True)
    (tmp_path / "b" / ".quota").write_bytes(b"{}")
    (tmp_path / "b" / ".stats" / "2026-11.json").write_bytes(b"{}")
    target = archive_bucket_state(root, b"b", NOW)
    assert target is not None and os.listdir(tmp_path / "b") == []
    assert sorted(os.listdir(target)) == [b".quota", b".stats"]
    assert target.startswith(os.path.join(root, b".ironfs", b"archive", b"b"))
