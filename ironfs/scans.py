"""Running live scans (livescan.py) beside the request loop, and telling them
what requests change.

``run`` reads chunks in a worker thread and adds them up on the loop; the FUSE
adapter calls the ``*_changed`` methods after each change it makes, which cost
nothing while no scan runs.  A scan's tree is found by the inode of its top
directory, so renaming that directory (or a bucket) changes nothing.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from .accounting import Accounting
from .inodes import Node
from .ledger import Ledger
from .livescan import Key, LiveScan
from .reconcile import compare, report
from .rules import hides

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class Running:
    scan: LiveScan
    root_key: Key
    root_fd: int
    bucket_top: bool
    hidden: bool


class Scans:
    def __init__(self, accounting: Accounting) -> None:
        self.accounting = accounting
        self.profile = accounting.profile
        self.active: list[Running] = []

    async def run(self, path: bytes, *, bucket_top: bool = True, hidden: bool = False) -> LiveScan:
        """Scan the tree at *path* while requests go on; the result is exact at
        the moment this returns (on the request loop, before any other request)."""
        return await self.finish(self.start(path, bucket_top=bucket_top, hidden=hidden))

    def start(self, path: bytes, *, bucket_top: bool = True, hidden: bool = False) -> Running:
        """Register a scan of *path*: requests are accounted to it from now on."""
        root_fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(root_fd)
        running = Running(LiveScan(root_fd, self.profile, bucket_top=bucket_top, hidden=hidden),
                          (st.st_dev, st.st_ino), root_fd, bucket_top, hidden)
        self.active.append(running)
        return running

    async def finish(self, running: Running) -> LiveScan:
        """Read and add up the scan started with ``start`` to its end."""
        root_fd, bucket_top, hidden = running.root_fd, running.bucket_top, running.hidden
        path = b"/proc/self/fd/%d" % root_fd
        try:
            while True:
                scan = running.scan
                scan.starting_chunk()
                chunk = await trio.to_thread.run_sync(scan.read_chunk)
                if chunk is not None:
                    scan.add(chunk)
                elif not scan.restart and not scan.queue:
                    # (a rename during that last read may have asked for a
                    # restart, or queued a directory to walk again: not done)
                    return scan
                if scan.restart:
                    log.info("%s: a directory became hidden or visible during its scan; "
                             "scanning it again", os.fsdecode(os.readlink(path)))
                    scan.close()
                    running.scan = LiveScan(root_fd, self.profile, bucket_top=bucket_top,
                                            hidden=hidden)
        finally:
            running.scan.close()
            self.active.remove(running)
            os.close(root_fd)

    async def reconcile(self, ledger: Ledger, root: bytes, names: list[bytes] | None, fix: bool,
                        pending: Callable[[], Mapping[int, int]]) -> dict[str, Any]:
        """Scan each bucket live and compare it with the ledger the moment its
        scan ends (files unlinked while open, which no scan sees, are added)."""
        started = time.monotonic()
        if names is None:
            names = [b.name for b in ledger] + list(ledger.evicted)
        rows = []
        for name in names:
            bucket = ledger.load(name)  # an evicted one: its .quota (small), not a scan
            if bucket is None:
                continue  # deleted meanwhile
            try:
                scan = await self.run(os.path.join(root, bucket.name))
            except FileNotFoundError:
                continue  # deleted or renamed meanwhile
            bucket = bucket.load_live()  # (if evicted meanwhile: exactly as written)
            if ledger.get(bucket.name) is not bucket:
                continue
            scan_bytes = scan.used_bytes + pending().get(id(bucket), 0)
            rows.append(compare(ledger, bucket, scan_bytes, scan.objects, fix=fix))
        return report(rows, started, fix)

    # -- what requests changed (request loop; after the change succeeded) ----------------
    def _covering(self, directory: Node | None) -> list[tuple[LiveScan, Node, bool]]:
        """The scans whose tree holds *directory*, with their top's node and
        whether *directory* is hidden below that top (for what is an object
        there: a scan may count a hidden directory as if it were published)."""
        found = []
        for running in self.active:
            node = directory
            hidden = running.hidden
            while node is not None and node.key != running.root_key:
                hidden = hidden or hides(node.name)
                node = node.parent
            if node is not None:
                found.append((running.scan, node, hidden))
        return found

    def resized(self, node: Node, old: int, new: int) -> None:
        if self.active and old != new:
            for scan, _, _ in self._covering(node.parent):
                scan.resized(node.key, old, new)

    def named(self, parent: Node, name: bytes, st: os.stat_result) -> None:
        """*parent*/*name* now names the file *st* (after create, link, rename)."""
        if self.active and stat.S_ISREG(st.st_mode):
            for scan, _, hidden in self._covering(parent):
                visible = not hidden and self.profile.is_object_name(name)
                scan.named(parent.key, name, (st.st_dev, st.st_ino), st.st_size, st.st_nlink, visible)

    def linking(self, node: Node) -> None:
        """*node*, a file with one name, is about to get a second one."""
        if self.active and node.parent is not None:
            for scan, _, _ in self._covering(node.parent):
                scan.became_linked(node.parent.key, node.name, node.key)

    def unnamed(self, parent: Node, name: bytes, st: os.stat_result) -> None:
        """*parent*/*name*, found as *st* just before, is gone."""
        if self.active and stat.S_ISREG(st.st_mode):
            for scan, _, hidden in self._covering(parent):
                visible = not hidden and self.profile.is_object_name(name)
                scan.unnamed(parent.key, name, (st.st_dev, st.st_ino), st.st_size, st.st_nlink, visible)

    def renamed(self, old_parent: Node, old_name: bytes, src: os.stat_result,
                new_parent: Node, new_name: bytes, dst: os.stat_result | None,
                exchange: bool) -> None:
        """A rename (or exchange) replacing *dst* if it existed."""
        if not self.active:
            return
        moves = [(old_parent, old_name, src, new_parent, new_name)]
        if exchange and dst is not None:
            moves.append((new_parent, new_name, dst, old_parent, old_name))
        elif dst is not None:
            self.unnamed(new_parent, new_name, dst)  # replaced
        for from_parent, from_name, st, to_parent, to_name in moves:
            if stat.S_ISREG(st.st_mode):
                self.unnamed(from_parent, from_name, st)
                self.named(to_parent, to_name, st)
            elif stat.S_ISDIR(st.st_mode):
                self.dir_moved(from_parent, from_name, to_parent, to_name)

    def dir_moved(self, old_parent: Node, old_name: bytes, new_parent: Node, new_name: bytes) -> None:
        """A directory went from *old_parent*/*old_name* to *new_parent*/*new_name*:
        walked again from its new place; if that made it hidden or visible to a
        scan, or took it out of a scan's tree, that scan starts over."""
        if not self.active:
            return
        was_hidden = {id(scan): hidden or hides(old_name)
                      for scan, _, hidden in self._covering(old_parent)}
        for scan, top, hidden in self._covering(new_parent):
            now_hidden = hidden or hides(new_name)
            changed = was_hidden.pop(id(scan), now_hidden) != now_hidden
            scan.dir_moved(_below(top, new_parent, new_name), now_hidden, changed)
        for running in self.active:
            if id(running.scan) in was_hidden:
                running.scan.restart = True  # what it counted below it left its tree

def _below(top: Node, parent: Node, name: bytes) -> bytes:
    """The path of *parent*/*name* below *top* (an ancestor of *parent*)."""
    parts = [name]
    node: Node | None = parent
    while node is not None and node is not top:
        parts.append(node.name)
        node = node.parent
    return b"/".join(reversed(parts))
