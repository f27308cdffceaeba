"""``POST {prefix}/secret-scanning/github``: keys GitHub found in public code (SPEC §15).

GitHub's secret scanning partner program POSTs a JSON array of
``{"token", "type", "url", "source"}``, signed: ``Github-Public-Key-Signature``
is a base64 DER ECDSA P-256 / SHA-256 signature over the raw body, by the key
named in ``Github-Public-Key-Identifier``, one of those published at
``leak_detection.github.public_keys_url``. That document is cached and fetched
again for an identifier it does not hold, at most once a minute. A missing or
bad signature is 401 ``invalid_signature`` and nothing is acted on.

Each token that is a key of this gateway raises ``api_key.leaked``, enters the
audit trail, and is revoked (``leak_detection.action: revoke``, the default;
test keys always) through the same path as any revocation: every replica
refuses it within a second and its open connections are cut. The answer is
GitHub's format, a bare array, one entry per token in order.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ..denials import BACKEND_DOWN, Denial, error_response
from ..keys.format import hash_secret, parse_mode
from ..keys.service import Actor
from ..store.connection import StoreUnavailable
from .calls import BodyTooLarge

if TYPE_CHECKING:
    from ..pipeline import RequestContext
    from ..runtime import LocalHandler, Runtime

log = logging.getLogger("gateway.leaks")

PATH = "/secret-scanning/github"
REFETCH_INTERVAL = 60.0
FETCH_TIMEOUT = 10.0
BODY_LIMIT = 1024 * 1024
ACTOR = Actor("github_secret_scanning", keeps_an_admin=False)  # a leaked last admin key goes too
INVALID_SIGNATURE = Denial("invalid_signature")


class GitHubPublicKeys:
    """The keys GitHub signs with, by identifier; fetched again for an unknown one,
    at most once every ``REFETCH_INTERVAL`` seconds."""

    def __init__(self, url_of: Any, clock: Any = time.monotonic):
        self.url_of = url_of  # () -> the URL, read from the live config
        self.clock = clock
        self.keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self.fetches = 0
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def get(self, identifier: str) -> ec.EllipticCurvePublicKey | None:
        key = self.keys.get(identifier)
        if key is not None:
            return key
        async with self._lock:
            key = self.keys.get(identifier)
            if key is not None:
                return key
            now = self.clock()
            if self._fetched_at is not None and now - self._fetched_at < REFETCH_INTERVAL:
                return None
            self._fetched_at = now
            await self._fetch()
        return self.keys.get(identifier)

    async def _fetch(self) -> None:
        url = self.url_of()
        self.fetches += 1
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT)) as s,
                s.get(url, headers={"Accept": "application/json"}) as response,
            ):
                if response.status != 200:
                    log.warning("GitHub public keys at %s answered %d", url, response.status)
                    return
                document = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("GitHub public keys not fetched from %s: %s", url, exc)
            return
        keys: dict[str, ec.EllipticCurvePublicKey] = {}
        for entry in (document or {}).get("public_keys") or []:
            try:
                key = load_pem_public_key(entry["key"].encode())
            except (KeyError, TypeError, AttributeError, ValueError, UnsupportedAlgorithm):
                continue
            if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(
                entry.get("key_identifier"), str
            ):
                keys[entry["key_identifier"]] = key
        self.keys = keys


def _verify(key: ec.EllipticCurvePublicKey, signature: str, body: bytes) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def _reports(body: bytes) -> list[dict[str, Any]] | None:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, list) or not all(
        isinstance(item, dict) and isinstance(item.get("token"), str) for item in data
    ):
        return None
    return data


class GitHubSecretScanning:
    def __init__(self, runtime: Runtime, prefix: str):
        self.runtime = runtime
        self.path = prefix + PATH
        self.public_keys = GitHubPublicKeys(
            lambda: runtime.config.leak_detection.github.public_keys_url
        )

    async def __call__(self, request: web.BaseRequest, ctx: RequestContext) -> web.StreamResponse:
        if request.method != "POST":
            return self._refuse(
                Denial("method_not_allowed", {"allowed": ["POST"]}, {"Allow": "POST"}), ctx
            )
        try:
            body = await _read(request, min(BODY_LIMIT, self.runtime.config.server.max_body_bytes))
        except BodyTooLarge as exc:
            return self._refuse(Denial("payload_too_large", {"max_body_bytes": exc.limit}), ctx)
        identifier = request.headers.get("Github-Public-Key-Identifier", "")
        signature = request.headers.get("Github-Public-Key-Signature", "")
        if not identifier or not signature:
            return self._refuse(INVALID_SIGNATURE, ctx)
        key = await self.public_keys.get(identifier)
        if key is None or not _verify(key, signature, body):
            return self._refuse(INVALID_SIGNATURE, ctx)
        reports = _reports(body)
        if reports is None:
            return self._refuse(
                Denial(
                    "invalid_request",
                    {"field": "body"},
                    message="the body must be a JSON array of objects with a token",
                ),
                ctx,
            )
        try:
            answer = [await self._handle(report) for report in reports]
        except StoreUnavailable as exc:
            log.warning("key store unavailable while handling leaked keys: %s", exc)
            return self._refuse(BACKEND_DOWN, ctx)
        response = web.Response(
            body=json.dumps(answer, separators=(",", ":")).encode(),
            content_type="application/json",
        )
        response.headers["X-Request-Id"] = ctx.request_id
        response.headers["Cache-Control"] = "no-store"
        return response

    async def _handle(self, report: dict[str, Any]) -> dict[str, Any]:
        token: str = report["token"]
        entry = {
            "token_hash": hashlib.sha256(token.encode()).hexdigest(),
            "token_type": report.get("type"),
            "label": "false_positive",
        }
        if not token.isascii() or parse_mode(token, self.runtime.config.keys.prefix) is None:
            return entry
        found = await self.runtime.store.load_by_hash(hash_secret(token))
        if found is None:
            return entry
        record, _ = found
        entry["label"] = "true_positive"
        service = self.runtime.service
        action = self.runtime.config.leak_detection.action
        revoke = action == "revoke" or record.mode == "test"
        url, source = report.get("url"), report.get("source")
        if revoke and not record.revoked_at:
            record = await service.revoke_key(ACTOR, record.id)
        log.warning("key %s reported leaked at %s (%s); %s", record.id, url, source,
                    "revoked" if revoke else "owner notified")  # fmt: skip
        if service.audit is not None:
            try:
                await service.audit.record(
                    actor=ACTOR.id, action="key.leaked", account_id=record.account_id,
                    key_id=record.id, url=url, source=source,
                    handled="revoked" if revoke else "notified",
                )  # fmt: skip
            except StoreUnavailable as exc:
                log.error("audit entry of the leak of %s not recorded: %s", record.id, exc)
        await service.events.emit(
            "api_key.leaked",
            account_id=record.account_id,
            mode=record.mode,
            data={
                "key": await service.event_view(record),
                "url": url,
                "source": source,
                "action": "revoked" if revoke else "notified",
            },
        )
        return entry

    @staticmethod
    def _refuse(denial: Denial, ctx: RequestContext) -> web.Response:
        ctx.code = denial.code
        return error_response(denial, ctx.request_id)


async def _read(request: web.BaseRequest, limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def secret_scanning_routes(runtime: Runtime, prefix: str) -> list[tuple[str, bool, LocalHandler]]:
    handler = GitHubSecretScanning(runtime, prefix)
    return [(handler.path, False, handler)]
