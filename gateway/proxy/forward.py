"""Forwarding one request to its upstream and streaming the answer back (SPEC §5)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..denials import Denial
from .headers import downstream_response_headers

log = logging.getLogger("gateway.proxy")

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
SMALL_BODY = 64 * 1024
NO_BODY_STATUSES = frozenset({204, 304})


class PayloadTooLarge(Exception):
    """A chunked request body grew past ``server.max_body_bytes``."""


class UpstreamFailure(Exception):
    """The upstream could not answer; ``denial`` says how to tell the client."""

    def __init__(self, denial: Denial, kind: str):
        super().__init__(kind)
        self.denial = denial
        self.kind = kind


def new_session() -> aiohttp.ClientSession:
    """One pooled client per worker: keep-alive, no redirects, bodies passed as they are."""
    connector = aiohttp.TCPConnector(
        limit=0,
        limit_per_host=0,
        ttl_dns_cache=60,
        keepalive_timeout=30,
        enable_cleanup_closed=False,
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=10, sock_read=None),
        cookie_jar=aiohttp.DummyCookieJar(),
        requote_redirect_url=False,
    )


async def _bounded(stream: aiohttp.StreamReader, limit: int) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in stream.iter_any():
        seen += len(chunk)
        if seen > limit:
            raise PayloadTooLarge()
        yield chunk


async def forward(
    request: web.BaseRequest,
    session: aiohttp.ClientSession,
    *,
    url: str,
    headers: CIMultiDict[str],
    timeout: float,
    max_body: int,
    extra_headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Send ``request`` to ``url`` and stream the answer to the client.

    Raises :class:`UpstreamFailure` or :class:`PayloadTooLarge` before anything
    was sent to the client; once streaming has begun a failure closes the
    client connection, so a cut body is never presented as complete.
    """
    method = request.method
    body = None
    if request.body_exists:
        body = (
            request.content
            if request.content_length is not None
            else _bounded(request.content, max_body)
        )
    target = URL(url, encoded=True)
    attempts = 2 if method in IDEMPOTENT and body is None else 1
    upstream: aiohttp.ClientResponse | None = None
    for attempt in range(attempts):
        try:
            async with asyncio.timeout(timeout):
                upstream = await session.request(
                    method, target, headers=headers, data=body, allow_redirects=False
                )
            break
        except PayloadTooLarge:
            raise
        except TimeoutError:
            raise UpstreamFailure(Denial("upstream_timeout"), "timeout") from None
        except aiohttp.ServerDisconnectedError:
            if attempt + 1 < attempts:
                continue  # a pooled connection the upstream had just closed
            raise UpstreamFailure(Denial("upstream_unavailable"), "reset") from None
        except aiohttp.ClientConnectorError:
            raise UpstreamFailure(Denial("upstream_unavailable"), "refused") from None
        except (aiohttp.ClientError, OSError) as exc:
            if isinstance(exc.__cause__, PayloadTooLarge) or isinstance(
                exc.__context__, PayloadTooLarge
            ):
                raise PayloadTooLarge() from None
            raise UpstreamFailure(Denial("upstream_unavailable"), "error") from None
    assert upstream is not None
    try:
        return await _respond(request, upstream, extra_headers)
    finally:
        upstream.release()


async def _respond(
    request: web.BaseRequest, upstream: aiohttp.ClientResponse, extra: dict[str, str] | None
) -> web.StreamResponse:
    length = upstream.content_length
    bodiless = (
        request.method == "HEAD" or upstream.status in NO_BODY_STATUSES or upstream.status < 200
    )
    if (
        not bodiless
        and length is not None
        and length <= SMALL_BODY
        and "Transfer-Encoding" not in upstream.headers
    ):
        try:
            data = await upstream.read()
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamFailure(Denial("upstream_unavailable"), "reset") from exc
        response = web.Response(status=upstream.status, reason=upstream.reason, body=data)
        response.headers.clear()
        response.headers.extend(downstream_response_headers(upstream.headers, keep_length=False))
        if extra:
            response.headers.update(extra)
        return response
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    response.headers.extend(downstream_response_headers(upstream.headers, keep_length=True))
    if extra:
        response.headers.update(extra)
    if length is None and not bodiless:
        response.enable_chunked_encoding()
    await response.prepare(request)
    if bodiless:
        await response.write_eof()
        return response
    try:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError):
        log.warning(
            "upstream broke off the response to %s; closing the client connection", request.path
        )
        if request.transport is not None:
            request.transport.abort()
        raise
    await response.write_eof()
    return response
