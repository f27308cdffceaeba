"""Pages of a sorted-set index, newest first, after a cursor (``starting_after``).

The cursor's rank and the page are read in one script, so an item added (at
the top) between the two cannot shift the page by one and repeat the cursor.
"""

from __future__ import annotations

from typing import Any

_PAGE_AFTER = """
local start = 0
if ARGV[1] ~= '' then
  local rank = redis.call('ZREVRANK', KEYS[1], ARGV[1])
  if not rank then return false end
  start = rank + 1
end
return redis.call('ZREVRANGE', KEYS[1], start, start + tonumber(ARGV[2]) - 1)
"""


async def page_after(client: Any, index: str, cursor: str | None, count: int) -> list[str] | None:
    """Up to ``count`` members of ``index`` after ``cursor`` (from the top without one),
    highest score first; None when ``cursor`` is not a member."""
    ids = await client.eval(_PAGE_AFTER, 1, index, cursor or "", count)
    if ids is None:
        return None
    return [i.decode() if isinstance(i, bytes) else i for i in ids]
