from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.mounting import Mount, start_mount

settings.register_profile("ci", max_examples=200, deadline=None)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

MiB = 1 << 20


@pytest.fixture(scope="module")
def mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """One real mount per test module: buckets default to a 1 MiB quota."""
    base = tmp_path_factory.mktemp("mount")
    m = start_mount(base / "backing", base / "s3",
                    options=["flush_interval_ms=200"],
                    env={"BUCKET_QUOTA_BYTES": str(MiB)})
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def bucket(mount: Mount) -> str:
    """A fresh bucket on the shared mount, made through the mount (mkdir)."""
    name = "b-" + uuid.uuid4().hex[:8]
    os.mkdir(mount.mnt / name)
    return name


@pytest.fixture
def bpath(mount: Mount, bucket: str) -> Path:
    return mount.mnt / bucket
