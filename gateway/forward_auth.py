"""Forward authentication (SPEC §11): the pipeline's decision without proxying."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runtime import LocalHandler, Runtime


def forward_auth_routes(runtime: Runtime, prefix: str) -> list[tuple[str, bool, LocalHandler]]:
    return []
