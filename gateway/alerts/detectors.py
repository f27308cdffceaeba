"""Unusual activity on a key (SPEC §14): new network, usage spike, denied burst, key
unused, rotation due.

The request path only calls :meth:`AlertDetector.observe`, which adds to
in-process counters (no store call, no await). Every ``alerts.flush_interval``
(1 s) a background task folds the counts into the store in one pipelined round
trip, as the usage recorder does, and judges them there, where every replica's
counts meet:

- ``new_network``: each key's networks (IPv4 /24, IPv6 /48) in a hash; a
  network added there (``HSETNX``: once, whichever replica sees it first) after
  the key's first network, once the key has been in use for ``learn_for``.
- ``usage_spike`` / ``denied_burst``: counts per key in buckets of ``window``;
  the last window is the current bucket plus the previous one's share of the
  time not yet elapsed in this one (a sliding estimate).
- ``key_unused`` / ``rotation_due``: a sweep every ``alerts.check_interval``
  (1 h) over every key.

An alert fires once per episode: ``SET NX`` of a marker that lasts one window
(``key_unused`` and ``rotation_due``: until the key changes, i.e. is used again
or replaced), so replicas never double one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any

import redis.asyncio as aioredis

from ..config.schema import AlertsConfig
from ..denials import FAULTS
from ..events.log import EventLog
from ..store.connection import STORE_ERRORS, StoreUnavailable
from ..timefmt import parse_time, utcnow

log = logging.getLogger("gateway.alerts")

MAX_NETWORKS_PER_KEY = 256  # remembered in process; past it the store is asked again
MAX_IPS = 10
# refused after the key was identified: 401 revoked/expired, and every 403
DENIED_CODES = frozenset(
    {"revoked_api_key", "expired_api_key"}
    | {code for code, fault in FAULTS.items() if fault.status == 403}
)

# KEYS[1] = the key's networks. ARGV: network, now (s), learn_for (s).
# 1 when the network is new and alert-worthy, 0 otherwise.
_NEW_NETWORK = """
local first = redis.call('HGET', KEYS[1], '_first')
if not first then
  redis.call('HSET', KEYS[1], '_first', ARGV[2])
  first = ARGV[2]
end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
if redis.call('HLEN', KEYS[1]) <= 2 then return 0 end
if tonumber(ARGV[2]) - tonumber(first) >= tonumber(ARGV[3]) then return 1 end
return 0
"""

# KEYS[1] = marker. ARGV[1] = the state it marks. 1 if it was not already marked so.
_MARK_CHANGED = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


def network_of(address: Any) -> int | None:
    """The /24 (IPv4) or /48 (IPv6) of an address as one int (IPv6 ones negative): a cheap
    dictionary key, computed per request."""
    if address is None:
        return None
    number = int(address)
    return number >> 8 if isinstance(address, IPv4Address) else -1 - (number >> 80)


def network_text(net: int) -> str:
    if net >= 0:
        return str(ipaddress.IPv4Network((net << 8, 24)))
    return str(ipaddress.IPv6Network(((-1 - net) << 80, 48)))


class _KeyCounts:
    """One key's counts since the last flush, and the networks this process knows it uses."""

    __slots__ = ("account_id", "mode", "requests", "denied", "codes", "ips", "networks")

    def __init__(self, record: Any) -> None:
        self.account_id: str = record.account_id
        self.mode: str = record.mode
        self.requests = 0
        self.denied = 0
        self.codes: dict[str, int] = {}
        self.ips: set[str] = set()
        self.networks: set[int] = set()


