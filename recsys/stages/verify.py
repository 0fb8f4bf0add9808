"""Task ``verify``: what was published, read back and checked against the partition; the
champion recorded."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from recsys import datasets
from recsys.config import Settings
from recsys.io import dynamodb, lake

log = logging.getLogger(__name__)


def verify(settings: Settings, day: dt.date, published: dict[str, Any]) -> dict[str, Any]:
    """Check what :func:`finish_publish` reports against the partition (users written per
    shard), then read back a sample of users, ``__popular__`` and ``__meta__``; raises
    PublicationError when a count differs or any item read back is missing or stale."""

    if not published.get("published"):
        log.info("verify: nothing was published for %s (%s), nothing to verify", day, published.get("reason"))
        return {"verified": False}
    recs = lake.read_partition(settings.lake, datasets.RECOMMENDATIONS, day)
    _check_shard_counts(settings, day, recs, published["shards"])
    client = dynamodb.make_client(settings)
    result = dynamodb.verify_publication(
        client, settings.table, recs, model_version=published["model_version"], sample=settings.verify_sample
    )
    served = dynamodb.read_served(client, settings.table) or {}
    if served.get("model_version") != published["model_version"]:
        raise dynamodb.PublicationError(
            f"table {settings.table} marks model {served.get('model_version')} (run date {served.get('run_date')}) "
            f"as served, not {published['model_version']} just published for {day}"
        )
    metrics = lake.read_partition_json(settings.lake, datasets.MODELS, day, "metrics.json")
    lake.write_lake_json(settings.lake, datasets.CHAMPION, {
        "model_version": published["model_version"], "run_date": day.isoformat(),
        "ndcg_at_k": metrics["model"]["ndcg_at_k"], "map_at_k": metrics["model"]["map_at_k"],
    })
    return {"verified": True, **result, "served": served}


def _check_shard_counts(settings: Settings, day: dt.date, recs: pa.Table, shards: list[dict[str, Any]]) -> None:
    """Raise PublicationError unless every shard wrote as many items as its range has users."""

    wrong = []
    for shard in shards:
        where = dynamodb.key_range(shard["first"], shard["end"])
        users = recs["user_id"] if where is None else recs.filter(where)["user_id"]
        expected = int(pc.count_distinct(users).as_py()) if len(users) else 0
        if expected != shard["items"]:
            wrong.append(f"shard {shard['shard']}: {shard['items']} written, {expected} in the partition")
    if wrong:
        raise dynamodb.PublicationError(
            f"publish of {day} to {settings.table} does not match "
            f"{lake.partition_uri(settings.lake, datasets.RECOMMENDATIONS, day)}: "
            + "; ".join(wrong)
            + ". Rerun the publish for this date"
        )
    log.info("verify: users written per shard match the partition (%d shard(s))", len(shards))
