"""What gateway/compat/aiohttp.py relies on below aiohttp's documented API.

Each test names the piece of aiohttp it pins: when an upgrade moves one, the
failure says which, and the fix belongs in gateway/compat/aiohttp.py alone.
"""

from __future__ import annotations

import asyncio
import inspect

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from gateway.compat.aiohttp import (
    GatewayConnection,
    GatewayServer,
    VerbatimBody,
    VerbatimResponse,
    line_too_long_limit,
)


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_request_handler_is_built_from_its_manager_loop_and_keyword_options():
    names = parameters(web.RequestHandler.__init__)
    assert names[:2] == ["self", "manager"], (
        f"aiohttp changed RequestHandler.__init__ to {names}: update GatewayServer.__call__"
    )
    for option in ("loop", "keepalive_timeout", "access_log", "max_line_size", "max_field_size",
                   "max_headers"):  # fmt: skip
        assert option in names, f"aiohttp's RequestHandler no longer takes {option!r}"


def test_server_takes_the_handler_and_passes_other_options_to_its_connections():
    names = parameters(web.Server.__init__)
    assert names[:2] == ["self", "handler"], f"aiohttp changed web.Server.__init__ to {names}"
    assert "handler_cancellation" in names and "request_factory" in names
    assert inspect.signature(web.Server.__init__).parameters["kwargs"].kind is (
        inspect.Parameter.VAR_KEYWORD
    ), "web.Server no longer passes **kwargs on to RequestHandler"
    assert isinstance(web.Server.connections, property), "web.Server.connections is gone"


def test_handle_error_is_the_hook_for_what_the_parser_refuses():
    assert parameters(web.RequestHandler.handle_error) == [
        "self", "request", "status", "exc", "message"
    ], "aiohttp changed RequestHandler.handle_error: update GatewayConnection.handle_error"  # fmt: skip


def test_connection_protocol_methods_and_force_close_exist():
    for name in ("connection_made", "data_received", "connection_lost", "force_close"):
        assert callable(getattr(web.RequestHandler, name, None)), (
            f"aiohttp's RequestHandler lost {name}(): update GatewayConnection"
        )
    assert isinstance(web.BaseRequest.protocol, property), "BaseRequest.protocol is gone"


def test_line_too_long_carries_its_limit_as_second_argument():
    exc = LineTooLong("x" * 10, 8190)
    assert line_too_long_limit(exc) == 8190, (
        "aiohttp's LineTooLong no longer carries the limit as args[1]: the 414/431 choice breaks"
    )
    assert isinstance(exc, BadHttpMessage)


def test_stream_response_prepares_its_headers_in_one_overridable_coroutine():
    prepare = getattr(web.StreamResponse, "_prepare_headers", None)
    assert prepare is not None and inspect.iscoroutinefunction(prepare), (
        "aiohttp's StreamResponse._prepare_headers is gone: VerbatimResponse would add "
        "Content-Type and Server headers the upstream never sent"
    )
    assert parameters(prepare) == ["self"]


async def test_verbatim_responses_add_no_content_type_or_server():
    """Run both through aiohttp's own server: only the given headers, Date and framing."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/stream":
            response = VerbatimResponse(status=200, headers=[("X-A", "1")])
            await response.prepare(request)
            await response.write(b"abc")
            await response.write_eof()
            return response
        return VerbatimBody(status=200, body=b"hello", headers=[("X-A", "1")])

    runner = web.ServerRunner(web.Server(handler), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http:
            for path, body in (("/", b"hello"), ("/stream", b"abc")):
                async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                    assert await resp.read() == body
                    assert resp.headers["X-A"] == "1"
                    assert "Content-Type" not in resp.headers, path
                    assert "Server" not in resp.headers, path
    finally:
        await runner.cleanup()


async def test_gateway_server_builds_gateway_connections_with_its_options():
    async def handler(request: web.BaseRequest) -> web.Response:
        return web.Response(text=type(request.protocol).__name__)

    server = GatewayServer(
        handler, header_timeout=lambda: 5.0, refusal=lambda *_: None, max_line_size=9000
    )
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(4096), 5)
        assert answer.endswith(GatewayConnection.__name__.encode())
        assert all(isinstance(c, GatewayConnection) for c in server.connections)
        assert all(c.max_line_size == 9000 for c in server.connections)
        writer.close()
    finally:
        await runner.cleanup()
