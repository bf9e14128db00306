"""The FUSE adapter: a passthrough of the backing root, translating requests to
syscalls on it.  A protocol adapter only (in the spirit of borg's ``fuse.py``):
what an operation charges or refunds is decided by ``accounting.py``, what it
counts by ``counting.py``, how buckets come and go by ``catalog.py``.

Concurrency contract: pyfuse3 runs handlers as trio tasks on one thread.  The
handlers that change usage do not ``await`` at all between asking a rule, the
quota check (``Accounting.reserve``) and the I/O, so a check, its charge and the
I/O it guards happen with no other request in between; a failed I/O refunds
what was charged.  Only ``fsync`` and large ``read``s await (in a worker
thread), and they change no usage.

Errors: every OSError leaves a handler as FUSEError with the same errno; a
quota refusal (QuotaExceeded) leaves as ENOSPC, or EDQUOT with
``-o quota_errno=EDQUOT``.  Anything else is a bug and stops the daemon, which
leaves the mount dead (ENOTCONN) rather than writable behind the quota's back.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

import pyfuse3
import trio
from pyfuse3 import EntryAttributes, FileInfo, FUSEError, RequestContext, SetattrFields, StatvfsData

from .accounting import Accounting
from .catalog import delete_bucket, made_bucket
from .config import Config
from .control import Control, ControlError
from .counting import Counting
from .handles import DirHandle, Handle, pending_bytes, renameat2
from .inodes import Node
from .killpriv import SXID, bits_to_clear, read_writer
from .ledger import Bucket, Ledger, QuotaExceeded
from .rules import hides, is_bucket_name
from .scanner import scan_tree
from .scans import Scans
from .state import fsync_dir
from .store import StateStore
from .tree import BackingTree

log = logging.getLogger(__name__)

#: Flags never passed to the backing open: O_APPEND because pwrite would ignore the
#: kernel's offset (the kernel computes the append position and we account for it).
_STRIP_FLAGS = os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_DIRECT
_XATTR_PREFIX = b"user.ironfs."
#: Reads at least this large run in a worker thread.
THREAD_IO_BYTES = 256 * 1024

P = ParamSpec("P")
R = TypeVar("R")


def handler(fn: Callable[Concatenate[IronFS, P], R]
            ) -> Callable[Concatenate[IronFS, P], Coroutine[Any, Any, R]]:
    """Wrap a synchronous handler body: count the request, map domain and OS
    errors to FUSEError."""
    op = fn.__name__

    async def wrapper(self: IronFS, /, *args: P.args, **kwargs: P.kwargs) -> R:
        self.requests[op] += 1
        with self.fuse_errors():
            return fn(self, *args, **kwargs)
    functools.update_wrapper(wrapper, fn)
    return wrapper


def async_handler(fn: Callable[Concatenate[IronFS, P], Coroutine[Any, Any, R]]
                  ) -> Callable[Concatenate[IronFS, P], Coroutine[Any, Any, R]]:
    """The same for a handler that awaits (it waits for its own work; other
    requests are answered meanwhile)."""
    op = fn.__name__

    async def wrapper(self: IronFS, /, *args: P.args, **kwargs: P.kwargs) -> R:
        self.requests[op] += 1
        with self.fuse_errors():
            return await fn(self, *args, **kwargs)
    functools.update_wrapper(wrapper, fn)
    return wrapper


class IronFS(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False  # a quota error must reach the write() that caused it

    def __init__(self, cfg: Config, ledger: Ledger, store: StateStore) -> None:
        super().__init__()
        self.cfg = cfg
        self.ledger = ledger
        self.store = store
        self.quota_errno = cfg.quota_errno
        self.handles: dict[int, Handle] = {}
        self.dirs: dict[int, DirHandle] = {}
        self.tree = BackingTree(cfg, ledger, store.book, self.handles)
        self.inodes = self.tree.inodes
        self.root = self.tree.root
        self.accounting = Accounting(ledger, cfg.profile, self.root)
        self.counting = Counting(store.book, self.accounting)
        self.scans = Scans(self.accounting)
        self._next_dir = 1
        self.rejections = 0
        self.requests: Counter[str] = Counter()  # FUSE requests by operation (metrics)
        self.control = Control(cfg, ledger, store.book, lambda: pending_bytes(self.handles))
        self.background: trio.Nursery | None = None  # set while serving (mount.py)

    def serve_background(self, nursery: trio.Nursery) -> None:
        """From now on, scans run beside the requests, in *nursery*."""
        self.background = nursery
        self.control.live = self._reconcile_live
        self.tree.scan_beside = self.scan_bucket_beside

    def settle_scans(self) -> None:
        """After unmount: buckets whose scan beside the requests did not end are
        scanned now (nothing changes them any more), before the final flush."""
        for bucket in list(self.ledger):
            if self.ledger.is_scanning(bucket):
                usage = scan_tree(os.path.join(self.cfg.backing, bucket.name), self.cfg.profile)
                pending = pending_bytes(self.handles).get(id(bucket), 0)
                self.ledger.end_scan(bucket, usage.used_bytes + pending, usage.objects)

    def scan_bucket_beside(self, bucket: Bucket) -> None:
        """Count *bucket*'s usage with a scan beside the requests (adopted, or
        reloaded without a usable .quota); until it ends, its growth against a
        limit is refused rather than risk overshooting."""
        path = os.path.join(self.cfg.backing, bucket.name)
        if self.background is None:  # not serving (yet, or any more): nothing runs beside
            usage = scan_tree(path, self.cfg.profile)
            pending = pending_bytes(self.handles).get(id(bucket), 0)
            self.ledger.set_usage(bucket, usage.used_bytes + pending, usage.objects)
            return
        self.ledger.begin_scan(bucket)
        running = self.scans.start(path)

        async def run() -> None:
            try:
                scan = await self.scans.finish(running)
            except Exception:
                log.exception("scan of bucket %s failed; its growth stays refused until "
                              "`ironfs reconcile --fix`", bucket.display_name)
                return
            pending = pending_bytes(self.handles).get(id(bucket), 0)
            self.ledger.end_scan(bucket, scan.used_bytes + pending, scan.objects)
            log.info("bucket %s scanned: %d bytes, %d objects", bucket.display_name,
                     bucket.used_bytes, bucket.objects)
        self.background.start_soon(run)

    def _reconcile_live(self, names: list[bytes] | None, fix: bool) -> None:
        async def run() -> None:
            try:
                result = await self.scans.reconcile(self.ledger, self.cfg.backing, names, fix,
                                                    lambda: pending_bytes(self.handles))
            except Exception as e:  # a failed reconcile must not take the mount down
                log.exception("reconcile failed")
                result = {"state": "failed", "error": str(e), "at": time.time()}
            self.control.finished(result)
        assert self.background is not None
        self.background.start_soon(run)

    @contextmanager
    def fuse_errors(self) -> Iterator[None]:
        """Only FUSEError leaves a handler: OS errors keep their errno, a quota
        refusal is ENOSPC (or EDQUOT)."""
        try:
            yield
        except OSError as e:
            raise FUSEError(e.errno or errno.EIO) from None
        except ControlError as e:
            log.debug("refused: %s", e)
            raise FUSEError(e.errno) from None
        except QuotaExceeded as e:
            self.rejections += 1
            self.counting.rejected(e.bucket)
            self.ledger.refusals.refused(e)
            log.debug("refused: %s", e)
            raise FUSEError(self.quota_errno) from None

    # -- nodes, paths, attributes -------------------------------------------------
    def _entry(self, node: Node, st: os.stat_result) -> EntryAttributes:
        e = EntryAttributes()
        e.st_ino = node.ino
        e.generation = node.generation
        e.entry_timeout = self.cfg.entry_timeout
        e.attr_timeout = self.cfg.attr_timeout
        for field in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
                      "st_blksize", "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
            setattr(e, field, getattr(st, field))
        return e

    def _negative(self) -> EntryAttributes:
        """"No such entry", which the kernel may remember for entry_timeout: a
        server checks a key several times before it writes it."""
        e = EntryAttributes()
        e.st_ino = 0
        e.entry_timeout = self.cfg.entry_timeout
        return e

    # -- lookups and attributes ------------------------------------------------------
    @handler
    def lookup(self, parent_ino: int, name: bytes, ctx: RequestContext) -> EntryAttributes:
        parent = self.tree.node(parent_ino)
        if name == b"." or name == b"..":
            node = parent if name == b"." else (parent.parent or self.root)
            st = self.tree.lstat(node)
            node.lookups += 1
            return self._entry(node, st)
        if not self.cfg.expose_state and self.tree.is_state_name(parent, name):
            return self._negative()
        try:
            st = os.lstat(self.inodes.child_path(parent, name))
        except FileNotFoundError:
            return self._negative()
        node = self.tree.remember(parent, name, st)
        if stat.S_ISREG(st.st_mode):
            self.counting.looked_at(node)
        return self._entry(node, st)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        self.requests["forget"] += 1
        for ino, n in inode_list:
            self.inodes.forget(ino, n)

    @handler
    def getattr(self, ino: int, ctx: RequestContext) -> EntryAttributes:
        node = self.tree.node(ino)
        st = self.tree.lstat(node)
        if stat.S_ISREG(st.st_mode):
            self.counting.looked_at(node)
        return self._entry(node, st)

    @handler
    def setattr(self, ino: int, attr: EntryAttributes, fields: SetattrFields, fh: int | None,
                ctx: RequestContext) -> EntryAttributes:
        node = self.tree.node(ino)
        if node.is_state:
            raise FUSEError(errno.EPERM)
        handle = self.handles.get(fh) if fh is not None else None
        target: bytes | int = handle.fd if handle is not None else self.tree.target(node)
        if fields.update_size:
            self._truncate(node, target, attr.st_size)
            if handle is not None:
                handle.wrote = True
                self.counting.written(node)
        if fields.update_mode or fields.update_uid or fields.update_gid:
            self._recheck_set_ids(node)
        if fields.update_mode:
            if stat.S_ISLNK(self.tree.lstat(node).st_mode):
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
        return self._entry(node, self.tree.lstat(node))

    def _recheck_set_ids(self, node: Node) -> None:
        """Mode or owner changes: the next write through each writable handle
        of *node* looks at the set-ID bits again."""
        if node.open:
            for handle in self.handles.values():
                if handle.node is node and handle.opener is not None:
                    handle.check_sxid = True

    def _set_times(self, node: Node, target: bytes | int, attr: EntryAttributes,
                   fields: SetattrFields) -> None:
        st = self.tree.lstat(node)
        atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
        mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
        if isinstance(target, int):
            os.utime(target, ns=(atime, mtime))
        else:
            os.utime(target, ns=(atime, mtime), follow_symlinks=False)

    def _truncate(self, node: Node, target: bytes | int, length: int) -> None:
        changes = []
        old = length
        if node.in_bucket:
            old = self.tree.size_of(node, target)
            changes = self.accounting.resize(node, old, length)
        with self.accounting.reserve(changes):
            os.truncate(target, length)
        if node.open or node.size is not None:
            node.size = length
        self.scans.resized(node, old, length)

    @handler
    def readlink(self, ino: int, ctx: RequestContext) -> bytes:
        return os.readlink(self.tree.target(self.tree.node(ino)))

    @handler
    def statfs(self, ctx: RequestContext) -> StatvfsData:
        s = os.statvfs(self.cfg.backing)
        d = StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                     "f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(d, name, getattr(s, name))
        return d

    # -- making and removing names ---------------------------------------------------
    @handler
    def mknod(self, parent_ino: int, name: bytes, mode: int, rdev: int,
              ctx: RequestContext) -> EntryAttributes:
        parent = self.tree.node(parent_ino)
        self.tree.check_writable(parent, name)
        path = self.inodes.child_path(parent, name)
        with self.accounting.reserve(self.accounting.new_file(parent, name, mode)):
            os.mknod(path, mode & ~ctx.umask, rdev)
        self.tree.chown_new(path, parent, ctx.uid, ctx.gid)
        node, st = self.tree.remember_new(parent, name, path)
        self.scans.named(parent, name, st)
        return self._entry(node, st)

    @handler
    def mkdir(self, parent_ino: int, name: bytes, mode: int, ctx: RequestContext) -> EntryAttributes:
        parent = self.tree.node(parent_ino)
        self.tree.check_writable(parent, name)
        path = self.inodes.child_path(parent, name)
        os.mkdir(path, mode & ~ctx.umask & 0o7777)
        self.tree.chown_new(path, parent, ctx.uid, ctx.gid)
        if parent is self.root and is_bucket_name(name):
            made_bucket(self.cfg, self.ledger, self.store.book, name)
        return self._entry(*self.tree.remember_new(parent, name, path))

    @handler
    def symlink(self, parent_ino: int, name: bytes, target: bytes,
                ctx: RequestContext) -> EntryAttributes:
        parent = self.tree.node(parent_ino)
        self.tree.check_writable(parent, name)
        path = self.inodes.child_path(parent, name)
        os.symlink(target, path)
        self.tree.chown_new(path, parent, ctx.uid, ctx.gid)
        return self._entry(*self.tree.remember_new(parent, name, path))

    @handler
    def link(self, ino: int, new_parent_ino: int, new_name: bytes,
             ctx: RequestContext) -> EntryAttributes:
        node = self.tree.node(ino)
        parent = self.tree.node(new_parent_ino)
        self.tree.check_writable(parent, new_name)
        if node.is_state:
            raise FUSEError(errno.EPERM)
        if node.load_bucket() is not parent.load_bucket() or self.tree.is_bucket_dir(node):
            raise FUSEError(errno.EXDEV)
        source = self.tree.target(node)
        path = self.inodes.child_path(parent, new_name)
        before = self.tree.lstat(node)
        changes = self.accounting.new_file(parent, new_name, before.st_mode)
        with self.accounting.reserve(changes):
            os.link(source, path, follow_symlinks=False)
        if before.st_nlink == 1:
            self.scans.linking(node)
        linked, st = self.tree.remember_new(parent, new_name, path)
        self.scans.named(parent, new_name, st)
        return self._entry(linked, st)

    @handler
    def unlink(self, parent_ino: int, name: bytes, ctx: RequestContext) -> None:
        parent = self.tree.node(parent_ino)
        self.tree.check_writable(parent, name)
        path = self.inodes.child_path(parent, name)
        st = os.lstat(path)
        node = self.inodes.by_key((st.st_dev, st.st_ino))
        with self.accounting.reserve(self.accounting.removal(parent, name, st, node)):
            os.unlink(path)
        self.scans.unnamed(parent, name, st)
        self.counting.deleted(parent, name, st.st_mode)
        self._forget_name(parent, name, st)

    @async_handler
    async def rmdir(self, parent_ino: int, name: bytes, ctx: RequestContext) -> None:
        if parent_ino == pyfuse3.ROOT_INODE and is_bucket_name(name):
            # DeleteBucket: wait (without holding up other requests) until no
            # flush is writing this bucket's state, then archive it.
            while not self.store.claim_for_delete(name):
                await trio.sleep(0.005)
            try:
                self._rmdir(parent_ino, name)
            finally:
                self.store.release_delete(name)
        else:
            self._rmdir(parent_ino, name)

    def _rmdir(self, parent_ino: int, name: bytes) -> None:
        parent = self.tree.node(parent_ino)
        self.tree.check_writable(parent, name)
        path = self.inodes.child_path(parent, name)
        st = os.lstat(path)
        bucket = self.ledger.load(name) if parent is self.root else None
        if bucket is not None and stat.S_ISDIR(st.st_mode):
            delete_bucket(self.cfg, self.store, bucket, path)
        else:
            os.rmdir(path)
        self._forget_name(parent, name, st)

    # -- rename --------------------------------------------------------------------
    @async_handler
    async def rename(self, old_parent_ino: int, old_name: bytes, new_parent_ino: int,
                     new_name: bytes, flags: int, ctx: RequestContext) -> None:
        counted = await self._count_if_publishing(old_parent_ino, old_name, new_parent_ino, new_name)
        self._rename(old_parent_ino, old_name, new_parent_ino, new_name, flags, counted)

    async def _count_if_publishing(self, old_parent_ino: int, old_name: bytes, new_parent_ino: int,
                                   new_name: bytes) -> tuple[tuple[int, int], int] | None:
        """A directory renamed between hidden and visible changes its bucket's
        object count by the objects below it: they are counted beside the
        requests (this rename waits for them, no other request does).
        Returns (the directory's key, its objects), or None."""
        old_parent = self.tree.node(old_parent_ino)
        new_parent = self.tree.node(new_parent_ino)
        if old_parent is self.root or new_parent is self.root or not old_parent.in_bucket:
            return None
        hidden = self.accounting.in_hidden_dir(old_parent) or hides(old_name)
        if hidden == (self.accounting.in_hidden_dir(new_parent) or hides(new_name)):
            return None
        path = self.inodes.child_path(old_parent, old_name)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or old_parent.load_bucket() is not new_parent.load_bucket():
            return None
        if self.background is None:
            return None  # (not serving: counted where it is needed)
        scan = await self.scans.run(path, bucket_top=False)
        return (st.st_dev, st.st_ino), scan.objects

    def _rename(self, old_parent_ino: int, old_name: bytes, new_parent_ino: int, new_name: bytes,
                flags: int, counted: tuple[tuple[int, int], int] | None) -> None:
        old_parent = self.tree.node(old_parent_ino)
        new_parent = self.tree.node(new_parent_ino)
        self.tree.check_writable(old_parent, old_name)
        self.tree.check_writable(new_parent, new_name)
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
        if old_parent is self.root and new_parent is self.root and stat.S_ISDIR(src.st_mode):
            # An evicted bucket is reloaded from its .quota before that moves.
            self.ledger.load(old_name)
            self.ledger.load(new_name)
        dst_node = self.inodes.by_key((dst.st_dev, dst.st_ino)) if dst is not None else None
        count_objects = self.tree.count_objects
        if counted is not None and counted[0] == (src.st_dev, src.st_ino):
            count_objects = lambda parent, name: counted[1]  # noqa: E731 (exact: no await since)
        changes = self.accounting.rename(
            old_parent, old_name, src, new_parent, new_name, dst, exchange=exchange,
            noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE), dst_node=dst_node,
            count_objects=count_objects)
        published = self.accounting.publishes(old_parent, old_name, src, new_parent, new_name,
                                              exchange)
        staged_at = self.inodes.components(old_parent)[1:] + [old_name] if published else []
        with self.accounting.reserve(changes):
            renameat2(old_path, new_path, flags)
        self._tell_scans_renamed(old_parent, old_name, src, new_parent, new_name, dst, exchange)
        if published:
            self.counting.published(new_parent, self.inodes.by_key((src.st_dev, src.st_ino)),
                                    staged_at)
        replaced = self.tree.renamed(old_parent, old_name, src, new_parent, new_name, dst, exchange)
        if replaced is not None:
            self.counting.forgotten(replaced)

    def _tell_scans_renamed(self, old_parent: Node, old_name: bytes, src: os.stat_result,
                            new_parent: Node, new_name: bytes, dst: os.stat_result | None,
                            exchange: bool) -> None:
        if not self.scans.active:
            return
        moves = [(old_parent, old_name, src, new_parent, new_name)]
        if exchange and dst is not None:
            moves.append((new_parent, new_name, dst, old_parent, old_name))
        elif dst is not None:
            self.scans.unnamed(new_parent, new_name, dst)  # replaced
        for from_parent, from_name, st, to_parent, to_name in moves:
            if stat.S_ISDIR(st.st_mode):
                self.scans.dir_moved(from_parent, from_name, to_parent, to_name)
            else:
                self.scans.unnamed(from_parent, from_name, st)
                self.scans.named(to_parent, to_name, st)

    def _forget_name(self, parent: Node, name: bytes, st: os.stat_result) -> None:
        node = self.tree.dropped(parent, name, st)
        if node is not None:
            self.counting.forgotten(node)

    # -- files -----------------------------------------------------------------------
    @handler
    def open(self, ino: int, flags: int, ctx: RequestContext) -> FileInfo:
        return self._open(self.tree.node(ino), flags, ctx)

    def _file_info(self, handle: Handle, flags: int, ctx: RequestContext, mode: int) -> FileInfo:
        """Register an open handle.  Write-only handles (an S3 server's PUTs and
        parts) take the kernel's direct-I/O path: one WRITE per write(2), with
        no GETXATTR security.capability before it; the kernel then leaves
        set-ID bits to us (killpriv.py).  O_RDWR stays cached, because shared
        writable mmap on a direct-I/O handle fails with ENODEV here."""
        self.handles[handle.fd] = handle
        if (flags & os.O_ACCMODE) == os.O_RDONLY and not flags & os.O_TRUNC:
            return FileInfo(fh=handle.fd)
        handle.opener = (ctx.pid, ctx.uid, ctx.gid)
        handle.check_sxid = bool(mode & SXID)
        return FileInfo(fh=handle.fd, direct_io=(flags & os.O_ACCMODE) == os.O_WRONLY)

    def _open(self, node: Node, flags: int, ctx: RequestContext) -> FileInfo:
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if node.is_state and writing:
            raise FUSEError(errno.EACCES)
        path = self.inodes.path(node)
        bflags = (flags & ~_STRIP_FLAGS) | os.O_CLOEXEC
        if path is None:  # unlinked while open: reopen through an open fd's link
            target = b"/proc/self/fd/%d" % self.tree.open_fd(node)
        else:
            target = path
            bflags |= os.O_NOFOLLOW
        changes = []
        old = 0
        if flags & os.O_TRUNC and node.in_bucket:
            old = self.tree.size_of(node, target)
            changes = self.accounting.resize(node, old, 0)
        with self.accounting.reserve(changes):  # a shrink: never refused
            fd = os.open(target, bflags)
        if flags & os.O_TRUNC:
            node.size = 0
            self.counting.written(node)
            self.scans.resized(node, old, 0)
        node.open += 1
        handle = Handle(fd, node, wrote=bool(flags & os.O_TRUNC))
        handle.reading = self.counting.opened(node, not writing)
        mode = 0
        if writing:
            st = os.fstat(fd)
            mode = st.st_mode
            if node.size is None:
                node.size = st.st_size
        return self._file_info(handle, flags, ctx, mode)

    @handler
    def create(self, parent_ino: int, name: bytes, mode: int, flags: int,
               ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:
        parent = self.tree.node(parent_ino)
        self.tree.check_writable(parent, name)
        path = self.inodes.child_path(parent, name)
        bflags = (flags & ~_STRIP_FLAGS) | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            with self.accounting.reserve(self.accounting.new_file(parent, name, stat.S_IFREG)):
                fd = os.open(path, bflags, mode & ~ctx.umask & 0o7777)
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            return self._create_existing(parent, name, path, flags, ctx)
        self.tree.chown_new(fd, parent, ctx.uid, ctx.gid)
        st = os.fstat(fd)
        node = self.tree.remember(parent, name, st)
        self.scans.named(parent, name, st)
        node.open += 1
        node.size = 0
        self.counting.written(node)
        info = self._file_info(Handle(fd, node, wrote=True), flags | os.O_TRUNC, ctx, st.st_mode)
        return info, self._entry(node, st)

    def _create_existing(self, parent: Node, name: bytes, path: bytes, flags: int,
                         ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:
        """O_CREAT without O_EXCL on a name that exists after all: open it."""
        node = self.tree.remember(parent, name, os.lstat(path))
        info = self._open(node, flags, ctx)
        return info, self._entry(node, os.fstat(info.fh))

    async def read(self, fh: int, off: int, size: int) -> bytes:
        self.requests["read"] += 1
        handle = self.handles[fh]
        try:
            if size >= THREAD_IO_BYTES:
                # Large reads (readahead) in a worker thread: two can overlap on two cores.
                data = await trio.to_thread.run_sync(os.pread, handle.fd, size, off)
            else:
                data = os.pread(handle.fd, size, off)
        except OSError as e:
            raise FUSEError(e.errno or errno.EIO) from None
        if handle.node.in_bucket:
            self.counting.bytes_read(handle.node, len(data))
        return data

    @handler
    def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self.handles[fh]
        node = handle.node
        fd = handle.fd
        if handle.check_sxid:
            self._clear_set_ids(handle)
        bucket = node.load_bucket()
        if bucket is None:
            return os.pwrite(fd, buf, off)
        handle.wrote = True
        self.counting.written(node)
        self.counting.bytes_written(bucket, len(buf))
        size = node.size
        if size is None:
            size = node.size = os.fstat(fd).st_size
        n = self.accounting.write(node, size, off, len(buf), lambda: os.pwrite(fd, buf, off))
        if node.size is not None and node.size != size:
            self.scans.resized(node, size, node.size)
        return n

    def _clear_set_ids(self, handle: Handle) -> None:
        """The first write through a handle of a set-ID file clears the bits its
        opener may not keep (killpriv.py); again after a chmod or chown."""
        handle.check_sxid = False
        st = os.fstat(handle.fd)
        if handle.opener is None or not st.st_mode & SXID:
            return
        clear = bits_to_clear(st.st_mode, st.st_gid, read_writer(*handle.opener))
        if clear:
            os.fchmod(handle.fd, stat.S_IMODE(st.st_mode) & ~clear)

    async def flush(self, fh: int) -> None:
        # ENOSYS, after which the kernel stops sending FLUSH on every close(2):
        # writes reach the backing file as they come, there is nothing to flush.
        self.requests["flush"] += 1
        raise FUSEError(errno.ENOSYS)

    @handler
    def release(self, fh: int) -> None:
        self._release(fh)

    def _release(self, fh: int) -> None:
        handle = self.handles.pop(fh)
        node = handle.node
        self.counting.closed(node, handle.wrote, handle.reading)
        try:
            if node.open == 1 and node.unlinked:
                # The last handle of an unlinked file: now its bytes are gone.
                size = node.size if node.size is not None else os.fstat(handle.fd).st_size
                node.unlinked = False
                self.accounting.apply(self.accounting.last_close(node, size))
        finally:
            node.open -= 1
            if node.open == 0:
                node.size = None
                self.inodes.collect(node)
            os.close(handle.fd)

    async def fsync(self, fh: int, datasync: bool) -> None:
        self.requests["fsync"] += 1
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

    # -- directories -----------------------------------------------------------------
    @handler
    def opendir(self, ino: int, ctx: RequestContext) -> int:
        node = self.tree.node(ino)
        self.counting.listed(node)
        fh = self._next_dir
        self._next_dir += 1
        self.dirs[fh] = DirHandle(node)
        return fh

    @handler
    def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        dh = self.dirs[fh]
        parent = dh.node
        if start_id == 0 or dh.names is None:
            dh.names = self.tree.list_names(parent)
        # "." and ".." first (ids 1 and 2), as every directory has them; the
        # kernel takes no reference for them, so they count no lookup.
        for i, (dot, node) in enumerate(((b".", parent), (b"..", parent.parent or self.root))):
            if start_id <= i and not pyfuse3.readdir_reply(
                    token, dot, self._entry(node, self.tree.lstat(node)), i + 1):
                return
        base = self.tree.target(parent)
        names = dh.names
        for i in range(max(start_id - 2, 0), len(names)):
            name = names[i]
            try:
                st = os.lstat(base + b"/" + name)
            except FileNotFoundError:
                continue
            bucket, is_state = self.tree.classify(parent, name, st)
            node = self.inodes.attach(parent, name, st, bucket, is_state)
            if not pyfuse3.readdir_reply(token, name, self._entry(node, st), i + 3):
                self.inodes.collect(node)
                return
            node.lookups += 1

    @handler
    def releasedir(self, fh: int) -> None:
        del self.dirs[fh]

    @async_handler
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await trio.to_thread.run_sync(fsync_dir, self.tree.target(self.dirs[fh].node))

    # -- extended attributes: the admin interface (control.py) and passthrough ------------
    @handler
    def getxattr(self, ino: int, name: bytes, ctx: RequestContext) -> bytes:
        if name == b"security.capability":
            # The kernel asks before every write (to drop privileges); objects
            # carry no file capabilities, and answering costs no syscall.
            raise FUSEError(pyfuse3.ENOATTR)
        node = self.tree.node(ino)
        if name.startswith(_XATTR_PREFIX):
            field = name[len(_XATTR_PREFIX):].decode("utf-8", "replace")
            if node is self.root:
                return self.control.get_root(field)
            bucket = node.load_bucket() if self.tree.is_bucket_dir(node) else None
            if bucket is None:
                raise FUSEError(pyfuse3.ENOATTR)
            return self.control.get_bucket(bucket, field)
        return os.getxattr(self.tree.target(node), name, follow_symlinks=False)

    @handler
    def setxattr(self, ino: int, name: bytes, value: bytes, ctx: RequestContext) -> None:
        node = self.tree.node(ino)
        if name.startswith(_XATTR_PREFIX):
            field = name[len(_XATTR_PREFIX):].decode("utf-8", "replace")
            bucket = node.load_bucket() if self.tree.is_bucket_dir(node) else None
            if node is self.root:
                self.control.set_root(field, value, ctx.uid)
            elif bucket is not None:
                self.control.set_bucket(bucket, field, value, ctx.uid)
            else:
                raise FUSEError(errno.ENOTSUP)
            return
        if node.is_state:
            raise FUSEError(errno.EPERM)
        os.setxattr(self.tree.target(node), name, value, follow_symlinks=False)

    @handler
    def listxattr(self, ino: int, ctx: RequestContext) -> list[bytes]:
        names = os.listxattr(self.tree.target(self.tree.node(ino)), follow_symlinks=False)
        return [n for n in map(os.fsencode, names) if not n.startswith(_XATTR_PREFIX)]

    @handler
    def removexattr(self, ino: int, name: bytes, ctx: RequestContext) -> None:
        node = self.tree.node(ino)
        if name.startswith(_XATTR_PREFIX) and node is self.root:
            self.control.remove_root(name[len(_XATTR_PREFIX):].decode("utf-8", "replace"), ctx.uid)
            return
        if name.startswith(_XATTR_PREFIX) or node.is_state:
            raise FUSEError(errno.EPERM)
        os.removexattr(self.tree.target(node), name, follow_symlinks=False)
