"""The paths the gateway answers itself, before routes (SPEC §7, §11)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..dashboard import dashboard_routes
from ..forward_auth import forward_auth_routes
from .api import management_routes
from .audit_api import audit_routes
from .secret_scanning import secret_scanning_routes

if TYPE_CHECKING:
    from ..runtime import LocalHandler, Runtime


def local_routes(runtime: Runtime) -> tuple[tuple[str, bool, LocalHandler], ...]:
    """(path, matches-below-too, handler) for each path answered locally."""
    config = runtime.config
    if not config.management.enabled:
        return ()
    prefix = config.management.path_prefix
    return (
        *forward_auth_routes(runtime, prefix),
        *management_routes(runtime, prefix),
        *audit_routes(runtime, prefix),
        *secret_scanning_routes(runtime, prefix),
        *dashboard_routes(runtime),
    )
