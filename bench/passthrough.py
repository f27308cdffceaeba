"""A plain aiohttp pass-through proxy with no checks: the benchmark's floor.

What any aiohttp reverse proxy does and nothing more: one shared
``ClientSession`` (keep-alive pool), uvloop, the request's method, path,
query, headers (less hop-by-hop ones) and body sent upstream, the answer's
status, headers and body sent back (read whole when small, streamed
otherwise). No keys, no logging, no metrics. The gateway's rows are measured
against this one.

    .venv/bin/python bench/passthrough.py --port 8001 --upstream http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import aiohttp
from aiohttp import web
from yarl import URL

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
SMALL_BODY = 64 * 1024
SESSION = web.AppKey("session", aiohttp.ClientSession)


def _clean(headers, *, drop_length: bool = False) -> list[tuple[str, str]]:
    return [
        (name, value)
        for name, value in headers.items()
        if name.lower() not in HOP_BY_HOP and not (drop_length and name.lower() == "content-length")
    ]


def make_app(upstream: str) -> web.Application:
    base = upstream.rstrip("/")

    async def session_ctx(app: web.Application):
        app[SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        yield
        await app[SESSION].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        session = request.app[SESSION]
        body = request.content if request.body_exists else None
        async with session.request(
            request.method,
            URL(base + request.raw_path, encoded=True),
            headers=_clean(request.headers),
            data=body,
            allow_redirects=False,
        ) as upstream:
            length = upstream.content_length
            if length is not None and length <= SMALL_BODY:
                data = await upstream.read()
                response = web.Response(status=upstream.status, body=data)
                response.headers.clear()
                response.headers.extend(_clean(upstream.headers, drop_length=True))
                return response
            response = web.StreamResponse(status=upstream.status)
            response.headers.extend(_clean(upstream.headers))
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def make_gateway_forwarder_app(upstream: str) -> web.Application:
    """The gateway's own forwarder (gateway/proxy/forward.py) with none of its checks.

    No key, no access log, no metrics, no path normalisation: the request's
    headers cleaned as the gateway cleans them, then ``forward``. Against the
    gateway's rows this shows what its checks cost on top of its forwarding.
    """
    from gateway.proxy.forward import forward as gateway_forward
    from gateway.proxy.forward import new_session
    from gateway.proxy.headers import upstream_request_headers

    base = upstream.rstrip("/")

    async def session_ctx(app: web.Application):
        app[SESSION] = new_session()
        yield
        await app[SESSION].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        headers = upstream_request_headers(
            request.headers,
            forward_authorization=True,
            identity=(),
            request_id="req_bench",
            peer=request.remote,
            proto="http",
            host=request.headers.get("Host"),
        )
        return await gateway_forward(
            request,
            request.app[SESSION],
            url=base + request.raw_path,
            headers=headers,
            timeout=30.0,
            max_body=10 * 1024 * 1024,
        )

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--forwarder",
        choices=["aiohttp", "gateway"],
        default="aiohttp",
        help="aiohttp: ClientSession.request (the floor); gateway: the gateway's forward()",
    )
    args = parser.parse_args()
    make = make_app if args.forwarder == "aiohttp" else make_gateway_forwarder_app
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(make(args.upstream), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
