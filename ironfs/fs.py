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
import logging
import os
import stat
import time
from collections import Counter
from collections.abc import Sequence

import pyfuse3
import trio
from pyfuse3 import EntryAttributes, FileInfo, FUSEError, RequestContext, SetattrFields, StatvfsData

from . import replies
from .accounting import Accounting
from .background import Background
from .catalog import delete_bucket, made_bucket
from .cluster import ClusterNode, NeedGrant
from .config import Config
from .control import ADMIN_PREFIX, Control, ControlError
from .counting import Counting, Reading
from .handles import DirHandle, Handle, pending_bytes, recheck_set_ids, renameat2
from .handling import async_handler, handler
from .inodes import Node
from .killpriv import SXID, clear_set_ids
from .ledger import Ledger, QuotaExceeded
from .rules import is_bucket_name
from .scans import Scans
from .state import fsync_dir
from .store import StateStore
from .tree import BackingTree

log = logging.getLogger(__name__)

#: Flags never passed to the backing open: O_APPEND because pwrite would ignore the
#: kernel's offset (the kernel computes the append position and we account for it).
_STRIP_FLAGS = os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_DIRECT
#: Reads at least this large run in a worker thread.
THREAD_IO_BYTES = 256 * 1024

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
        self.counting = Counting(store.book, self.accounting, names_in=self.tree.object_names_in)
        self.scans = Scans(self.accounting)
        self._next_dir = 1
        self.rejections = 0
        self.requests: Counter[str] = Counter()  # FUSE requests by operation (metrics)
        self.control = Control(cfg, ledger, store.book, self.pending_bytes)
        self.control.counts_due = self.counting.commit_heads
        self.work = Background(cfg, ledger, self.scans, self.control, self.tree, self.pending_bytes)
        self.cluster: ClusterNode | None = None  # set when the mount is a cluster node

    def pending_bytes(self) -> dict[int, int]:
        """Bytes still charged for files unlinked while open, per bucket id."""
        return pending_bytes(self.handles)

    async def worth_retrying(self, e: Exception) -> bool:
        if self.cluster is None or not isinstance(e, NeedGrant):
            return False
        return await self.cluster.obtain(e)

    def fuse_error(self, e: Exception) -> Exception:
        """Only FUSEError leaves a handler: OS errors keep their errno, a quota
        refusal is ENOSPC (or EDQUOT); anything else is a bug (returned as is)."""
        if isinstance(e, FUSEError):
            return e
        if isinstance(e, OSError):
            return FUSEError(e.errno or errno.EIO)
        if isinstance(e, ControlError):
            log.debug("refused: %s", e)
            return FUSEError(e.errno)
        if isinstance(e, QuotaExceeded):
            self.rejections += 1
            self.counting.rejected(e.bucket)
            self.ledger.refusals.refused(e)
            log.debug("refused: %s", e)
            return FUSEError(self.quota_errno)
        return e

    def _entry(self, node: Node, st: os.stat_result) -> EntryAttributes:
        return replies.entry(self.cfg, node, st)

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
            return replies.negative(self.cfg)
        try:
            st = os.lstat(self.inodes.child_path(parent, name))
        except FileNotFoundError:
            return replies.negative(self.cfg)
        node = self.tree.remember(parent, name, st)
        if stat.S_ISREG(st.st_mode):
            self.counting.looked_at(node, lookup=True)
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
            self.counting.looked_at(node, lookup=False)
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
            recheck_set_ids(self.handles, node)
        if fields.update_mode:
            self.tree.set_mode(node, target, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            self.tree.set_owner(target, attr.st_uid if fields.update_uid else -1,
                                attr.st_gid if fields.update_gid else -1)
        if fields.update_atime or fields.update_mtime:
            self.tree.set_times(node, target, attr.st_atime_ns if fields.update_atime else None,
                                attr.st_mtime_ns if fields.update_mtime else None)
        return self._entry(node, self.tree.lstat(node))

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
        return replies.statvfs(self.cfg.backing)

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
            made_bucket(self.cfg, self.ledger, name)
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
        self.counting.deleted(parent, name, st.st_mode, node, time.time() - st.st_ctime)
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
            self.counting.removed_directory((st.st_dev, st.st_ino))
        self._forget_name(parent, name, st)

    # -- rename --------------------------------------------------------------------
    @async_handler
    async def rename(self, old_parent_ino: int, old_name: bytes, new_parent_ino: int,
                     new_name: bytes, flags: int, ctx: RequestContext) -> None:
        counted = await self.work.count_if_publishing(
            self.tree.node(old_parent_ino), old_name, self.tree.node(new_parent_ino), new_name)
        self._rename(old_parent_ino, old_name, new_parent_ino, new_name, flags, counted)

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
        self.scans.renamed(old_parent, old_name, src, new_parent, new_name, dst, exchange)
        if published:
            self.counting.published(new_parent, new_name, self.inodes.by_key((src.st_dev, src.st_ino)),
                                    staged_at)
        replaced = self.tree.renamed(old_parent, old_name, src, new_parent, new_name, dst, exchange)
        if replaced is not None:
            self.counting.forgotten(replaced)

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
            if not handle.node.in_bucket:
                return FileInfo(fh=handle.fd)
            # Every read of an object reaches ironfs, page cache or not (bytes_read,
            # and the read sizes that tell a server's hash read from a GET).
            return FileInfo(fh=handle.fd, direct_io=self.accounting.profile.direct_reads,
                            keep_cache=False)
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
        reading = handle.reading
        if reading == Reading.PENDING:
            reading = handle.reading = self.counting.first_read(handle.node, off, size)
        if reading == Reading.COUNTED or reading == Reading.SAME_GET:
            self.counting.bytes_read(handle.node, len(data), at_end=len(data) < size)
        elif reading == Reading.HASH:
            self.counting.hash_read(handle.node)
        return data

    @handler
    def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self.handles[fh]
        node = handle.node
        fd = handle.fd
        if handle.check_sxid:
            clear_set_ids(handle.fd, handle.opener)
            handle.check_sxid = False
        bucket = node.load_bucket()
        if bucket is None:
            return os.pwrite(fd, buf, off)
        handle.wrote = True
        self.counting.written(node)
        size = node.size
        if size is None:
            size = node.size = os.fstat(fd).st_size
        n = self.accounting.write(bucket, node, size, off, len(buf), lambda: os.pwrite(fd, buf, off))
        self.counting.bytes_written(node, n)  # what landed (a refused write raised above)
        if node.size is not None and node.size != size:
            self.scans.resized(node, size, node.size)
        return n

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
        self.counting.unlisted(self.dirs.pop(fh).node)

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
        if name.startswith(ADMIN_PREFIX):
            return self.control.get_attr(node is self.root, self.tree.bucket_of_dir(node), name)
        return os.getxattr(self.tree.target(node), name, follow_symlinks=False)



    @handler
    def setxattr(self, ino: int, name: bytes, value: bytes, ctx: RequestContext) -> None:
        node = self.tree.node(ino)
        if name.startswith(ADMIN_PREFIX):
            self.control.set_attr(node is self.root, self.tree.bucket_of_dir(node), name, value, ctx.uid)
            return
        if node.is_state:
            raise FUSEError(errno.EPERM)
        os.setxattr(self.tree.target(node), name, value, follow_symlinks=False)

    @handler
    def listxattr(self, ino: int, ctx: RequestContext) -> list[bytes]:
        names = os.listxattr(self.tree.target(self.tree.node(ino)), follow_symlinks=False)
        return [n for n in map(os.fsencode, names) if not n.startswith(ADMIN_PREFIX)]

    @handler
    def removexattr(self, ino: int, name: bytes, ctx: RequestContext) -> None:
        node = self.tree.node(ino)
        if name.startswith(ADMIN_PREFIX) and node is self.root:
            self.control.remove_root(name[len(ADMIN_PREFIX):].decode("utf-8", "replace"), ctx.uid)
            return
        if name.startswith(ADMIN_PREFIX) or node.is_state:
            raise FUSEError(errno.EPERM)
        os.removexattr(self.tree.target(node), name, follow_symlinks=False)
