"""Work that runs beside the request loop while the mount serves: counting
the usage of buckets that appeared behind the mount's back (or were reloaded
without a usable ``.quota``), online reconciles, and the object count of a
directory being published.  Each runs as a task in the serving nursery and
scans live (scans.py); none holds up a request but its own.

After the unmount (no nursery), the same work runs in place, as nothing
changes the tree any more.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable

import trio

from .config import Config
from .control import Control
from .inodes import Node
from .ledger import Bucket, Ledger
from .rules import hides
from .scanner import scan_tree
from .scans import Scans
from .startcheck import changed_between
from .tree import BackingTree

log = logging.getLogger(__name__)


class Background:
    def __init__(self, cfg: Config, ledger: Ledger, scans: Scans, control: Control,
                 tree: BackingTree, pending: Callable[[], dict[int, int]]) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.scans = scans
        self.control = control
        self.tree = tree
        self.accounting = scans.accounting
        self.pending = pending  # bytes of files unlinked while open, per bucket id
        self.nursery: trio.Nursery | None = None

    def serve(self, nursery: trio.Nursery) -> None:
        """From now on, work runs beside the requests, in *nursery*."""
        self.nursery = nursery
        self.control.live = self.reconcile
        self.tree.scan_beside = self.scan_bucket

    def stop(self) -> None:
        """The requests have ended (scans still running are settled later)."""
        self.nursery = None

    def settle(self) -> None:
        """After unmount: buckets whose scan did not end are scanned now,
        before the final flush writes their .quota."""
        for bucket in list(self.ledger):
            if self.ledger.is_scanning(bucket):
                self.ledger.end_scan(bucket, *self._scan_now(bucket))

    def _scan_now(self, bucket: Bucket) -> tuple[int, int]:
        """(bytes, objects) of *bucket* by a scan in place, with the bytes of
        files unlinked while open (for when nothing changes the tree)."""
        usage = scan_tree(os.path.join(self.cfg.backing, bucket.name), self.cfg.profile)
        return usage.used_bytes + self.pending().get(id(bucket), 0), usage.objects

    def scan_bucket(self, bucket: Bucket) -> None:
        """Count *bucket*'s usage with a scan beside the requests (adopted, or
        reloaded without a usable .quota); until it ends, its growth against a
        limit is refused rather than risk overshooting."""
        path = os.path.join(self.cfg.backing, bucket.name)
        if self.nursery is None:  # not serving (yet, or any more): nothing runs beside
            self.ledger.set_usage(bucket, *self._scan_now(bucket))
            return
        self.ledger.begin_scan(bucket)
        running = self.scans.start(path)  # requests are accounted to it from now on

        async def run() -> None:
            try:
                scan = await self.scans.finish(running)
            except Exception:
                log.exception("scan of bucket %s failed; its growth stays refused until "
                              "`ironfs reconcile --fix`", bucket.display_name)
                return
            pending = self.pending().get(id(bucket), 0)
            self.ledger.end_scan(bucket, scan.used_bytes + pending, scan.objects)
            log.info("bucket %s scanned: %d bytes, %d objects", bucket.display_name,
                     bucket.used_bytes, bucket.objects)
        self.nursery.start_soon(run)

    def reconcile(self, names: list[bytes] | None, fix: bool) -> None:
        """An online reconcile (Control.live): its report replaces the
        running state when the scans end."""
        async def run() -> None:
            try:
                result = await self.scans.reconcile(self.ledger, self.cfg.backing, names, fix,
                                                    self.pending)
            except Exception as e:  # a failed reconcile must not take the mount down
                log.exception("reconcile failed")
                result = {"state": "failed", "error": str(e), "at": time.time()}
            self.control.finished(result)
        assert self.nursery is not None
        self.nursery.start_soon(run)

    def check_changed_while_stopped(self, stopped: float, started: float) -> None:
        """Sample every bucket for changes made between the last clean stop and
        this start (startcheck.py), beside the requests; rescan those found."""
        async def run() -> None:
            began = time.monotonic()
            suspects = 0
            for bucket in list(self.ledger):
                path = os.path.join(self.cfg.backing, bucket.name)
                try:
                    found = await trio.to_thread.run_sync(changed_between, path, stopped, started)
                except OSError as e:  # unreadable: say so, never take the mount down
                    log.warning("start check of bucket %s failed: %s", bucket.display_name, e)
                    continue
                if found is not None and self.ledger.get(bucket.name) is bucket:
                    suspects += 1
                    log.warning("bucket %s was changed while ironfs was stopped (%s); rescanning it",
                                bucket.display_name, os.fsdecode(found))
                    self.scan_bucket(bucket)
            log.info("start check: %d bucket(s) sampled in %.2fs, %d changed while stopped",
                     len(self.ledger), time.monotonic() - began, suspects)
        if self.nursery is not None:
            self.nursery.start_soon(run)

    async def count_if_publishing(self, old_parent: Node, old_name: bytes, new_parent: Node,
                                  new_name: bytes) -> tuple[tuple[int, int], int] | None:
        """A directory renamed between hidden and visible changes its bucket's
        object count by the objects below it: they are counted beside the
        requests (the rename waits for them, no other request does).
        Returns (the directory's key, its objects), or None."""
        root = self.tree.root
        if self.nursery is None or old_parent is root or new_parent is root or not old_parent.in_bucket:
            return None
        hidden = self.accounting.in_hidden_dir(old_parent) or hides(old_name)
        if hidden == (self.accounting.in_hidden_dir(new_parent) or hides(new_name)):
            return None
        path = self.tree.inodes.child_path(old_parent, old_name)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or old_parent.load_bucket() is not new_parent.load_bucket():
            return None
        scan = await self.scans.run(path, bucket_top=False)
        return (st.st_dev, st.st_ino), scan.objects
