"""The benchmark must never rot: --quick runs every workload and yields a figure
for each (how fast is not checked: CI machines are shared and noisy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from ironfs.bench import rotated
from tests.mounting import require_fuse

WORKLOADS = {"seq write + fsync", "seq read, cold", "create 4 KiB files", "stat", "read 4 KiB files",
             "unlink", "rename", "PUT pattern 4 KiB", "PUT pattern 1 MiB", "PUT pattern 4 KiB, 4 writers",
             "S3 PUT 4 KiB", "S3 GET 4 KiB", "S3 PUT 64 MiB, MiB/s", "S3 GET 64 MiB, MiB/s"}


def test_quick_bench_produces_every_figure(tmp_path: Path) -> None:
    require_fuse()
    r = subprocess.run([sys.executable, "-m", "ironfs", "bench", str(tmp_path), "--quick", "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    report = orjson.loads(r.stdout)
    rows = {w["name"]: w for w in report["workloads"]}
    assert set(rows) == WORKLOADS
    for w in rows.values():
        assert w["raw"] > 0 and w["ironfs"] > 0 and w["ratio"] > 0, w
    micro = report["micro"]
    assert len(micro) == 6 and all(v > 0 for v in micro.values())
    beside = report["beside_a_scan"]
    assert len(beside) == 4 and beside["requests answered meanwhile"] > 2
    requests = report["fuse_requests"]  # per S3 request, by FUSE operation
    assert set(requests) == {"S3 PUT 4 KiB", "S3 GET 4 KiB", "S3 PUT 64 MiB", "S3 GET 64 MiB"}
    assert requests["S3 PUT 4 KiB"]["write"] == 1 and requests["S3 GET 4 KiB"]["read"] >= 1
    assert list(tmp_path.iterdir()) == []  # the scratch directory is gone


def test_rounds_must_be_positive(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "ironfs", "bench", str(tmp_path), "--rounds", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "--rounds must be at least 1" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_every_side_leads_a_round_in_turn() -> None:
    sides = [("raw", Path("r")), ("ironfs", Path("i")), ("cluster", Path("c"))]
    firsts = [rotated(sides, k)[0][0] for k in range(3)]
    assert firsts == ["raw", "ironfs", "cluster"]
    assert all(sorted(rotated(sides, k)) == sorted(sides) for k in range(5))
