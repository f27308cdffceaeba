"""A small upstream service that echoes what it received, for demos, tests and benchmarks.

``GET /echo...`` answers JSON with the method, path, query, headers and body
size it saw; ``/stream`` sends server-sent events; ``/upload`` counts a
streamed body; ``/slow?seconds=N`` waits; ``/redirect?to=URL`` redirects;
``/cookies`` sets several cookies; ``/gzip`` answers a gzip-encoded body;
``/respond?status=N&header=Name:Value`` answers with the status and headers
asked for; ``/reset`` closes the connection without answering; anything else
echoes too.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json

from aiohttp import web

SERVICE_NAME = web.AppKey("service_name", str)


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "service": request.app.get(SERVICE_NAME, "demo-upstream"),
            "method": request.method,
            "path": request.raw_path.split("?", 1)[0],
            "query": request.raw_path.partition("?")[2],  # as received, not decoded
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_bytes": len(body),
            "body": body.decode("utf-8", "replace") if len(body) <= 4096 else None,
        }
    )


async def stream(request: web.Request) -> web.StreamResponse:
    count = int(request.query.get("count", "5"))
    interval = float(request.query.get("interval", "0.2"))
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    for i in range(count):
        await response.write(f"id: {i}\ndata: {json.dumps({'n': i})}\n\n".encode())
        await asyncio.sleep(interval)
    await response.write_eof()
    return response


async def upload(request: web.Request) -> web.Response:
    total = 0
    chunks = 0
    async for chunk in request.content.iter_any():
        total += len(chunk)
        chunks += 1
    return web.json_response({"received_bytes": total, "chunks": chunks})


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("seconds", "5")))
    return web.json_response({"slow": True})


async def redirect(request: web.Request) -> web.Response:
    status = int(request.query.get("status", "302"))
    return web.Response(status=status, headers={"Location": request.query.get("to", "/echo")})


async def cookies(request: web.Request) -> web.Response:
    response = web.Response(text="cookies")
    for name in ("session", "theme", "csrf"):
        response.headers.add("Set-Cookie", f"{name}={name}-value; Path=/; HttpOnly")
    return response


GZIP_TEXT = b"compressible " * 200
GZIP_BODY = gzip.compress(GZIP_TEXT, mtime=0)


async def gzipped(request: web.Request) -> web.Response:
    return web.Response(
        body=GZIP_BODY, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"}
    )


async def respond(request: web.Request) -> web.Response:
    response = web.Response(status=int(request.query.get("status", "200")), text="respond")
    for item in request.query.getall("header", []):
        name, _, value = item.partition(":")
        response.headers.add(name.strip(), value.strip())
    return response


async def reset(request: web.Request) -> web.StreamResponse:
    if request.transport is not None:
        request.transport.abort()
    raise ConnectionResetError("reset on purpose")


def create_upstream(name: str = "demo-upstream") -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SERVICE_NAME] = name
    app.router.add_route("*", "/stream", stream)
    app.router.add_route("*", "/upload", upload)
    app.router.add_route("*", "/slow", slow)
    app.router.add_route("*", "/redirect", redirect)
    app.router.add_route("*", "/cookies", cookies)
    app.router.add_route("*", "/gzip", gzipped)
    app.router.add_route("*", "/respond", respond)
    app.router.add_route("*", "/reset", reset)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="demo upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--name", default="demo-upstream")
    args = parser.parse_args()
    web.run_app(
        create_upstream(args.name), host=args.host, port=args.port, access_log=None, print=None
    )


if __name__ == "__main__":
    main()
