"""Tasks ``plan_publish``, ``publish_shard`` and ``finish_publish``: the run's lists into
DynamoDB, sharded, and ``__meta__`` marked once every shard has written."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from recsys import datasets
from recsys.config import Settings
from recsys.io import dynamodb, lake

log = logging.getLogger(__name__)


def plan_publish(
    settings: Settings, day: dt.date, is_backfill: bool = False, force: bool = False
) -> list[dict[str, Any]]:
    """Decide whether this run publishes, and split its lists into shards.

    Backfill runs never publish. A run whose date is older than the date the table serves
    (a late retry, a rerun of an old date) is skipped unless ``force``: the storefront never
    goes back to older lists by accident. Both return [] (the shard tasks are then skipped).
    Otherwise creates the table when missing (unless ``settings.create_table`` is False: then
    TableMissingError) and returns one small dict per shard
    (``settings.publish_shards`` contiguous ranges of the sorted user ids, see
    :func:`recsys.io.dynamodb.shard_ranges`) carrying what every shard writes alike: model
    version, generated_at and expires_at, fixed here so a retried shard writes the same items.
    """

    if is_backfill:
        log.info("publish: %s is a backfill run; lake partitions rebuilt, nothing published", day)
        return []
    client = dynamodb.make_client(settings)
    dynamodb.ensure_table(client, settings.table, create=settings.create_table)
    served = dynamodb.read_served(client, settings.table)
    if served and served["run_date"] > day.isoformat() and not force:
        log.warning(
            "publish: table %s serves run date %s (model %s), newer than %s: NOT published "
            "(set the Param force_publish to replace newer lists with these)",
            settings.table, served["run_date"], served["model_version"], day,
        )
        return []
    version = lake.read_partition_json(settings.lake, datasets.RECOMMENDATIONS, day, "_meta.json")["model_version"]
    users = lake.read_partition(settings.lake, datasets.RECOMMENDATIONS, day, columns=["user_id"])["user_id"]
    generated_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    expires_at = int((generated_at + dt.timedelta(days=settings.ttl_days)).timestamp())
    common = {
        "run_date": day.isoformat(),
        "model_version": version,
        "generated_at": generated_at.isoformat(),
        "expires_at": expires_at,
    }
    shards = [{**common, **shard} for shard in dynamodb.shard_ranges(users, settings.publish_shards)]
    log.info(
        "publish: model %s to table %s in %d shard(s) of about %d users (pool %s)",
        version, settings.table, len(shards), max(s["users"] for s in shards), settings.publish_pool,
    )
    return shards


def publish_shard(settings: Settings, day: dt.date, shard: dict[str, Any]) -> dict[str, Any]:
    """Write one shard's users (the ids in [first, end)) to DynamoDB, overwriting what was there.

    Idempotent: the shard's users, versions and timestamps are fixed by :func:`plan_publish`,
    so a retry rewrites exactly the same items. Returns the shard's range with "items",
    "seconds", "items_per_second", "retries", "started", "finished" (epoch seconds).
    Raises PublicationError (retried by Airflow) when DynamoDB cannot take the items.
    """

    started = time.time()
    label = f"publish shard {shard['shard'] + 1}/{shard['shards']}"
    where = dynamodb.key_range(shard["first"], shard["end"])
    recs = lake.read_partition(settings.lake, datasets.RECOMMENDATIONS, day, filters=where)
    client = dynamodb.make_client(settings)
    stats = dynamodb.publish_recommendations(
        client,
        settings.table,
        recs,
        model_version=shard["model_version"],
        generated_at=dt.datetime.fromisoformat(shard["generated_at"]),
        expires_at=int(shard["expires_at"]),
        threads=settings.publish_threads,
        label=label,
    )
    if stats["items"] != shard["users"]:
        raise dynamodb.PublicationError(
            f"{label}: wrote {stats['items']} users but the plan counted {shard['users']} in "
            f"[{shard['first']!r}, {shard['end']!r}) of partition "
            f"{lake.partition_uri(settings.lake, datasets.RECOMMENDATIONS, day)}; "
            f"the partition changed after plan_publish: rerun the run from recommend"
        )
    keep = ("shard", "shards", "first", "end")
    return {**{k: shard[k] for k in keep}, **stats, "started": started, "finished": time.time()}


def finish_publish(
    settings: Settings, day: dt.date, shards: list[dict[str, Any]], results: list[dict[str, Any]], force: bool = False
) -> dict[str, Any]:
    """Mark the run served (``__meta__``) once every shard has written its users.

    Airflow runs this only when every shard task succeeded; it checks that anyway (one
    result per planned shard). Logs and returns the run date, table and model version (the
    serving table's Asset event carries them) and the totals: items, wall seconds from the
    first shard's start to the last one's end, items/s over that wall time, and each
    shard's range and count for verify. Raises PublicationError when a shard is missing and
    OlderRunError when the table meanwhile serves a newer date (unless ``force``).
    """

    done = sorted(results, key=lambda r: r["shard"])
    if [r["shard"] for r in done] != [s["shard"] for s in shards]:
        raise dynamodb.PublicationError(
            f"publish for {day}: shards {[s['shard'] for s in shards]} were planned but results came from "
            f"{[r['shard'] for r in done]}; __meta__ not written. Clear the failed publish_shard tasks to rerun them"
        )
    version = shards[0]["model_version"]
    client = dynamodb.make_client(settings)
    dynamodb.mark_served(client, settings.table, run_date=day, model_version=version, force=force)
    items = sum(r["items"] for r in done)
    wall = max(r["finished"] for r in done) - min(r["started"] for r in done)
    busy = sum(r["seconds"] for r in done)
    rate = items / wall if wall > 0 else 0.0
    log.info(
        "publish: %d items in %d shard(s) to %s, %.1f s wall (%.1f s of shard work), %.0f items/s; "
        "__meta__ now serves %s (model %s)",
        items, len(done), settings.table, wall, busy, rate, day, version,
    )
    return {
        "published": True,
        "run_date": day.isoformat(),
        "table": settings.table,
        "model_version": version,
        "items": items,
        "seconds": round(wall, 3),
        "shard_seconds": round(busy, 3),
        "items_per_second": round(rate, 1),
        "retries": sum(r["retries"] for r in done),
        "shards": [{k: r[k] for k in ("shard", "first", "end", "items")} for r in done],
    }
