"""The storefront's read path: one GetItem per request, with the popular list for users the
table does not know. Apart from the publisher (:mod:`recsys.io.dynamodb`), whose client,
key and item format it shares.
"""

from __future__ import annotations

import logging
from typing import Any

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


def _served_list(item: Item, limit: int) -> dict[str, Any]:
    """The public shape of a stored list: items (best first, at most ``limit``), model_version, generated_at."""
    entries = item.get("items", {}).get("L", [])[:limit]
    return {
        "items": [{"item_id": e["M"]["item_id"]["S"], "score": float(e["M"]["score"]["N"])} for e in entries],
        "model_version": item.get("model_version", {}).get("S", ""),
        "generated_at": item.get("generated_at", {}).get("S", ""),
    }


def get_recommendations(client: Any, table: str, user_id: str, limit: int = 20) -> dict[str, Any]:
    """What the storefront shows ``user_id``: their list, or ``__popular__`` when unknown.

    One GetItem (two on a miss); the caller bounds the time with the client's timeouts
    (``make_client(timeout=...)``) and, in ``recsys serve``, a deadline per request.
    Returns {"user_id", "items": [{"item_id", "score"}], "model_version", "generated_at",
    "source": "user" | "popular"}. Raises ValueError for an empty id, one over 2,048 bytes
    UTF-8, the reserved ``__meta__`` or a limit below 1; LookupError when neither the user
    nor ``__popular__`` is in the table (nothing published yet).
    """
    key = _checked_key("user_id", user_id)
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if key == META_KEY:
        raise ValueError(f"user_id {META_KEY!r} is reserved for the table's own bookkeeping")
    item = _read_item(client, table, key)
    source = "popular" if key == POPULAR_USER_ID else "user"
    if item is None and source == "user":
        item, source = _read_item(client, table, POPULAR_USER_ID), "popular"
    if item is None:
        raise LookupError(
            f"DynamoDB table {table} has neither user {user_id!r} nor the fallback {POPULAR_USER_ID!r}: the table "
            f"has not been published yet (run the nightly DAG, e.g. 'recsys run --date latest')"
        )
    return {"user_id": user_id, **_served_list(item, limit), "source": source}


def get_similar_items(client: Any, table: str, item_id: str, limit: int = 20) -> dict[str, Any] | None:
    """The list published as similar to ``item_id`` (key ``item#<item_id>``, items shaped as a user's).

    One GetItem. Returns {"item_id", "items": [{"item_id", "score"}], "model_version",
    "generated_at"}, or None when the item has no list. Raises ValueError for an empty id, a
    key over 2,048 bytes UTF-8 or a limit below 1; LookupError when the table does not exist.
    """
    key = _checked_key("item_id", item_id, prefix="item#")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    item = _read_item(client, table, key)
    return None if item is None else {"item_id": item_id, **_served_list(item, limit)}
