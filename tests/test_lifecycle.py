"""Starting, stopping, crashing and refusing to start: each with its own mount."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from ironfs.mountinfo import is_fuse_mount
from ironfs.rules import is_bucket_state
from tests.mounting import clear_mount, ledger, quota_file, require_fuse, scan, start_mount, wait_for

MiB = 1 << 20


def populate(root: Path) -> None:
    (root / "alpha" / "dir").mkdir(parents=True)
    (root / "alpha" / "dir" / "obj").write_bytes(b"a" * 3000)
    (root / "alpha" / ".hidden").write_bytes(b"h" * 500)
    (root / "beta").mkdir()
    (root / "beta" / "obj").write_bytes(b"b" * 7000)


def test_clean_stop_flushes_and_leaves_marker(tmp_path: Path) -> None:
    m = start_mount(tmp_path / "backing", tmp_path / "s3")
    try:
        (m.mnt / "b").mkdir()
        (m.mnt / "b" / "obj").write_bytes(b"x" * 12345)
        (m.mnt / "b" / ".part").write_bytes(b"x" * 5)
    finally:
        assert m.stop() == 0
    assert not is_fuse_mount(os.fsencode(m.mnt))
    q = quota_file(m.backing, "b")
    assert (q["current_usage_bytes"], q["object_count"]) == (12350, 1)
    assert q["max_size_bytes"] == 5 * 1024**3
    assert set(q) >= {"max_size_bytes", "current_usage_bytes", "object_count", "last_updated",
                      "max_objects", "grace_bytes", "soft_bytes", "format"}
    assert (m.backing / ".ironfs" / "clean").exists()


def test_a_mountpoint_with_a_space_stops_cleanly_and_is_seen_as_mounted(tmp_path: Path) -> None:
    mnt = tmp_path / "s3 with space\tand tab"
    m = start_mount(tmp_path / "backing", mnt)
    try:
        (m.mnt / "b").mkdir()
        (tmp_path / "other").mkdir()
        second = subprocess.run([sys.executable, "-m", "ironfs", str(tmp_path / "other"), str(mnt)],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode != 0 and "already a FUSE mount" in second.stderr
    finally:
        assert m.stop() == 0
    assert not is_fuse_mount(os.fsencode(mnt))  # unmounted, not left dead
    assert (m.backing / ".ironfs" / "clean").exists()


def test_external_umount_is_a_clean_stop(tmp_path: Path) -> None:
    m = start_mount(tmp_path / "backing", tmp_path / "s3")
    try:
        (m.mnt / "b").mkdir()
        subprocess.run(["umount", str(m.mnt)], check=True)
        assert m.proc.wait(20) == 0
    finally:
        m.stop()
    assert (m.backing / ".ironfs" / "clean").exists()
    assert (m.backing / "b" / ".quota").exists()


def test_sigkill_leaves_dead_mount_and_restart_rescans(tmp_path: Path) -> None:
    m = start_mount(tmp_path / "backing", tmp_path / "s3")
    try:
        (m.mnt / "b").mkdir()
        (m.mnt / "b" / "obj").write_bytes(b"x" * 4096)
        time.sleep(0.1)
        m.proc.kill()
        m.proc.wait(10)
        with pytest.raises(OSError) as info:
            os.stat(m.mnt / "b")
        assert info.value.errno == errno.ENOTCONN  # dead, never unmounted
    finally:
        clear_mount(m.mnt)
    # Writes after the last flush are lost from .quota; make that explicit.
    (m.backing / "b" / "late").write_bytes(b"y" * 999)
    m2 = start_mount(m.backing, m.mnt)
    try:
        assert ledger(m2.mnt, "b") == scan(m2.backing, "b") == (5095, 2)
        assert "rescanning every bucket" in m2.log_text()
    finally:
        m2.stop()


def test_trusts_quota_after_clean_stop(tmp_path: Path) -> None:
    backing = tmp_path / "backing"
    populate(backing)
    start_mount(backing, tmp_path / "s3").stop()
    q = quota_file(backing, "alpha")
    q["current_usage_bytes"] = 1  # an edit behind its back: trusted after a clean stop
    (backing / "alpha" / ".quota").write_bytes(orjson.dumps(q))
    m = start_mount(backing, tmp_path / "s3")
    try:
        assert ledger(m.mnt, "alpha") == (1, 1)
    finally:
        m.stop()
    m = start_mount(backing, tmp_path / "s3", options=["rescan"])
    try:
        assert ledger(m.mnt, "alpha") == scan(backing, "alpha") == (3500, 1)
    finally:
        m.stop()


@pytest.mark.parametrize("garbage", [b"{not json", b"[]", b'{"max_size_bytes": "big"}',
                                     b'{"max_size_bytes": 1, "current_usage_bytes": -4, '
                                     b'"object_count": 0}', b"\xff\xfe"])
def test_corrupt_quota_is_set_aside_and_regenerated(tmp_path: Path, garbage: bytes) -> None:
    backing = tmp_path / "backing"
    populate(backing)
    start_mount(backing, tmp_path / "s3").stop()  # a clean marker: .quota would be trusted
    (backing / "beta" / ".quota").write_bytes(garbage)
    m = start_mount(backing, tmp_path / "s3")
    try:
        assert ledger(m.mnt, "beta") == scan(backing, "beta") == (7000, 1)
        assert ledger(m.mnt, "alpha") == (3500, 1)
        assert ".quota is corrupt" in m.log_text()
    finally:
        m.stop()
    kept = [p.name for p in (backing / "beta").iterdir() if p.name.startswith(".ironfs-corrupt")]
    assert len(kept) == 1 and (backing / "beta" / kept[0]).read_bytes() == garbage
    assert quota_file(backing, "beta")["current_usage_bytes"] == 7000


def test_limits_survive_a_rescan(tmp_path: Path) -> None:
    backing = tmp_path / "backing"
    populate(backing)
    m = start_mount(backing, tmp_path / "s3")
    try:
        os.setxattr(m.mnt / "beta", "user.ironfs.max_bytes", b"8000")
        time.sleep(1.5)
        m.proc.kill()
        m.proc.wait(10)
    finally:
        clear_mount(m.mnt)
    m = start_mount(backing, tmp_path / "s3")
    try:
        assert os.getxattr(m.mnt / "beta", "user.ironfs.max_bytes") == b"8000"
    finally:
        m.stop()


def limits_set_then_stopped(tmp_path: Path, **limits: bytes) -> Path:
    """A populated backing root whose bucket beta got *limits* through a mount,
    then stopped cleanly; returns the backing root."""
    backing = tmp_path / "backing"
    populate(backing)
    m = start_mount(backing, tmp_path / "s3")
    try:
        for field, value in limits.items():
            os.setxattr(m.mnt / "beta", f"user.ironfs.{field}", value)
    finally:
        m.stop()
    return backing


@pytest.mark.parametrize("damage", ["corrupt", "missing", "crash"])
def test_an_administrators_limit_survives_the_loss_of_quota(tmp_path: Path, damage: str) -> None:
    backing = limits_set_then_stopped(tmp_path, max_bytes=b"8000", max_objects=b"5")
    if damage == "missing":
        (backing / "beta" / ".quota").unlink()
    else:
        (backing / "beta" / ".quota").write_bytes(b"{torn")
    if damage == "crash":
        (backing / ".ironfs" / "clean").unlink()  # as after a SIGKILL: everything is rescanned
    m = start_mount(backing, tmp_path / "s3")
    try:
        assert os.getxattr(m.mnt / "beta", "user.ironfs.max_bytes") == b"8000"
        assert os.getxattr(m.mnt / "beta", "user.ironfs.max_objects") == b"5"
        assert ledger(m.mnt, "beta") == scan(backing, "beta")
        if damage != "missing":
            assert "limits recovered from .ironfs-limits" in m.log_text()
    finally:
        m.stop()
    assert quota_file(backing, "beta")["max_size_bytes"] == 8000


def test_a_limit_that_cannot_be_recovered_is_an_error(tmp_path: Path) -> None:
    backing = limits_set_then_stopped(tmp_path, max_bytes=b"8000")
    (backing / "beta" / ".quota").write_bytes(b"{torn")
    (backing / "beta" / ".ironfs-limits").write_bytes(b"")
    m = start_mount(backing, tmp_path / "s3", options=["bucket_quota_bytes=1GiB"])
    try:
        assert os.getxattr(m.mnt / "beta", "user.ironfs.max_bytes") == str(1 << 30).encode()
        errors = [line for line in m.log_text().splitlines() if "cannot be recovered" in line]
        assert len(errors) == 1 and "ERROR" in errors[0]
    finally:
        m.stop()


@pytest.mark.parametrize("change", ["append", "new file", "new dir", "none"])
def test_changes_made_while_stopped_are_found_and_rescanned(tmp_path: Path, change: str) -> None:
    backing = tmp_path / "backing"
    populate(backing)
    start_mount(backing, tmp_path / "s3").stop()  # a clean stop: .quota will be trusted
    time.sleep(0.05)
    if change == "append":
        with open(backing / "alpha" / "dir" / "obj", "ab") as f:
            f.write(b"+" * 111)
    elif change == "new file":
        (backing / "beta" / "dropped-in").write_bytes(b"n" * 222)
    elif change == "new dir":
        (backing / "beta" / "restored").mkdir()
        (backing / "beta" / "restored" / "obj").write_bytes(b"r" * 333)
    m = start_mount(backing, tmp_path / "s3")
    try:
        wait_for(lambda: "start check:" in m.log_text())
        for bucket in ("alpha", "beta"):
            wait_for(lambda b=bucket: ledger(m.mnt, b) == scan(backing, b))
        rescans = m.log_text().count("was changed while ironfs was stopped")
        assert rescans == (0 if change == "none" else 1)
    finally:
        m.stop()


def test_second_mount_on_same_backing_is_refused(tmp_path: Path) -> None:
    m = start_mount(tmp_path / "backing", tmp_path / "s3")
    try:
        (tmp_path / "s3b").mkdir()
        r = run_cli(str(m.backing), str(tmp_path / "s3b"))
        assert r.returncode == 1
        assert "already served by ironfs" in r.stderr
        assert not is_fuse_mount(os.fsencode(tmp_path / "s3b"))
    finally:
        m.stop()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ironfs", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args, message", [
    (["-o", "bogus"], "unknown mount option 'bogus'"),
    (["-o", "quota_errno=EIO"], "quota_errno must be ENOSPC or EDQUOT"),
    (["-o", "profile=minio"], "unknown profile 'minio'"),
    (["-o", "bucket_quota_bytes=lots"], "bucket_quota_bytes: not a size"),
])
def test_bad_options_refused_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    require_fuse()
    (tmp_path / "b").mkdir()
    (tmp_path / "m").mkdir()
    r = run_cli(str(tmp_path / "b"), str(tmp_path / "m"), *args)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"ironfs: {r.stderr.strip()[8:]}"]
    assert message in r.stderr
    assert not is_fuse_mount(os.fsencode(tmp_path / "m"))


def test_bad_environment_refused(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "m").mkdir()
    r = run_cli(str(tmp_path / "b"), str(tmp_path / "m"), env={"QUOTA_FLUSH_INTERVAL_MS": "soon"})
    assert r.returncode == 1 and "QUOTA_FLUSH_INTERVAL_MS" in r.stderr


def test_missing_backing_directory_refused(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    r = run_cli(str(tmp_path / "nope"), str(tmp_path / "m"))
    assert r.returncode == 1
    assert "does not exist" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_mountpoint_inside_backing_refused(tmp_path: Path) -> None:
    (tmp_path / "b" / "m").mkdir(parents=True)
    r = run_cli(str(tmp_path / "b"), str(tmp_path / "b" / "m"))
    assert r.returncode == 1 and "must not be" in r.stderr


def test_edquot_option(tmp_path: Path) -> None:
    m = start_mount(tmp_path / "backing", tmp_path / "s3", options=["quota_errno=EDQUOT"],
                    env={"BUCKET_QUOTA_BYTES": "1000"})
    try:
        (m.mnt / "b").mkdir()
        with pytest.raises(OSError) as info:
            (m.mnt / "b" / "f").write_bytes(b"x" * 1001)
        assert info.value.errno == errno.EDQUOT
    finally:
        m.stop()


def test_noquota_tracks_but_never_refuses(tmp_path: Path) -> None:
    m = start_mount(tmp_path / "backing", tmp_path / "s3", options=["noquota"],
                    env={"BUCKET_QUOTA_BYTES": "1000"})
    try:
        (m.mnt / "b").mkdir()
        (m.mnt / "b" / "f").write_bytes(b"x" * 5000)
        assert ledger(m.mnt, "b") == (5000, 1)
    finally:
        m.stop()


def test_sigint_is_a_clean_stop(tmp_path: Path) -> None:
    m = start_mount(tmp_path / "backing", tmp_path / "s3")
    try:
        (m.mnt / "b").mkdir()
    finally:
        assert m.stop(signal.SIGINT) == 0
        clear_mount(m.mnt)
    assert (m.backing / ".ironfs" / "clean").exists()


def test_dd_past_a_one_mib_quota(tmp_path: Path) -> None:
    """The issue's acceptance check, literally: dd fails, the file holds at most
    1 MiB, and after unmount .quota equals the sum of the files' st_size."""
    m = start_mount(tmp_path / "backing", tmp_path / "s3", env={"BUCKET_QUOTA_BYTES": "1048576"})
    try:
        (m.mnt / "b").mkdir()
        r = subprocess.run(["dd", "if=/dev/zero", f"of={m.mnt / 'b' / 'f'}", "bs=64k", "count=32"],
                           capture_output=True, text=True)
        assert r.returncode != 0 and "No space left on device" in r.stderr
        assert (m.mnt / "b" / "f").stat().st_size <= MiB
    finally:
        assert m.stop() == 0
    bucket = m.backing / "b"
    files = [p for p in bucket.rglob("*")
             if p.is_file() and not is_bucket_state(os.fsencode(p.relative_to(bucket).parts[0]))]
    assert quota_file(m.backing, "b")["current_usage_bytes"] == sum(p.stat().st_size for p in files)


