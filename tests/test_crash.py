"""Crash safety (issue 7, part 2): SIGKILL the daemon at random points of a
busy client, remount, and check the invariant, the state files and the data.

``IRONFS_KILL_ROUNDS`` sets the number of kill points (CI runs the default)."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from ironfs.rules import STATE_PREFIX
from tests.mounting import clear_mount, ledger, scan, start_mount
from tests.workload import BUCKETS, replay

ROUNDS = int(os.environ.get("IRONFS_KILL_ROUNDS", "8"))
QUOTA = 3 << 20


def state_files(backing: Path) -> list[Path]:
    found = list((backing / ".ironfs").glob("*.json"))
    for bucket in BUCKETS:
        found += [backing / bucket / ".quota"] + list((backing / bucket / ".stats").glob("*.json"))
    # Temp files of an interrupted write (.ironfs-tmp*) are not state files.
    return [p for p in found if p.exists() and not p.name.startswith(STATE_PREFIX.decode() + "-tmp")]


def assert_state_whole(backing: Path) -> None:
    """Every state file parses: a kill never leaves a torn one behind."""
    for path in state_files(backing):
        doc = orjson.loads(path.read_bytes())
        assert isinstance(doc, dict), path


def assert_data_intact(backing: Path, journal: Path) -> int:
    known = replay(journal)
    for name, want in known.items():
        path = backing / name
        got = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
        assert got == want, f"{name}: {got} on disk, {want} when the client last saw it"
    return len(known)


def test_sigkill_at_random_points_loses_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("IRONFS_KILL_SEED", random.randrange(1 << 32)))
    rng = random.Random(seed)
    backing, mnt = tmp_path / "backing", tmp_path / "s3"
    env = {"BUCKET_QUOTA_BYTES": str(QUOTA)}
    m = start_mount(backing, mnt, options=["flush_interval_ms=20"], env=env)
    for bucket in BUCKETS:
        (mnt / bucket).mkdir()
    checked = hits = 0
    try:
        for round_no in range(ROUNDS):
            journal = tmp_path / f"journal-{round_no}"
            client = subprocess.Popen([sys.executable, "-m", "tests.workload", "crash", str(mnt),
                                       str(journal), str(rng.randrange(1 << 30))],
                                      cwd=Path(__file__).parent.parent, stderr=subprocess.PIPE)
            try:
                time.sleep(rng.uniform(0.3, 1.5))
                m.proc.kill()
                m.proc.wait(10)
                _, err = client.communicate(timeout=30)
                assert client.returncode == 0, f"seed {seed}: client failed: {err.decode()}"
            finally:
                if client.poll() is None:
                    client.kill()
                clear_mount(mnt)
            assert_state_whole(backing)
            checked += assert_data_intact(backing, journal)
            unfinished = list(backing.glob(f"*/{STATE_PREFIX.decode()}-tmp*"))
            cleaned = m.log_text().count("a state write the last crash interrupted")
            rescans = m.log_text().count("rescanning every bucket")
            m = start_mount(backing, mnt, options=["flush_interval_ms=20"], env=env)
            assert m.log_text().count("rescanning every bucket") == rescans + 1
            if unfinished:  # killed in the middle of a state write: cleaned at start
                hits += 1
                assert m.log_text().count("a state write the last crash interrupted") > cleaned
            for bucket in BUCKETS:
                assert ledger(mnt, bucket) == scan(backing, bucket), f"seed {seed}, round {round_no}"
                assert ledger(mnt, bucket)[0] <= QUOTA
    finally:
        m.stop()
    assert_state_whole(backing)
    assert checked > ROUNDS, "the client did too little to check anything"
    print(f"kill points: {ROUNDS}, mid state write: {hits}, objects checked: {checked}, seed {seed}")


def _crash_stop(backing: Path, mnt: Path) -> None:
    m = start_mount(backing, mnt)
    try:
        (mnt / "b").mkdir()
        (mnt / "b" / "obj").write_bytes(b"o" * 5000)
        time.sleep(0.3)  # flushed once: .quota and .stats exist
    finally:
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(10)
        clear_mount(mnt)


MONTH = time.strftime("%Y-%m", time.gmtime())
TORN = {
    "tmp-quota": ("b/.ironfs-tmp.quota", b'{"max_size_bytes": 1, "current_us'),
    "tmp-stats": (f"b/.stats/.ironfs-tmp{MONTH}.json", b'{"put_co'),
    "empty-quota": ("b/.quota", b""),
    "garbage-quota": ("b/.quota", os.urandom(64)),
    "types-quota": ("b/.quota", b'{"max_size_bytes": [], "current_usage_bytes": "1",'
                                b' "object_count": 1}'),
    "negative-quota": ("b/.quota", b'{"max_size_bytes": 10, "current_usage_bytes": -1,'
                                   b' "object_count": -5}'),
    "empty-stats": (f"b/.stats/{MONTH}.json", b""),
    "garbage-stats": (f"b/.stats/{MONTH}.json", b"\x00\xff garbage"),
    "types-stats": (f"b/.stats/{MONTH}.json", b'{"put_count": "many", "get_count": 1.5}'),
    "negative-stats": (f"b/.stats/{MONTH}.json", b'{"put_count": -3}'),
    "truncated-accounts": (".ironfs/accounts.json", b'{"accounts": {"acme": {"max_si'),
}


@pytest.mark.parametrize("kind", sorted(TORN))
def test_torn_state_left_in_place_is_set_aside(tmp_path: Path, kind: str) -> None:
    backing, mnt = tmp_path / "backing", tmp_path / "s3"
    _crash_stop(backing, mnt)
    rel, content = TORN[kind]
    (backing / rel).parent.mkdir(parents=True, exist_ok=True)
    (backing / rel).write_bytes(content)
    m = start_mount(backing, mnt, options=["flush_interval_ms=50"])
    try:
        assert ledger(mnt, "b") == scan(backing, "b") == (5000, 1)
        (mnt / "b" / "obj2").write_bytes(b"p" * 10)
        time.sleep(0.3)
        text = m.log_text()
        if kind.startswith("tmp-"):
            assert "a state write the last crash interrupted" in text
            assert not (backing / rel).exists()
        else:
            assert "is corrupt" in text
            kept = [p for p in (backing / rel).parent.iterdir() if "corrupt" in p.name]
            assert kept and kept[0].read_bytes() == content
    finally:
        m.stop()
    assert_state_whole(backing)
    quota = orjson.loads((backing / "b" / ".quota").read_bytes())
    assert (quota["current_usage_bytes"], quota["object_count"]) == (5010, 2)
    stats = orjson.loads((backing / "b" / ".stats" / f"{MONTH}.json").read_bytes())
    assert stats["put_count"] >= 1 and all(isinstance(v, int) and v >= 0 for v in stats.values()
                                           if not isinstance(v, str))
