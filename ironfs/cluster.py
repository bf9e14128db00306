"""A mount as a node of a cluster (``-o cluster=DSN,node=NAME``): the grants it
holds for its buckets and accounts, checked on the write path without the
database, and refilled, given back and reported beside the requests.

The write path (ledger.py) asks :class:`Grants` whether a growth fits what this
node holds; if not, :class:`NeedGrant` (a QuotaExceeded) goes up to the handler
wrapper, which awaits :meth:`ClusterNode.obtain` — a grant from PostgreSQL, in a
worker thread, bounded in time — and runs the request once more, or refuses it.
Other requests are answered meanwhile.  With the database gone, a node goes on
within what it holds and then refuses growth; shrinking never asks anything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import trio

from . import clusterdb
from .clusterdb import Grant, LimitRow
from .ledger import Bucket, Ledger, Limits, Meter, QuotaExceeded
from .stats import MonthCounters, StatsBook

log = logging.getLogger(__name__)

#: How long a write that needs more than the node holds may wait for it.
WAIT_FOR_GRANT = 2.0
#: Headroom below this fraction of the last headroom obtained: refill ahead of need.
REFILL_BELOW = 0.25
#: A grant unused for this long is given back (down to the usage).
IDLE_AFTER = 2.0
#: The background loop's period (refills, releases, usage reports).
TICK = 0.2
#: Usage and monthly counters go to the database every this many ticks.
COUNTERS_EVERY = 5

Key = tuple[str, str]  # ("bucket" or "account", name)
#: Not a channel: the listener (re)connected, limits may have changed unheard.
RESYNC = ""


class NeedGrant(QuotaExceeded):
    """A growth beyond the grant this node holds: refused unless a refill comes."""

    def __init__(self, bucket: Bucket, meter: Meter, nbytes: int, nobjects: int) -> None:
        super().__init__(bucket, meter, "cluster grant")
        self.nbytes = max(0, nbytes)
        self.nobjects = max(0, nobjects)


def key_of(meter: Meter) -> Key:
    return meter.kind, meter.display_name


class Grants:
    """What this node holds, per bucket and account: the ledger's gate."""

    def __init__(self) -> None:
        # Per bucket or account (the meter itself: no name to build per growth).
        self.held: dict[Meter, Grant] = {}
        self.headroom: dict[Meter, int] = {}  # bytes above usage at the last refill
        self.active: dict[Meter, float] = {}  # when a growth last asked

    def check(self, bucket: Bucket, meter: Meter, nbytes: int, nobjects: int) -> None:
        self.active[meter] = time.monotonic()
        grant = self.held.get(meter)
        if grant is None:
            raise NeedGrant(bucket, meter, nbytes, nobjects)
        if nbytes > 0 and grant.bytes is not None and meter.used_bytes + nbytes > grant.bytes:
            raise NeedGrant(bucket, meter, nbytes, nobjects)
        if nobjects > 0 and grant.objects is not None and meter.objects + nobjects > grant.objects:
            raise NeedGrant(bucket, meter, nbytes, nobjects)


def _limit_row(limits: Limits) -> LimitRow:
    return LimitRow(limits.max_bytes, limits.max_objects, limits.grace_bytes)


