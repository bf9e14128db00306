"""Counters on their own (fake clock) and their files."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import orjson

from ironfs.catalog import attach_stats
from ironfs.ledger import Ledger, Limits
from ironfs.state import save_stats, stats_json
from ironfs.stats import DELETE, GET, PUT, StatsBook, month_of
from ironfs.store import StateStore


class Clock:
    def __init__(self, when: datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now


def ts(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_month_of() -> None:
    assert month_of(ts(2026, 11, 30, 23, 59, 59).timestamp()) == ("2026-11", ts(2026, 12, 1).timestamp())
    assert month_of(ts(2026, 12, 31, 12).timestamp()) == ("2026-12", ts(2027, 1, 1).timestamp())


def test_month_boundary_closes_out_the_old_month() -> None:
    clock = Clock(ts(2026, 11, 30, 23, 59, 59))
    book = StatsBook(clock)
    bucket = Ledger().add(b"b", Limits())
    book.attach(bucket)
    book.add(bucket, PUT)
    book.add(bucket, GET, 2)
    clock.now = ts(2026, 12, 1).timestamp()  # the very first second of December
    book.add(bucket, DELETE)
    (closed_bucket, november), = book.take_closed()
    assert closed_bucket is bucket and november.month == "2026-11"
    assert november.as_dict()["put_count"] == 1 and november.as_dict()["delete_count"] == 0
    december = book.current(bucket)
    assert december.month == "2026-12" and december.as_dict()["delete_count"] == 1
    assert december.as_dict()["put_count"] == 0


def test_an_untouched_month_is_not_queued() -> None:
    clock = Clock(ts(2026, 11, 15))
    book = StatsBook(clock)
    bucket = Ledger().add(b"b", Limits())
    book.attach(bucket)
    clock.now = ts(2027, 1, 2).timestamp()
    book.current(bucket)
    assert book.take_closed() == []


def test_flush_writes_each_month_to_its_own_file(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    (tmp_path / "b").mkdir()
    clock = Clock(ts(2026, 11, 30, 23, 0))
    ledger, book = Ledger(), StatsBook(clock)
    bucket = ledger.add(b"b", Limits())
    book.attach(bucket)
    store = StateStore(root, ledger, book)
    book.add(bucket, PUT, 3)
    clock.now = ts(2026, 12, 1, 0, 30).timestamp()
    book.add(bucket, PUT, 1)
    assert store.flush_now()
    nov = orjson.loads((tmp_path / "b" / ".stats" / "2026-11.json").read_bytes())
    dec = orjson.loads((tmp_path / "b" / ".stats" / "2026-12.json").read_bytes())
    assert (nov["put_count"], dec["put_count"]) == (3, 1)
    assert {"get_count", "put_count", "delete_count", "list_count", "head_count",
            "multipart_count", "last_updated", "bytes_written", "bytes_read",
            "quota_rejections"} <= set(dec)


def test_flush_never_recreates_a_deleted_bucket(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    (tmp_path / "b").mkdir()
    ledger, book = Ledger(), StatsBook()
    bucket = ledger.add(b"b", Limits())
    book.attach(bucket)
    store = StateStore(root, ledger, book)
    book.add(bucket, PUT)
    items = store.snapshot()
    os.rmdir(tmp_path / "b")  # DeleteBucket won the race against this flush
    failed = store.write(items)
    assert len(failed) == 3 and not (tmp_path / "b").exists()  # .ironfs-limits, .quota, .stats


def test_counters_continue_after_restart_and_corrupt_file_restarts(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    (tmp_path / "b").mkdir()
    book = StatsBook()
    month = month_of(book.clock())[0]
    save_stats(root, b"b", month, stats_json({"put_count": 7, "get_count": 2}, ts(2026, 1, 1)))
    bucket = Ledger().add(b"b", Limits())
    attach_stats(root, book, bucket)
    assert book.current(bucket).as_dict()["put_count"] == 7
    (tmp_path / "b" / ".stats" / f"{month}.json").write_bytes(b'{"put_count": "seven"}')
    attach_stats(root, book, bucket)
    assert book.current(bucket).as_dict()["put_count"] == 0
    kept = [p.name for p in (tmp_path / "b" / ".stats").iterdir() if ".corrupt-" in p.name]
    assert len(kept) == 1


def test_stats_command_offline(tmp_path: Path) -> None:
    import subprocess
    import sys
    root = os.fsencode(tmp_path)
    (tmp_path / "b").mkdir()
    save_stats(root, b"b", "2026-10", stats_json({"put_count": 4}, ts(2026, 10, 31)))
    r = subprocess.run([sys.executable, "-m", "ironfs", "stats", str(tmp_path / "b"),
                        "--month", "2026-10", "--json"], capture_output=True, text=True)
    assert r.returncode == 0 and orjson.loads(r.stdout)["put_count"] == 4
    (tmp_path / "b" / ".stats" / "2026-10.json").write_bytes(b"junk")
    r = subprocess.run([sys.executable, "-m", "ironfs", "stats", str(tmp_path / "b"),
                        "--month", "2026-10"], capture_output=True, text=True)
    assert r.returncode == 1 and "corrupt" in r.stderr and len(r.stderr.splitlines()) == 1
