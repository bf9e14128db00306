"""The FUSE adapter: a passthrough of the backing root that charges every growth
to the bucket it happens in.

Concurrency contract: pyfuse3 runs handlers as trio tasks on one thread.  The
handlers that change usage do not ``await`` at all between the quota check and
the I/O, so a check, its charge and the I/O it guards happen with no other
request in between; a failed I/O refunds what was charged.  Only ``fsync`` and
large ``read``s await (in a worker thread), and they change no usage.

Errors: every OSError leaves a handler as FUSEError with the same errno; a
quota refusal (QuotaExceeded) leaves as ENOSPC, or EDQUOT with
``-o quota_errno=EDQUOT``.  Anything else is a bug and stops the daemon, which
leaves the mount dead (ENOTCONN) rather than writable behind the quota's back.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pyfuse3
import trio
from pyfuse3 import EntryAttributes, FileInfo, FUSEError, StatvfsData

from .catalog import adopt_bucket, new_bucket
from .config import Config
from .control import Control, ControlError
from .inodes import InodeTable, Node
from .ledger import Bucket, Ledger, QuotaExceeded
from .persist import StateStore
from .rules import hides, is_bucket_name, is_bucket_state, is_root_state
from .scanner import scan_tree
from .state import archive_bucket_state, fsync_dir
from .stats import (
    BYTES_READ,
    BYTES_WRITTEN,
    DELETE,
    GET,
    HEAD,
    LIST,
    MULTIPART,
    PUT,
    REJECTIONS,
)

log = logging.getLogger(__name__)

#: Flags never passed to the backing open: O_APPEND because pwrite would ignore the
#: kernel's offset (the kernel computes the append position and we account for it).
_STRIP_FLAGS = os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_DIRECT
_XATTR_PREFIX = b"user.ironfs."
_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
#: A lookup of an object counts as HEAD unless an open follows within this time…
HEAD_WAIT = 0.5
#: …or the object was opened, closed or published this recently (a server's own
#: check around a GET or PUT).
QUIET_AFTER_USE = 1.0
#: Reads at least this large run in a worker thread.
THREAD_IO_BYTES = 256 * 1024

Change = tuple[Bucket, int, int]


def handler(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a synchronous handler body: map domain and OS errors to FUSEError."""
    @functools.wraps(fn)
    async def wrapper(self: IronFS, *args: Any) -> Any:
        try:
            return fn(self, *args)
        except OSError as e:
            raise FUSEError(e.errno or errno.EIO) from None
        except ControlError as e:
            log.debug("refused: %s", e)
            raise FUSEError(e.errno) from None
        except QuotaExceeded as e:
            self.rejections += 1
            self.book.add(e.bucket, REJECTIONS)
            log.debug("refused: %s", e)
            raise FUSEError(self.quota_errno) from None
    return wrapper


