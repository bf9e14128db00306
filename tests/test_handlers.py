"""Filesystem semantics by calling the handlers directly: no kernel, no mount."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from pyfuse3 import ROOT_INODE, FUSEError

from ironfs.config import build_config
from ironfs.fs import IronFS
from ironfs.ledger import Ledger, Limits
from ironfs.stats import StatsBook
from ironfs.store import StateStore

ROOT_CTX = SimpleNamespace(uid=0, gid=0, pid=1, umask=0o022)


@pytest.fixture
def fs(tmp_path: Path) -> IronFS:
    backing = tmp_path / "backing"
    (backing / "b").mkdir(parents=True)
    cfg = build_config(str(backing), str(tmp_path / "mnt"), [], {})
    ledger = Ledger()
    book = StatsBook()
    book.attach(ledger.add(b"b", Limits(max_bytes=1000)))
    return IronFS(cfg, ledger, StateStore(cfg.backing, ledger, book))


async def lookup(fs: IronFS, *names: bytes) -> int:
    ino = ROOT_INODE
    for name in names:
        ino = (await fs.lookup(ino, name, ROOT_CTX)).st_ino
    return ino


async def create(fs: IronFS, parent: int, name: bytes, data: bytes = b"") -> tuple[int, int]:
    fi, attr = await fs.create(parent, name, 0o644, os.O_RDWR, ROOT_CTX)
    if data:
        assert await fs.write(fi.fh, 0, data) == len(data)
    return fi.fh, attr.st_ino


async def errno_of(coro) -> int:
    with pytest.raises(FUSEError) as info:
        await coro
    return info.value.errno


async def test_dotdot_never_escapes_the_backing_root(fs: IronFS) -> None:
    assert (await fs.lookup(ROOT_INODE, b"..", ROOT_CTX)).st_ino == ROOT_INODE
    b = await lookup(fs, b"b")
    assert (await fs.lookup(b, b"..", ROOT_CTX)).st_ino == ROOT_INODE
    assert (await fs.lookup(b, b".", ROOT_CTX)).st_ino == b


async def test_lookup_counts_and_forget_drop_nodes(fs: IronFS) -> None:
    b = await lookup(fs, b"b")
    fh, ino = await create(fs, b, b"f", b"123")
    await fs.release(fh)
    await fs.lookup(b, b"f", ROOT_CTX)
    assert fs.inodes.get(ino).lookups == 2
    await fs.forget([(ino, 2)])
    with pytest.raises(KeyError):
        fs.inodes.get(ino)
    assert fs.inodes.get(b).children == 0
    await fs.forget([(b, 1)])
    assert len(fs.inodes) == 1  # only the root is left


async def test_a_directory_rename_moves_known_children(fs: IronFS) -> None:
    b = await lookup(fs, b"b")
    d = (await fs.mkdir(b, b"d", 0o755, ROOT_CTX)).st_ino
    fh, ino = await create(fs, d, b"f", b"abc")
    await fs.rename(b, b"d", b, b"e", 0, ROOT_CTX)
    assert fs.inodes.path(fs.inodes.get(ino)).endswith(b"/b/e/f")
    assert (await fs.getattr(ino, ROOT_CTX)).st_size == 3
    await fs.release(fh)


async def test_unknown_inode_is_estale(fs: IronFS) -> None:
    assert await errno_of(fs.getattr(424242, ROOT_CTX)) == errno.ESTALE


async def test_os_errors_keep_their_errno(fs: IronFS) -> None:
    b = await lookup(fs, b"b")
    missing = await fs.lookup(b, b"missing", ROOT_CTX)  # a negative entry the kernel may cache
    assert missing.st_ino == 0 and missing.entry_timeout == fs.cfg.entry_timeout
    assert await errno_of(fs.rmdir(b, b"missing", ROOT_CTX)) == errno.ENOENT
    await create(fs, b, b"f")
    assert await errno_of(fs.mkdir(b, b"f", 0o755, ROOT_CTX)) == errno.EEXIST
    assert await errno_of(fs.create(b, b"f", 0o644, os.O_RDWR | os.O_EXCL, ROOT_CTX)) == errno.EEXIST


async def test_create_without_excl_on_existing_name_opens_it(fs: IronFS) -> None:
    b = await lookup(fs, b"b")
    fh, ino = await create(fs, b, b"f", b"hello")
    fi, attr = await fs.create(b, b"f", 0o644, os.O_RDWR | os.O_TRUNC, ROOT_CTX)
    assert attr.st_ino == ino and attr.st_size == 0
    assert fs.ledger.get(b"b").used_bytes == 0 and fs.ledger.get(b"b").objects == 1
    await fs.release(fh)
    await fs.release(fi.fh)


async def test_quota_refusal_maps_to_the_configured_errno(fs: IronFS) -> None:
    b = await lookup(fs, b"b")
    fh, _ = await create(fs, b, b"f", b"x" * 1000)
    assert await errno_of(fs.write(fh, 1000, b"y")) == errno.ENOSPC
    fs.quota_errno = errno.EDQUOT
    assert await errno_of(fs.write(fh, 1000, b"y")) == errno.EDQUOT
    assert fs.rejections == 2
    await fs.release(fh)


async def test_getattr_of_unlinked_open_file_uses_its_fd(fs: IronFS) -> None:
    b = await lookup(fs, b"b")
    fh, ino = await create(fs, b, b"f", b"abcd")
    await fs.unlink(b, b"f", ROOT_CTX)
    assert (await fs.getattr(ino, ROOT_CTX)).st_size == 4
    assert fs.ledger.get(b"b").used_bytes == 4
    await fs.release(fh)
    assert fs.ledger.get(b"b").used_bytes == 0


async def test_state_names_are_hidden_and_protected(fs: IronFS) -> None:
    b = await lookup(fs, b"b")
    (Path(os.fsdecode(fs.cfg.backing)) / "b" / ".quota").write_bytes(b"{}")
    assert (await fs.lookup(b, b".quota", ROOT_CTX)).st_ino == 0
    assert await errno_of(fs.unlink(b, b".quota", ROOT_CTX)) == errno.EPERM
    assert await errno_of(fs.create(b, b".stats", 0o644, os.O_RDWR, ROOT_CTX)) == errno.EPERM
    assert await errno_of(fs.mkdir(ROOT_INODE, b".ironfs", 0o755, ROOT_CTX)) == errno.EPERM


async def test_expose_state_shows_state_read_only(fs: IronFS) -> None:
    fs.cfg.expose_state = True
    b = await lookup(fs, b"b")
    (Path(os.fsdecode(fs.cfg.backing)) / "b" / ".quota").write_bytes(b"{}")
    q = (await fs.lookup(b, b".quota", ROOT_CTX)).st_ino
    fi = await fs.open(q, os.O_RDONLY, ROOT_CTX)
    assert await fs.read(fi.fh, 0, 10) == b"{}"
    await fs.release(fi.fh)
    assert await errno_of(fs.open(q, os.O_WRONLY, ROOT_CTX)) == errno.EACCES
    assert await errno_of(fs.setxattr(q, b"user.x", b"1", ROOT_CTX)) == errno.EPERM


async def test_limits_via_xattr_need_an_admin(fs: IronFS) -> None:
    b = await lookup(fs, b"b")
    user = SimpleNamespace(uid=1000, gid=1000, pid=1, umask=0o022)
    assert await errno_of(fs.setxattr(b, b"user.ironfs.max_bytes", b"1G", user)) == errno.EPERM
    fs.cfg.admin_uid = 1000
    await fs.setxattr(b, b"user.ironfs.max_bytes", b"1G", user)
    assert await fs.getxattr(b, b"user.ironfs.max_bytes", ROOT_CTX) == str(1 << 30).encode()
    for bad in (b"1X", b"\xff", b"", b"-1"):
        assert await errno_of(fs.setxattr(b, b"user.ironfs.max_bytes", bad, ROOT_CTX)) == errno.EINVAL
    assert await errno_of(fs.setxattr(b, b"user.ironfs.used_bytes", b"1", ROOT_CTX)) == errno.EINVAL
    assert fs.ledger.get(b"b").limits.max_bytes == 1 << 30


async def test_bucket_exchange_swaps_ledger_entries(fs: IronFS) -> None:
    (Path(os.fsdecode(fs.cfg.backing)) / "c").mkdir()
    b = await lookup(fs, b"b")
    c = await lookup(fs, b"c")  # adopted: appeared behind the mount's back
    fh, _ = await create(fs, b, b"f", b"12345")
    await fs.release(fh)
    await fs.rename(ROOT_INODE, b"b", ROOT_INODE, b"c", 2, ROOT_CTX)  # RENAME_EXCHANGE
    assert fs.ledger.get(b"c").used_bytes == 5 and fs.ledger.get(b"b").used_bytes == 0
    assert fs.inodes.get(b).name == b"c" and fs.inodes.get(c).name == b"b"
