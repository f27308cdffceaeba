"""W3C Trace Context on every request, and spans over OTLP/HTTP when configured (SPEC §17).

Every request carries a trace: the client's ``traceparent`` is continued, else
a trace starts. Without ``tracing.otlp_endpoint`` the gateway records nothing
and needs no OpenTelemetry package: :func:`trace_context` reads or makes the
W3C ids with one regular expression and ``random.randbytes``, and the
upstream receives ``traceparent`` with the gateway's own span id as parent.

With ``tracing.otlp_endpoint`` set, :class:`Tracer` (the ``tracing`` extra:
the OpenTelemetry SDK and its OTLP/HTTP exporter, imported only then) records
one server span per request, a child span for each store call and one for the
upstream exchange; the upstream's parent is that upstream (client) span.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# version-traceid-parentid-flags; a later version may append fields after a dash.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_randbytes = random.randbytes


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """(trace id, parent span id, flags) of a valid ``traceparent``, else None (W3C §3.2)."""
    if not value:
        return None
    found = _TRACEPARENT.match(value.strip(" \t"))
    if found is None:
        return None
    version, trace_id, parent_id, flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, flags


def new_ids() -> tuple[str, str]:
    """A new trace id and span id (random, never all zeros)."""
    both = _randbytes(24).hex()
    trace_id, span_id = both[:32], both[32:]
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return new_ids()
    return trace_id, span_id


def new_span_id() -> str:
    """A new span id (random, never all zeros)."""
    span_id = _randbytes(8).hex()
    return span_id if span_id != _ZERO_SPAN else new_span_id()


def traceparent_line(trace_id: str, span_id: str, flags: str) -> bytes:
    """The ``traceparent`` header line the upstream receives."""
    return f"traceparent: 00-{trace_id}-{span_id}-{flags}\r\n".encode()


def otlp_traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of ``endpoint``: ``/v1/traces`` added to a bare origin."""
    base = endpoint.rstrip("/")
    scheme_end = base.find("://") + 3
    if "/" not in base[scheme_end:]:
        return base + "/v1/traces"
    return base


class Tracer:
    """Spans of the gateway, exported in batches over OTLP/HTTP (protobuf) from a thread.

    The standard ``OTEL_BSP_*`` variables tune the batching (e.g.
    ``OTEL_BSP_SCHEDULE_DELAY``, 5000 ms by default).
    """

    def __init__(self, endpoint: str, service_name: str, sample_ratio: float, version: str):
        from opentelemetry import context, trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace import (
            NonRecordingSpan,
            SpanContext,
            SpanKind,
            Status,
            StatusCode,
            TraceFlags,
            TraceState,
        )

        self._context = context
        self._trace = trace
        self._NonRecordingSpan = NonRecordingSpan
        self._SpanContext = SpanContext
        self._TraceFlags = TraceFlags
        self._TraceState = TraceState
        self._SERVER = SpanKind.SERVER
        self._CLIENT = SpanKind.CLIENT
        self._error = Status(StatusCode.ERROR)
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": service_name, "service.version": version}),
            sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
        )
        self.provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_traces_url(endpoint)))
        )
        self._tracer = self.provider.get_tracer("keygate", version)

    # -- the server span of one request

    def start_server(
        self, method: str, parent: tuple[str, str, str] | None, tracestate: str | None
    ) -> tuple[Any, object, str, str, str]:
        """Start and make current the request's server span: (span, context token,
        trace id, span id, flags)."""
        context = None
        if parent is not None:
            trace_id, parent_id, flags = parent
            remote = self._SpanContext(
                int(trace_id, 16),
                int(parent_id, 16),
                is_remote=True,
                trace_flags=self._TraceFlags(int(flags, 16) & 1),
                trace_state=self._TraceState.from_header([tracestate]) if tracestate else None,
            )
            context = self._trace.set_span_in_context(self._NonRecordingSpan(remote))
        span = self._tracer.start_span(
            method,
            context=context,
            kind=self._SERVER,
            attributes={"http.request.method": method},
        )
        token = self._context.attach(self._trace.set_span_in_context(span))
        ids = span.get_span_context()
        return (
            span,
            token,
            f"{ids.trace_id:032x}",
            f"{ids.span_id:016x}",
            "01" if ids.trace_flags.sampled else "00",
        )

    def end_server(
        self,
        handle: tuple[Any, object],
        *,
        method: str,
        path: str,
        status: int | None,
        route: str,
        key_id: str | None,
        code: str | None,
    ) -> None:
        """End the span of :meth:`start_server` (``handle``: the span and its context token)."""
        span, token = handle
        try:
            if span.is_recording():
                span.update_name(f"{method} {route}")
                span.set_attribute("url.path", path)
                if status is not None:
                    span.set_attribute("http.response.status_code", status)
                span.set_attribute("http.route", route)
                if key_id is not None:
                    span.set_attribute("gateway.key_id", key_id)
                if code is not None:
                    span.set_attribute("error.type", code)
                if status is None or status >= 500:
                    span.set_status(self._error)
            span.end()
        finally:
            self._context.detach(token)

    # -- children of the current server span

    @contextmanager
    def store_span(self, operation: str) -> Iterator[Any]:
        """A store call (Redis): ``keys.lookup`` or ``ratelimit.check``."""
        with self._tracer.start_as_current_span(
            f"store {operation}",
            kind=self._CLIENT,
            attributes={"db.system.name": "redis", "db.operation.name": operation},
        ) as span:
            yield span

    def start_upstream(self, method: str, host: str, port: int) -> tuple[Any, str]:
        """The upstream exchange's client span, and the span id the upstream sees as parent."""
        span = self._tracer.start_span(
            f"{method} upstream",
            kind=self._CLIENT,
            attributes={
                "http.request.method": method,
                "server.address": host,
                "server.port": port,
            },
        )
        return span, f"{span.get_span_context().span_id:016x}"

    def end_upstream(self, span: Any, status: int | None, error: str | None) -> None:
        if span.is_recording():
            if status is not None:
                span.set_attribute("http.response.status_code", status)
            if error is not None:
                span.set_attribute("error.type", error)
                span.set_status(self._error)
        span.end()

    def shutdown(self) -> None:
        """Export what is still buffered, then stop the exporter."""
        self.provider.shutdown()
