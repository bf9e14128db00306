"""The inode table: FUSE inode numbers ↔ backing files, with lookup counts.

No fds are held per inode (the hard RLIMIT_NOFILE is 20,000 and buckets hold
millions of files): a node remembers the name it was reached by, and its path is
rebuilt from its ancestors, so renaming a directory moves everything below it.

A node is kept while the kernel knows it (``lookups``), while it has open file
handles (``open``), or while a known node names it as parent (``children``).
"""

from __future__ import annotations

import errno
import os
from collections import OrderedDict

from .ledger import Bucket

ROOT_INODE = 1
#: Backing paths longer than this are reached from an fd of a deep ancestor
#: (``/proc/self/fd/N/rest``): a client that builds a tree deeper than PATH_MAX
#: with the *at calls, or a mount path near PATH_MAX under a longer backing
#: root, must work as it does on the backing filesystem.
LONG_PATH = 3072
#: Open O_PATH fds of such ancestors kept for reuse.
ANCHORS = 256
#: Node ids from here up are made up (files on other devices); backing inode
#: numbers are far below.
SYNTHETIC_INODES = 1 << 62


class Node:
    __slots__ = (
        "ino", "generation", "key", "parent", "name", "extra_links", "lookups", "children",
        "open", "_bucket", "size", "unlinked", "is_state", "fresh", "busy_at", "owed", "written",
    )

    def __init__(self, ino: int, key: tuple[int, int], parent: Node | None, name: bytes,
                 bucket: Bucket | None, is_state: bool) -> None:
        self.ino = ino
        self.generation = 0  # bumped when the backing filesystem reuses the number
        self.key = key
        self.parent = parent
        self.name = name
        # Other (parent, name) pairs of a hard-linked file, once the kernel knows them.
        self.extra_links: list[tuple[Node, bytes]] | None = None
        self.lookups = 0
        self.children = 0
        self.open = 0
        self._bucket = bucket
        # Apparent size while open for writing (None: not known, ask the fd).
        self.size: int | None = None
        # Its last name is gone while handles are open: bytes are refunded at last close.
        self.unlinked = False
        # Part of ironfs's own state (seen only with expose_state, read-only).
        self.is_state = is_state
        # Owned by counting.py: since when it is written without a PUT counted
        # (None: not); when it was last opened, released or published.
        self.fresh: float | None = None
        self.busy_at = 0.0
        self.owed = 0  # the server's own stats still expected after its use (counting.py)
        self.written = 0  # bytes written since the last PUT counted (counting.py)

    def load_bucket(self) -> Bucket | None:
        """The bucket charged for this entry.  Should that bucket have been
        evicted from memory since this node was made, this reloads it from its
        ``.quota`` (disk I/O, and a scan if that file is gone)."""
        b = self._bucket
        if b is not None and b.evicted is not None:
            b = self._bucket = b.load_live()
        return b

    def set_bucket(self, bucket: Bucket | None) -> None:
        self._bucket = bucket

    @property
    def in_bucket(self) -> bool:
        """Whether the entry is charged to a bucket, without reloading an
        evicted one."""
        return self._bucket is not None

    def __repr__(self) -> str:
        return f"Node({self.ino}, {self.name!r}, lookups={self.lookups}, open={self.open})"


