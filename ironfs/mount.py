"""The daemon's lifecycle: lock, load, mount, serve, flush, stop.

A clean stop (SIGTERM, SIGINT, or an external ``umount``) unmounts, closes what
the kernel left open, flushes the state a last time and leaves the
clean-shutdown marker.  Anything else (a bug, SIGKILL) leaves the mount dead
(ENOTCONN) and no marker: the next start rescans every bucket.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import time
from contextlib import ExitStack

import pyfuse3
import trio

from . import clusterdb
from .catalog import load_account_file, load_buckets, reload_bucket
from .cluster import ClusterNode
from .config import Config, ConfigError
from .fs import IronFS
from .ledger import Ledger
from .metrics import LedgerCollector, Metrics
from .mountinfo import is_fuse_mount
from .notify import notify
from .state import MountLock, take_clean_marker, utc_now, write_clean_marker
from .stats import StatsBook
from .store import StateStore

log = logging.getLogger(__name__)


def fuse_options(cfg: Config) -> set[str]:
    name = os.fsdecode(cfg.backing).replace(",", "_")
    return {"fsname=" + name, "subtype=ironfs", "allow_other", "default_permissions",
            *cfg.kernel_options}


async def _flusher(ops: IronFS, store: StateStore, metrics: Metrics, interval: float,
                   bucket_cache: int | None) -> None:
    """Write dirty state every *interval* seconds; a failure is retried next tick.
    Then drop idle buckets beyond *bucket_cache* from memory."""
    while True:
        await trio.sleep(interval)
        ops.counting.commit_heads()
        ops.ledger.refusals.tick()
        items = store.snapshot()
        if items:
            failed = await trio.to_thread.run_sync(store.write, items)
            store.redirty(failed)
        if bucket_cache is not None:
            store.evict_idle(bucket_cache)
        if metrics.path is not None:
            await trio.to_thread.run_sync(metrics.write_file)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _hold_stop_signals() -> list[int]:
    """From the mount on, a stop signal must unmount cleanly, even one that
    arrives before trio listens (it would kill us and leave the mount dead):
    record it until then."""
    early: list[int] = []
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda n, _frame: early.append(n))
    return early


async def _stop_on_signal(early: list[int]) -> None:
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        if early:
            _stop(early[0])
            return
        async for signum in signals:
            _stop(signum)
            return


def _stop(signum: int) -> None:
    log.info("%s received: unmounting", signal.Signals(signum).name)
    notify("STOPPING=1")
    pyfuse3.terminate()


READ_AHEAD_KB = 1024


def raise_read_ahead(st_dev: int) -> None:
    """The kernel starts a FUSE mount with 128 KiB of readahead; 1 MiB reads
    halve the requests of a sequential read.  Best effort."""
    path = f"/sys/class/bdi/{os.major(st_dev)}:{os.minor(st_dev)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(f"{READ_AHEAD_KB}\n")
    except OSError as e:
        log.info("could not raise readahead (%s): %s", path, e.strerror)


async def _ready_when_answering(mountpoint: bytes, ledger: Ledger) -> None:
    """Tell systemd we are ready once the mount answers a request."""
    # Abandoned if a stop comes first: this stat may then wait on our own
    # mount until the unmount aborts it, and must not hold the stop up.
    st = await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
    raise_read_ahead(st.st_dev)
    log.info("mount is answering")
    notify(f"READY=1\nSTATUS=serving {ledger.known()} buckets")


async def _serve(cfg: Config, ops: IronFS, store: StateStore, metrics: Metrics,
                 early: list[int], trusted_since: tuple[float, float] | None) -> None:
    async with trio.open_nursery() as nursery:
        ops.work.serve(nursery)
        if trusted_since is not None:  # .quota was trusted: sample for changes while stopped
            ops.work.check_changed_while_stopped(*trusted_since)
        nursery.start_soon(_flusher, ops, store, metrics, cfg.flush_interval, cfg.bucket_cache)
        nursery.start_soon(_stop_on_signal, early)
        nursery.start_soon(_ready_when_answering, cfg.mountpoint, ops.ledger)
        if ops.cluster is not None:
            nursery.start_soon(ops.cluster.serve)
        await pyfuse3.main(min_tasks=2, max_tasks=64)
        ops.work.stop()  # scans still running are settled after the unmount
        if ops.cluster is not None:
            await ops.cluster.stop()  # what this node does not use goes back
        nursery.cancel_scope.cancel()


def join_cluster(cfg: Config, ledger: Ledger, book: StatsBook) -> ClusterNode:
    """This mount as a node of the cluster in *cfg.cluster*: the database must
    answer and hold the schema before the mount serves anything."""
    assert cfg.cluster is not None
    try:
        conn = clusterdb.connect(cfg.cluster)
    except ImportError:
        raise ConfigError("cluster: psycopg is not installed (pip install 'ironfs[cluster]')") from None
    except Exception as e:
        raise ConfigError(f"cluster: {str(e).strip()}") from None
    try:
        clusterdb.check_schema(conn)
    except Exception as e:
        raise ConfigError(f"cluster: {str(e).strip()}") from None
    finally:
        conn.close()
    node = ClusterNode(cfg.cluster, cfg.node, ledger, book)
    ledger.gate = node.grants
    log.info("cluster node %s", cfg.node)
    return node


def run(cfg: Config) -> None:
    """Serve *cfg* until stopped.  Raises on a crash (the mount stays dead)."""
    os.umask(0)  # modes come from the caller, with its own umask applied
    with ExitStack() as stack:
        lock = MountLock(cfg.backing)
        lock.acquire()
        stack.callback(lock.release)
        started = time.time()
        stopped = take_clean_marker(cfg.backing)
        clean = stopped is not None
        if not clean:
            log.warning("no clean-shutdown marker (first mount, or a crash): "
                        "rescanning every bucket")
        elif cfg.force_rescan:
            log.info("rescan requested: rescanning every bucket")
        ledger = Ledger(enforce=cfg.enforce)
        book = StatsBook()
        load_buckets(cfg, ledger, book, trust_usage=clean and not cfg.force_rescan)
        load_account_file(cfg, ledger)
        store = StateStore(cfg.backing, ledger, book)
        store.evicting = cfg.bucket_cache is not None
        ops = IronFS(cfg, ledger, store)
        if cfg.cluster is not None:
            ops.cluster = join_cluster(cfg, ledger, book)
            ops.control.limits_changed = ops.cluster.limits_changed
        ledger.loader = functools.partial(reload_bucket, cfg, ledger, book,
                                          scan_beside=ops.work.scan_bucket)
        try:
            metrics = Metrics(LedgerCollector(ledger, store, ops.control, ops),
                              cfg.metrics_address, cfg.metrics_file)
        except OSError as e:
            raise ConfigError(f"metrics: cannot listen on {cfg.metrics_address}: {e.strerror}") from None
        stack.callback(metrics.close)
        early = _hold_stop_signals()
        pyfuse3.init(ops, os.fsdecode(cfg.mountpoint), fuse_options(cfg))
        log.info("serving %s at %s (%d buckets, quota %s)", os.fsdecode(cfg.backing),
                 os.fsdecode(cfg.mountpoint), len(ledger), "on" if cfg.enforce else "off")
        stopped_cleanly = False
        try:
            trusted = (stopped, started) if stopped is not None and not cfg.force_rescan else None
            trio.run(_serve, cfg, ops, store, metrics, early, trusted)
            stopped_cleanly = True
        finally:
            # Unmount only on a clean stop: a crashed daemon must leave the mount
            # dead, so nothing can write to the bare directory behind the quota.
            pyfuse3.close(unmount=stopped_cleanly and is_fuse_mount(cfg.mountpoint))
        notify("STOPPING=1")
        ops.work.settle()
        ops.release_all()
        ops.counting.commit_heads(everything=True)
        ops.ledger.refusals.tick(force=True)
        if not store.flush_now():
            log.error("final flush failed: the next start will rescan")
            return
        metrics.write_file()
        write_clean_marker(cfg.backing, utc_now())
        log.info("unmounted cleanly")
