"""A small OTLP/HTTP trace receiver for tests, run as its own process.

``python tests/otlp_receiver.py PORT`` listens on 127.0.0.1:PORT. ``POST
/v1/traces`` takes an ``ExportTraceServiceRequest`` in protobuf (as an OTLP
exporter sends it), decodes it with ``opentelemetry-proto`` and keeps every
span; ``GET /spans`` answers them as JSON (ids in lower-case hex, attributes
as a plain object, the resource's attributes under ``resource``).
"""

from __future__ import annotations

import sys

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

SPANS = web.AppKey("spans", list)
KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def plain(value: AnyValue):
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    found = getattr(value, kind)
    if kind == "array_value":
        return [plain(v) for v in found.values]
    if kind == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in found.values}
    return found


async def traces(request: web.Request) -> web.Response:
    if request.content_type != "application/x-protobuf":
        return web.Response(status=415, text=f"unsupported content type {request.content_type}")
    message = ExportTraceServiceRequest()
    message.ParseFromString(await request.read())
    spans = request.app[SPANS]
    for resource_spans in message.resource_spans:
        resource = {a.key: plain(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    {
                        "name": span.name,
                        "kind": KINDS.get(span.kind, str(span.kind)),
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex() or None,
                        "trace_state": span.trace_state,
                        "attributes": {a.key: plain(a.value) for a in span.attributes},
                        "status_code": span.status.code,
                        "start_ns": span.start_time_unix_nano,
                        "end_ns": span.end_time_unix_nano,
                        "scope": scope_spans.scope.name,
                        "resource": resource,
                    }
                )
    return web.Response(
        body=ExportTraceServiceResponse().SerializeToString(),
        content_type="application/x-protobuf",
    )


async def list_spans(request: web.Request) -> web.Response:
    return web.json_response(request.app[SPANS])


def make_app() -> web.Application:
    app = web.Application()
    app[SPANS] = []
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/spans", list_spans)
    return app


if __name__ == "__main__":
    web.run_app(make_app(), host="127.0.0.1", port=int(sys.argv[1]), print=None)