def renameat2(old: bytes, new: bytes, flags: int) -> None:
    if flags == 0:
        os.rename(old, new)
        return
    if _libc.renameat2(_AT_FDCWD, old, _AT_FDCWD, new, ctypes.c_uint(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


NOT_READING, READ_COUNTED, REREAD = 0, 1, 2


class Handle:
    __slots__ = ("fd", "node", "wrote", "reading")

    def __init__(self, fd: int, node: Node, wrote: bool = False) -> None:
        self.fd = fd
        self.node = node
        self.wrote = wrote  # created, truncated or written through this handle
        self.reading = NOT_READING  # read-only: counted as a GET, or the server's re-read


class DirHandle:
    __slots__ = ("node", "names")

    def __init__(self, node: Node) -> None:
        self.node = node
        self.names: list[bytes] | None = None


class IronFS(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False  # a quota error must reach the write() that caused it

    def __init__(self, cfg: Config, ledger: Ledger, store: StateStore) -> None:
        super().__init__()
        self.cfg = cfg
        self.ledger = ledger
        self.store = store
        self.book = store.book
        self.profile = cfg.profile
        self.quota_errno = cfg.quota_errno
        root_st = os.lstat(cfg.backing)
        self.inodes = InodeTable(cfg.backing, (root_st.st_dev, root_st.st_ino))
        self.root = self.inodes.root
        self.handles: dict[int, Handle] = {}
        self.dirs: dict[int, DirHandle] = {}
        self._next_dir = 1
        self.entry_timeout = cfg.entry_timeout
        self.attr_timeout = cfg.attr_timeout
        self.rejections = 0
        self._heads: dict[Node, float] = {}  # objects looked up, not yet opened
        self.control = Control(cfg, ledger, self.book, self.pending_bytes)

    # -- helpers: nodes, names, attributes -------------------------------------
    def _node(self, ino: int) -> Node:
        try:
            return self.inodes.get(ino)
        except KeyError:
            raise FUSEError(errno.ESTALE) from None

    def _target(self, node: Node) -> bytes:
        """A path that reaches *node*: its name, or an open fd once unlinked."""
        path = self.inodes.path(node)
        return path if path is not None else b"/proc/self/fd/%d" % self._open_fd(node)

    def _open_fd(self, node: Node) -> int:
        """An fd of one of *node*'s open handles (for a file whose names are gone)."""
        for h in self.handles.values():
            if h.node is node:
                return h.fd
        raise FUSEError(errno.ESTALE)

    def _stat(self, node: Node) -> os.stat_result:
        path = self.inodes.path(node)
        return os.lstat(path) if path is not None else os.fstat(self._open_fd(node))

    def _entry(self, node: Node, st: os.stat_result) -> EntryAttributes:
        e = EntryAttributes()
        e.st_ino = node.ino
        e.generation = 0
        e.entry_timeout = self.entry_timeout
        e.attr_timeout = self.attr_timeout
        e.st_mode = st.st_mode
        e.st_nlink = st.st_nlink
        e.st_uid = st.st_uid
        e.st_gid = st.st_gid
        e.st_rdev = st.st_rdev
        e.st_size = st.st_size
        e.st_blksize = st.st_blksize
        e.st_blocks = st.st_blocks
        e.st_atime_ns = st.st_atime_ns
        e.st_mtime_ns = st.st_mtime_ns
        e.st_ctime_ns = st.st_ctime_ns
        return e

    def _negative(self) -> EntryAttributes:
        """"No such entry", which the kernel may remember for entry_timeout: a
        server checks a key several times before it writes it."""
        e = EntryAttributes()
        e.st_ino = 0
        e.entry_timeout = self.entry_timeout
        return e

    def _is_bucket_dir(self, node: Node) -> bool:
        return node.parent is self.root and node.in_bucket

    def _is_state_name(self, parent: Node, name: bytes) -> bool:
        if parent is self.root:
            return is_root_state(name)
        return self._is_bucket_dir(parent) and is_bucket_state(name)

    def _check_writable(self, parent: Node, name: bytes) -> None:
        """Names of ironfs's state can be neither made, removed nor replaced."""
        if parent.state or self._is_state_name(parent, name):
            raise FUSEError(errno.EPERM)

    def _classify(self, parent: Node, name: bytes, st: os.stat_result) -> tuple[Bucket | None, bool]:
        """(bucket charged for the entry, whether it is ironfs's state)."""
        if parent is self.root:
            if is_root_state(name):
                return None, True
            if stat.S_ISDIR(st.st_mode) and is_bucket_name(name):
                return self._bucket_named(name), False
            return None, False
        if parent.state or (self._is_bucket_dir(parent) and is_bucket_state(name)):
            return None, True
        return parent.bucket, False

    def _bucket_named(self, name: bytes) -> Bucket:
        """The bucket of a top-level directory; an evicted one stays on disk
        (a placeholder reloads it on first real use, not on a listing)."""
        bucket = self.ledger.get(name)
        if bucket is None:
            if name in self.ledger.evicted:
                return self.ledger.placeholder(name)
            bucket = adopt_bucket(self.cfg, self.ledger, self.book, name)
        return bucket

    def _remember(self, parent: Node, name: bytes, st: os.stat_result) -> Node:
        bucket, is_state = self._classify(parent, name, st)
        return self.inodes.remember(parent, name, st, bucket, is_state)

    def _hidden(self, directory: Node) -> bool:
        """Whether files in *directory* are hidden from the object count."""
        node = directory
        while node.parent is not self.root:
            if node.parent is None:
                return True
            if hides(node.name):
                return True
            node = node.parent
        return False

    def _is_object(self, parent: Node, name: bytes) -> bool:
        """Whether a regular file *parent*/*name* is an object (its bucket's count)."""
        if parent.bucket is None or parent.state:
            return False
        return self.profile.is_object_name(name) and not self._hidden(parent)

    def _chown_new(self, target: bytes | int, parent: Node, ctx: Any) -> None:
        """New entries belong to the caller; a set-gid directory keeps its group."""
        if ctx.uid == 0 and ctx.gid == 0:
            return  # created as root already; a set-gid parent's group was applied
        gid = ctx.gid
        if os.lstat(self.inodes.path(parent) or self._target(parent)).st_mode & stat.S_ISGID:
            gid = -1
        if isinstance(target, int):
            os.fchown(target, ctx.uid, gid)
        else:
            os.chown(target, ctx.uid, gid, follow_symlinks=False)

    # -- lookups and attributes ------------------------------------------------
    @handler
    def lookup(self, parent_ino: int, name: bytes, ctx: Any) -> EntryAttributes:
        parent = self._node(parent_ino)
        if name == b"." or name == b"..":
            node = parent if name == b"." else (parent.parent or self.root)
            st = self._stat(node)
            node.lookups += 1
            return self._entry(node, st)
        if not self.cfg.expose_state and self._is_state_name(parent, name):
            return self._negative()
        try:
            st = os.lstat(self.inodes.child_path(parent, name))
        except FileNotFoundError:
            return self._negative()
        node = self._remember(parent, name, st)
        if stat.S_ISREG(st.st_mode) and node.bucket is not None:
            self._looked_at(node)
        return self._entry(node, st)

    async def forget(self, inode_list: Any) -> None:
        for ino, n in inode_list:
            self.inodes.forget(ino, n)

    @handler
    def getattr(self, ino: int, ctx: Any) -> EntryAttributes:
        node = self._node(ino)
        st = self._stat(node)
        if stat.S_ISREG(st.st_mode) and node.bucket is not None:
            self._looked_at(node)
        return self._entry(node, st)

    @handler
    def setattr(self, ino: int, attr: EntryAttributes, fields: Any, fh: int | None,
                ctx: Any) -> EntryAttributes:
        node = self._node(ino)
        if node.state:
            raise FUSEError(errno.EPERM)
        handle = self.handles.get(fh) if fh is not None else None
        target: bytes | int = handle.fd if handle is not None else self._target(node)
        if fields.update_size:
            self._truncate(node, target, attr.st_size)
            if handle is not None:
                handle.wrote = node.fresh = True
        if fields.update_mode:
            if stat.S_ISLNK(self._stat(node).st_mode):
                raise FUSEError(errno.EOPNOTSUPP)
            os.chmod(target, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
            if isinstance(target, int):
                os.fchown(target, uid, gid)
            else:
                os.chown(target, uid, gid, follow_symlinks=False)
        if fields.update_atime or fields.update_mtime:
            self._set_times(node, target, attr, fields)
        return self._entry(node, self._stat(node))

    def _set_times(self, node: Node, target: bytes | int, attr: EntryAttributes, fields: Any) -> None:
        st = self._stat(node)
        atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
        mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
        if isinstance(target, int):
            os.utime(target, ns=(atime, mtime))
        else:
            os.utime(target, ns=(atime, mtime), follow_symlinks=False)

    def _size_of(self, node: Node, target: bytes | int) -> int:
        """Current apparent size; remembered while the file is open."""
        if node.size is not None:
            return node.size
        size = (os.fstat(target) if isinstance(target, int) else self._stat(node)).st_size
        if node.open:
            node.size = size
        return size

    def _truncate(self, node: Node, target: bytes | int, length: int) -> None:
        bucket = node.bucket
        if bucket is None:
            os.truncate(target, length)
            if node.size is not None:
                node.size = length
            return
        old = self._size_of(node, target)
        grow = length - old
        if grow > 0:
            self.ledger.charge(bucket, grow)
        try:
            os.truncate(target, length)
        except OSError:
            if grow > 0:
                self.ledger.refund(bucket, grow)
            raise
        if grow < 0:
            self.ledger.refund(bucket, -grow)
        if node.open:
            node.size = length

    @handler
    def readlink(self, ino: int, ctx: Any) -> bytes:
        return os.readlink(self._target(self._node(ino)))

    @handler
    def statfs(self, ctx: Any) -> StatvfsData:
        s = os.statvfs(self.cfg.backing)
        d = StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                     "f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(d, name, getattr(s, name))
        return d

    @handler
    def access(self, ino: int, mode: int, ctx: Any) -> bool:
        # default_permissions makes the kernel check permissions; this answers
        # access(2) for callers that still ask (existence, and execute for root).
        st = self._stat(self._node(ino))
        if ctx.uid != 0 or not mode & os.X_OK:
            return True
        return stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)

    # -- making and removing names ------------------------------------------------
    @handler
    def mknod(self, parent_ino: int, name: bytes, mode: int, rdev: int, ctx: Any) -> EntryAttributes:
        parent = self._node(parent_ino)
        self._check_writable(parent, name)
        path = self.inodes.child_path(parent, name)
        objects = 1 if stat.S_ISREG(mode) and self._is_object(parent, name) else 0
        if objects:
            self.ledger.charge(parent.bucket, 0, 1)  # type: ignore[arg-type]
        try:
            os.mknod(path, mode & ~ctx.umask, rdev)
        except OSError:
            if objects:
                self.ledger.refund(parent.bucket, 0, 1)  # type: ignore[arg-type]
            raise
        self._chown_new(path, parent, ctx)
        return self._new_entry(parent, name, path)

    def _new_entry(self, parent: Node, name: bytes, path: bytes) -> EntryAttributes:
        st = os.lstat(path)
        return self._entry(self._remember(parent, name, st), st)

    @handler
    def mkdir(self, parent_ino: int, name: bytes, mode: int, ctx: Any) -> EntryAttributes:
        parent = self._node(parent_ino)
        self._check_writable(parent, name)
        path = self.inodes.child_path(parent, name)
        making_bucket = parent is self.root and is_bucket_name(name)
        os.mkdir(path, mode & ~ctx.umask & 0o7777)
        self._chown_new(path, parent, ctx)
        if making_bucket and self.ledger.lookup(name) is None:
            new_bucket(self.cfg, self.ledger, self.book, name)
            log.info("bucket %s created", os.fsdecode(name))
        return self._new_entry(parent, name, path)

    @handler
    def symlink(self, parent_ino: int, name: bytes, target: bytes, ctx: Any) -> EntryAttributes:
        parent = self._node(parent_ino)
        self._check_writable(parent, name)
        path = self.inodes.child_path(parent, name)
        os.symlink(target, path)
        self._chown_new(path, parent, ctx)
        return self._new_entry(parent, name, path)

    @handler
    def link(self, ino: int, new_parent_ino: int, new_name: bytes, ctx: Any) -> EntryAttributes:
        node = self._node(ino)
        parent = self._node(new_parent_ino)
        self._check_writable(parent, new_name)
        if node.state:
            raise FUSEError(errno.EPERM)
        if node.bucket is not parent.bucket or self._is_bucket_dir(node):
            raise FUSEError(errno.EXDEV)
        source = self._target(node)
        path = self.inodes.child_path(parent, new_name)
        objects = 1 if (stat.S_ISREG(self._stat(node).st_mode)
                        and self._is_object(parent, new_name)) else 0
        if objects:
            self.ledger.charge(parent.bucket, 0, 1)  # type: ignore[arg-type]
        try:
            os.link(source, path, follow_symlinks=False)
        except OSError:
            if objects:
                self.ledger.refund(parent.bucket, 0, 1)  # type: ignore[arg-type]
            raise
        return self._new_entry(parent, new_name, path)

    @handler
    def unlink(self, parent_ino: int, name: bytes, ctx: Any) -> None:
        parent = self._node(parent_ino)
        self._check_writable(parent, name)
        path = self.inodes.child_path(parent, name)
        st = os.lstat(path)
        done = self.ledger.charge_many(self._drop_changes(parent, name, st))
        try:
            os.unlink(path)
        except OSError:
            self.ledger.refund_many(done)
            raise
        if stat.S_ISREG(st.st_mode) and self._is_object(parent, name):
            self.book.add(parent.bucket, DELETE)  # type: ignore[arg-type]
        self._dropped(parent, name, st)

    def _drop_changes(self, parent: Node, name: bytes, st: os.stat_result) -> list[Change]:
        """What removing the name *parent*/*name* (a file with *st*) gives back."""
        bucket = parent.bucket
        if bucket is None or not stat.S_ISREG(st.st_mode):
            return []
        objects = 1 if self._is_object(parent, name) else 0
        nbytes = 0
        if st.st_nlink <= 1:
            node = self.inodes.by_key((st.st_dev, st.st_ino))
            if node is None or node.open == 0:
                nbytes = st.st_size  # else refunded when the last handle closes
        return [(bucket, -nbytes, -objects)]

    def _dropped(self, parent: Node, name: bytes, st: os.stat_result) -> None:
        """Update the inode table after *parent*/*name* disappeared."""
        node = self.inodes.by_key((st.st_dev, st.st_ino))
        if node is None:
            return
        self._heads.pop(node, None)
        if stat.S_ISDIR(st.st_mode) or st.st_nlink <= 1:
            if node.open and node.bucket is not None and stat.S_ISREG(st.st_mode):
                node.unlinked = True
            self.inodes.gone(node)
        else:
            self.inodes.unlinked(node, parent, name)

    @handler
    def rmdir(self, parent_ino: int, name: bytes, ctx: Any) -> None:
        parent = self._node(parent_ino)
        self._check_writable(parent, name)
        path = self.inodes.child_path(parent, name)
        st = os.lstat(path)
        bucket = self.ledger.lookup(name) if parent is self.root else None
        if bucket is not None and stat.S_ISDIR(st.st_mode):
            self._remove_bucket(bucket, path)
        else:
            os.rmdir(path)
        self._dropped(parent, name, st)

    def _remove_bucket(self, bucket: Bucket, path: bytes) -> None:
        """DeleteBucket: allowed when only ironfs's state is left; the state is
        archived under .ironfs/archive/ so the month's figures survive."""
        with self.store.lock:
            if any(not is_bucket_state(n) for n in os.listdir(path)):
                raise FUSEError(errno.ENOTEMPTY)
            self.store.flush_bucket(bucket)
            now = datetime.now(UTC)
            archive = archive_bucket_state(self.cfg.backing, bucket.name, now)
            try:
                os.rmdir(path)
            except OSError:
                if archive is not None:
                    for n in os.listdir(archive):
                        os.rename(os.path.join(archive, n), os.path.join(path, n))
                raise
            self.ledger.remove(bucket.name)
        log.info("bucket %s deleted; state archived in %s", bucket.display_name,
                 os.fsdecode(archive or b"(nothing to archive)"))

    # -- rename --------------------------------------------------------------------
    @handler
    def rename(self, old_parent_ino: int, old_name: bytes, new_parent_ino: int,
               new_name: bytes, flags: int, ctx: Any) -> None:
        old_parent = self._node(old_parent_ino)
        new_parent = self._node(new_parent_ino)
        self._check_writable(old_parent, old_name)
        self._check_writable(new_parent, new_name)
        old_path = self.inodes.child_path(old_parent, old_name)
        new_path = self.inodes.child_path(new_parent, new_name)
        src = os.lstat(old_path)
        try:
            dst: os.stat_result | None = os.lstat(new_path)
        except FileNotFoundError:
            dst = None
        exchange = bool(flags & pyfuse3.RENAME_EXCHANGE)
        if dst is not None and not exchange and (src.st_dev, src.st_ino) == (dst.st_dev, dst.st_ino):
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise FUSEError(errno.EEXIST)
            return  # two names of one file: rename(2) does nothing
        changes = self._move_changes(old_parent, old_name, src, new_parent, new_name)
        if exchange and dst is not None:
            changes += self._move_changes(new_parent, new_name, dst, old_parent, old_name)
        elif dst is not None and not flags & pyfuse3.RENAME_NOREPLACE:
            if self._is_bucket_position(new_parent, new_name, dst):
                raise FUSEError(errno.ENOTEMPTY)  # a bucket always holds its state
            changes += self._drop_changes(new_parent, new_name, dst)
        published = (stat.S_ISREG(src.st_mode) and not exchange
                     and self._is_object(new_parent, new_name)
                     and not self._is_object(old_parent, old_name))
        multipart = published and self.profile.is_multipart(
            self.inodes.components(old_parent)[1:] + [old_name])
        if old_parent is self.root and new_parent is self.root and stat.S_ISDIR(src.st_mode):
            # An evicted bucket is reloaded from its .quota before that moves.
            self.ledger.lookup(old_name)
            self.ledger.lookup(new_name)
        done = self.ledger.charge_many(changes)
        try:
            renameat2(old_path, new_path, flags)
        except OSError:
            self.ledger.refund_many(done)
            raise
        if published:
            self._published(new_parent.bucket, src, multipart)  # type: ignore[arg-type]
        self._renamed(old_parent, old_name, src, new_parent, new_name, dst, exchange)

    def _is_bucket_position(self, parent: Node, name: bytes, st: os.stat_result) -> bool:
        return parent is self.root and is_bucket_name(name) and stat.S_ISDIR(st.st_mode)

    def _move_changes(self, src_parent: Node, src_name: bytes, st: os.stat_result,
                      dst_parent: Node, dst_name: bytes) -> list[Change]:
        """Usage changes of moving one entry; raises EXDEV where the charge can't follow."""
        if stat.S_ISDIR(st.st_mode):
            return self._move_dir_changes(src_parent, src_name, dst_parent, dst_name)
        src_b, dst_b = src_parent.bucket, dst_parent.bucket
        if not stat.S_ISREG(st.st_mode):
            return []
        changes: list[Change] = []
        if src_b is not dst_b:
            if st.st_nlink > 1:
                raise FUSEError(errno.EXDEV)  # its other names would stay behind
            if src_b is not None:
                changes.append((src_b, -st.st_size, 0))
            if dst_b is not None:
                changes.append((dst_b, st.st_size, 0))
        if self._is_object(src_parent, src_name):
            changes.append((src_b, 0, -1))  # type: ignore[arg-type]
        if self._is_object(dst_parent, dst_name):
            changes.append((dst_b, 0, 1))  # type: ignore[arg-type]
        return changes

    def _move_dir_changes(self, src_parent: Node, src_name: bytes,
                          dst_parent: Node, dst_name: bytes) -> list[Change]:
        src_is_bucket = src_parent is self.root and is_bucket_name(src_name)
        dst_is_bucket = dst_parent is self.root and is_bucket_name(dst_name)
        if src_is_bucket or dst_is_bucket:
            if src_is_bucket and dst_is_bucket:
                return []  # renaming a bucket: its usage travels with it
            raise FUSEError(errno.EXDEV)
        bucket = src_parent.bucket
        if bucket is not dst_parent.bucket:
            raise FUSEError(errno.EXDEV)
        if bucket is None:
            return []
        was_hidden = self._hidden(src_parent) or hides(src_name)
        now_hidden = self._hidden(dst_parent) or hides(dst_name)
        if was_hidden == now_hidden:
            return []
        # A staging directory published (or hidden) whole: its files change count.
        path = self.inodes.child_path(src_parent, src_name)
        n = scan_tree(path, self.profile, bucket_top=False).objects
        return [(bucket, 0, n if was_hidden else -n)]

    def _renamed(self, old_parent: Node, old_name: bytes, src: os.stat_result,
                 new_parent: Node, new_name: bytes, dst: os.stat_result | None,
                 exchange: bool) -> None:
        """Bring the ledger's bucket names and the inode table up to date."""
        if old_parent is self.root and new_parent is self.root and stat.S_ISDIR(src.st_mode) \
                and is_bucket_name(old_name):
            if exchange and dst is not None and self._is_bucket_position(old_parent, new_name, dst):
                self.ledger.exchange(old_name, new_name)
            else:
                self.ledger.rename(old_name, new_name)
        src_node = self.inodes.by_key((src.st_dev, src.st_ino))
        dst_node = self.inodes.by_key((dst.st_dev, dst.st_ino)) if dst is not None else None
        if dst is not None and not exchange:
            self._dropped(new_parent, new_name, dst)
        if src_node is not None and not (exchange and src_node is dst_node):
            self.inodes.moved(src_node, old_parent, old_name, new_parent, new_name)
            if not stat.S_ISDIR(src.st_mode):
                src_node.bucket = new_parent.bucket
        if exchange and dst_node is not None and dst_node is not src_node:
            self.inodes.moved(dst_node, new_parent, new_name, old_parent, old_name)
            if not stat.S_ISDIR(dst.st_mode):  # type: ignore[union-attr]
                dst_node.bucket = old_parent.bucket

    # -- files -------------------------------------------------------------------
    @handler
    def open(self, ino: int, flags: int, ctx: Any) -> FileInfo:
        node = self._node(ino)
        return FileInfo(fh=self._open(node, flags))

    def _open(self, node: Node, flags: int) -> int:
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        if node.state and writing:
            raise FUSEError(errno.EACCES)
        path = self.inodes.path(node)
        bflags = (flags & ~_STRIP_FLAGS) | os.O_CLOEXEC
        if path is None:  # unlinked while open: reopen through an open fd's link
            target = b"/proc/self/fd/%d" % self._open_fd(node)
        else:
            target = path
            bflags |= os.O_NOFOLLOW
        truncated = 0
        if flags & os.O_TRUNC and node.bucket is not None:
            truncated = self._size_of(node, target)
        fd = os.open(target, bflags)
        if truncated:
            self.ledger.refund(node.bucket, truncated)  # type: ignore[arg-type]
        reading = not writing
        if flags & os.O_TRUNC:
            node.size = 0
            node.fresh = True
        node.open += 1
        handle = self.handles[fd] = Handle(fd, node, wrote=bool(flags & os.O_TRUNC))
        if node.bucket is not None:
            self._opened(handle, reading)
        return fd

    @handler
    def create(self, parent_ino: int, name: bytes, mode: int, flags: int,
               ctx: Any) -> tuple[FileInfo, EntryAttributes]:
        parent = self._node(parent_ino)
        self._check_writable(parent, name)
        path = self.inodes.child_path(parent, name)
        bucket = parent.bucket
        objects = 1 if self._is_object(parent, name) else 0
        if objects:
            self.ledger.charge(bucket, 0, 1)  # type: ignore[arg-type]
        bflags = (flags & ~_STRIP_FLAGS) | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(path, bflags, mode & ~ctx.umask & 0o7777)
        except OSError as e:
            if objects:
                self.ledger.refund(bucket, 0, 1)  # type: ignore[arg-type]
            if e.errno == errno.EEXIST and not flags & os.O_EXCL:
                return self._create_existing(parent, name, path, flags)
            raise
        self._chown_new(fd, parent, ctx)
        st = os.fstat(fd)
        node = self._remember(parent, name, st)
        node.open += 1
        node.size = 0
        node.fresh = True
        self.handles[fd] = Handle(fd, node, wrote=True)
        return FileInfo(fh=fd), self._entry(node, st)

    def _create_existing(self, parent: Node, name: bytes, path: bytes,
                         flags: int) -> tuple[FileInfo, EntryAttributes]:
        """O_CREAT without O_EXCL on a name that exists after all: open it."""
        node = self._remember(parent, name, os.lstat(path))
        fd = self._open(node, flags)
        return FileInfo(fh=fd), self._entry(node, os.fstat(fd))

    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self.handles[fh]
        try:
            if size >= THREAD_IO_BYTES:
                # Large reads (readahead) in a worker thread: two can overlap on two cores.
                data = await trio.to_thread.run_sync(os.pread, handle.fd, size, off)
            else:
                data = os.pread(handle.fd, size, off)
        except OSError as e:
            raise FUSEError(e.errno or errno.EIO) from None
        if handle.node.bucket is not None:
            self.book.add(handle.node.bucket, BYTES_READ, len(data))
        return data

    @handler
    def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self.handles[fh]
        node = handle.node
        bucket = node.bucket
        if bucket is None:
            return os.pwrite(handle.fd, buf, off)
        handle.wrote = node.fresh = True
        self.book.add(bucket, BYTES_WRITTEN, len(buf))
        size = node.size
        if size is None:
            size = node.size = os.fstat(handle.fd).st_size
        end = off + len(buf)
        if end <= size:
            return os.pwrite(handle.fd, buf, off)
        self.ledger.charge(bucket, end - size)
        node.size = end
        try:
            n = os.pwrite(handle.fd, buf, off)
        except OSError:
            node.size = size
            self.ledger.refund(bucket, end - size)
            raise
        if n < len(buf):  # short write: give back what did not land
            actual = max(size, off + n)
            node.size = actual
            self.ledger.refund(bucket, end - actual)
        return n

    # No flush handler: pyfuse3 answers ENOSYS, after which the kernel stops
    # sending FLUSH on every close(2) (ironfs has nothing to flush per close:
    # writes reach the backing file as they come).

    @handler
    def release(self, fh: int) -> None:
        self._release(fh)

    def _release(self, fh: int) -> None:
        handle = self.handles.pop(fh)
        node = handle.node
        if node.bucket is not None:
            self._closed(node, handle)
        try:
            if node.open == 1 and node.unlinked:
                # The last handle of an unlinked file: now its bytes are gone.
                size = node.size if node.size is not None else os.fstat(handle.fd).st_size
                node.unlinked = False
                if node.bucket is not None:
                    self.ledger.refund(node.bucket, size)
        finally:
            node.open -= 1
            if node.open == 0:
                node.size = None
                self.inodes.collect(node)
            os.close(handle.fd)

    async def fsync(self, fh: int, datasync: bool) -> None:
        fd = self.handles[fh].fd
        try:
            await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fd)
        except OSError as e:
            raise FUSEError(e.errno or errno.EIO) from None

    def release_all(self) -> None:
        """After unmount: close what the kernel left open, settling pending refunds."""
        for fh in list(self.handles):
            try:
                self._release(fh)
            except OSError as e:
                log.warning("closing a handle left open at unmount: %s", e.strerror)
        self.inodes.close_anchors()

    # -- operation counters (rules in DESIGN.md and the README) -------------------
    def _node_is_object(self, node: Node) -> bool:
        return node.parent is not None and self._is_object(node.parent, node.name)

    def _looked_at(self, node: Node) -> None:
        """An object's attributes were asked for: a HEAD, unless an open follows."""
        now = time.monotonic()
        if node.open or now - node.busy_at < QUIET_AFTER_USE or node in self._heads:
            return
        if self._node_is_object(node):
            self._heads[node] = now

    def _opened(self, handle: Handle, reading: bool) -> None:
        node = handle.node
        now = time.monotonic()
        node.busy_at = now
        self._heads.pop(node, None)
        if not reading or not self._node_is_object(node):
            return
        window = self.profile.reread_window
        if window and now - node.read_at < window:
            handle.reading = REREAD  # the second read of the same GET
        else:
            handle.reading = READ_COUNTED
            self.book.add(node.bucket, GET)  # type: ignore[arg-type]

    def _closed(self, node: Node, handle: Handle) -> None:
        now = time.monotonic()
        node.busy_at = now
        if handle.reading:
            node.read_at = now if handle.reading == READ_COUNTED else 0.0
        if handle.wrote and node.fresh and not node.unlinked and self._node_is_object(node):
            node.fresh = False
            self.book.add(node.bucket, PUT)  # type: ignore[arg-type]

    def _published(self, bucket: Bucket, st: os.stat_result, multipart: bool) -> None:
        """A staging file was renamed onto a visible name: one upload completed."""
        self.book.add(bucket, MULTIPART if multipart else PUT)
        node = self.inodes.by_key((st.st_dev, st.st_ino))
        if node is not None:
            node.fresh = False
            node.busy_at = time.monotonic()
            self._heads.pop(node, None)

    def pending_bytes(self) -> dict[int, int]:
        """Bytes still charged for files unlinked while open, per bucket id."""
        pending: dict[int, int] = {}
        seen: set[int] = set()
        for handle in self.handles.values():
            node = handle.node
            if node.unlinked and node.bucket is not None and node.ino not in seen:
                seen.add(node.ino)
                size = node.size if node.size is not None else os.fstat(handle.fd).st_size
                pending[id(node.bucket)] = pending.get(id(node.bucket), 0) + size
        return pending

    def commit_heads(self, everything: bool = False) -> None:
        """Count the lookups that no open followed (flusher tick, trio thread)."""
        now = time.monotonic()
        for node, at in list(self._heads.items()):
            if everything or now - at >= HEAD_WAIT:
                del self._heads[node]
                if node.bucket is not None:
                    self.book.add(node.bucket, HEAD)

    # -- directories -----------------------------------------------------------------
    @handler
    def opendir(self, ino: int, ctx: Any) -> int:
        node = self._node(ino)
        if node.bucket is not None and not node.state and not self._hidden(node):
            self.book.add(node.bucket, LIST)
        fh = self._next_dir
        self._next_dir += 1
        self.dirs[fh] = DirHandle(node)
        return fh

    @handler
    def readdir(self, fh: int, start_id: int, token: Any) -> None:
        dh = self.dirs[fh]
        parent = dh.node
        if start_id == 0 or dh.names is None:
            dh.names = self._list(parent)
        base = self._target(parent)
        names = dh.names
        for i in range(start_id, len(names)):
            name = names[i]
            try:
                st = os.lstat(base + b"/" + name)
            except FileNotFoundError:
                continue
            bucket, is_state = self._classify(parent, name, st)
            node = self.inodes.attach(parent, name, st, bucket, is_state)
            if not pyfuse3.readdir_reply(token, name, self._entry(node, st), i + 1):
                self.inodes.collect(node)
                return
            node.lookups += 1

    def _list(self, node: Node) -> list[bytes]:
        with os.scandir(self._target(node)) as it:
            names = [e.name for e in it]
        if not self.cfg.expose_state and (node is self.root or self._is_bucket_dir(node)):
            names = [n for n in names if not self._is_state_name(node, n)]
        return names

    @handler
    def releasedir(self, fh: int) -> None:
        del self.dirs[fh]

    @handler
    def fsyncdir(self, fh: int, datasync: bool) -> None:
        fsync_dir(self._target(self.dirs[fh].node))

    # -- extended attributes ------------------------------------------------------------
    @handler
    def getxattr(self, ino: int, name: bytes, ctx: Any) -> bytes:
        if name == b"security.capability":
            # The kernel asks before every write (to drop privileges); objects
            # carry no file capabilities, and answering costs no syscall.
            raise FUSEError(pyfuse3.ENOATTR)
        node = self._node(ino)
        if name.startswith(_XATTR_PREFIX):
            field = name[len(_XATTR_PREFIX):].decode("utf-8", "replace")
            if node is self.root:
                return self.control.get_root(field)
            if self._is_bucket_dir(node):
                return self.control.get_bucket(node.bucket, field)  # type: ignore[arg-type]
            raise FUSEError(pyfuse3.ENOATTR)
        return os.getxattr(self._target(node), name, follow_symlinks=False)

    @handler
    def setxattr(self, ino: int, name: bytes, value: bytes, ctx: Any) -> None:
        node = self._node(ino)
        if name.startswith(_XATTR_PREFIX):
            field = name[len(_XATTR_PREFIX):].decode("utf-8", "replace")
            if node is self.root:
                self.control.set_root(field, value, ctx.uid)
            elif self._is_bucket_dir(node):
                self.control.set_bucket(node.bucket, field, value, ctx.uid)  # type: ignore[arg-type]
            else:
                raise FUSEError(errno.ENOTSUP)
            return
        if node.state:
            raise FUSEError(errno.EPERM)
        os.setxattr(self._target(node), name, value, follow_symlinks=False)

    @handler
    def listxattr(self, ino: int, ctx: Any) -> list[bytes]:
        names = os.listxattr(self._target(self._node(ino)), follow_symlinks=False)
        return [n for n in map(os.fsencode, names) if not n.startswith(_XATTR_PREFIX)]

    @handler
    def removexattr(self, ino: int, name: bytes, ctx: Any) -> None:
        node = self._node(ino)
        if name.startswith(_XATTR_PREFIX) and node is self.root:
            self.control.remove_root(name[len(_XATTR_PREFIX):].decode("utf-8", "replace"), ctx.uid)
            return
        if name.startswith(_XATTR_PREFIX) or node.state:
            raise FUSEError(errno.EPERM)
        os.removexattr(self._target(node), name, follow_symlinks=False)
