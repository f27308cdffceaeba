"""The management endpoints of SPEC §7 (verify, account, api-keys)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..runtime import LocalHandler, Runtime


def management_routes(runtime: Runtime, prefix: str) -> list[tuple[str, bool, LocalHandler]]:
    return []
