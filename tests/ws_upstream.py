"""A real WebSocket upstream for the tests: echoes, closes on request, records handshakes."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer


class WsUpstream:
    """An echo WebSocket server that records each handshake it accepted."""

    def __init__(self) -> None:
        self.handshakes: list[dict] = []
        self.closed_with: list[int | None] = []
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.json_response(
                {"plain": True, "headers": {k: v for k, v in request.headers.items()}}
            )
        if request.path.startswith("/live/refuse"):  # an upstream saying no to the handshake
            return web.Response(
                status=403, text="upstream says no", headers={"X-Why": "nope", "Server": "up/1"}
            )
        ws = web.WebSocketResponse(protocols=("chat",), autoclose=False)
        await ws.prepare(request)
        self.handshakes.append(
            {"path": request.path_qs, "headers": dict(request.headers), "protocol": ws.ws_protocol}
        )
        while True:
            message = await ws.receive()
            if message.type == aiohttp.WSMsgType.TEXT:
                if message.data.startswith("close:"):
                    await ws.close(code=int(message.data[6:]), message=b"upstream says bye")
                    break
                await ws.send_str("echo:" + message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(message.data)
            elif message.type == aiohttp.WSMsgType.CLOSE:
                self.closed_with.append(message.data)
                await ws.close()
                break
            else:
                break
        return ws

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return f"http://127.0.0.1:{self.server.port}"
