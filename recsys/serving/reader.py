"""The storefront's read path: one GetItem per request, with the popular list for users the
table does not know. Apart from the publisher (:mod:`recsys.io.dynamodb`), whose client,
key and item format it shares.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, overload

from recsys.config import POPULAR_USER_ID
from recsys.io.dynamodb import KEY, MAX_KEY_BYTES, META_KEY, Item

log = logging.getLogger(__name__)


def _checked_key(kind: str, value: Any, prefix: str = "") -> str:
    """``prefix + value`` as a table key.

    Raises ValueError naming ``kind`` (user_id, item_id) for an empty or non-string value,
    text that is not valid Unicode, or a key over DynamoDB's 2,048 bytes in UTF-8.
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"{kind} must be a non-empty string")
    key = prefix + value
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{kind} {value!r} is not valid Unicode text") from None
    if size > MAX_KEY_BYTES:
        within = f"with the {prefix!r} prefix DynamoDB keys allow at most" if prefix else "DynamoDB keys are at most"
        raise ValueError(
            f"{kind} is {size - len(prefix.encode())} bytes in UTF-8; "
            f"{within} {MAX_KEY_BYTES - len(prefix.encode())} bytes"
        )
    return key


def _read_item(client: Any, table: str, key: str) -> Item | None:
    """One GetItem (eventually consistent: the storefront path); LookupError when the table is missing."""
    try:
        item: Item | None = client.get_item(TableName=table, Key={KEY: {"S": key}}).get("Item")
    except client.exceptions.ResourceNotFoundException:
        raise LookupError(
            f"DynamoDB table {table} does not exist: nothing has been published yet "
            f"(run the nightly DAG, e.g. 'recsys run --date latest')"
        ) from None
    return item


