"""``{prefix}/webhook-endpoints``: where an account's events are sent (SPEC §14).

Managed by ``webhook`` or ``admin`` keys. An endpoint belongs to the calling
key's account and mode and receives that mode's events; a test-mode key sees
and manages only test-mode endpoints. The signing secret (``whsec_…``) is in
the answer to create, once; the store keeps it to sign with, no API returns it
again. A URL must be ``https://`` on a public address unless
``webhooks.allow_private_targets`` is set.
"""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from ..events.targets import TargetRefused, check_target
from ..events.webhooks import (
    CREATE_FIELDS,
    ENDPOINT_FIELDS,
    EndpointError,
    WebhookEndpoint,
    WebhookStore,
    new_endpoint,
    test_event,
    validate_description,
    validate_events,
)
from ..keys.service import Forbidden, InvalidRequest, NotFound
from .calls import Call, json_answer
from .events import parse_limit, parse_starting_after

DELETED_MESSAGE = "Webhook endpoint deleted"


def _store(call: Call) -> WebhookStore:
    fan_out = call.runtime.service.events.fan_out
    assert isinstance(fan_out, WebhookStore)
    return fan_out


def _fields(body: dict, allowed: tuple[str, ...]) -> None:
    for name in body:
        if name not in allowed:
            raise InvalidRequest(f"unknown field {name!r}", name)


async def _url(call: Call, value: object) -> str:
    try:
        await check_target(
            value,  # type: ignore[arg-type]
            allow_private=call.runtime.config.webhooks.allow_private_targets,
        )
    except TargetRefused as exc:
        raise InvalidRequest(str(exc), "url") from None
    assert isinstance(value, str)
    return value


def _checked(make):
    try:
        return make()
    except EndpointError as exc:
        raise InvalidRequest(exc.message, exc.field) from None


async def _endpoint(call: Call) -> WebhookEndpoint:
    actor = call.actor
    endpoint_id = call.params["id"]
    endpoint = await _store(call).get_endpoint(endpoint_id)
    if endpoint is None or endpoint.account_id != actor.account_id:
        raise NotFound(f"no webhook endpoint {endpoint_id!r}", "id")
    if actor.test_only and endpoint.mode != "test":
        raise Forbidden("a test-mode key can see and manage only test-mode endpoints", "id")
    return endpoint


async def create_endpoint(call: Call) -> web.Response:
    body = await call.json_body(required=True)
    _fields(body, CREATE_FIELDS)
    if "url" not in body:
        raise InvalidRequest("url is required", "url")
    url = await _url(call, body["url"])
    events = _checked(lambda: validate_events(body.get("events")))
    description = _checked(lambda: validate_description(body.get("description")))
    actor = call.actor
    endpoint = new_endpoint(
        account_id=actor.account_id or "",
        mode=actor.mode or "live",
        url=url,
        events=events,
        description=description,
    )
    try:
        await _store(call).add_endpoint(endpoint)
    except EndpointError as exc:
        raise InvalidRequest(exc.message, exc.field) from None
    return json_answer(
        {"data": {**endpoint.public(), "secret": endpoint.secret}, "meta": call.meta()},
        status=201,
    )


async def list_endpoints(call: Call) -> web.Response:
    call.query(())
    actor = call.actor
    endpoints = await _store(call).list_endpoints(actor.account_id or "")
    if actor.test_only:
        endpoints = [e for e in endpoints if e.mode == "test"]
    return json_answer({"data": [e.public() for e in endpoints], "meta": call.meta()})


async def get_endpoint(call: Call) -> web.Response:
    endpoint = await _endpoint(call)
    return json_answer({"data": endpoint.public(), "meta": call.meta()})


async def update_endpoint(call: Call) -> web.Response:
    body = await call.json_body(required=True)
    _fields(body, ENDPOINT_FIELDS)
    endpoint = await _endpoint(call)
    changes: dict = {}
    if "url" in body:
        changes["url"] = await _url(call, body["url"])
    if "events" in body:
        changes["events"] = _checked(lambda: validate_events(body["events"]))
    if "description" in body:
        changes["description"] = _checked(lambda: validate_description(body["description"]))
    if "disabled" in body:
        if not isinstance(body["disabled"], bool):
            raise InvalidRequest("disabled must be true or false", "disabled")
        changes["disabled"] = body["disabled"]
    updated = replace(endpoint, **changes)
    await _store(call).save_endpoint(updated)
    return json_answer({"data": updated.public(), "meta": call.meta()})


async def delete_endpoint(call: Call) -> web.Response:
    endpoint = await _endpoint(call)
    await _store(call).delete_endpoint(endpoint)
    return json_answer(
        {"data": {"id": endpoint.id, "deleted": True}, "message": DELETED_MESSAGE,
         "meta": call.meta()}
    )  # fmt: skip


async def send_test(call: Call) -> web.Response:
    endpoint = await _endpoint(call)
    event = test_event(endpoint)
    await _store(call).enqueue(endpoint, event)
    for listener in call.runtime.service.events.listeners:
        listener(event)
    return json_answer(
        {"data": {"event_id": event.id, "endpoint_id": endpoint.id, "status": "pending"},
         "meta": call.meta()},
        status=202,
    )  # fmt: skip


async def list_deliveries(call: Call) -> web.Response:
    query = call.query(("limit", "starting_after"))
    limit = parse_limit(query)
    endpoint = await _endpoint(call)
    starting_after = parse_starting_after(query)
    page = await _store(call).list_deliveries(
        endpoint.id, limit=limit, starting_after=starting_after
    )
    if page is None:  # an unknown id is 404, as for the key list (SPEC §7)
        raise NotFound(
            f"starting_after {starting_after!r} is not an event of this list", "starting_after"
        )
    deliveries, has_more = page
    return json_answer(
        {
            "data": [d.public() for d in deliveries],
            "has_more": has_more,
            "meta": call.meta(
                limit=limit,
                has_more=has_more,
                next_starting_after=deliveries[-1].event_id if has_more and deliveries else None,
            ),
        }
    )