def test_startup_scan_spreads_over_processes(tmp_path: Path) -> None:
    backing = tmp_path / "backing"
    for b in ("one", "two"):
        for d in ("a", "b", "c/.hidden"):
            (backing / b / d).mkdir(parents=True)
            (backing / b / d / "obj").write_bytes(b"p" * 100)
    m = start_mount(backing, tmp_path / "s3", options=["scan_workers=2"])  # no marker: full scan
    try:
        for b in ("one", "two"):
            assert ledger(m.mnt, b) == scan(backing, b) == (300, 2)
        assert "2 bucket(s) ready (2 scanned" in m.log_text()
    finally:
        m.stop()


def test_stop_with_an_unlinked_file_still_open_gives_its_bytes_back(tmp_path: Path) -> None:
    m = start_mount(tmp_path / "backing", tmp_path / "s3")
    fd = None
    try:
        (m.mnt / "b").mkdir()
        (m.mnt / "b" / "kept").write_bytes(b"k" * 100)
        fd = os.open(m.mnt / "b" / "doomed", os.O_CREAT | os.O_RDWR, 0o644)
        os.write(fd, b"d" * 5000)
        os.unlink(m.mnt / "b" / "doomed")
        assert ledger(m.mnt, "b") == (5100, 1)
        assert m.stop() == 0  # the handle is still open in this process
    finally:
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
        clear_mount(m.mnt)
    q = quota_file(m.backing, "b")
    assert (q["current_usage_bytes"], q["object_count"]) == scan(m.backing, "b") == (100, 1)


def test_stop_right_after_mounting_never_hangs(tmp_path: Path) -> None:
    """SIGTERM while the readiness probe's stat of the mount is still in flight:
    the probe is abandoned, the daemon stops cleanly (it once hung here)."""
    for i in range(10):
        m = start_mount(tmp_path / f"backing{i}", tmp_path / f"s3-{i}")
        try:
            m.proc.send_signal(signal.SIGTERM)
            assert m.proc.wait(10) == 0
        finally:
            m.stop()
        assert not is_fuse_mount(os.fsencode(m.mnt))
