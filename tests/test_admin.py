"""Limits, accounts and reconcile through a real mount and the ironfs command."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.conftest import MiB
from tests.mounting import Mount, as_user, assert_invariant, expect_errno, ledger, start_mount


def ironfs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ironfs", *args], capture_output=True, text=True,
                          timeout=60)


def fill(path: Path, size: int) -> None:
    with open(path, "ab") as f:
        f.write(b"f" * size)


def account(mount: Mount, name: str, **doc: object) -> None:
    os.setxattr(mount.mnt, f"user.ironfs.account.{name}", orjson.dumps(doc))


def test_bucket_xattrs_read(mount: Mount, bucket: str, bpath: Path) -> None:
    fill(bpath / "f", 1000)
    doc = orjson.loads(os.getxattr(bpath, "user.ironfs.quota"))
    assert (doc["used_bytes"], doc["objects"], doc["max_bytes"], doc["account"]) == (1000, 1, MiB, None)
    assert os.getxattr(bpath, "user.ironfs.max_objects") == b"none"
    assert os.getxattr(bpath, "user.ironfs.grace_bytes") == b"0"
    assert os.getxattr(bpath, "user.ironfs.soft_bytes") == str(int(MiB * 0.9)).encode()
    expect_errno(errno.ENODATA, os.getxattr, bpath, "user.ironfs.nonsense")
    expect_errno(errno.ENODATA, os.getxattr, bpath / "f", "user.ironfs.quota")
    assert not [n for n in os.listxattr(bpath) if n.startswith("user.ironfs.")]


def test_setting_a_limit_applies_to_the_next_write(mount: Mount, bucket: str, bpath: Path) -> None:
    fill(bpath / "f", 100_000)
    os.setxattr(bpath, "user.ironfs.max_bytes", b"100000")
    expect_errno(errno.ENOSPC, fill, bpath / "f", 1)
    os.setxattr(bpath, "user.ironfs.max_bytes", b"none")
    fill(bpath / "f", 2 * MiB)
    time.sleep(0.5)
    q = orjson.loads((mount.backing / bucket / ".quota").read_bytes())
    assert q["max_size_bytes"] is None  # flushed to .quota


def test_non_admin_cannot_set_limits(mount: Mount, bucket: str, bpath: Path) -> None:
    def set_limit() -> None:
        os.setxattr(".", "user.ironfs.max_bytes", b"1G")

    assert as_user(set_limit, cwd=bpath) == errno.EACCES  # the kernel: may not write the dir
    os.chmod(bpath, 0o777)  # so that the kernel lets the request reach ironfs
    assert as_user(set_limit, cwd=bpath) == errno.EPERM
    assert os.getxattr(bpath, "user.ironfs.max_bytes") == str(MiB).encode()


@pytest.mark.parametrize("field, value", [
    ("max_bytes", b"12 parsecs"), ("max_bytes", b"-1"), ("max_objects", b"1.5"),
    ("max_objects", b"10K"), ("grace_bytes", b""), ("soft_bytes", b"\xff"), ("used_bytes", b"0"),
])
def test_garbage_is_einval_and_changes_nothing(mount: Mount, bucket: str, bpath: Path,
                                               field: str, value: bytes) -> None:
    before = os.getxattr(bpath, "user.ironfs.quota")
    expect_errno(errno.EINVAL, os.setxattr, bpath, f"user.ironfs.{field}", value)
    assert os.getxattr(bpath, "user.ironfs.quota") == before


def test_account_limit_across_two_buckets(mount: Mount) -> None:
    tag = os.urandom(3).hex()
    one, two = mount.mnt / f"acct1-{tag}", mount.mnt / f"acct2-{tag}"
    one.mkdir()
    two.mkdir()
    for b in (one, two):
        os.setxattr(b, "user.ironfs.max_bytes", b"2MiB")
    account(mount, f"acme-{tag}", max_bytes="3MiB", buckets=[one.name, two.name])
    fill(one / "f", 2 * MiB)
    fill(two / "f", MiB)
    expect_errno(errno.ENOSPC, fill, one / "f", 1)
    expect_errno(errno.ENOSPC, fill, two / "f", 1)  # room in the bucket, none in the account
    acct = orjson.loads(os.getxattr(mount.mnt, f"user.ironfs.account.acme-{tag}"))
    assert (acct["used_bytes"], acct["objects"], acct["state"]) == (3 * MiB, 2, "hard")
    os.unlink(one / "f")
    fill(two / "f", MiB)  # freed in the account: fits now
    assert_invariant(mount, one.name, two.name)


def test_moving_a_bucket_between_accounts(mount: Mount, bucket: str, bpath: Path) -> None:
    tag = os.urandom(3).hex()
    fill(bpath / "f", 5000)
    account(mount, f"a-{tag}", buckets=[bucket])
    account(mount, f"b-{tag}", max_bytes=1000)
    os.setxattr(bpath, "user.ironfs.account", f"b-{tag}".encode())
    accounts = orjson.loads(os.getxattr(mount.mnt, "user.ironfs.accounts"))
    assert accounts[f"a-{tag}"]["used_bytes"] == 0 and accounts[f"b-{tag}"]["used_bytes"] == 5000
    expect_errno(errno.ENOSPC, fill, bpath / "g", 1)  # b's limit now applies
    expect_errno(errno.EINVAL, os.setxattr, bpath, "user.ironfs.account", b"no-such-account")
    os.setxattr(bpath, "user.ironfs.account", b"none")
    fill(bpath / "g", 1)
    os.removexattr(mount.mnt, f"user.ironfs.account.a-{tag}")
    expect_errno(errno.ENODATA, os.getxattr, mount.mnt, f"user.ironfs.account.a-{tag}")


def test_deleting_a_bucket_updates_its_account(mount: Mount) -> None:
    tag = os.urandom(3).hex()
    b = mount.mnt / f"gone-{tag}"
    b.mkdir()
    fill(b / "f", 777)
    account(mount, f"acct-{tag}", buckets=[b.name])
    os.unlink(b / "f")
    fill(mount.mnt / f"gone-{tag}" / "g", 5)
    os.unlink(b / "g")
    b.rmdir()
    acct = orjson.loads(os.getxattr(mount.mnt, f"user.ironfs.account.acct-{tag}"))
    assert (acct["used_bytes"], acct["buckets"]) == (0, [])


@pytest.mark.parametrize("doc", [b"not json", b"[]", b'{"max_bytes": "lots"}',
                                 b'{"buckets": ["no-such-bucket"]}', b'{"colour": "red"}'])
def test_bad_account_documents_are_einval(mount: Mount, doc: bytes) -> None:
    expect_errno(errno.EINVAL, os.setxattr, mount.mnt, "user.ironfs.account.bad", doc)
    expect_errno(errno.ENODATA, os.getxattr, mount.mnt, "user.ironfs.account.bad")


def test_reconcile_finds_and_fixes_drift_online(mount: Mount, bucket: str, bpath: Path) -> None:
    fill(bpath / "f", 100)
    (mount.backing / bucket / "behind").write_bytes(b"b" * 4000)  # behind the mount's back
    r = ironfs("reconcile", str(mount.mnt), "--bucket", bucket, "--json")
    assert r.returncode == 3, r.stderr
    row, = orjson.loads(r.stdout)["buckets"]
    assert (row["drift_bytes"], row["drift_objects"]) == (4000, 1)
    r = ironfs("reconcile", str(mount.mnt), "--bucket", bucket, "--fix")
    assert r.returncode == 3 and "(fixed)" in r.stdout
    assert ledger(mount.mnt, bucket) == (4100, 2)
    r = ironfs("reconcile", str(mount.mnt), "--bucket", bucket)
    assert r.returncode == 0 and "no drift" in r.stdout


def test_reconcile_counts_open_unlinked_files(mount: Mount, bucket: str, bpath: Path) -> None:
    fd = os.open(bpath / "f", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"x" * 300)
        os.unlink(bpath / "f")
        r = ironfs("reconcile", str(mount.mnt), "--bucket", bucket, "--json")
        assert r.returncode == 0, r.stdout  # still charged, and rightly so
    finally:
        os.close(fd)


def test_quota_and_report_commands_online(mount: Mount, bucket: str, bpath: Path) -> None:
    fill(bpath / "f", 1024)
    r = ironfs("quota", "set", str(bpath), "max_bytes=4MiB", "max_objects=9")
    assert r.returncode == 0, r.stderr
    assert "4.0 MiB" in r.stdout and bucket in r.stdout
    doc = orjson.loads(ironfs("quota", "get", str(bpath), "--json").stdout)
    assert (doc["max_bytes"], doc["max_objects"], doc["used_bytes"]) == (4 * MiB, 9, 1024)
    bad = ironfs("quota", "set", str(bpath), "max_bytes=huge")
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    report = ironfs("report", str(mount.mnt))
    assert report.returncode == 0 and "% used" in report.stdout and bucket in report.stdout
    rows = orjson.loads(ironfs("report", str(mount.mnt), "--json").stdout)["buckets"]
    assert any(r["bucket"] == bucket and r["max_objects"] == 9 for r in rows)


def test_account_commands_online(mount: Mount, bucket: str) -> None:
    name = "cli-" + os.urandom(3).hex()
    r = ironfs("account", "set", name, "max_bytes=2GiB", f"buckets={bucket}", "--mount", str(mount.mnt))
    assert r.returncode == 0, r.stderr
    got = orjson.loads(ironfs("account", "get", name, "--mount", str(mount.mnt), "--json").stdout)
    assert (got["max_bytes"], got["buckets"]) == (2 << 30, [bucket])
    listed = ironfs("account", "list", "--mount", str(mount.mnt))
    assert name in listed.stdout and "2.0 GiB" in listed.stdout
    assert ironfs("account", "delete", name, "--mount", str(mount.mnt)).returncode == 0
    assert ironfs("account", "get", name, "--mount", str(mount.mnt)).returncode == 1


def test_offline_commands_edit_files_and_refuse_while_mounted(tmp_path: Path) -> None:
    m = start_mount(tmp_path / "backing", tmp_path / "s3")
    try:
        (m.mnt / "b").mkdir()
        fill(m.mnt / "b" / "f", 3000)
        refused = ironfs("report", "--backing", str(m.backing))
        assert refused.returncode == 1 and "is mounted" in refused.stderr
    finally:
        m.stop()
    backing = str(m.backing)
    assert ironfs("quota", "set", "b", "max_bytes=1MiB", "--backing", backing).returncode == 0
    assert ironfs("account", "set", "off", "buckets=b", "--backing", backing).returncode == 0
    (m.backing / "b" / "behind").write_bytes(b"x" * 10)
    check = ironfs("reconcile", backing, "--backing")
    assert check.returncode == 3 and "+10 B" in check.stdout
    assert ironfs("reconcile", backing, "--backing", "--fix").returncode == 3
    assert ironfs("reconcile", backing, "--backing").returncode == 0
    q = orjson.loads((m.backing / "b" / ".quota").read_bytes())
    assert (q["max_size_bytes"], q["current_usage_bytes"], q["object_count"]) == (MiB, 3010, 2)
    got = orjson.loads(ironfs("quota", "get", "b", "--backing", backing, "--json").stdout)
    assert (got["max_bytes"], got["account"]) == (MiB, "off")
    report = ironfs("report", "--backing", backing)
    assert report.returncode == 0 and "off" in report.stdout and "1.0 MiB" in report.stdout
    assert "off" in orjson.loads(ironfs("account", "list", "--backing", backing, "--json").stdout)
    assert ironfs("account", "set", "gone", "--backing", backing).returncode == 0
    assert ironfs("account", "delete", "gone", "--backing", backing).returncode == 0
    assert ironfs("account", "get", "gone", "--backing", backing).returncode == 1
    m2 = start_mount(m.backing, m.mnt)
    try:
        assert ledger(m2.mnt, "b") == (3010, 2)
        acct = orjson.loads(os.getxattr(m2.mnt, "user.ironfs.account.off"))
        assert (acct["buckets"], acct["used_bytes"]) == (["b"], 3010)
    finally:
        m2.stop()
