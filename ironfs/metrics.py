"""Prometheus metrics, read from the live ledger at scrape time (nothing is
counted twice, nothing is done on the request path).

Served on ``-o metrics=HOST:PORT`` (``/metrics``) and/or written atomically to a
node_exporter textfile (``-o metrics_file=PATH``) after every flush.  Reading
from the scrape thread is safe: each value read is one the daemon wrote, and
the bucket list is copied in one step.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sized
from http.server import ThreadingHTTPServer
from typing import Protocol

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .control import Control
from .http_api import Api, serve
from .ledger import Bucket, Ledger, Meter
from .state import name_to_json
from .stats import COUNTERS
from .store import StateStore

log = logging.getLogger(__name__)

OPERATIONS = [(i, c[:-len("_count")]) for i, c in enumerate(COUNTERS) if c.endswith("_count")]
STATES = ("ok", "soft", "hard")


class Tables(Protocol):
    """What the metrics read of the FUSE adapter: the sizes of its tables."""

    @property
    def inodes(self) -> Sized: ...
    @property
    def handles(self) -> Sized: ...
    @property
    def requests(self) -> Mapping[str, int]: ...


class LedgerCollector(Collector):
    def __init__(self, ledger: Ledger, store: StateStore, control: Control,
                 fs: Tables | None = None) -> None:
        self.ledger = ledger
        self.store = store
        self.control = control  # for the last reconcile's report
        self.fs = fs

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        buckets = list(self.ledger)
        yield from self._meters("bucket", [(name_to_json(b.name), b) for b in buckets])
        yield from self._meters("account", list(self.ledger.accounts.items()))
        yield from self._operations(buckets)
        yield from self._housekeeping()

    def _meters(self, kind: str, meters: list[tuple[str, Meter]]) -> Iterator[GaugeMetricFamily]:
        helps = {
            "used_bytes": f"Bytes charged to the {kind}",
            "objects": f"Objects in the {kind}",
            "max_bytes": "Hard limit (absent: none)",
            "grace_bytes": "Bytes allowed past max_bytes",
            "soft_bytes": "Soft limit (absent: none)",
            "max_objects": "Object limit (absent: none)",
        }
        families = {key: GaugeMetricFamily(f"ironfs_{kind}_{key}", text, labels=[kind])
                    for key, text in helps.items()}
        state = GaugeMetricFamily(f"ironfs_{kind}_state", "1 for the current state: ok, soft, hard",
                                  labels=[kind, "state"])
        for name, m in meters:
            families["used_bytes"].add_metric([name], m.used_bytes)
            families["objects"].add_metric([name], m.objects)
            families["grace_bytes"].add_metric([name], m.limits.grace_bytes)
            for key, value in (("max_bytes", m.limits.max_bytes), ("soft_bytes", m.soft_limit),
                               ("max_objects", m.limits.max_objects)):
                if value is not None:
                    families[key].add_metric([name], value)
            current = m.state
            for s in STATES:
                state.add_metric([name, s], 1 if s == current else 0)
        yield from families.values()
        yield state

    def _operations(self, buckets: list[Bucket]) -> Iterator[CounterMetricFamily]:
        ops = CounterMetricFamily("ironfs_bucket_operations", "Operations this month (resets monthly)",
                                  labels=["bucket", "op"])
        extra = {c: CounterMetricFamily(f"ironfs_bucket_{c}", f"{c.replace('_', ' ')} this month",
                                        labels=["bucket"])
                 for c in ("bytes_written", "bytes_read", "quota_rejections")}
        for b in buckets:
            counters = b.stats  # (None: nothing counted this month yet)
            name = name_to_json(b.name)
            values = list(counters.values) if counters is not None else [0] * len(COUNTERS)
            for i, op in OPERATIONS:
                ops.add_metric([name, op], values[i])
            for c, family in extra.items():
                family.add_metric([name], values[COUNTERS.index(c)])
        yield ops
        yield from extra.values()

    def _housekeeping(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        buckets = GaugeMetricFamily("ironfs_buckets", "Buckets tracked, in memory or evicted "
                                    "(bucket_cache)", labels=["where"])
        buckets.add_metric(["memory"], len(self.ledger))
        buckets.add_metric(["evicted"], len(self.ledger.evicted))
        yield buckets
        if self.fs is not None:
            yield GaugeMetricFamily("ironfs_inodes", "Inodes the daemon tracks for the kernel",
                                    value=len(self.fs.inodes))
            yield GaugeMetricFamily("ironfs_open_files", "Open file handles",
                                    value=len(self.fs.handles))
            requests = CounterMetricFamily("ironfs_fuse_requests", "FUSE requests answered, by operation",
                                           labels=["op"])
            for op, n in sorted(self.fs.requests.items()):
                requests.add_metric([op], n)
            yield requests
        yield GaugeMetricFamily("ironfs_flush_duration_seconds", "Duration of the last flush",
                                value=self.store.last_flush_seconds)
        yield GaugeMetricFamily("ironfs_last_flush_timestamp_seconds", "When the last flush ended",
                                value=self.store.last_flush_at)
        report = self.control.last_finished  # (not one still running)
        if report is not None:
            drift_b = GaugeMetricFamily("ironfs_reconcile_drift_bytes", "Drift found by the last reconcile",
                                        labels=["bucket"])
            drift_o = GaugeMetricFamily("ironfs_reconcile_drift_objects", "Drift found by the last reconcile",
                                        labels=["bucket"])
            for row in report["buckets"]:
                drift_b.add_metric([row["bucket"]], row["drift_bytes"])
                drift_o.add_metric([row["bucket"]], row["drift_objects"])
            yield drift_b
            yield drift_o
            yield GaugeMetricFamily("ironfs_last_reconcile_timestamp_seconds", "When the last reconcile ran",
                                    value=report.get("at", 0))


class Metrics:
    def __init__(self, collector: LedgerCollector, address: str | None, path: str | None,
                 api: Api | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.path = path
        self.server: ThreadingHTTPServer | None = None
        if address is not None:
            self.server = serve(address, self.registry,
                                api or Api(collector.store.root, collector.ledger, collector.store.book))
            log.info("metrics at http://%s/metrics, buckets at http://%s/buckets/", address, address)

    def write_file(self) -> None:
        """Write the textfile (any thread); a failure is logged, never raised."""
        if self.path is None:
            return
        try:
            write_to_textfile(self.path, self.registry)
            os.chmod(self.path, 0o644)  # the daemon runs with umask 0
        except OSError as e:
            log.warning("could not write metrics to %s: %s", self.path, e.strerror)
        except Exception:  # a bug in a metric must not take the mount down
            log.exception("could not write metrics to %s", self.path)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
