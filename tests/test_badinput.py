"""Hostile and unusual input through a real mount (issue 7, part 4).

Where the backing filesystem has an answer, the mount must give the same one:
``same_as_raw`` runs an operation in a plain directory of the backing
filesystem and in a bucket, and compares results or errnos.  Every test ends
with the invariant (ledger == scan) and the daemon still serving.
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.mounting import Mount, assert_invariant, expect_errno, ledger

MiB = 1 << 20


@pytest.fixture
def raw(mount: Mount, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain directory on the backing filesystem, outside the mount's tree."""
    d = mount.backing.parent / ("raw-" + os.urandom(4).hex())
    d.mkdir()
    return d


def outcome(fn: Callable[[Path], Any], where: Path) -> Any:
    try:
        return ("ok", fn(where))
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno, e.errno))


def same_as_raw(fn: Callable[[Path], Any], raw: Path, bpath: Path) -> Any:
    a, b = outcome(fn, raw), outcome(fn, bpath)
    assert b == a, f"mount gave {b}, the backing filesystem {a}"
    return b


def unlimited(bpath: Path) -> None:
    os.setxattr(bpath, b"user.ironfs.max_bytes", b"none")


def test_every_byte_value_in_names(mount: Mount, bucket: str, bpath: Path) -> None:
    names = [b"n" + bytes([c]) + b"\xff" for c in range(1, 256) if c != ord("/")]
    base = os.fsencode(bpath)
    for i, name in enumerate(names):
        with open(base + b"/" + name, "wb") as f:
            f.write(b"x" * (i % 7))
    assert sorted(os.listdir(base)) == sorted(names)
    for name in names:
        assert os.stat(base + b"/" + name).st_size < 7
    assert ledger(mount.mnt, bucket)[1] == len(names)
    os.rename(base + b"/" + names[9], base + b"/\n\r\t")
    os.unlink(base + b"/" + names[10])
    assert_invariant(mount, bucket)


def test_name_max_is_the_backing_filesystems(mount: Mount, bucket: str, bpath: Path,
                                             raw: Path) -> None:
    name_max = os.statvfs(mount.backing).f_namemax
    assert os.statvfs(bpath).f_namemax == name_max
    longest = "a" * name_max
    same_as_raw(lambda d: (d / longest).write_bytes(b"1234"), raw, bpath)
    same_as_raw(lambda d: (d / (longest + "b")).write_bytes(b"1"), raw, bpath)
    same_as_raw(lambda d: os.mkdir(d / ("d" * name_max)), raw, bpath)
    assert ledger(mount.mnt, bucket) == (4, 1)
    assert_invariant(mount, bucket)


def _deep_dirs(top: Path, total: int, name_len: int = 200) -> list[int]:
    """mkdir/open down from *top* with *at calls until the path is *total* bytes
    long; returns the dir fds from the top down (the caller closes them)."""
    fds = [os.open(top, os.O_RDONLY | os.O_DIRECTORY)]
    length = len(os.fsencode(top))
    i = 0
    while length < total:
        name = f"{i:03d}" + "d" * (name_len - 3)
        os.mkdir(name, dir_fd=fds[-1])
        fds.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
        length += len(name) + 1
        i += 1
    return fds


def test_path_of_path_max_through_the_mount(mount: Mount, bucket: str, bpath: Path) -> None:
    # The mount path is just under PATH_MAX; the backing path is longer (the
    # backing root is longer than the mount point), so the daemon must not use it.
    assert len(os.fsencode(mount.backing)) > len(os.fsencode(mount.mnt))
    fds = _deep_dirs(bpath, 4096 - 256 - 2)
    try:
        here = len(os.fsencode(bpath)) + sum(len(f"{i:03d}") + 197 + 1 for i in range(len(fds) - 1))
        name = "f" * (4095 - here - 1)
        path = os.fsencode(bpath) + b"".join(
            b"/" + os.fsencode(f"{i:03d}" + "d" * 197) for i in range(len(fds) - 1)) + b"/" + name.encode()
        assert len(path) == 4095
        with open(path, "wb") as f:
            f.write(b"z" * 1000)
        assert os.stat(path).st_size == 1000
        os.rename(path, path[:-1] + b"g")
        with open(path[:-1] + b"g", "rb") as f:
            assert f.read() == b"z" * 1000
        expect_errno(errno.ENAMETOOLONG, os.stat, path + b"x")
        assert ledger(mount.mnt, bucket) == (1000, 1)
        assert_invariant(mount, bucket)
        os.unlink(path[:-1] + b"g")
        assert ledger(mount.mnt, bucket) == (0, 0)
    finally:
        for fd in fds:
            os.close(fd)


