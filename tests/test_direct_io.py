"""Write-only handles on the kernel's direct-I/O path: one FUSE request per
write, caches that stay coherent, and set-ID bits cleared as on ext4."""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounting import Mount, as_user, scrape, start_mount
from tests.s3server import free_port

NOBODY = 65534


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mount, int]]:
    base = tmp_path_factory.mktemp("dio")
    port = free_port()
    m = start_mount(base / "backing", base / "s3", options=[f"metrics=127.0.0.1:{port}",
                                                            "bucket_quota_bytes=none"])
    try:
        (m.mnt / "b").mkdir()
        (base / "raw").mkdir()
        yield m, port
    finally:
        m.stop()


def requests(port: int) -> dict[str, float]:
    return {dict(labels)["op"]: value for (name, labels), value in
            scrape(f"http://127.0.0.1:{port}/metrics").items() if name == "ironfs_fuse_requests_total"}


def spent(port: int, before: dict[str, float]) -> dict[str, float]:
    after = requests(port)
    return {op: n - before.get(op, 0) for op, n in after.items() if n != before.get(op, 0)}


def test_a_write_through_a_write_only_handle_is_one_request(metered: tuple[Mount, int]) -> None:
    m, port = metered
    path = m.mnt / "b" / "wo"
    path.write_bytes(b"")
    fd = os.open(path, os.O_WRONLY)
    try:
        before = requests(port)
        for i in range(10):
            os.pwrite(fd, b"w" * 5000, i * 5000)  # unaligned: no page-sized pieces either
        assert spent(port, before) == {"write": 10}
    finally:
        os.close(fd)
    assert path.stat().st_size == 50_000


def test_a_read_write_handle_stays_cached_and_mmap_works(metered: tuple[Mount, int]) -> None:
    m, port = metered
    path = m.mnt / "b" / "rw"
    path.write_bytes(b"\0" * 8192)
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mapped:  # MAP_SHARED, writable
        mapped[:4] = b"mmap"
        mapped.flush()
    assert path.read_bytes()[:4] == b"mmap"


def test_a_cached_reader_sees_what_a_direct_writer_wrote(metered: tuple[Mount, int]) -> None:
    m, _ = metered
    path = m.mnt / "b" / "coherent"
    path.write_bytes(b"A" * 8192)
    reader = os.open(path, os.O_RDONLY)
    writer = os.open(path, os.O_WRONLY)
    try:
        assert os.pread(reader, 8192, 0) == b"A" * 8192  # now in the page cache
        os.pwrite(writer, b"CCCC", 4096)
        assert os.pread(reader, 8, 4092) == b"AAAACCCC"
        os.pwrite(writer, b"DDDD", 8192)  # past the end: the reader sees the new size
        assert os.pread(reader, 100, 8190) == b"AADDDD"
        assert os.fstat(reader).st_size == 8196
    finally:
        os.close(reader)
        os.close(writer)


def test_append_through_a_write_only_handle(metered: tuple[Mount, int]) -> None:
    m, _ = metered
    path = m.mnt / "b" / "appended"
    path.write_bytes(b"start")
    for part in (b"-one", b"-two"):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.write(fd, part)
        os.close(fd)
    assert path.read_bytes() == b"start-one-two"


# -- set-user-ID and set-group-ID bits, compared with ext4 in the same run --------------

MODES = (0o6777, 0o6767, 0o4777, 0o2777, 0o2767, 0o0777)
GROUPS = (0, NOBODY)  # nobody is not in group root, and is in its own group
OPENS = (os.O_WRONLY, os.O_RDWR)


def mode_after_write(directory: Path, name: str, mode: int, gid: int, flags: int, uid: int) -> int:
    path = directory / name
    path.write_bytes(b"x")
    os.chown(path, 0, gid)
    os.chmod(path, mode)

    def write() -> None:
        fd = os.open(name, flags)
        try:
            os.write(fd, b"y")
        finally:
            os.close(fd)

    code = as_user(write, cwd=directory, uid=uid)
    assert code == 0, os.strerror(code)
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("uid", [NOBODY, 0], ids=["nobody", "root"])
def test_set_id_bits_are_cleared_as_on_ext4(metered: tuple[Mount, int], uid: int) -> None:
    m, _ = metered
    raw = m.backing.parent / "raw"
    got, expected = {}, {}
    for mode in MODES:
        for gid in GROUPS:
            for flags in OPENS:
                case = f"{mode:o}-g{gid}-{'wo' if flags == os.O_WRONLY else 'rw'}-u{uid}"
                expected[case] = mode_after_write(raw, case, mode, gid, flags, uid)
                got[case] = mode_after_write(m.mnt / "b", case, mode, gid, flags, uid)
    assert {k: f"{v:o}" for k, v in got.items()} == {k: f"{v:o}" for k, v in expected.items()}
    if uid == NOBODY:  # the comparison means something: ext4 cleared bits here
        assert expected["6777-g0-wo-u65534"] == 0o777 and expected["2767-g0-wo-u65534"] == 0o767


def test_set_id_bits_added_while_open_are_cleared_by_the_next_write(metered: tuple[Mount, int]) -> None:
    m, _ = metered
    path = m.mnt / "b" / "late-suid"
    path.write_bytes(b"x")
    os.chmod(path, 0o777)
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()

    def write_before_and_after_the_chmod() -> None:
        fd = os.open("late-suid", os.O_WRONLY)
        os.write(fd, b"1")
        os.write(ready_w, b"!")
        os.read(go_r, 1)  # the parent chmods u+s now
        os.write(fd, b"2")
        os.close(fd)

    try:
        pid = os.fork()
        if pid == 0:
            os._exit(as_user(write_before_and_after_the_chmod, cwd=m.mnt / "b", uid=NOBODY))
        os.read(ready_r, 1)
        os.chmod(path, 0o4777)
        os.write(go_w, b"!")
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    finally:
        for fd in (go_r, go_w, ready_r, ready_w):
            os.close(fd)
    assert stat.S_IMODE(path.stat().st_mode) == 0o777
