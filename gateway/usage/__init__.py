"""Per-key usage: last use and daily counts by outcome (SPEC §7).

- :mod:`.recorder`: counts on the request path, written in the background
- :mod:`.reader`: the daily counts for ``GET /v1/api-keys/{id}/usage`` and ``keys show``
"""

from .reader import UsageReader
from .recorder import UsageRecorder

__all__ = ["UsageReader", "UsageRecorder"]
