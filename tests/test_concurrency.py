"""Concurrency (issue 7, part 3): many client processes near the limit.

Eight processes write, append, truncate, rename (within and across buckets)
and delete at once.  While they run, a sampler reads the ledger through the
xattrs as often as it can: usage must never be seen above max_bytes +
grace_bytes.  Each worker checks that every refusal was ENOSPC and left its
file as it was.  At the end the ledger equals a scan.
``IRONFS_CHURN_SECONDS`` sets how long the clients run."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.mounting import assert_invariant, start_mount

MiB = 1 << 20
WORKERS = 8
SECONDS = float(os.environ.get("IRONFS_CHURN_SECONDS", "6"))


def used(path: Path, attr: bytes = b"user.ironfs.used_bytes") -> int:
    return int(os.getxattr(path, attr))


def account_used(mnt: Path, name: str) -> int:
    return json.loads(os.getxattr(mnt, f"user.ironfs.account.{name}".encode()))["used_bytes"]


@pytest.mark.parametrize("binding, cache", [("bucket", None), ("account", None), ("account", 1)])
def test_eight_clients_never_push_usage_past_the_limit(tmp_path: Path, binding: str,
                                                       cache: int | None) -> None:
    """With ``cache=1`` a bucket idle for one flush is evicted and reloaded while
    the clients keep working (a few times per run: both are busy)."""
    options = ["flush_interval_ms=100"] + ([f"bucket_cache={cache}"] if cache else [])
    m = start_mount(tmp_path / "backing", tmp_path / "s3", options=options,
                    env={"BUCKET_QUOTA_BYTES": str(2 * MiB)})
    buckets = ["c1", "c2"]
    try:
        for b in buckets:
            (m.mnt / b).mkdir()
        os.setxattr(m.mnt / "c1", b"user.ironfs.grace_bytes", b"256KiB")
        limits = {"c1": 2 * MiB + 256 * 1024, "c2": 2 * MiB}
        account_limit = 3 * MiB
        if binding == "account":
            os.setxattr(m.mnt, b"user.ironfs.account.acme",
                        json.dumps({"max_bytes": account_limit, "buckets": buckets}).encode())
        peaks = {b: 0 for b in [*buckets, "acme"]}
        samples = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal samples
            while not stop.is_set():
                for b in buckets:
                    peaks[b] = max(peaks[b], used(m.mnt / b))
                if binding == "account":
                    peaks["acme"] = max(peaks["acme"], account_used(m.mnt, "acme"))
                samples += 1

        sampler = threading.Thread(target=sample)
        sampler.start()
        rng = random.Random()
        procs = []
        try:
            for w in range(WORKERS):
                out = tmp_path / f"worker-{w}.json"
                procs.append((out, subprocess.Popen(
                    [sys.executable, "-m", "tests.workload", "churn", str(m.mnt), ",".join(buckets),
                     str(w), str(rng.randrange(1 << 30)), str(SECONDS), str(out)],
                    cwd=Path(__file__).parent.parent, stderr=subprocess.PIPE)))
            for _, p in procs:
                _, err = p.communicate(timeout=SECONDS + 120)
                assert p.returncode == 0, err.decode()
        finally:
            for _, p in procs:
                if p.poll() is None:
                    p.kill()
            stop.set()
            sampler.join()
        results = [json.loads(out.read_text()) for out, _ in procs]
        unexpected = [u for r in results for u in r["unexpected"]]
        assert not unexpected, unexpected[:5]
        ops = sum(r["ops"] for r in results)
        refused = sum(r["refused"] for r in results)
        assert refused > 0, "the clients never reached the limit: the test proved nothing"
        for b in buckets:
            assert peaks[b] <= limits[b], f"{b} seen at {peaks[b]} bytes, limit {limits[b]}"
        if binding == "account":
            assert 0 < peaks["acme"] <= account_limit
            assert account_used(m.mnt, "acme") == sum(used(m.mnt / b) for b in buckets)
        assert_invariant(m, *buckets)
        print(f"{binding}: {WORKERS} processes, {ops} operations, {refused} refused, "
              f"{samples} samples, peaks {peaks}")
    finally:
        m.stop()