def test_tree_deeper_than_path_max(mount: Mount, bucket: str, bpath: Path) -> None:
    """Built, written, renamed and removed with *at calls, 12 KiB deep; the
    scanner (run by assert_invariant) walks it too."""
    fds = _deep_dirs(bpath, 12 * 1024)
    bottom = fds[-1]
    try:
        fd = os.open("obj", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=bottom)
        os.write(fd, b"q" * 5000)
        os.close(fd)
        os.rename("obj", "obj2", src_dir_fd=bottom, dst_dir_fd=bottom)
        assert os.stat("obj2", dir_fd=bottom).st_size == 5000
        os.setxattr(f"/proc/self/fd/{bottom}/obj2", "user.k", b"v")
        assert os.getxattr(f"/proc/self/fd/{bottom}/obj2", "user.k") == b"v"
        os.truncate(f"/proc/self/fd/{bottom}/obj2", 6000)
        assert ledger(mount.mnt, bucket) == (6000, 1)
        assert_invariant(mount, bucket)
        os.rename("obj2", "up", src_dir_fd=bottom, dst_dir_fd=fds[1])
        assert_invariant(mount, bucket)
        os.unlink("up", dir_fd=fds[1])
        assert ledger(mount.mnt, bucket) == (0, 0)
    finally:
        for fd in fds:
            os.close(fd)