class ClusterNode:
    def __init__(self, dsn: str, node: str, ledger: Ledger, book: StatsBook) -> None:
        self.dsn = dsn
        self.node = node
        self.ledger = ledger
        self.book = book
        book.cluster_touched = set()
        self.grants = Grants()
        self.meters: dict[Key, Meter] = {}
        self._conn: Any = None  # psycopg.Connection, used by one worker thread at a time
        self._db = trio.Lock()
        self._listener: threading.Thread | None = None
        self._stopping = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self.reachable = True
        self.unsettled: set[Key] = set()  # the database may hold another grant or usage
        self.reported: dict[Key, tuple[int, int]] = {}  # usage last written to the database
        # Monthly counters last written, per bucket name: the month's object and its values.
        self.counted: dict[str, tuple[MonthCounters, tuple[int, ...]]] = {}
        # Limits an administrator set on this node, for the cluster (limits_changed).
        self._limits_in, self._limits_out = trio.open_memory_channel[Meter](1000)

    # -- the database, in worker threads -----------------------------------------------
    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = clusterdb.connect(self.dsn)
        return self._conn

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        async with self._db:
            return await self._run(fn, *args)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(connection, *args) in a worker thread, the caller holding _db;
        None if the database fails."""
        try:
            result = await trio.to_thread.run_sync(lambda: fn(self._connection(), *args))
        except Exception as e:  # unreachable, restarted, refused: fail closed
            if self.reachable:
                log.warning("cluster database: %s (growth beyond the grants held is refused)",
                            str(e).strip() or type(e).__name__)
            self.reachable = False
            self._drop_connection()
            return None
        if not self.reachable:
            log.info("cluster database reachable again")
        self.reachable = True
        return result

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    # -- the write path's wait -----------------------------------------------------------
    async def obtain(self, need: NeedGrant) -> bool:
        """A grant that covers *need*, within WAIT_FOR_GRANT; False: refuse it."""
        meter = need.meter
        key = key_of(meter)
        self.meters[key] = meter
        with trio.move_on_after(WAIT_FOR_GRANT):
            asked_back = False
            while True:
                got = await self._acquire(key, meter, need.nbytes, need.nobjects)
                if got and self._fits(meter, need):
                    return True
                if not self.reachable:
                    return False
                if not asked_back:  # the others may hold what this node needs: ask them
                    await self._call(clusterdb.ask_to_give_back, *key)
                    asked_back = True
                await trio.sleep(0.05)
        return False

    def _fits(self, meter: Meter, need: NeedGrant) -> bool:
        grant = self.grants.held.get(meter)
        if grant is None:
            return False
        return ((grant.bytes is None or meter.used_bytes + need.nbytes <= grant.bytes)
                and (grant.objects is None or meter.objects + need.nobjects <= grant.objects))

    async def _acquire(self, key: Key, meter: Meter, nbytes: int = 0, nobjects: int = 0) -> bool:
        # Under _db, in the database's order: a grant installed here is the one
        # the database holds for this node.  Writes go on within the grant held
        # while this is asked: the new one must not be smaller (floor), or the
        # database would hand the difference to another node while this one
        # fills it.
        async with self._db:
            floor = self.grants.held.get(meter, Grant(0, 0))
            usage = meter.used_bytes, meter.objects
            answer = await self._run(clusterdb.acquire, self.node, key[0], key[1], *usage,
                                     nbytes, nobjects, _limit_row(meter.limits), floor)
            if answer is None:
                return False
            grant, limits = answer
            self.grants.held[meter] = grant
            self.unsettled.discard(key)
            self.reported[key] = usage
        if grant.bytes is not None:
            self.grants.headroom[meter] = max(0, grant.bytes - meter.used_bytes - nbytes)
        self._adopt(meter, limits)
        return True

    def _adopt(self, meter: Meter, row: LimitRow) -> None:
        """The cluster's limits become this node's (its .quota files show them)."""
        old = meter.limits
        if (old.max_bytes, old.max_objects, old.grace_bytes) == (row.max_bytes, row.max_objects,
                                                                 row.grace_bytes):
            return
        limits = Limits(max_bytes=row.max_bytes, max_objects=row.max_objects,
                        grace_bytes=row.grace_bytes, soft_bytes=old.soft_bytes)
        log.info("%s %s: the cluster's limits (max_bytes %s, max_objects %s, grace_bytes %s)",
                 meter.kind, meter.display_name, row.max_bytes, row.max_objects, row.grace_bytes)
        if isinstance(meter, Bucket):
            self.ledger.set_limits(meter, limits)
        else:
            meter.set_limits(limits)
            self.ledger.accounts_dirty = True

    # -- beside the requests -----------------------------------------------------------
    async def serve(self) -> None:
        """Refill grants that run low, give back idle ones; hear limits and
        requests to give back from the other nodes; publish limits set here."""
        self._token = trio.lowlevel.current_trio_token()
        self._listener = threading.Thread(target=self._listen, name="ironfs-cluster-listen", daemon=True)
        self._listener.start()
        await self._take_back_rows()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publish_limits)
            await self._tend()

    async def _take_back_rows(self) -> None:
        """What the database says this node holds (from before a crash, or a
        clean stop): kept until the buckets' usage is known, then settled."""
        rows = await self._call(clusterdb.node_grants, self.node)
        for row in rows or []:
            key = (row.kind, row.name)
            meter = self._local_meter(key)
            if meter is None:  # gone while stopped: nothing used, nothing held
                await self._call(clusterdb.release, self.node, row.kind, row.name, 0, 0)
                continue
            self.meters[key] = meter
            self.grants.held[meter] = row.grant
            self.unsettled.add(key)

    async def _publish_limits(self) -> None:
        async for meter in self._limits_out:
            limits = meter.limits
            await self._call(clusterdb.set_limits, meter.kind, meter.display_name, limits.max_bytes,
                             limits.max_objects, limits.grace_bytes)

    def limits_changed(self, meter: Meter) -> None:
        """An administrator set *meter*'s limits on this node (from the request
        loop; published beside it)."""
        try:
            self._limits_in.send_nowait(meter)
        except trio.WouldBlock:
            log.error("cluster: %s %s: limits not published (queue full)", meter.kind, meter.display_name)

    async def _tend(self) -> None:
        ticks = 0
        while True:
            await trio.sleep(TICK)
            ticks += 1
            report = ticks % COUNTERS_EVERY == 0
            if report:
                await self._report_counters()
            now = time.monotonic()
            for key, meter in list(self.meters.items()):
                if not self.ledger.is_scanning(meter):  # (else its usage is not known yet)
                    await self._tend_one(key, meter, now, report)

    async def _tend_one(self, key: Key, meter: Meter, now: float, report: bool) -> None:
        """Give back an idle grant, refill a busy one running low, or report usage."""
        grant = self.grants.held.get(meter)
        if grant is None:
            return
        idle = now - self.grants.active.get(meter, 0.0) > IDLE_AFTER
        left = None if grant.bytes is None else grant.bytes - meter.used_bytes
        if idle and (key in self.unsettled or (left is not None and left > 0)):
            await self._release(key, meter)
        elif not idle and left is not None and left < REFILL_BELOW * self.grants.headroom.get(meter, 0):
            await self._acquire(key, meter)
        elif report and self.reported.get(key) != (meter.used_bytes, meter.objects):
            await self._report(key, meter)

    async def _report_counters(self) -> None:
        """The monthly counters of the buckets that counted something since the
        last report (and the final figures of a month that just ended)."""
        assert self.book.cluster_touched is not None
        touched, self.book.cluster_touched = self.book.cluster_touched, set()
        rows: list[tuple[str, str, dict[str, int]]] = []
        written: dict[str, tuple[MonthCounters, tuple[int, ...]]] = {}
        for bucket in touched:
            current = bucket.stats
            if current is None:
                continue
            name = bucket.display_name
            last = self.counted.get(name)
            if last is not None and last[0] is not current and tuple(last[0].values) != last[1]:
                rows.append((name, last[0].month, last[0].as_dict()))
            rows.append((name, current.month, current.as_dict()))
            written[name] = current, tuple(current.values)
        if rows:
            await self._call(clusterdb.report_counters, self.node, rows)
            if self.reachable:
                self.counted.update(written)
            else:  # again next time
                self.book.cluster_touched |= touched

    async def _report(self, key: Key, meter: Meter) -> None:
        usage = meter.used_bytes, meter.objects
        await self._call(clusterdb.report, self.node, key[0], key[1], *usage)
        if self.reachable:
            self.reported[key] = usage

    async def _release(self, key: Key, meter: Meter) -> None:
        """Give back what is not used.  The local grant falls first, so nothing
        grows into what the database is about to hand to others (a growth in
        the meantime waits, and asks again)."""
        async with self._db:
            held = self.grants.held.get(meter)
            if held is None:
                return
            used, objects = meter.used_bytes, meter.objects
            self.grants.held[meter] = Grant(None if held.bytes is None else min(held.bytes, used),
                                          None if held.objects is None else min(held.objects, objects))
            grant = await self._run(clusterdb.release, self.node, key[0], key[1], used, objects)
            if grant is None:
                self.unsettled.add(key)  # tried again on a later tick
                return
            self.grants.held[meter] = grant
            self.unsettled.discard(key)
            self.reported[key] = used, objects

    def _listen(self) -> None:
        """LISTEN for limits and give-back requests (a thread of its own:
        psycopg's notification stream blocks)."""
        while not self._stopping.is_set():
            try:
                import psycopg

                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {clusterdb.LIMITS_CHANNEL}")
                    conn.execute(f"LISTEN {clusterdb.SHRINK_CHANNEL}")
                    self._heard(RESYNC, "/")  # what was said while nobody listened
                    while not self._stopping.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._heard(note.channel, note.payload)
            except Exception as e:
                log.debug("cluster listener: %s", e)
                self._stopping.wait(1.0)

    def _heard(self, channel: str, payload: str) -> None:
        kind, _, name = payload.partition("/")
        if self._token is None:
            return
        try:
            trio.from_thread.run(self._on_notice, channel, (kind, name), trio_token=self._token)
        except (trio.RunFinishedError, trio.Cancelled):
            pass

    async def _on_notice(self, channel: str, key: Key) -> None:
        if channel == RESYNC:
            await self._resync_limits()
            return
        meter = self.meters.get(key)
        if channel == clusterdb.SHRINK_CHANNEL:
            if meter is not None:
                await self._release(key, meter)
            return
        if meter is None:  # a limit of a bucket or account held nowhere here yet: shown
            local = self._local_meter(key)
            row = await self._call(clusterdb.limits_of, *key) if local is not None else None
            if local is not None and row is not None:
                self._adopt(local, row)
            return
        self.grants.held.pop(meter, None)  # a limit changed: ask again under it
        await self._acquire(key, meter)

    async def _resync_limits(self) -> None:
        """Every limit the cluster holds, for the buckets and accounts here."""
        rows = await self._call(clusterdb.limit_rows)
        for key, row in (rows or {}).items():
            local = self._local_meter(key)
            if local is not None:
                self._adopt(local, row)

    def _local_meter(self, key: Key) -> Meter | None:
        if key[0] == "bucket":
            return self.ledger.get(key[1].encode())
        return self.ledger.accounts.get(key[1])

    async def stop(self) -> None:
        """A clean stop: the last counters, and everything beyond the usage given back."""
        await self._report_counters()
        for key, meter in list(self.meters.items()):
            await self._release(key, meter)
        self._stopping.set()
        self._drop_connection()
