"""A webhook receiver as a customer would run one, verifying with `standardwebhooks`.

Run as ``python tests/webhook_receiver.py PORT``. ``POST /_configure``
``{"secret", "fail", "redirect"}`` sets the endpoint's secret, how many of the
next deliveries to answer 500, and a URL to answer 307 towards;
``GET /_state`` lists every delivery received, verified or not.
"""

from __future__ import annotations

import sys

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

state: dict = {"secret": None, "fail": 0, "redirect": None, "received": []}


async def configure(request: web.Request) -> web.Response:
    state.update(await request.json())
    return web.json_response({"ok": True})


async def show(request: web.Request) -> web.Response:
    return web.json_response({"received": state["received"]})


async def hook(request: web.Request) -> web.Response:
    body = await request.read()
    entry = {
        "path": request.path,
        "webhook_id": request.headers.get("webhook-id"),
        "timestamp": request.headers.get("webhook-timestamp"),
        "verified": False,
        "answered": None,
    }
    state["received"].append(entry)
    try:
        payload = Webhook(state["secret"]).verify(body, dict(request.headers))
    except (WebhookVerificationError, TypeError, ValueError) as exc:
        entry["error"] = str(exc)
        entry["answered"] = 400
        return web.json_response({"error": str(exc)}, status=400)
    entry["verified"] = True
    entry["type"] = payload["type"]
    entry["event"] = payload
    if state["redirect"]:
        entry["answered"] = 307
        raise web.HTTPTemporaryRedirect(state["redirect"])
    if state["fail"] > 0:
        state["fail"] -= 1
        entry["answered"] = 500
        return web.json_response({"error": "not now"}, status=500)
    entry["answered"] = 204
    return web.Response(status=204)


def main() -> None:
    app = web.Application()
    app.router.add_post("/_configure", configure)
    app.router.add_get("/_state", show)
    app.router.add_route("*", "/{tail:.*}", hook)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=lambda *_: None)


if __name__ == "__main__":
    main()
