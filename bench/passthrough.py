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


async def serve_gateway_forwarder(host: str, port: int, upstream: str) -> None:
    """The gateway's own forwarding (``gateway/proxy``) on its own server, with no checks.

    The same server as the gateway (``GatewayServer``, aiohttp's low-level
    server) and the same upstream pool, head building and streaming, but no
    key, path normalisation, access log or metrics. Against the gateway's rows
    this shows what its checks cost on top of its forwarding.
    """
    from gateway.compat.aiohttp import GatewayServer
    from gateway.proxy.forward import BODYLESS_METHODS, Exchange, forward
    from gateway.proxy.headers import upstream_head
    from gateway.proxy.upstream import UpstreamPool

    pool = UpstreamPool()
    origin = pool.origin(upstream.rstrip("/"))

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        method = request.method
        if request.body_exists:
            length = request.content_length
            body = "length" if length is not None else "chunked"
            framing = (
                b"Content-Length: %d\r\n" % length
                if length is not None
                else b"Transfer-Encoding: chunked\r\n"
            )
        else:
            body = "none"
            framing = b"" if method in BODYLESS_METHODS else b"Content-Length: 0\r\n"
        head = upstream_head(
            f"{method} {request.raw_path} HTTP/1.1\r\n".encode(),
            request.raw_headers,
            host=origin.host_header,
            forward_authorization=True,
            identity=b"",
            request_id="req_bench",
            peer=request.remote,
            proto=b"http",
            forwarded_host=None,
            framing=framing,
        )
        exchange = Exchange(
            origin=origin,
            head=head,
            body=body,
            timeout=30.0,
            max_body=10 * 1024 * 1024,
            body_idle_timeout=15.0,
            extra_headers=None,
            replaced=frozenset(),
            strip_cors=False,
            relocate=None,
        )
        return await forward(request, None, pool, exchange)

    server = GatewayServer(
        handle, header_timeout=lambda: 10.0, refusal=lambda *_: None, access_log=None
    )
    runner = web.ServerRunner(server)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=1024).start()
    try:
        await asyncio.Event().wait()  # until the process is stopped
    finally:
        await runner.cleanup()
        pool.close()


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
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.forwarder == "gateway":
        asyncio.run(serve_gateway_forwarder(args.host, args.port, args.upstream))
        return
    web.run_app(
        make_app(args.upstream), host=args.host, port=args.port, access_log=None, print=None
    )


if __name__ == "__main__":
    main()
