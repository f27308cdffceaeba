"""redis-py below its public API: connections that fail fast while the store is down.

redis-py offers no public hook that runs before every command a connection
sends and hears every transport failure on it. Its own circuit breaker
(``redis.multidb``) chooses between several databases, probes them in the
background and needs ``pybreaker``; it does not make one server's commands
fail at once. So :func:`fail_fast` swaps the connection class a pool makes
for a subclass that consults a :class:`Gate` around each command.

What this module relies on, each checked by ``tests/test_compat_redis.py``:

- ``ConnectionPool.connection_class`` (``SentinelConnectionPool`` too): the
  class ``make_connection()`` instantiates, read for every new connection, so
  it may be replaced before the pool made one;
- ``Connection.connect()``: how the pool connects a connection it hands out;
- ``Connection.send_packed_command(command, check_health)``: every command,
  pipeline and health check is written through it, and it connects first if
  the connection is not;
- ``Connection.read_response(...)``: every reply is read through it (its
  arguments are passed on untouched).
"""

from __future__ import annotations

from typing import Any, Protocol

from redis.asyncio.connection import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["TRANSPORT_ERRORS", "Gate", "fail_fast"]

#: What says the store did not answer (as opposed to answering with an error).
TRANSPORT_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


class Gate(Protocol):
    """Decides whether a command may go to the store, and hears how it went."""

    def admit(self, connection: object) -> None:
        """Return to let a command through on ``connection``; raise to fail it at once."""

    def succeeded(self) -> None:
        """The store answered."""

    def failed(self, exc: BaseException) -> None:
        """The store did not answer: ``exc`` is one of :data:`TRANSPORT_ERRORS`."""


class _FailFast:
    """Mixed into a pool's connection class: consult and update a :class:`Gate`."""

    gate: Gate

    async def connect(self) -> None:
        self.gate.admit(self)
        try:
            await super().connect()  # type: ignore[misc]
        except TRANSPORT_ERRORS as exc:
            self.gate.failed(exc)
            raise

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self.gate.admit(self)
        try:
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
        except TRANSPORT_ERRORS as exc:
            self.gate.failed(exc)
            raise

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            response = await super().read_response(*args, **kwargs)  # type: ignore[misc]
        except TRANSPORT_ERRORS as exc:
            self.gate.failed(exc)
            raise
        self.gate.succeeded()
        return response


def fail_fast(pool: ConnectionPool, gate: Gate) -> None:
    """Make every connection ``pool`` opens from now on go through ``gate``.

    Call it on a fresh pool (``ConnectionPool.from_url``, or the one a
    ``Sentinel.master_for`` client holds), before it made a connection.
    """
    base = pool.connection_class
    pool.connection_class = type("FailFast" + base.__name__, (_FailFast, base), {"gate": gate})