class InodeTable:
    def __init__(self, root: bytes, root_key: tuple[int, int]) -> None:
        self.root_path = root
        self.root = Node(ROOT_INODE, root_key, None, b"", None, False)
        self.root.lookups = 1  # the kernel never forgets the root
        self._by_ino: dict[int, Node] = {ROOT_INODE: self.root}
        self._by_key: dict[tuple[int, int], Node] = {root_key: self.root}
        self._dev = root_key[0]
        self._next_synthetic = SYNTHETIC_INODES
        self._anchors: OrderedDict[Node, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_ino)

    def get(self, ino: int) -> Node:
        """Raises KeyError for an inode the kernel should not know."""
        return self._by_ino[ino]

    def by_key(self, key: tuple[int, int]) -> Node | None:
        return self._by_key.get(key)

    # -- paths -------------------------------------------------------------
    def path(self, node: Node) -> bytes | None:
        """The backing path of *node*, or None if it has no name left."""
        parts: list[bytes] = []
        size = len(self.root_path)
        start = node
        while node.parent is not None:
            parts.append(node.name)
            size += len(node.name) + 1
            node = node.parent
        if node is not self.root:
            return None
        if not parts:
            return self.root_path
        if size > LONG_PATH:
            return self._anchored(start)
        parts.append(self.root_path)
        parts.reverse()
        return b"/".join(parts)

    def _anchored(self, node: Node) -> bytes:
        """A path of *node* through an fd of its highest ancestor that leaves
        a tail no longer than LONG_PATH."""
        tail: list[bytes] = []
        size = 0
        while True:
            tail.append(node.name)
            size += len(node.name) + 1
            parent = node.parent
            assert parent is not None, "only called for nodes below the root"
            node = parent
            if node.parent is None or size + len(node.name) + 1 > LONG_PATH:
                break
        tail.append(b"/proc/self/fd/%d" % self._anchor_fd(node))
        tail.reverse()
        return b"/".join(tail)

    def _anchor_fd(self, node: Node) -> int:
        fd = self._anchors.get(node)
        if fd is not None:
            self._anchors.move_to_end(node)
            return fd
        path = self.path(node)
        if path is None:
            raise FileNotFoundError(errno.ENOENT, "directory is gone")
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != node.key:
            os.close(fd)
            raise OSError(errno.ESTALE, "directory was replaced behind the mount")
        self._anchors[node] = fd
        if len(self._anchors) > ANCHORS:
            os.close(self._anchors.popitem(last=False)[1])
        return fd

    def _drop_anchor(self, node: Node) -> None:
        fd = self._anchors.pop(node, None)
        if fd is not None:
            os.close(fd)

    def close_anchors(self) -> None:
        while self._anchors:
            os.close(self._anchors.popitem()[1])

    def child_path(self, parent: Node, name: bytes) -> bytes:
        base = self.path(parent)
        if base is None:
            raise FileNotFoundError(2, "parent directory is gone")
        return base + b"/" + name

    def components(self, node: Node) -> list[bytes]:
        """Names from the top-level entry down to *node* (empty for the root)."""
        parts: list[bytes] = []
        while node.parent is not None:
            parts.append(node.name)
            node = node.parent
        parts.reverse()
        return parts

    # -- the kernel's references -------------------------------------------
    def remember(self, parent: Node, name: bytes, st: os.stat_result,
                 bucket: Bucket | None, is_state: bool) -> Node:
        """The node for *parent*/*name* (created if new), with one more lookup."""
        node = self.attach(parent, name, st, bucket, is_state)
        node.lookups += 1
        return node

    def attach(self, parent: Node, name: bytes, st: os.stat_result,
               bucket: Bucket | None, is_state: bool) -> Node:
        """The node for *parent*/*name* without counting a lookup (readdir asks
        first and counts only what the kernel accepted)."""
        key = (st.st_dev, st.st_ino)
        node = self._by_key.get(key)
        if node is None:
            node = Node(self._node_id(key), key, parent, name, bucket, is_state)
            old = self._by_ino.get(node.ino)
            if old is not None:
                self._supersede(old, node)
            parent.children += 1
            self._by_ino[node.ino] = node
            self._by_key[key] = node
        elif node.parent is not parent or node.name != name:
            self._add_link(node, parent, name)
        return node

    def _node_id(self, key: tuple[int, int]) -> int:
        """The backing file's own inode number, so that st_ino stays what it
        is on the backing filesystem whatever the kernel forgets; a made-up one
        for files on another device (a filesystem mounted inside the backing
        root) and for numbers FUSE reserves."""
        dev, ino = key
        if dev == self._dev and ino > ROOT_INODE and ino < SYNTHETIC_INODES:
            return ino
        self._next_synthetic += 1
        return self._next_synthetic

    @staticmethod
    def _supersede(old: Node, new: Node) -> None:
        """The backing filesystem gave a deleted file's number to *new* while
        the kernel may still hold *old* under it.  A new generation tells the
        kernel they differ (it retires its old inode); FORGETs name only the
        number, so the lookups still owed move to the new node.  *old* lives on
        for whatever still refers to it (handles, children)."""
        new.generation = old.generation + 1
        new.lookups, old.lookups = old.lookups, 0

    def _add_link(self, node: Node, parent: Node, name: bytes) -> None:
        if node.parent is None:
            self._set_primary(node, parent, name)
            return
        if node.extra_links is None:
            node.extra_links = []
        if (parent, name) not in node.extra_links:
            node.extra_links.append((parent, name))
            parent.children += 1

    def _set_primary(self, node: Node, parent: Node, name: bytes) -> None:
        node.parent = parent
        node.name = name
        parent.children += 1

    def forget(self, ino: int, n: int) -> None:
        node = self._by_ino.get(ino)
        if node is None or node is self.root:
            return
        node.lookups = max(0, node.lookups - n)
        self.collect(node)

    def collect(self, node: Node) -> None:
        """Drop *node* if nothing refers to it any more, then its ancestors."""
        while (node is not self.root and node.lookups == 0 and node.children == 0
               and node.open == 0):
            if self._by_ino.get(node.ino) is node:  # (not if superseded)
                del self._by_ino[node.ino]
            parent = self._detach(node)
            if parent is None:
                return
            parent.children -= 1
            node = parent

    def _detach(self, node: Node) -> Node | None:
        """Free *node*'s key, anchor and extra links; unhook it from its primary
        parent and return that parent (whose child count the caller settles)."""
        if self._by_key.get(node.key) is node:
            del self._by_key[node.key]
        if self._anchors:
            self._drop_anchor(node)
        for link_parent, _ in node.extra_links or ():
            self._release_child(link_parent)
        node.extra_links = None
        parent = node.parent
        node.parent = None
        return parent

    def _release_child(self, parent: Node) -> None:
        parent.children -= 1
        self.collect(parent)

    # -- namespace changes made through the mount ------------------------------
    def unlinked(self, node: Node, parent: Node, name: bytes) -> None:
        """The name *parent*/*name* of *node* is gone."""
        links = node.extra_links
        if node.parent is parent and node.name == name:
            if links:
                new_parent, new_name = links.pop()
                # The extra link's child reference becomes the primary's.
                node.parent, node.name = new_parent, new_name
                self._release_child(parent)
            else:
                node.parent = None
                self._release_child(parent)
        elif links and (parent, name) in links:
            links.remove((parent, name))
            self._release_child(parent)
        self.collect(node)

    def moved(self, node: Node, old_parent: Node, old_name: bytes,
              new_parent: Node, new_name: bytes) -> None:
        """*node* was renamed from *old_parent*/*old_name*."""
        if node.parent is old_parent and node.name == old_name:
            node.parent = new_parent
            node.name = new_name
            new_parent.children += 1
            self._release_child(old_parent)
        elif node.extra_links and (old_parent, old_name) in node.extra_links:
            node.extra_links.remove((old_parent, old_name))
            node.extra_links.append((new_parent, new_name))
            new_parent.children += 1
            self._release_child(old_parent)
        else:
            self._add_link(node, new_parent, new_name)

    def gone(self, node: Node) -> None:
        """The backing file behind *node* no longer exists under any name.

        Its key is freed at once: the backing filesystem may give the inode
        number to a new file while the kernel still holds this node."""
        parent = self._detach(node)
        if parent is not None:
            self._release_child(parent)
        self.collect(node)
