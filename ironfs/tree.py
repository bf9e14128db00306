"""The backing root as the FUSE adapter sees it: nodes by inode number, the
paths and stats behind them, and what each entry is (a bucket directory,
ironfs's own state, or an entry charged to a bucket).  Plain Python, no FUSE:
errors are OSErrors, which the adapter maps to their errno."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Mapping

from .catalog import ScanBeside, bucket_of_dir
from .config import Config
from .handles import Handle
from .inodes import InodeTable, Node
from .ledger import Bucket, Ledger
from .rules import is_bucket_name, is_bucket_state, is_root_state
from .scanner import scan_tree
from .stats import StatsBook

#: A directory whose size (ext4: 4 KiB per block of entries) is above this is not
#: read to tell a LIST from HEADs (about 1,000 names): its lookups count as HEADs.
LIST_READ_LIMIT = 64 << 10


class BackingTree:
    def __init__(self, cfg: Config, ledger: Ledger, book: StatsBook,
                 handles: Mapping[int, Handle]) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.book = book
        self.handles = handles  # the adapter's open files: a file with no name left is reached by fd
        self.scan_beside: ScanBeside | None = None  # set while serving
        root_st = os.lstat(cfg.backing)
        self.inodes = InodeTable(cfg.backing, (root_st.st_dev, root_st.st_ino))
        self.root = self.inodes.root

    # -- nodes, paths, stats (stat calls touch the backing filesystem) -----------------
    def node(self, ino: int) -> Node:
        try:
            return self.inodes.get(ino)
        except KeyError:
            raise OSError(errno.ESTALE, "unknown inode") from None

    def target(self, node: Node) -> bytes:
        """A path that reaches *node*: its name, or an open fd once unlinked."""
        path = self.inodes.path(node)
        return path if path is not None else b"/proc/self/fd/%d" % self.open_fd(node)

    def open_fd(self, node: Node) -> int:
        """An fd of one of *node*'s open handles (for a file whose names are gone)."""
        for h in self.handles.values():
            if h.node is node:
                return h.fd
        raise OSError(errno.ESTALE, "no name and no open handle left")

    def lstat(self, node: Node) -> os.stat_result:
        path = self.inodes.path(node)
        return os.lstat(path) if path is not None else os.fstat(self.open_fd(node))

    def size_of(self, node: Node, target: bytes | int) -> int:
        """Current apparent size; remembered while the file is open."""
        if node.size is not None:
            return node.size
        size = (os.fstat(target) if isinstance(target, int) else self.lstat(node)).st_size
        if node.open:
            node.size = size
        return size

    # -- what an entry is ---------------------------------------------------------------
    def is_bucket_dir(self, node: Node) -> bool:
        return node.parent is self.root and node.in_bucket

    def bucket_of_dir(self, node: Node) -> Bucket | None:
        """The bucket if *node* is a bucket directory (reloaded if evicted)."""
        return node.load_bucket() if self.is_bucket_dir(node) else None

    def is_state_name(self, parent: Node, name: bytes) -> bool:
        if parent is self.root:
            return is_root_state(name)
        return self.is_bucket_dir(parent) and is_bucket_state(name)

    def check_writable(self, parent: Node, name: bytes) -> None:
        """Names of ironfs's state can be neither made, removed nor replaced."""
        if parent.is_state or self.is_state_name(parent, name):
            raise OSError(errno.EPERM, "ironfs's own state")

    def classify(self, parent: Node, name: bytes, st: os.stat_result) -> tuple[Bucket | None, bool]:
        """(bucket charged for the entry, whether it is ironfs's state).  A
        top-level directory made behind the mount's back is adopted (scanned)."""
        if parent is self.root:
            if is_root_state(name):
                return None, True
            if stat.S_ISDIR(st.st_mode) and is_bucket_name(name):
                return bucket_of_dir(self.cfg, self.ledger, self.book, name, self.scan_beside), False
            return None, False
        if parent.is_state or (self.is_bucket_dir(parent) and is_bucket_state(name)):
            return None, True
        return parent.load_bucket(), False

    def remember(self, parent: Node, name: bytes, st: os.stat_result) -> Node:
        """The node of *parent*/*name*, with one more lookup by the kernel."""
        bucket, is_state = self.classify(parent, name, st)
        return self.inodes.remember(parent, name, st, bucket, is_state)

    def remember_new(self, parent: Node, name: bytes, path: bytes) -> tuple[Node, os.stat_result]:
        """The node of an entry just made at *path* (stats it)."""
        st = os.lstat(path)
        return self.remember(parent, name, st), st

    def list_names(self, node: Node) -> list[bytes]:
        """The names in directory *node* (reads it), without ironfs's state
        unless ``expose_state``."""
        with os.scandir(self.target(node)) as it:
            names = [e.name for e in it]
        if not self.cfg.expose_state and (node is self.root or self.is_bucket_dir(node)):
            names = [n for n in names if not self.is_state_name(node, n)]
        return names

    # -- the namespace changed through the mount -------------------------------------------
    def dropped(self, parent: Node, name: bytes, st: os.stat_result) -> Node | None:
        """Update the inode table after *parent*/*name* (found with *st*)
        disappeared; returns its node, if the kernel knew it."""
        node = self.inodes.by_key((st.st_dev, st.st_ino))
        if node is None:
            return None
        if stat.S_ISDIR(st.st_mode) or st.st_nlink <= 1:
            if node.open and node.in_bucket and stat.S_ISREG(st.st_mode):
                node.unlinked = True  # its bytes are refunded at the last close
            self.inodes.gone(node)
        else:
            self.inodes.unlinked(node, parent, name)
        return node

    def renamed(self, old_parent: Node, old_name: bytes, src: os.stat_result,
                new_parent: Node, new_name: bytes, dst: os.stat_result | None,
                exchange: bool) -> Node | None:
        """Bring the ledger's bucket names and the inode table up to date after a
        rename; returns the node of a replaced entry, if the kernel knew it."""
        if old_parent is self.root and new_parent is self.root and stat.S_ISDIR(src.st_mode) \
                and is_bucket_name(old_name):
            if exchange and dst is not None and stat.S_ISDIR(dst.st_mode) \
                    and is_bucket_name(new_name):
                self.ledger.exchange(old_name, new_name)
            else:
                self.ledger.rename(old_name, new_name)
        src_node = self.inodes.by_key((src.st_dev, src.st_ino))
        dst_node = self.inodes.by_key((dst.st_dev, dst.st_ino)) if dst is not None else None
        replaced = None
        if dst is not None and not exchange:
            replaced = self.dropped(new_parent, new_name, dst)
        if src_node is not None and not (exchange and src_node is dst_node):
            self.inodes.moved(src_node, old_parent, old_name, new_parent, new_name)
            if not stat.S_ISDIR(src.st_mode):
                src_node.set_bucket(new_parent.load_bucket())
        if exchange and dst is not None and dst_node is not None and dst_node is not src_node:
            self.inodes.moved(dst_node, new_parent, new_name, old_parent, old_name)
            if not stat.S_ISDIR(dst.st_mode):
                dst_node.set_bucket(old_parent.load_bucket())
        return replaced

    # -- metadata changes (setattr) ---------------------------------------------------------
    def set_mode(self, node: Node, target: bytes | int, mode: int) -> None:
        if stat.S_ISLNK(self.lstat(node).st_mode):
            raise OSError(errno.EOPNOTSUPP, "symlinks have no mode of their own here")
        os.chmod(target, mode)

    @staticmethod
    def set_owner(target: bytes | int, uid: int, gid: int) -> None:
        """(-1: unchanged)"""
        if isinstance(target, int):
            os.fchown(target, uid, gid)
        else:
            os.chown(target, uid, gid, follow_symlinks=False)

    def set_times(self, node: Node, target: bytes | int, atime_ns: int | None,
                  mtime_ns: int | None) -> None:
        """(None: unchanged)"""
        st = self.lstat(node)
        times = (st.st_atime_ns if atime_ns is None else atime_ns,
                 st.st_mtime_ns if mtime_ns is None else mtime_ns)
        if isinstance(target, int):
            os.utime(target, ns=times)
        else:
            os.utime(target, ns=times, follow_symlinks=False)

    # -- helpers of requests that make names ------------------------------------------------
    def chown_new(self, target: bytes | int, parent: Node, uid: int, gid: int) -> None:
        """New entries belong to the caller; a set-gid directory keeps its group."""
        if uid == 0 and gid == 0:
            return  # created as root already; a set-gid parent's group was applied
        if os.lstat(self.target(parent)).st_mode & stat.S_ISGID:
            gid = -1
        if isinstance(target, int):
            os.fchown(target, uid, gid)
        else:
            os.chown(target, uid, gid, follow_symlinks=False)

    def object_names_in(self, directory: Node, age: float) -> frozenset[bytes] | None:
        """Names of the objects directly in *directory* whose inode changed more
        than *age* seconds ago (reads it, a stat each): none if it was removed
        (rclone removes a prefix's directory with its last object), None when
        it is too large to read on the request loop (LIST_READ_LIMIT bytes)."""
        path = self.inodes.path(directory)
        profile = self.cfg.profile
        before = time.time() - age
        if path is None:
            return frozenset()
        try:
            if not directory.in_bucket or os.lstat(path).st_size > LIST_READ_LIMIT:
                return None
            with os.scandir(path) as entries:
                return frozenset(e.name for e in entries
                                 if profile.is_object_name(e.name) and e.is_file(follow_symlinks=False)
                                 and e.stat(follow_symlinks=False).st_ctime < before)
        except FileNotFoundError:  # removed meanwhile
            return frozenset()
        except OSError:
            return None

    def count_objects(self, parent: Node, name: bytes) -> int:
        """Objects below the directory *parent*/*name* (scans that subtree)."""
        path = self.inodes.child_path(parent, name)
        return scan_tree(path, self.cfg.profile, bucket_top=False).objects
