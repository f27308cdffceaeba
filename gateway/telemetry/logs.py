"""The application's own log lines (not the access log): text, or JSON with ``logging.format: json``.

A JSON line is one object: ``timestamp`` (RFC 3339, UTC), ``level``,
``logger``, ``message``, ``worker`` in a worker process, ``request_id`` when
the line was written while a request was being handled (read from
:data:`request_id`, which the public port's handler sets), and ``exception``
with the traceback when there is one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("gateway_request_id", default=None)
"""The id of the request being handled in this task, for the log lines it causes."""


class KeyMask:
    """Masks anything shaped like an API key of ``key_prefix`` in text that gets written."""

    def __init__(self, key_prefix: str):
        self._marker = f"{key_prefix}_"
        self._secret = re.compile(re.escape(key_prefix) + r"_(?:live|test)_[A-Za-z0-9]*")

    def __call__(self, text: str) -> str:
        if self._marker in text:  # most text: one C-level test
            return self._secret.sub(self._marker + "***", text)
        return text


class SecretFilter(logging.Filter):
    """Masks API keys in every log line, whoever writes it: a library may quote what a
    client sent (aiohttp logs the WebSocket subprotocols offered, ``bearer.<key>`` included)."""

    def __init__(self, key_prefix: str):
        super().__init__()
        self._mask = KeyMask(key_prefix)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = self._mask(message)
        if masked is not message:
            record.msg = masked
            record.args = None
        return True


def mask_secrets_in_logs(key_prefix: str) -> None:
    """Put a :class:`SecretFilter` on every handler of the root logger (once)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, SecretFilter) for f in handler.filters):
            handler.addFilter(SecretFilter(key_prefix))


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None):
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, object] = {
            "timestamp": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._worker is not None:
            out["worker"] = self._worker
        rid = request_id.get()
        if rid is not None:
            out["request_id"] = rid
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


def text_format(worker: int | None = None) -> str:
    name = "%(name)s" if worker is None else f"%(name)s[{worker}]"
    return f"%(asctime)s %(levelname)s {name}: %(message)s"


def configure_logging(log_format: str = "text", worker: int | None = None) -> None:
    """Log to stderr at ``$GATEWAY_LOG_LEVEL`` (INFO), as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        handler.setFormatter(logging.Formatter(text_format(worker)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(os.environ.get("GATEWAY_LOG_LEVEL", "INFO").upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