class AlertDetector:
    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        events: EventLog,
        config: Callable[[], AlertsConfig],
        *,
        store: Any = None,
        rotation_days: Callable[[], int] = lambda: 90,
        clock: Callable[[], float] = time.time,
    ):
        self.client = client
        self.prefix = prefix
        self.events = events
        self.config = config
        self.store = store  # the KeyStore, for the sweeps
        self.rotation_days = rotation_days
        self.clock = clock
        self._counts: dict[str, _KeyCounts] = {}  # key id -> its counts
        self._active: list[str] = []  # keys with requests since the last flush
        self._new: list[tuple[str, int, str]] = []  # (key id, network, ip)
        self._task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = False
        self._stop = asyncio.Event()
        self.fired = 0

    def _k(self, *parts: str) -> str:
        return self.prefix + "al:" + ":".join(parts)

    # -- the request path -------------------------------------------------------

    def observe(self, key: Any, client_ip: Any, code: str | None) -> None:
        """One request of an identified key (``code`` None when allowed)."""
        key_id = key.record.id
        counts = self._counts.get(key_id)
        if counts is None:
            counts = self._counts[key_id] = _KeyCounts(key.record)
        if not counts.requests:
            self._active.append(key_id)
        counts.requests += 1
        if code is not None and code in DENIED_CODES:
            counts.denied += 1
            counts.codes[code] = counts.codes.get(code, 0) + 1
            if len(counts.ips) < MAX_IPS and client_ip is not None:
                counts.ips.add(str(client_ip))
        if client_ip is not None:
            number = int(client_ip)
            net = number >> 8 if isinstance(client_ip, IPv4Address) else -1 - (number >> 80)
            networks = counts.networks
            if net not in networks:
                if len(networks) < MAX_NETWORKS_PER_KEY:
                    networks.add(net)
                self._new.append((key_id, net, str(client_ip)))

    # -- folding into the store --------------------------------------------------

    async def flush(self) -> None:
        """Fold the counts since the last flush into the store and judge them."""
        active, self._active = self._active, []
        new, self._new = self._new, []
        requests: dict[str, int] = {}
        denied: dict[str, _KeyCounts] = {}
        for key_id in active:
            counts = self._counts[key_id]
            requests[key_id] = counts.requests
            counts.requests = 0
            if counts.denied:
                snapshot = _KeyCounts.__new__(_KeyCounts)
                snapshot.denied, snapshot.codes, snapshot.ips = (
                    counts.denied,
                    counts.codes,
                    counts.ips,
                )
                denied[key_id] = snapshot
                counts.denied, counts.codes, counts.ips = 0, {}, set()
        if not (requests or denied or new):
            return
        config = self.config()
        now = self.clock()
        try:
            if new and config.new_network.enabled:
                await self._networks(new, now, config)
            if requests and config.usage_spike.enabled:
                await self._spikes(requests, now, config)
            if denied and config.denied_burst.enabled:
                await self._bursts(denied, now, config)
        except STORE_ERRORS as exc:
            for key_id, net, _ip in new:
                self._counts[key_id].networks.discard(net)  # asked again next time
            log.warning("alert counts not folded into the store: %s", exc)

    async def _networks(self, new: list[tuple[str, int, str]], now: float, config) -> None:
        learn_for = config.new_network.learn_for
        async with self.client.pipeline(transaction=False) as pipe:
            for key_id, net, _ in new:
                pipe.eval(_NEW_NETWORK, 1, self._k("nets", key_id), network_text(net), int(now),
                          learn_for)  # fmt: skip
            results = await pipe.execute()
        for (key_id, net, ip), fire in zip(new, results, strict=True):
            if fire:
                await self._fire(
                    "new_network", key_id, {"key_id": key_id, "network": network_text(net),
                                            "ip": ip}, once_for=None,
                )  # fmt: skip

    async def _spikes(self, requests: dict[str, int], now: float, config) -> None:
        spike = config.usage_spike
        bucket = int(now // spike.window)
        share = 1.0 - (now % spike.window) / spike.window
        keep = int(spike.baseline + 3 * spike.window)
        async with self.client.pipeline(transaction=False) as pipe:
            for key_id, n in requests.items():
                name = self._k("rq", key_id)
                pipe.hincrby(name, str(bucket), n)
                pipe.hget(name, str(bucket - 1))
                pipe.expire(name, keep)
            results = await pipe.execute()
        windows = max(1, int(spike.baseline // spike.window))
        for i, key_id in enumerate(requests):
            current, previous = results[3 * i], int(results[3 * i + 1] or 0)
            count = int(current + previous * share)
            if count < spike.min_requests:
                continue
            buckets = await self.client.hgetall(self._k("rq", key_id))
            older = [int(b) for b in buckets if int(b) < bucket - 1 - windows]
            if older:
                await self.client.hdel(self._k("rq", key_id), *map(str, older))
            history = sum(
                int(v) for b, v in buckets.items() if bucket - 1 - windows <= int(b) < bucket - 1
            )
            baseline = history / windows
            if count >= spike.factor * baseline:
                await self._fire(
                    "usage_spike", key_id,
                    {"key_id": key_id, "count": count, "baseline": round(baseline, 2),
                     "window": spike.window},
                    once_for=spike.window,
                )  # fmt: skip

    async def _bursts(self, denied: dict[str, _KeyCounts], now: float, config) -> None:
        burst = config.denied_burst
        bucket = int(now // burst.window)
        share = 1.0 - (now % burst.window) / burst.window
        async with self.client.pipeline(transaction=False) as pipe:
            for key_id, seen in denied.items():
                name = self._k("dn", key_id, str(bucket))
                pipe.hincrby(name, "n", seen.denied)
                for code, n in seen.codes.items():
                    pipe.hincrby(name, "c:" + code, n)
                for ip in seen.ips:
                    pipe.hsetnx(name, "ip:" + ip, 1)
                pipe.expire(name, int(2 * burst.window) + 1)
                pipe.hgetall(name)
                pipe.hgetall(self._k("dn", key_id, str(bucket - 1)))
            results = await pipe.execute()
        at = 0
        for key_id, seen in denied.items():
            at += 1 + len(seen.codes) + len(seen.ips) + 1
            current, previous = results[at], results[at + 1]
            at += 2
            count = int(int(current.get("n", 0)) + int(previous.get("n", 0)) * share)
            if count < burst.threshold:
                continue
            # the codes weighed as the count is (the previous bucket by the share still in
            # the window), so the refusals they list add up to the count the alert gives
            weighed: dict[str, float] = {}
            ips: list[str] = []
            for part, weight in ((current, 1.0), (previous, share)):
                for field, value in part.items():
                    if field.startswith("c:"):
                        weighed[field[2:]] = weighed.get(field[2:], 0.0) + int(value) * weight
                    elif field.startswith("ip:") and field[3:] not in ips:
                        ips.append(field[3:])
            codes = {code: round(n) for code, n in weighed.items() if round(n) > 0}
            await self._fire(
                "denied_burst", key_id,
                {"key_id": key_id, "count": count, "codes": codes, "ips": ips[:MAX_IPS],
                 "window": burst.window},
                once_for=burst.window,
            )  # fmt: skip

    async def _fire(
        self,
        kind: str,
        key_id: str,
        data: dict[str, Any],
        *,
        once_for: float | None,
        owner: tuple[str, str] | None = None,
    ) -> None:
        if once_for is not None:
            marked = await self.client.set(
                self._k("once", kind, key_id), 1, nx=True, px=max(1, int(once_for * 1000))
            )
            if not marked:
                return
        if owner is None:
            counts = self._counts.get(key_id)
            if counts is None:
                return
            owner = (counts.account_id, counts.mode)
        account_id, mode = owner
        self.fired += 1
        self.events.emit_soon(f"alert.{kind}", account_id=account_id, mode=mode, data=data)

    # -- the sweeps: key_unused, rotation_due ------------------------------------------

    async def sweep(self) -> None:
        """Look at every key once: unused for ``key_unused.after``, older than rotation_days."""
        config = self.config()
        if self.store is None or not (config.key_unused.enabled or config.rotation_due.enabled):
            return
        now = utcnow()
        rotation_days = self.rotation_days()
        for account in await self.store.list_accounts():
            ids, _ = await self.store.list_key_ids(
                account.id, mode=None, limit=10**9, starting_after=None
            )
            records = [r for r in await self.store.get_keys(ids) if r.status(now) == "active"]
            used = await self.store.last_used(r.id for r in records)
            for record in records:
                created = parse_time(record.created_at)
                if created is None:
                    continue
                owner = (record.account_id, record.mode)
                if config.key_unused.enabled and record.mode == "live":
                    last = used.get(record.id)
                    since = parse_time(last) or created
                    if (now - since).total_seconds() >= config.key_unused.after:
                        state = last or "never"
                        marked = await self.client.eval(
                            _MARK_CHANGED, 1, self._k("unused", record.id), state
                        )
                        if marked:
                            await self._fire(
                                "key_unused", record.id,
                                {"key_id": record.id, "last_used_at": last},
                                once_for=None, owner=owner,
                            )  # fmt: skip
                if (
                    config.rotation_due.enabled
                    and (now - created).total_seconds() > rotation_days * 86400
                ):
                    marked = await self.client.set(self._k("rotation", record.id), 1, nx=True)
                    if marked:
                        await self._fire(
                            "rotation_due", record.id,
                            {"key_id": record.id, "created_at": record.created_at},
                            once_for=None, owner=owner,
                        )  # fmt: skip

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="alerts-flush")
        self._sweeper = loop.create_task(self._sweep_forever(), name="alerts-sweep")

    async def _pause(self, seconds: float) -> None:
        """Sleep, or return at once on :meth:`stop` (a cancellation a store client turned
        into an error must not leave the loop running)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _run(self) -> None:
        while not self._stopping:
            await self._pause(self.config().flush_interval)
            try:
                await self.flush()
            except StoreUnavailable as exc:
                log.warning("alerts not judged: %s", exc)

    async def _sweep_forever(self) -> None:
        await self._pause(min(5.0, self.config().check_interval))
        while not self._stopping:
            try:
                await self.sweep()
            except (*STORE_ERRORS, StoreUnavailable) as exc:
                log.warning("key_unused / rotation_due sweep failed: %s", exc)
            await self._pause(self.config().check_interval)

    async def stop(self) -> None:
        self._stopping = True
        self._stop.set()
        tasks = [t for t in (self._task, self._sweeper) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        with contextlib.suppress(*STORE_ERRORS, StoreUnavailable):
            await self.flush()
