"""Running a real ironfs in a subprocess for tests, and never leaving it behind."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ironfs.mountinfo import is_fuse_mount
from ironfs.rules import PROFILES
from ironfs.scanner import Usage, scan_tree


def unavailable(msg: str) -> None:
    """Skip on a developer machine; fail in CI, where everything must run."""
    if os.environ.get("CI"):
        pytest.fail(msg + " (CI must run every test)")
    pytest.skip(msg)


def require_fuse() -> None:
    """Skip without FUSE on a developer machine; fail in CI, where it must work."""
    missing = [what for what, ok in (("/dev/fuse", os.path.exists("/dev/fuse")),
                                     ("fusermount3", shutil.which("fusermount3")))
               if not ok]
    if missing:
        unavailable(f"FUSE is not available here (missing: {', '.join(missing)})")


class Mount:
    def __init__(self, backing: Path, mnt: Path, proc: subprocess.Popen, log: Path) -> None:
        self.backing = backing
        self.mnt = mnt
        self.proc = proc
        self.log = log

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Stop the daemon; returns its exit status.  Never leaves a mount behind."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        finally:
            if sig == signal.SIGTERM:
                clear_mount(self.mnt)
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def clear_mount(mnt: Path) -> None:
    if is_fuse_mount(os.fsencode(mnt)):
        subprocess.run(["fusermount3", "-uz", str(mnt)], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_mount(backing: Path, mnt: Path, options: list[str] | None = None,
                env: dict[str, str] | None = None, timeout: float = 30.0) -> Mount:
    require_fuse()
    backing.mkdir(parents=True, exist_ok=True)
    mnt.mkdir(parents=True, exist_ok=True)
    log = mnt.parent / f"{mnt.name}.log"
    cmd = [sys.executable, "-m", "ironfs", str(backing), str(mnt), "--log-level", "debug"]
    for opt in options or []:
        cmd += ["-o", opt]
    full_env = {**os.environ, **(env or {})}
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=full_env)
    m = Mount(backing, mnt, proc, log)
    deadline = time.monotonic() + timeout
    while not is_fuse_mount(os.fsencode(mnt)):
        if proc.poll() is not None:
            raise RuntimeError(f"ironfs exited with {proc.returncode}:\n{m.log_text()}")
        if time.monotonic() > deadline:
            m.stop()
            raise RuntimeError(f"ironfs did not mount in {timeout}s:\n{m.log_text()}")
        time.sleep(0.05)
    return m


def ledger(mnt: Path, bucket: str | bytes) -> tuple[int, int]:
    """(used_bytes, objects) as the live ledger sees them, through the xattrs."""
    path = os.path.join(os.fsencode(mnt), os.fsencode(bucket))
    used = int(os.getxattr(path, b"user.ironfs.used_bytes"))
    objects = int(os.getxattr(path, b"user.ironfs.objects"))
    return used, objects


def scan(backing: Path, bucket: str | bytes, profile: str = "generic") -> tuple[int, int]:
    usage: Usage = scan_tree(os.path.join(os.fsencode(backing), os.fsencode(bucket)),
                             PROFILES[profile])
    return usage.used_bytes, usage.objects


def assert_invariant(m: Mount, *buckets: str | bytes) -> None:
    """DESIGN.md's invariant: the live ledger equals a fresh scan."""
    for bucket in buckets:
        assert ledger(m.mnt, bucket) == scan(m.backing, bucket), f"drift in bucket {bucket!r}"


def expect_errno(code: int, fn, *args, **kwargs) -> None:
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    assert info.value.errno == code, (
        f"expected {errno.errorcode[code]}, got {errno.errorcode.get(info.value.errno)}")


def quota_file(backing: Path, bucket: str) -> dict:
    """The bucket's .quota as written on the backing side."""
    return orjson.loads((backing / bucket / ".quota").read_bytes())


def wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def as_user(fn: Callable[[], None], cwd: Path, uid: int = 65534) -> int:
    """Run *fn* in *cwd* in a child with *uid*; returns the errno it raised (0: none)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.chdir(cwd)  # pytest's temp root is 0700: enter before dropping root
            os.setgid(uid)
            os.setuid(uid)
            fn()
            os._exit(0)
        except OSError as e:
            os._exit(e.errno or 255)
        except BaseException:
            os._exit(255)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def reconcile_via_xattr(mnt: Path, request: str, timeout: float = 60.0) -> dict:
    """Ask the mount for a reconcile and wait for its report (the scans run
    beside the requests, so the attribute says "running" until then)."""
    os.setxattr(mnt, b"user.ironfs.reconcile", request.encode())
    deadline = time.monotonic() + timeout
    while True:
        report = orjson.loads(os.getxattr(mnt, b"user.ironfs.reconcile"))
        if report.get("state") != "running":
            return report
        assert time.monotonic() < deadline, "reconcile did not finish"
        time.sleep(0.05)
