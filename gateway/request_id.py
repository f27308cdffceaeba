"""Request ids (SPEC §4): the client's when it is a safe token, else a generated one."""

from __future__ import annotations

import os
import re
import secrets
import weakref

_GIVEN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class RequestIds:
    """Generated ids from a random per-process prefix and a counter (unique, cheap), and the
    rule for a client's own: kept when it is 1–128 of ``[A-Za-z0-9._-]`` and does not look
    like an API key (a key sent as the id would be echoed back and logged)."""

    def __init__(self, key_prefix: str = "sk") -> None:
        self._keyish = (f"{key_prefix}_live_", f"{key_prefix}_test_")
        self._renew()
        _LIVE.add(self)

    def _renew(self) -> None:
        self._prefix, self._seq = secrets.token_hex(6), 0

    def next(self) -> str:
        self._seq += 1
        return f"req_{self._prefix}{self._seq:012x}"

    def of(self, given: str | None) -> str:
        if (
            given
            and _GIVEN.match(given)
            and self._keyish[0] not in given
            and self._keyish[1] not in given
        ):
            return given
        return self.next()


_LIVE: weakref.WeakSet[RequestIds] = weakref.WeakSet()


def _renew_all() -> None:
    """In a forked child: new prefixes, so no worker repeats its parent's ids."""
    for ids in list(_LIVE):
        ids._renew()


os.register_at_fork(after_in_child=_renew_all)