class PopularCache:
    """The popular lists (``__popular__``, ``__popular__#<category>``) a server process has read,
    kept ``ttl`` seconds: they change once a night, and every unknown user's request falls back
    on one, so a hit saves that request its second GetItem. A list the table does not hold is
    not kept. Thread-safe (the server reads from a pool of threads)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._lists: dict[tuple[str, str], tuple[float, Item]] = {}
        self._lock = threading.Lock()

    def read(self, client: Any, table: str, key: str) -> Item | None:
        """The item at ``key``, from the cache when it was read less than ``ttl`` seconds ago."""
        now = time.monotonic()
        with self._lock:
            kept = self._lists.get((table, key))
        if kept is not None and now - kept[0] < self.ttl:
            return kept[1]
        item = _read_item(client, table, key)
        if item is not None:
            with self._lock:
                self._lists[(table, key)] = (now, item)
        return item


def _read_popular(client: Any, table: str, key: str, popular: PopularCache | None) -> Item | None:
    return _read_item(client, table, key) if popular is None else popular.read(client, table, key)


def _entries(item: Item | None) -> list[dict[str, Any]]:
    """The stored list of ``item`` as [{"item_id", "score"}], best first; [] for no item."""
    if item is None:
        return []
    return [{"item_id": e["M"]["item_id"]["S"], "score": float(e["M"]["score"]["N"])}
            for e in item.get("items", {}).get("L", [])]


def _about(item: Item) -> dict[str, Any]:
    """What a stored list says about itself: model_version, generated_at, and refreshed_at when present."""
    about = {
        "model_version": item.get("model_version", {}).get("S", ""),
        "generated_at": item.get("generated_at", {}).get("S", ""),
    }
    if "refreshed_at" in item:
        about["refreshed_at"] = item["refreshed_at"].get("S", "")
    return about


def fill_list(
    own: list[dict[str, Any]],
    fallback: list[dict[str, Any]],
    limit: int,
    exclude: frozenset[str] = frozenset(),
    allowed: frozenset[str] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """The first ``limit`` entries of ``own``, then of ``fallback``, leaving out ``exclude``d ids,
    ids outside ``allowed`` (when given; the fallback is taken as inside) and repeats.

    Returns the list and how many of its entries came from ``fallback``.
    """
    chosen: list[dict[str, Any]] = []
    seen = set(exclude)
    filled = 0
    for entries, check, from_fallback in ((own, allowed, 0), (fallback, None, 1)):
        for entry in entries:
            if len(chosen) == limit:
                break
            item_id = entry["item_id"]
            if item_id in seen or (check is not None and item_id not in check):
                continue
            seen.add(item_id)
            chosen.append(entry)
            filled += from_fallback
    return chosen, filled


def _checked_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")


@overload
def get_recommendations(
    client: Any, table: str, user_id: str, limit: int = ..., *, exclude: frozenset[str] = ..., category: None = ...,
    popular: PopularCache | None = ...,
) -> dict[str, Any]: ...


@overload
def get_recommendations(
    client: Any, table: str, user_id: str, limit: int = ..., *, exclude: frozenset[str] = ..., category: str,
    popular: PopularCache | None = ...,
) -> dict[str, Any] | None: ...


def get_recommendations(
    client: Any,
    table: str,
    user_id: str,
    limit: int = 20,
    *,
    exclude: frozenset[str] = frozenset(),
    category: str | None = None,
    popular: PopularCache | None = None,
) -> dict[str, Any] | None:
    """What the storefront shows ``user_id``: their list, or ``__popular__`` when unknown.

    ``exclude``d item ids are left out and the list is then filled up to ``limit`` from the user's
    remaining items, then from the popular list (a request without ``exclude`` or ``category``
    is never filled: a known user's short list stays short). With ``category`` only items of that category
    are kept: the table stores no item's category, so membership is the category's published
    list ``__popular__#<category>`` (at most k items), which then also fills the list.

    One GetItem for a known user whose list is long enough (two on a miss or a fill, one more
    with ``category``); the caller bounds the time with the client's timeouts and, in
    ``recsys serve``, a deadline per request. Returns {"user_id", "items": [{"item_id",
    "score"}], "model_version", "generated_at", ["refreshed_at",] "source": "user" | "popular"
    | "category", "filled": how many trailing items came from the popular or category list},
    or None when ``category`` has no published list. Raises ValueError for an empty id, one
    over 2,048 bytes UTF-8, the reserved ``__meta__`` or a limit below 1; LookupError when
    neither the user nor the list to fall back on is in the table (nothing published yet).
    With ``popular`` (``recsys serve``'s), the popular and category lists come from that cache.
    """
    key = _checked_key("user_id", user_id)
    _checked_limit(limit)
    if key == META_KEY:
        raise ValueError(f"user_id {META_KEY!r} is reserved for the table's own bookkeeping")
    fallback_key = POPULAR_USER_ID if category is None else _checked_key("category", category, POPULAR_USER_ID + "#")
    own = _read_item(client, table, key)
    fallback: Item | None = None
    allowed: frozenset[str] | None = None
    if category is not None:
        fallback = _read_popular(client, table, fallback_key, popular)
        if fallback is None:
            return None
        allowed = frozenset(e["item_id"] for e in _entries(fallback))
    entries, filled = fill_list(_entries(own), [], limit, exclude, allowed)
    # Only a rule that removes items (or an unknown user) fills: a plain request for a short list
    # stays one GetItem, as it always was.
    if len(entries) < limit and (own is None or exclude or category is not None):
        if fallback is None and key != POPULAR_USER_ID:
            fallback = _read_popular(client, table, fallback_key, popular)
        entries, filled = fill_list(_entries(own), _entries(fallback), limit, exclude, allowed)
    described = own if own is not None else fallback
    if described is None:
        raise LookupError(
            f"DynamoDB table {table} has neither user {user_id!r} nor the fallback {POPULAR_USER_ID!r}: the table "
            f"has not been published yet (run the nightly DAG, e.g. 'recsys run --date latest')"
        )
    if own is not None and key != POPULAR_USER_ID and filled < len(entries):
        source = "user"
    else:
        source = "popular" if category is None else "category"
    return {"user_id": user_id, "items": entries, **_about(described), "source": source, "filled": filled}


def get_popular(
    client: Any, table: str, limit: int = 20, *, category: str | None = None, popular: PopularCache | None = None
) -> dict[str, Any] | None:
    """The popular list (``__popular__``) or a category's (``__popular__#<category>``), best first.

    One GetItem. Returns {"category", "items", "model_version", "generated_at", ["refreshed_at",]
    "source": "popular" | "category"}, or None when ``category`` has no published list. Raises
    ValueError for an empty or oversized category or a limit below 1; LookupError when the
    table does not exist or holds no ``__popular__`` (nothing published yet).
    """
    _checked_limit(limit)
    key = POPULAR_USER_ID if category is None else _checked_key("category", category, POPULAR_USER_ID + "#")
    item = _read_popular(client, table, key, popular)
    if item is None:
        if category is not None:
            return None
        raise LookupError(
            f"DynamoDB table {table} has no {POPULAR_USER_ID!r} list: the table has not been published yet "
            f"(run the nightly DAG, e.g. 'recsys run --date latest')"
        )
    return {"category": category, "items": _entries(item)[:limit], **_about(item),
            "source": "popular" if category is None else "category"}


def get_similar_items(
    client: Any, table: str, item_id: str, limit: int = 20, *, exclude: frozenset[str] = frozenset()
) -> dict[str, Any] | None:
    """The list published as similar to ``item_id`` (key ``item#<item_id>``, items shaped as a user's).

    ``exclude``d ids are left out; the list is filled from the item's remaining similar items
    only (a product page's "similar" row does not fall back on best sellers). One GetItem.
    Returns {"item_id", "items": [{"item_id", "score"}], "model_version", "generated_at",
    ["refreshed_at",] "source": "item"}, or None when the item has no list. Raises ValueError
    for an empty id, a key over 2,048 bytes UTF-8 or a limit below 1; LookupError when the
    table does not exist.
    """
    key = _checked_key("item_id", item_id, prefix="item#")
    _checked_limit(limit)
    item = _read_item(client, table, key)
    if item is None:
        return None
    entries, _ = fill_list(_entries(item), [], limit, exclude)
    return {"item_id": item_id, "items": entries, **_about(item), "source": "item"}
