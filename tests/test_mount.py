"""Quota semantics through a real kernel mount (one shared mount per module)."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import time
from pathlib import Path

from ironfs.rules import is_bucket_state
from tests.conftest import MiB
from tests.mounting import Mount, assert_invariant, expect_errno, ledger

KiB = 1 << 10
_libc = ctypes.CDLL(None, use_errno=True)
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(-100, os.fsencode(old), -100, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def write_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.write(b"x" * size)


def set_limit(path: Path, field: str, value: str) -> None:
    os.setxattr(path, f"user.ironfs.{field}", value.encode())


def test_writes_until_enospc_leave_nothing_partial(mount: Mount, bucket: str, bpath: Path) -> None:
    fd = os.open(bpath / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for _ in range(16):
            assert os.write(fd, b"\0" * (64 * KiB)) == 64 * KiB
        expect_errno(errno.ENOSPC, os.write, fd, b"\0" * (64 * KiB))
    finally:
        os.close(fd)
    assert os.stat(bpath / "f").st_size == MiB
    assert ledger(mount.mnt, bucket) == (MiB, 1)
    assert_invariant(mount, bucket)


def test_refused_write_writes_nothing(mount: Mount, bucket: str, bpath: Path) -> None:
    write_file(bpath / "f", MiB - 4096)
    with open(bpath / "f", "r+b", buffering=0) as f:
        f.seek(0, os.SEEK_END)
        expect_errno(errno.ENOSPC, f.write, b"y" * 8192)
        assert f.write(b"z" * 4096) == 4096  # exactly what is left fits
    assert (mount.backing / bucket / "f").stat().st_size == MiB
    assert_invariant(mount, bucket)


def test_write_crossing_the_limit_mid_page_is_short(mount: Mount, bucket: str, bpath: Path) -> None:
    # The kernel sends the rest of a partly written page as its own request, so
    # a write that crosses the limit there is short (as on a full disk), and the
    # part that does not fit is refused whole: the file never passes the limit.
    write_file(bpath / "f", MiB - 10)
    with open(bpath / "f", "r+b", buffering=0) as f:
        f.seek(0, os.SEEK_END)
        try:
            written = f.write(b"y" * 100)
        except OSError as e:
            assert e.errno == errno.ENOSPC
            written = 0
        assert written in (0, 10)
        expect_errno(errno.ENOSPC, f.write, b"y" * 90)
    assert (mount.backing / bucket / "f").stat().st_size == MiB - 10 + written
    assert_invariant(mount, bucket)


def test_truncate_up_refused_truncate_down_allowed(mount: Mount, bucket: str, bpath: Path) -> None:
    write_file(bpath / "f", 100 * KiB)
    expect_errno(errno.ENOSPC, os.truncate, bpath / "f", 2 * MiB)
    assert os.stat(bpath / "f").st_size == 100 * KiB
    os.truncate(bpath / "f", MiB)  # up to the limit exactly is fine
    os.truncate(bpath / "f", 10)
    assert ledger(mount.mnt, bucket) == (10, 1)
    assert_invariant(mount, bucket)


def test_open_with_o_trunc_gives_bytes_back(mount: Mount, bucket: str, bpath: Path) -> None:
    write_file(bpath / "f", 900 * KiB)
    write_file(bpath / "f", 800 * KiB)  # "wb" truncates first, so this fits
    assert ledger(mount.mnt, bucket) == (800 * KiB, 1)
    assert_invariant(mount, bucket)


def test_append_is_charged_at_the_real_end(mount: Mount, bucket: str, bpath: Path) -> None:
    write_file(bpath / "f", 1000)
    with open(bpath / "f", "ab", buffering=0) as f:
        f.write(b"a" * 24)
    with open(bpath / "f", "ab", buffering=0) as f:
        f.write(b"b" * 1000)
    assert os.stat(bpath / "f").st_size == 2024
    assert ledger(mount.mnt, bucket) == (2024, 1)
    assert_invariant(mount, bucket)


def test_overwrite_in_place_costs_nothing(mount: Mount, bucket: str, bpath: Path) -> None:
    write_file(bpath / "f", MiB)  # full
    with open(bpath / "f", "r+b", buffering=0) as f:
        f.seek(4096)
        assert f.write(b"o" * 4096) == 4096
    assert ledger(mount.mnt, bucket) == (MiB, 1)
    assert_invariant(mount, bucket)


def test_rename_between_buckets_moves_usage(mount: Mount, bucket: str, bpath: Path) -> None:
    other = mount.mnt / (bucket + "-2")
    other.mkdir()
    write_file(bpath / "f", 300 * KiB)
    os.rename(bpath / "f", other / "g")
    assert ledger(mount.mnt, bucket) == (0, 0)
    assert ledger(mount.mnt, other.name) == (300 * KiB, 1)
    assert_invariant(mount, bucket, other.name)


def test_rename_into_full_bucket_is_refused(mount: Mount, bucket: str, bpath: Path) -> None:
    other = mount.mnt / (bucket + "-2")
    other.mkdir()
    write_file(other / "full", MiB - 100)
    write_file(bpath / "f", 200)
    expect_errno(errno.ENOSPC, os.rename, bpath / "f", other / "f")
    assert (bpath / "f").exists() and not (other / "f").exists()
    assert_invariant(mount, bucket, other.name)


def test_rename_from_unbucketed_space_is_charged(mount: Mount, bucket: str, bpath: Path) -> None:
    loose = mount.mnt / f"loose-{bucket}"
    write_file(loose, 2 * MiB)  # top-level files are never charged
    expect_errno(errno.ENOSPC, os.rename, loose, bpath / "f")
    os.truncate(loose, 1000)
    os.rename(loose, bpath / "f")
    assert ledger(mount.mnt, bucket) == (1000, 1)
    os.rename(bpath / "f", loose)
    assert ledger(mount.mnt, bucket) == (0, 0)
    os.unlink(loose)


def test_directory_rename_across_buckets_is_exdev(mount: Mount, bucket: str, bpath: Path) -> None:
    other = mount.mnt / (bucket + "-2")
    other.mkdir()
    (bpath / "d").mkdir()
    write_file(bpath / "d" / "f", 10)
    expect_errno(errno.EXDEV, os.rename, bpath / "d", other / "d")
    expect_errno(errno.EXDEV, os.rename, bpath / "d", mount.mnt / f"top-{bucket}")
    assert_invariant(mount, bucket, other.name)


def test_hard_links_counted_once_and_exdev_across_buckets(mount: Mount, bucket: str,
                                                          bpath: Path) -> None:
    write_file(bpath / "f", 5000)
    os.link(bpath / "f", bpath / "g")
    os.link(bpath / "f", bpath / ".hidden")
    assert ledger(mount.mnt, bucket) == (5000, 2)  # bytes once; two visible names
    other = mount.mnt / (bucket + "-2")
    other.mkdir()
    expect_errno(errno.EXDEV, os.link, bpath / "f", other / "f")
    os.unlink(bpath / "f")
    assert ledger(mount.mnt, bucket) == (5000, 1)
    os.unlink(bpath / "g")
    os.unlink(bpath / ".hidden")
    assert ledger(mount.mnt, bucket) == (0, 0)
    assert_invariant(mount, bucket, other.name)


def test_unlinked_file_stays_charged_until_last_close(mount: Mount, bucket: str,
                                                      bpath: Path) -> None:
    fd = os.open(bpath / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"u" * 4000)
        os.unlink(bpath / "f")
        assert ledger(mount.mnt, bucket) == (4000, 0)
        os.write(fd, b"u" * 1000)  # still charged while open
        assert os.fstat(fd).st_size == 5000
        assert ledger(mount.mnt, bucket) == (5000, 0)
    finally:
        os.close(fd)
    time.sleep(0.05)  # release is asynchronous to close(2)
    assert ledger(mount.mnt, bucket) == (0, 0)
    assert_invariant(mount, bucket)


def test_delete_is_allowed_over_quota(mount: Mount, bucket: str, bpath: Path) -> None:
    write_file(bpath / "a", 600 * KiB)
    write_file(bpath / "b", 400 * KiB)
    set_limit(bpath, "max_bytes", "500KiB")  # an admin may go below usage
    expect_errno(errno.ENOSPC, write_file, bpath / "c", 1)  # growth refused…
    assert (bpath / "c").stat().st_size == 0
    os.truncate(bpath / "a", 100 * KiB)  # …shrinking always succeeds
    os.unlink(bpath / "b")
    assert ledger(mount.mnt, bucket) == (100 * KiB, 2)
    write_file(bpath / "c", 400 * KiB)  # under the limit again
    assert_invariant(mount, bucket)


def test_grace_bytes_extend_the_hard_limit(mount: Mount, bucket: str, bpath: Path) -> None:
    set_limit(bpath, "grace_bytes", "1KiB")
    write_file(bpath / "f", MiB + KiB)
    expect_errno(errno.ENOSPC, write_file, bpath / "g", 1)
    assert_invariant(mount, bucket)


def test_max_objects_refuses_the_next_object(mount: Mount, bucket: str, bpath: Path) -> None:
    set_limit(bpath, "max_objects", "2")
    write_file(bpath / "a", 1)
    write_file(bpath / "b", 1)
    expect_errno(errno.ENOSPC, os.open, bpath / "c", os.O_CREAT | os.O_WRONLY, 0o644)
    write_file(bpath / ".staging", 1)  # hidden files are no objects
    expect_errno(errno.ENOSPC, os.rename, bpath / ".staging", bpath / "c")
    os.rename(bpath / ".staging", bpath / "a")  # replacing an object is no new object
    assert ledger(mount.mnt, bucket) == (2, 2)
    assert_invariant(mount, bucket)


def test_staging_file_published_by_rename_counts_once(mount: Mount, bucket: str,
                                                      bpath: Path) -> None:
    (bpath / "dir").mkdir()
    write_file(bpath / "dir" / ".upload-123", 777)
    assert ledger(mount.mnt, bucket) == (777, 0)  # charged, not an object yet
    os.rename(bpath / "dir" / ".upload-123", bpath / "dir" / "key")
    assert ledger(mount.mnt, bucket) == (777, 1)
    assert_invariant(mount, bucket)


def test_hidden_directory_published_whole(mount: Mount, bucket: str, bpath: Path) -> None:
    (bpath / ".stage" / "sub").mkdir(parents=True)
    for name in ("a", "b", "sub/c"):
        write_file(bpath / ".stage" / name, 10)
    assert ledger(mount.mnt, bucket) == (30, 0)
    os.rename(bpath / ".stage", bpath / "published")
    assert ledger(mount.mnt, bucket) == (30, 3)
    os.rename(bpath / "published", bpath / ".again")
    assert ledger(mount.mnt, bucket) == (30, 0)
    assert_invariant(mount, bucket)


def test_rename_noreplace_and_exchange(mount: Mount, bucket: str, bpath: Path) -> None:
    other = mount.mnt / (bucket + "-2")
    other.mkdir()
    write_file(bpath / "a", 100)
    write_file(other / "b", 300)
    renameat2(bpath / "a", bpath / "a1", RENAME_NOREPLACE)  # onto no name: a plain rename
    renameat2(bpath / "a1", bpath / "a", RENAME_NOREPLACE)
    assert ledger(mount.mnt, bucket) == (100, 1)
    write_file(bpath / "a2", 5)
    expect_errno(errno.EEXIST, renameat2, bpath / "a", bpath / "a2", RENAME_NOREPLACE)
    renameat2(bpath / "a", other / "b", RENAME_EXCHANGE)
    assert (bpath / "a").stat().st_size == 300 and (other / "b").stat().st_size == 100
    assert ledger(mount.mnt, bucket) == (305, 2)
    assert ledger(mount.mnt, other.name) == (100, 1)
    assert_invariant(mount, bucket, other.name)


def test_replacing_rename_refunds_the_old_file(mount: Mount, bucket: str, bpath: Path) -> None:
    write_file(bpath / "key", 900 * KiB)
    write_file(bpath / ".tmp", 100 * KiB)
    os.rename(bpath / ".tmp", bpath / "key")
    assert ledger(mount.mnt, bucket) == (100 * KiB, 1)
    assert_invariant(mount, bucket)


def test_odd_names_are_counted_and_listed(mount: Mount, bucket: str, bpath: Path) -> None:
    raw = os.fsencode(bpath)
    names = [b"caf\xe9", b"new\nline", b"tab\tand space", "ünïcødé".encode()]
    for name in names:
        with open(os.path.join(raw, name), "wb") as f:
            f.write(b"1234")
    assert sorted(os.listdir(raw)) == sorted(names)
    assert ledger(mount.mnt, bucket) == (16, 4)
    os.rename(os.path.join(raw, names[0]), os.path.join(raw, b"\xff\xfe"))
    assert_invariant(mount, bucket)


def test_state_files_are_invisible_and_unwritable(mount: Mount, bucket: str, bpath: Path) -> None:
    write_file(bpath / "obj", 1)
    time.sleep(0.5)  # a flush has written .quota
    assert (mount.backing / bucket / ".quota").exists()
    assert os.listdir(bpath) == ["obj"]
    assert ".ironfs" not in os.listdir(mount.mnt)
    expect_errno(errno.ENOENT, os.stat, bpath / ".quota")
    expect_errno(errno.ENOENT, os.stat, bpath / ".stats")
    expect_errno(errno.ENOENT, os.stat, mount.mnt / ".ironfs")
    expect_errno(errno.EPERM, os.open, bpath / ".quota", os.O_CREAT | os.O_WRONLY, 0o644)
    expect_errno(errno.EPERM, os.mkdir, bpath / ".stats")
    expect_errno(errno.EPERM, os.rename, bpath / "obj", bpath / ".quota")
    expect_errno(errno.EPERM, os.mkdir, mount.mnt / ".ironfs")
    assert_invariant(mount, bucket)


def test_ironfs_xattrs_are_not_listed_and_others_pass_through(mount: Mount, bucket: str,
                                                              bpath: Path) -> None:
    write_file(bpath / "f", 1)
    os.setxattr(bpath / "f", "user.mine", b"value")
    os.setxattr(bpath, "user.dirattr", b"v2")
    assert os.getxattr(bpath / "f", "user.mine") == b"value"
    assert os.getxattr(mount.backing / bucket / "f", "user.mine") == b"value"
    assert os.listxattr(bpath) == ["user.dirattr"]
    os.removexattr(bpath / "f", "user.mine")
    expect_errno(errno.ENODATA, os.getxattr, bpath / "f", "user.mine")
    expect_errno(errno.EINVAL, set_limit, bpath, "max_bytes", "lots")
    expect_errno(errno.EINVAL, set_limit, bpath, "max_bytes", "-5")
    assert os.getxattr(bpath, "user.ironfs.max_bytes") == str(MiB).encode()


def test_bucket_lifecycle_mkdir_rename_rmdir(mount: Mount) -> None:
    name = f"life-{os.getpid()}"
    (mount.mnt / name).mkdir()
    write_file(mount.mnt / name / "obj", 1234)
    os.rename(mount.mnt / name, mount.mnt / (name + "-renamed"))
    name += "-renamed"
    assert ledger(mount.mnt, name) == (1234, 1)
    time.sleep(0.5)
    assert (mount.backing / name / ".quota").exists()  # state travelled with the bucket
    expect_errno(errno.ENOTEMPTY, os.rmdir, mount.mnt / name)
    os.unlink(mount.mnt / name / "obj")
    os.rmdir(mount.mnt / name)  # only state left: DeleteBucket succeeds
    archived = list((mount.backing / ".ironfs" / "archive" / name).glob("*/.quota"))
    assert len(archived) == 1
    time.sleep(0.6)  # several flush ticks: nothing may bring the bucket back
    assert not (mount.backing / name).exists()
    assert not (mount.mnt / name).exists()


def test_top_level_files_and_dot_dirs_are_never_charged(mount: Mount, bucket: str) -> None:
    buckets = sorted(p.name for p in mount.mnt.iterdir() if p.is_dir() and not p.name.startswith("."))
    before = {b: ledger(mount.mnt, b) for b in buckets}
    (mount.mnt / ".scratch").mkdir(exist_ok=True)
    # 3 MiB each, past every bucket's 1 MiB default: refused if charged anywhere.
    write_file(mount.mnt / ".scratch" / "big", 3 * MiB)
    write_file(mount.mnt / "toplevel.bin", 3 * MiB)
    assert (mount.mnt / "toplevel.bin").stat().st_size == 3 * MiB
    assert {b: ledger(mount.mnt, b) for b in buckets} == before
    assert_invariant(mount, *buckets)
    os.unlink(mount.mnt / "toplevel.bin")
    os.unlink(mount.mnt / ".scratch" / "big")
    assert {b: ledger(mount.mnt, b) for b in buckets} == before


def test_listings_show_dot_and_dotdot_as_on_the_backing(mount: Mount, bucket: str, bpath: Path) -> None:
    (bpath / "sub").mkdir()
    for i in range(300):  # many readdir calls: offsets must line up across them
        (bpath / f"f{i:03d}").write_bytes(b"")
    for rel in ("", "sub"):
        shown = subprocess.run(["ls", "-a", "-1", str(bpath / rel)], capture_output=True, text=True,
                               check=True).stdout.split()
        raw = subprocess.run(["ls", "-a", "-1", str(mount.backing / bucket / rel)], capture_output=True,
                             text=True, check=True).stdout.split()
        assert shown == [n for n in raw if rel or not is_bucket_state(os.fsencode(n))]
        assert shown[:2] == [".", ".."] and len(shown) == (303 if not rel else 2)
    assert os.stat(bpath / "sub" / "..").st_ino == os.stat(bpath).st_ino
    assert os.stat(bpath / "..").st_ino == os.stat(mount.mnt).st_ino


def test_symlinks_and_fifos_pass_through_uncharged(mount: Mount, bucket: str, bpath: Path) -> None:
    os.symlink("target-name", bpath / "link")
    assert os.readlink(bpath / "link") == "target-name"
    os.mkfifo(bpath / "fifo")
    assert ledger(mount.mnt, bucket) == (0, 0)
    assert_invariant(mount, bucket)


def test_new_files_belong_to_the_caller(mount: Mount, bucket: str, bpath: Path) -> None:
    os.chmod(bpath, 0o777)
    pid = os.fork()
    if pid == 0:  # child: become nobody and create a file
        try:
            os.chdir(bpath)  # pytest's temp root is 0700: enter before dropping root
            os.setgid(65534)
            os.setuid(65534)
            os.umask(0o027)
            fd = os.open("mine", os.O_CREAT | os.O_WRONLY, 0o666)
            os.close(fd)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    st = os.stat(mount.backing / bucket / "mine")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o640)


def test_chmod_chown_utime_pass_through(mount: Mount, bucket: str, bpath: Path) -> None:
    write_file(bpath / "f", 1)
    os.chmod(bpath / "f", 0o600)
    os.chown(bpath / "f", 123, 456)
    os.utime(bpath / "f", ns=(1_000_000_000, 2_000_000_000))
    st = os.stat(mount.backing / bucket / "f")
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid, st.st_mtime_ns) == (0o600, 123, 456, 2 * 10**9)


def test_limit_crossings_are_logged_once(mount: Mount, bucket: str, bpath: Path) -> None:
    f = bpath / "obj"
    write_file(f, 900 * KiB)  # the soft limit is 90 % of 1 MiB
    for _ in range(100):  # over the soft limit and back, but not far enough back
        os.truncate(f, 950 * KiB)
        os.truncate(f, 900 * KiB)
    for _ in range(20):
        expect_errno(errno.ENOSPC, os.truncate, f, MiB + 1)
    os.truncate(f, MiB)
    for _ in range(20):
        expect_errno(errno.ENOSPC, os.truncate, f, MiB + 1)
    lines = [line for line in mount.log_text().splitlines() if f"bucket {bucket} " in line]
    assert sum("over its soft limit" in line for line in lines) == 1
    assert sum("reached its hard limit" in line for line in lines) == 1
    assert not any("back under" in line or "below its hard limit" in line for line in lines)


def test_inode_numbers_are_the_backing_ones_and_stay(mount: Mount, bucket: str, bpath: Path) -> None:
    write_file(bpath / "f", 10)
    (bpath / "d").mkdir()
    backing = mount.backing / bucket
    for name in ("f", "d"):
        before = os.stat(bpath / name).st_ino
        assert before == os.stat(backing / name).st_ino
        with open("/proc/sys/vm/drop_caches", "w") as caches:
            caches.write("2\n")  # the kernel forgets its dentries and inodes
        assert os.stat(bpath / name).st_ino == before


def test_a_reused_inode_number_is_a_new_file_to_the_kernel(mount: Mount, bucket: str, bpath: Path) -> None:
    seen = set()
    for i in range(50):  # ext4 hands a freed number to the next new file
        write_file(bpath / f"a{i}", 1)
        held = os.open(bpath / f"a{i}", os.O_PATH)  # the kernel keeps the old inode
        old = os.fstat(held).st_ino
        os.unlink(bpath / f"a{i}")
        write_file(bpath / f"b{i}", 2)
        new = os.stat(bpath / f"b{i}")
        assert new.st_ino == os.stat(mount.backing / bucket / f"b{i}").st_ino
        assert new.st_size == 2 and (bpath / f"b{i}").read_bytes() == b"xx"
        if new.st_ino == old:
            seen.add(i)
        os.close(held)
    assert seen, "the backing filesystem never reused a number: the test proved nothing"
    assert_invariant(mount, bucket)
