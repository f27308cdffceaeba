"""Whether the ``tracing`` extra (the OpenTelemetry SDK and its OTLP/HTTP exporter) is here.

Config validation asks this before it accepts ``tracing.otlp_endpoint``, so it
lives apart from :mod:`.tracing`, which reads the validated config.
"""

from __future__ import annotations

EXTRA = "keygate[tracing]"


def sdk_missing() -> str | None:
    """Why the OpenTelemetry SDK cannot be used here, or None when it can."""
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        return (
            f"needs the OpenTelemetry SDK, which is not installed ({exc.name or exc}): "
            f"install the tracing extra, pip install '{EXTRA}'"
        )
    return None
