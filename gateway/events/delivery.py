"""Sending queued webhook deliveries (SPEC §14), on every replica.

:class:`WebhookDispatcher` claims due deliveries from the store every
``webhooks.poll_interval`` (0.5 s) and POSTs each, signed the Standard
Webhooks way: ``webhook-id`` (the event id, the same on every retry),
``webhook-timestamp`` (unix seconds of this attempt) and ``webhook-signature``
(``v1,`` + base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}`` keyed with the
base64-decoded secret after ``whsec_``). A 2xx within ``webhooks.timeout``
(10 s) is delivered; anything else (another status, a redirect, which is never
followed, a refused address, a timeout) waits for the next step of
``webhooks.retry_schedule`` and, after the last, is failed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from typing import Any

import aiohttp
from yarl import URL

from ..config.schema import WebhooksConfig
from ..store.connection import StoreUnavailable
from .targets import PublicResolver, TargetRefused, literal_refusal, parse_target
from .webhooks import WebhookStore

log = logging.getLogger("gateway.webhooks")

CLAIM_BATCH = 50
LEASE_MARGIN = 20.0  # a lease outlives the attempt's timeout by this much
CONCURRENCY = 20
USER_AGENT = "keygate-webhooks/1"


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one attempt."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


class WebhookDispatcher:
    def __init__(self, store: WebhookStore, config: WebhooksConfig):
        self.store = store
        self.config = config
        self.owner = secrets.token_hex(6)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._wake = asyncio.Event()
        self._stopping = False
        self.attempts = 0

    def start(self) -> None:
        resolver = None if self.config.allow_private_targets else PublicResolver()
        connector = aiohttp.TCPConnector(resolver=resolver, ttl_dns_cache=None, limit=CONCURRENCY)
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT},
        )
        self._task = asyncio.get_running_loop().create_task(self._run(), name="webhooks")

    def wake(self) -> None:
        """Look for due deliveries now (an event was just queued here)."""
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()  # and _stopping ends the loop if a store call ate the cancel
            await asyncio.wait([self._task], timeout=5)
        for task in list(self._inflight):
            task.cancel()  # its lease runs out and another replica (or the next start) retries
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=2)
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        failing = False
        while not self._stopping:
            try:
                await self._claim_and_send()
                if failing:
                    log.warning("webhook queue reachable again")
                    failing = False
            except StoreUnavailable as exc:
                if not failing:
                    log.warning("webhook queue unavailable: %s", exc)
                    failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.poll_interval)
            self._wake.clear()

    async def _claim_and_send(self) -> None:
        free = CONCURRENCY - len(self._inflight)
        if free <= 0:
            return
        claimed = await self.store.claim(
            limit=min(free, CLAIM_BATCH),
            lease=self.config.timeout + LEASE_MARGIN,
            owner=self.owner,
        )
        for member, token in claimed:
            task = asyncio.get_running_loop().create_task(self._deliver(member, token))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _deliver(self, member: str, token: str) -> None:
        async with self._slots:
            try:
                await self._attempt(member, token)
            except StoreUnavailable as exc:
                log.warning("webhook delivery %s not settled (retried after its lease): %s",
                            member, exc)  # fmt: skip

    async def _attempt(self, member: str, token: str) -> None:
        delivery = await self.store.load(member)
        if delivery is None:
            return
        endpoint = await self.store.get_endpoint(delivery.endpoint_id)
        if endpoint is None or endpoint.disabled:
            reason = "endpoint deleted" if endpoint is None else "endpoint disabled"
            await self.store.settle(
                member, token, status="failed", status_code=None, error=reason, next_at=None
            )
            return
        status_code, error = await self._post(endpoint.url, endpoint.secret, delivery)
        self.attempts += 1
        if status_code is not None and 200 <= status_code < 300:
            await self.store.settle(
                member, token, status="delivered", status_code=status_code, error=None,
                next_at=None,
            )  # fmt: skip
            return
        done = delivery.attempts + 1  # attempts made, this one included
        schedule = self.config.retry_schedule
        if done <= len(schedule):
            next_at = time.time() + schedule[done - 1]
            status = "pending"
        else:
            next_at, status = None, "failed"
        await self.store.settle(
            member, token, status=status, status_code=status_code, error=error, next_at=next_at
        )
        log.info("webhook %s to %s: attempt %d %s (%s)", delivery.event_id, endpoint.id, done,
                 status, error or status_code)  # fmt: skip

    async def _post(self, url: str, secret: str, delivery: Any) -> tuple[int | None, str | None]:
        allow_private = self.config.allow_private_targets
        try:
            target: URL = parse_target(url, allow_private=allow_private)
        except TargetRefused as exc:
            return None, str(exc)
        if not allow_private:
            reason = literal_refusal(target)
            if reason:
                return None, reason
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, delivery.event_id, timestamp, delivery.body),
        }
        assert self._session is not None
        try:
            async with self._session.post(
                target,
                data=delivery.body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            ) as response:
                status = response.status
                with contextlib.suppress(Exception):
                    await response.content.read(64 * 1024)  # let the connection be reused
        except TimeoutError:
            return None, f"no answer within {self.config.timeout:g}s"
        except aiohttp.ClientConnectorError as exc:
            return None, f"could not connect: {exc.os_error or exc}"
        except aiohttp.ClientError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        if 300 <= status < 400:
            return status, "redirects are not followed"
        return status, None if 200 <= status < 300 else f"answered {status}"
