"""How operators run ironfs: systemd units and readiness, mount(8), metrics, logs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ironfs.logs import JournalFormatter
from ironfs.mountinfo import is_fuse_mount
from tests.mounting import clear_mount, ledger, require_fuse, scrape, start_mount, unavailable
from tests.s3server import free_port

REPO = Path(__file__).resolve().parent.parent
UNITS = ["ironfs@.service", "ironfs-reconcile@.service", "ironfs-reconcile@.timer"]


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        unavailable("systemd-analyze is not installed (Debian package systemd)")
    ironfs = shutil.which("ironfs") or str(Path(sys.executable).parent / "ironfs")
    for unit in UNITS:
        text = (REPO / "systemd" / unit).read_text().replace("/usr/local/bin/ironfs", ironfs)
        (tmp_path / unit).write_text(text)
        (tmp_path / unit.replace("@.", "@s3.")).symlink_to(tmp_path / unit)
    instances = [str(tmp_path / u.replace("@.", "@s3.")) for u in UNITS]
    r = subprocess.run([analyze, "verify", "--man=no", *instances], capture_output=True, text=True,
                       env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"})
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_readiness_then_stopping_over_notify_socket(tmp_path: Path) -> None:
    require_fuse()
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(30)
        m = start_mount(tmp_path / "backing", tmp_path / "s3", env={"NOTIFY_SOCKET": address})
        try:
            ready = sock.recv(4096).decode().split("\n")
            assert "READY=1" in ready
            assert os.path.ismount(m.mnt) and is_fuse_mount(os.fsencode(m.mnt))
            m.proc.send_signal(signal.SIGTERM)
            assert "STOPPING=1" in sock.recv(4096).decode().split("\n")
            assert m.proc.wait(20) == 0
        finally:
            m.stop()


def test_mount_helper_and_fstab(tmp_path: Path) -> None:
    require_fuse()
    helper = Path("/sbin/mount.fuse.ironfs")
    if os.geteuid() != 0 or helper.exists():
        unavailable("needs root and no installed /sbin/mount.fuse.ironfs")
    backing, mnt = tmp_path / "backing", tmp_path / "s3"
    backing.mkdir()
    mnt.mkdir()
    script = shutil.which("mount.fuse.ironfs") or str(Path(sys.executable).parent / "mount.fuse.ironfs")
    helper.symlink_to(script)
    try:
        log = tmp_path / "ironfs.log"
        r = subprocess.run(["mount", "-t", "fuse.ironfs", str(backing), str(mnt), "-o",
                            f"profile=rclone,log_file={log}"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        (mnt / "bucket").mkdir()
        assert ledger(mnt, "bucket") == (0, 0)
        subprocess.run(["umount", str(mnt)], check=True)
        _wait_for(lambda: "unmounted cleanly" in log.read_text())
        bad = subprocess.run(["mount", "-t", "fuse.ironfs", str(backing), str(mnt), "-o", "bogus"],
                             capture_output=True, text=True)
        assert bad.returncode == 32 and "unknown mount option 'bogus'" in bad.stderr
        fstab = tmp_path / "fstab"
        fstab.write_text(f"{backing} {mnt} fuse.ironfs defaults,_netdev,log_file={log} 0 0\n")
        subprocess.run(["mount", "-T", str(fstab), str(mnt)], check=True)
        assert is_fuse_mount(os.fsencode(mnt))
    finally:
        clear_mount(mnt)
        helper.unlink()


def test_mount_helper_ignores_an_ironfs_directory_in_its_cwd(tmp_path: Path) -> None:
    require_fuse()
    decoy = tmp_path / "checkout"
    (decoy / "ironfs").mkdir(parents=True)
    (decoy / "ironfs" / "__init__.py").write_text("raise ImportError('the decoy was imported')\n")
    backing, mnt, log = tmp_path / "backing", tmp_path / "s3", tmp_path / "ironfs.log"
    backing.mkdir()
    mnt.mkdir()
    script = shutil.which("mount.fuse.ironfs") or str(Path(sys.executable).parent / "mount.fuse.ironfs")
    try:
        r = subprocess.run([script, str(backing), str(mnt), "-o", f"log_file={log}"], cwd=decoy,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert is_fuse_mount(os.fsencode(mnt))
    finally:
        clear_mount(mnt)


def _wait_for(predicate, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_metrics_match_the_ledger(tmp_path: Path) -> None:
    port = free_port()
    textfile = tmp_path / "ironfs.prom"
    m = start_mount(tmp_path / "backing", tmp_path / "s3",
                    options=[f"metrics=127.0.0.1:{port}", f"metrics_file={textfile}",
                             "flush_interval_ms=100"])
    try:
        (m.mnt / "b").mkdir()
        for i in range(3):
            (m.mnt / "b" / f"o{i}").write_bytes(b"m" * (1000 + i))
        os.setxattr(m.mnt / "b", "user.ironfs.max_bytes", b"3003")
        with pytest.raises(OSError):
            (m.mnt / "b" / "o3").write_bytes(b"x")
        os.setxattr(m.mnt, "user.ironfs.account.acme", b'{"buckets": ["b"]}')
        used, objects = ledger(m.mnt, "b")
        _wait_for(lambda: textfile.exists() and 'ironfs_bucket_used_bytes{bucket="b"} 3003.0'
                  in textfile.read_text())  # written after a flush
        got = scrape(f"http://127.0.0.1:{port}/metrics")
        b = (("bucket", "b"),)
        assert got[("ironfs_bucket_used_bytes", b)] == used == 3003
        assert got[("ironfs_bucket_objects", b)] == objects == 4
        assert got[("ironfs_bucket_max_bytes", b)] == 3003
        assert got[("ironfs_bucket_state", (("bucket", "b"), ("state", "hard")))] == 1
        # o3 was created empty before its write was refused: an empty object, a put
        assert got[("ironfs_bucket_operations_total", (("bucket", "b"), ("op", "put")))] == 4
        assert got[("ironfs_bucket_quota_rejections_total", b)] == 1
        assert got[("ironfs_account_used_bytes", (("account", "acme"),))] == 3003
        assert got[("ironfs_last_flush_timestamp_seconds", ())] > 0
        assert textfile.stat().st_mode & 0o777 == 0o644
    finally:
        m.stop()


def test_metrics_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    require_fuse()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "b").mkdir()
        (tmp_path / "m").mkdir()
        r = subprocess.run([sys.executable, "-m", "ironfs", str(tmp_path / "b"), str(tmp_path / "m"),
                            "-o", f"metrics=127.0.0.1:{port}"], capture_output=True, text=True,
                           timeout=60)
    assert r.returncode == 1 and "metrics: cannot listen" in r.stderr
    assert not is_fuse_mount(os.fsencode(tmp_path / "m"))


def test_journald_lines_carry_priorities() -> None:
    fmt = JournalFormatter("%(name)s: %(message)s")
    record = logging.LogRecord("ironfs.fs", logging.WARNING, __file__, 1, "over %s", ("quota",), None)
    assert fmt.format(record) == "<4>ironfs.fs: over quota"
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "a\nb", (), None)
    assert fmt.format(record) == "<3>x: a\n<3>b"


def test_metrics_while_a_reconcile_runs_and_after_it(tmp_path: Path) -> None:
    from ironfs.config import build_config
    from ironfs.control import Control
    from ironfs.ledger import Ledger, Limits
    from ironfs.metrics import LedgerCollector
    from ironfs.stats import StatsBook
    from ironfs.store import StateStore

    cfg = build_config(str(tmp_path), str(tmp_path / "m"), [], {})
    ledger, book = Ledger(), StatsBook()
    ledger.add(b"b", Limits())
    control = Control(cfg, ledger, book, dict)
    collector = LedgerCollector(ledger, StateStore(cfg.backing, ledger, book), control)
    control.last_reconcile = {"state": "running", "started": 1.0}  # what the daemon shows meanwhile
    names = {family.name for family in collector.collect()}
    assert "ironfs_reconcile_drift_bytes" not in names
    control.finished({"state": "done", "buckets": [{"bucket": "b", "drift_bytes": 5, "drift_objects": 1}],
                      "accounts": [], "drift": True, "fixed": False, "seconds": 0.1, "at": 2.0})
    control.last_reconcile = {"state": "running", "started": 3.0}  # the next one: the last report stays
    drift = [f for f in collector.collect() if f.name == "ironfs_reconcile_drift_bytes"]
    assert [s.value for s in drift[0].samples] == [5]


def test_bucket_endpoints_on_the_metrics_listener(tmp_path: Path) -> None:
    port = free_port()
    m = start_mount(tmp_path / "backing", tmp_path / "s3", options=[f"metrics=127.0.0.1:{port}"])
    base = f"http://127.0.0.1:{port}"

    def get(path: str, method: str = "GET") -> tuple[int, dict]:
        request = urllib.request.Request(base + path, method=method, data=b"x" if method != "GET" else None)
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    try:
        (m.mnt / "photos").mkdir()
        (m.mnt / "photos" / "a.jpg").write_bytes(b"j" * 1234)
        os.setxattr(m.mnt / "photos", "user.ironfs.max_bytes", b"10000")
        code, quota = get("/buckets/photos/quota")
        assert code == 200
        assert (quota["current_usage_bytes"], quota["object_count"]) == (1234, 1)
        assert quota["max_size_bytes"] == 10000
        assert set(quota) >= {"max_size_bytes", "current_usage_bytes", "object_count", "last_updated"}
        code, stats = get("/buckets/photos/stats")
        assert code == 200 and stats["put_count"] == 1 and stats["bytes_written"] == 1234
        assert get(f"/buckets/photos/stats?month={stats['month']}")[1]["put_count"] == 1
        assert get("/buckets/photos/stats?month=1999-01")[0] == 404
        assert get("/buckets/photos/stats?month=garbage")[0] == 404
        assert get("/buckets/nothing/quota")[0] == 404
        assert get("/buckets/photos/quota", method="POST")[0] == 405
        assert get("/buckets/photos/quota", method="PUT")[0] == 405
        assert "ironfs_bucket_used_bytes" in urllib.request.urlopen(base + "/metrics").read().decode()
    finally:
        m.stop()
