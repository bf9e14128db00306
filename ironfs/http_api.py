"""The metrics listener (``-o metrics=HOST:PORT``): Prometheus at ``/metrics``,
and the seed's per-bucket endpoints, read-only JSON with the fields of the
state files:

- ``GET /buckets/<bucket>/quota`` — as ``<bucket>/.quota``;
- ``GET /buckets/<bucket>/stats[?month=YYYY-MM]`` — as ``.stats/<month>.json``
  (this month's counters from memory, others from their file).

404 for an unknown bucket or month, 405 for anything but GET/HEAD.  Served
from the listener's own threads: they only read the ledger (an evicted bucket
is read from its ``.quota``, never reloaded from here).
"""

from __future__ import annotations

import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote_to_bytes, urlsplit

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .ledger import Ledger
from .rules import QUOTA_FILE
from .state import CorruptState, iso, load_stats, quota_json, utc_now
from .stats import COUNTERS, MONTH_PATTERN, StatsBook

log = logging.getLogger(__name__)


class Api:
    """What the endpoints answer, without HTTP (tested on its own)."""

    def __init__(self, root: bytes, ledger: Ledger, book: StatsBook) -> None:
        self.root = root
        self.ledger = ledger
        self.book = book

    def quota(self, name: bytes) -> bytes | None:
        """The JSON of *name*'s ``.quota``, as it would be written now."""
        bucket = self.ledger.get(name)
        if bucket is not None:
            return quota_json(bucket, utc_now())
        if name not in self.ledger.evicted:
            return None
        try:  # evicted: its .quota was exact when it was written
            with open(os.path.join(self.root, name, QUOTA_FILE), "rb") as f:
                return f.read()
        except OSError:
            return None

    def stats(self, name: bytes, month: str | None) -> bytes | None:
        """The JSON of a month's counters (this month's by default)."""
        bucket = self.ledger.get(name)
        if bucket is None and name not in self.ledger.evicted:
            return None
        now = self.book.month_now()
        month = month or now
        if not MONTH_PATTERN.fullmatch(month):
            return None
        counters = bucket.stats if bucket is not None else None
        if counters is not None and counters.month == month:
            values = list(counters.values)
        else:
            try:
                loaded = load_stats(os.path.join(self.root, name), month, COUNTERS)
            except CorruptState:
                return None
            if loaded is None and month != now:
                return None
            values = loaded or [0] * len(COUNTERS)
        return orjson.dumps({"month": month, **dict(zip(COUNTERS, values, strict=True)),
                             "last_updated": iso(utc_now())}, option=orjson.OPT_INDENT_2) + b"\n"


def serve(address: str, registry: CollectorRegistry, api: Api) -> ThreadingHTTPServer:
    """Start the listener in a thread of its own."""
    host, _, port = address.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self._answer(head=False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(head=True)

        def do_POST(self) -> None:  # noqa: N802
            self._send(405, b'{"error": "read-only"}\n', "application/json", False)

        do_PUT = do_DELETE = do_PATCH = do_POST  # noqa: N815

        def _answer(self, head: bool) -> None:
            url = urlsplit(self.path)
            if url.path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST, head)
                return
            parts = url.path.split("/")
            doc = None
            if len(parts) == 4 and parts[1] == "buckets" and parts[3] in ("quota", "stats"):
                name = unquote_to_bytes(parts[2])
                if parts[3] == "quota":
                    doc = api.quota(name)
                else:
                    doc = api.stats(name, parse_qs(url.query).get("month", [None])[0])
            if doc is None:
                self._send(404, b'{"error": "not found"}\n', "application/json", head)
            else:
                self._send(200, doc, "application/json", head)

        def _send(self, code: int, body: bytes, content_type: str, head: bool) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # nothing per request in the log

    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
