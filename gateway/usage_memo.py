"""What a hit's record needs of its response body, without parsing the body again on every hit."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import orjson

from gateway.tokens import trusted_usage

# Keys remembered: a usage is a few small ints, so this costs a few MiB at most.
MAX_ENTRIES = 16_384


class UsageMemo:
    """Key → the token ``usage`` of the body last seen under it (judged by length and hash of its bytes).

    A record of a cached answer needs only its usage (for the ``usage`` field
    and its cost), yet parsing an 8 MB body for it takes milliseconds on the
    event loop, on every hit. The body's hash is cached on the bytes object,
    so a body served from the index's memory tier is hashed once.
    """

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._max_entries = max_entries
        self._usage: OrderedDict[str, tuple[int, int, dict[str, Any]]] = OrderedDict()

    def response(self, key: str, body: bytes | None, data: Any = None) -> Any:
        """``data`` if given (its usage remembered), else a stand-in ``{"usage": …}`` or the parsed ``body``.

        The stand-in is given only for a usage of whole token counts; anything
        else gets the whole parsed response, so usage can be counted from it.
        """
        if data is None and body is None:
            return None
        if data is None:
            assert body is not None
            known = self._usage.get(key)
            if known is not None and known[:2] == (len(body), hash(body)):
                self._usage.move_to_end(key)
                return {"usage": known[2]}
            data = orjson.loads(body)
        if body is not None and _whole_usage(data):
            self._usage[key] = (len(body), hash(body), data["usage"])
            self._usage.move_to_end(key)
            if len(self._usage) > self._max_entries:
                self._usage.popitem(last=False)
        return data


def _whole_usage(data: Any) -> bool:
    # The same test the scheduler and pricing trust a usage by: anything else is counted afresh.
    return trusted_usage(data.get("usage") if isinstance(data, dict) else None) is not None