def test_writes_near_two_to_the_63(mount: Mount, bucket: str, bpath: Path, raw: Path) -> None:
    def far_write(d: Path) -> int:
        fd = os.open(d / "far", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            return os.pwrite(fd, b"x", (1 << 63) - 2)
        finally:
            os.close(fd)
    # With a quota, the quota answers first; without one, the backing filesystem.
    expect_errno(errno.ENOSPC, far_write, bpath)
    assert ledger(mount.mnt, bucket) == (0, 1)
    unlimited(bpath)
    same_as_raw(far_write, raw, bpath)
    assert os.stat(bpath / "far").st_size == 0
    assert_invariant(mount, bucket)


def test_truncate_to_huge_sizes(mount: Mount, bucket: str, bpath: Path, raw: Path) -> None:
    (bpath / "t").write_bytes(b"abc")
    expect_errno(errno.ENOSPC, os.truncate, bpath / "t", 1 << 40)
    assert ledger(mount.mnt, bucket) == (3, 1)
    unlimited(bpath)
    (raw / "t").write_bytes(b"abc")
    for size in (1 << 40, (1 << 62), (1 << 63) - 1):
        same_as_raw(lambda d, s=size: os.truncate(d / "t", s), raw, bpath)
    assert os.stat(bpath / "t").st_size == os.stat(raw / "t").st_size
    assert_invariant(mount, bucket)
    os.truncate(bpath / "t", 0)
    assert ledger(mount.mnt, bucket) == (0, 1)


def test_sparse_writes_charge_the_apparent_size(mount: Mount, bucket: str, bpath: Path) -> None:
    with open(bpath / "sparse", "wb") as f:
        f.seek(700 * 1024)
        f.write(b"end")
    assert ledger(mount.mnt, bucket) == (700 * 1024 + 3, 1)
    fd = os.open(bpath / "sparse2", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        expect_errno(errno.ENOSPC, os.pwrite, fd, b"end", 400 * 1024)
    finally:
        os.close(fd)
    assert os.stat(bpath / "sparse2").st_size == 0
    assert_invariant(mount, bucket)


def test_o_append_from_two_descriptors(mount: Mount, bucket: str, bpath: Path) -> None:
    a = os.open(bpath / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    b = os.open(bpath / "log", os.O_WRONLY | os.O_APPEND)
    try:
        for i in range(50):
            os.write(a if i % 2 else b, b"%03d\n" % i)
    finally:
        os.close(a)
        os.close(b)
    assert (bpath / "log").read_bytes() == b"".join(b"%03d\n" % i for i in range(50))
    assert_invariant(mount, bucket)


def test_o_direct_is_served_unaligned_and_aligned(mount: Mount, bucket: str, bpath: Path) -> None:
    """MinIO opens objects with O_DIRECT; a passthrough that hands it on gets
    EINVAL for unaligned I/O.  fsx-style: random I/O through an O_DIRECT and a
    buffered descriptor, checked against a model after every step."""
    rng = random.Random(7)
    model = bytearray()
    path = bpath / "direct"
    d = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
    b = os.open(path, os.O_RDWR)
    aligned = mmap.mmap(-1, 8192)
    try:
        for step in range(300):
            fd = d if rng.random() < 0.6 else b
            op = rng.choice(("write", "write", "read", "truncate", "aligned"))
            off = rng.randrange(0, 96 * 1024)
            if op == "write":
                data = rng.randbytes(rng.randrange(1, 5000))
                assert os.pwrite(fd, data, off) == len(data)
                end = off + len(data)
                model.extend(bytes(max(0, end - len(model))))
                model[off:end] = data
            elif op == "aligned":
                off -= off % 4096
                aligned[:] = rng.randbytes(8192)
                assert os.pwritev(d, [aligned], off) == 8192
                model.extend(bytes(max(0, off + 8192 - len(model))))
                model[off:off + 8192] = aligned[:]
            elif op == "truncate":
                os.ftruncate(fd, off)
                del model[off:]
                model.extend(bytes(off - len(model)))
            else:
                size = rng.randrange(1, 9000)
                assert os.pread(fd, size, off) == bytes(model[off:off + size]), f"step {step}"
            assert os.fstat(fd).st_size == len(model)
    finally:
        aligned.close()
        os.close(d)
        os.close(b)
    assert (mount.backing / bucket / "direct").read_bytes() == bytes(model)
    assert_invariant(mount, bucket)


def test_mmap_writes_reach_the_file(mount: Mount, bucket: str, bpath: Path) -> None:
    path = bpath / "mapped"
    path.write_bytes(bytes(64 * 1024))
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        m[100:105] = b"hello"
        m[60000:60003] = b"end"
        m.flush()
    data = (mount.backing / bucket / "mapped").read_bytes()
    assert data[100:105] == b"hello" and data[60000:60003] == b"end" and len(data) == 64 * 1024
    assert ledger(mount.mnt, bucket) == (64 * 1024, 1)
    assert_invariant(mount, bucket)


def test_special_files_are_made_and_never_charged(mount: Mount, bucket: str, bpath: Path,
                                                  raw: Path) -> None:
    def make(d: Path) -> tuple[int, ...]:
        os.mkfifo(d / "fifo")
        os.mknod(d / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        os.mknod(d / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 0))
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(os.fspath(d / "sock"))
        return tuple(stat.S_IFMT(os.lstat(d / n).st_mode) | os.lstat(d / n).st_rdev
                     for n in ("fifo", "null", "blk", "sock"))
    same_as_raw(make, raw, bpath)
    assert ledger(mount.mnt, bucket) == (0, 0)
    for name in ("fifo", "null", "blk", "sock"):
        os.unlink(bpath / name)
    assert_invariant(mount, bucket)


def test_symlink_loops_and_escapes(mount: Mount, bucket: str, bpath: Path, raw: Path) -> None:
    def loops(d: Path) -> None:
        os.symlink("b", d / "a")
        os.symlink("a", d / "b")
        open(d / "a").close()
    same_as_raw(loops, raw, bpath)
    # A link is resolved by the caller's kernel in the mount's namespace: "up"
    # out of a bucket leads to the mount's root, where the state stays hidden.
    os.symlink("../../" + mount.mnt.name + "/.ironfs", bpath / "up")
    expect_errno(errno.ENOENT, os.stat, bpath / "up")
    assert ".quota" not in os.listdir(bpath) and ".ironfs" not in os.listdir(mount.mnt)
    assert os.stat(bpath / "..").st_ino == os.stat(mount.mnt).st_ino
    assert_invariant(mount, bucket)


def test_state_files_cannot_be_reached_or_linked(mount: Mount, bucket: str, bpath: Path) -> None:
    (bpath / "obj").write_bytes(b"12")
    for name in (".quota", ".stats", ".ironfs-x"):
        expect_errno(errno.ENOENT, os.stat, bpath / name)
        expect_errno(errno.ENOENT, os.link, bpath / name, bpath / "stolen")
        expect_errno(errno.EPERM, os.link, bpath / "obj", bpath / name)
        expect_errno(errno.EPERM, os.symlink, "obj", bpath / name)
        expect_errno(errno.EPERM, os.rename, bpath / "obj", bpath / name)
    expect_errno(errno.ENOENT, os.stat, mount.mnt / ".ironfs" / "accounts.json")
    expect_errno(errno.EPERM, os.mkdir, mount.mnt / ".ironfs")
    assert_invariant(mount, bucket)


def test_xattrs_with_large_values(mount: Mount, bucket: str, bpath: Path, raw: Path) -> None:
    for size in (0, 1, 255, 4000, 65536, 65537):
        def setget(d: Path, size: int = size) -> int:
            p = d / "x"
            p.touch()
            os.setxattr(p, b"user.big", b"v" * size)
            return len(os.getxattr(p, b"user.big"))
        same_as_raw(setget, raw, bpath)
    same_as_raw(lambda d: os.setxattr(d / "x", b"user." + b"n" * 300, b"1"), raw, bpath)
    same_as_raw(lambda d: os.getxattr(d / "x", b"user.missing"), raw, bpath)
    assert_invariant(mount, bucket)


def test_deep_tree_of_one_thousand_levels(mount: Mount, bucket: str, bpath: Path) -> None:
    fds = _deep_dirs(bpath, len(os.fsencode(bpath)) + 1000 * 4, name_len=3)
    try:
        fd = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fds[-1])
        os.write(fd, b"leaf")
        os.close(fd)
        assert ledger(mount.mnt, bucket) == (4, 1)
        assert_invariant(mount, bucket)
        os.unlink("leaf", dir_fd=fds[-1])
        for i in range(len(fds) - 1, 0, -1):  # rmdir bottom-up (pytest's rmtree recurses)
            os.rmdir(f"{i - 1:03d}", dir_fd=fds[i - 1])
        assert ledger(mount.mnt, bucket) == (0, 0)
    finally:
        for fd in fds:
            os.close(fd)


def test_fallocate_is_unsupported_and_posix_fallocate_is_charged(mount: Mount, bucket: str,
                                                                 bpath: Path) -> None:
    """pyfuse3 has no FALLOCATE handler, so the kernel answers EOPNOTSUPP;
    glibc's posix_fallocate then writes the range, and that is charged."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(bpath / "pre", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert libc.fallocate(fd, 0, ctypes.c_long(0), ctypes.c_long(4096)) == -1
        assert ctypes.get_errno() == errno.EOPNOTSUPP
        os.posix_fallocate(fd, 0, 100_000)
        assert os.fstat(fd).st_size == 100_000
        assert ledger(mount.mnt, bucket) == (100_000, 1)
        with pytest.raises(OSError) as info:
            os.posix_fallocate(fd, 0, 2 * MiB)
        assert info.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    assert_invariant(mount, bucket)
