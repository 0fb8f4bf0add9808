"""The refresh's pure parts on tiny hand-made data, its DynamoDB writer against DynamoDB Local,
and its time arguments. The whole DAG is in test_refresh_e2e.py."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from recsys.config import Settings
from recsys.core.families import ItemModel
from recsys.core.holdout import Champion
from recsys.core.lists import ItemFilters
from recsys.core.model import PairEvents, SortedEvents
from recsys.core.refresh import refresh_lists, shift_ages
from recsys.dev.cli import parse_until
from recsys.io import dynamodb
from recsys.runtime import refresh_until

ITEMS = ["a", "b", "c", "d", "e"]
NIGHT_END = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
UNTIL = NIGHT_END + dt.timedelta(hours=12)


def pair_events(rows: list[tuple[str, str, str]], end: dt.datetime) -> PairEvents:
    """(user, item, type) events one hour before ``end``, indexed as index_events does."""
    at = int((end - dt.timedelta(hours=1)).timestamp() * 1_000_000)
    table = pa.table({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                      "event_type": [r[2] for r in rows], "event_us": pa.array([at] * len(rows), pa.int64())})
    return SortedEvents.of(table).before(end)


def champion() -> Champion:
    """An item model over a..e: a user's score of item j sums matrix[i, j] over the items i touched."""
    matrix = np.zeros((5, 5), dtype=np.float32)
    a, b, c, d, e = range(5)
    matrix[a, b], matrix[a, c], matrix[a, d] = 3, 2, 1
    matrix[b, e] = 5
    matrix[c, d], matrix[c, e] = 4, 1
    return Champion(model=ItemModel(matrix, "ease"), user_ids=pa.array(["u1", "u3"]), item_ids=pa.array(ITEMS),
                    params={"model": {"model": "ease"}, "event_weights": {"View": 1.0}, "half_life_days": 0.0,
                            "model_version": "2026-05-31-abc"})


def test_refresh_lists_scores_active_users_from_night_and_new_events_never_repeating_either() -> None:
    settings = Settings.from_env({"RECSYS_K": "2", "RECSYS_EXCLUDE_SEEN": "all"})
    window = pair_events([("u1", "a", "View"), ("u3", "d", "View")], NIGHT_END)
    new = pair_events([("u1", "b", "View"), ("u2", "c", "View"), ("u4", "zzz", "View")], UNTIL)
    filters = ItemFilters(exclude=np.array([], dtype=np.int32), categories=np.full(5, -1, dtype=np.int32))

    result = refresh_lists(settings, champion(), window, new, filters)

    lists: dict[str, list[str]] = {}
    for row in result.lists.to_pylist():
        lists.setdefault(row["user_id"], []).append(row["item_id"])
    # u1: a (night) + b (new): e 5, c 2, d 1, a and b seen. u2, new: c -> d 4, e 1.
    # u3 has no new event: no list. u4 touched only an item the model does not know: no list.
    assert lists == {"u1": ["e", "c"], "u2": ["d", "e"]}
    assert (result.active_users, result.new_users, result.unscored_users) == (3, 2, 1)


def test_refresh_lists_with_no_warm_user_and_an_inactive_item() -> None:
    settings = Settings.from_env({"RECSYS_K": "2"})
    window = pair_events([("u9", "a", "View")], NIGHT_END)
    new = pair_events([("u2", "c", "View")], UNTIL)
    filters = ItemFilters(exclude=np.array([3], dtype=np.int32), categories=np.full(5, -1, dtype=np.int32))
    result = refresh_lists(settings, champion(), window, new, filters)
    # d (4) is inactive, c seen: e (1), then the serve path's padding by column among the zeros.
    assert result.lists["item_id"].to_pylist() == ["e", "a"]
    assert result.new_users == 1


def test_shift_ages_ages_every_event_by_the_same_days() -> None:
    window = pair_events([("u1", "a", "View"), ("u1", "b", "View")], NIGHT_END)
    shifted = shift_ages(window, 0.5)
    assert np.allclose(shifted.ages, window.ages + 0.5)
    assert shifted.indices is window.indices  # nothing else copied or changed


def test_a_refresh_never_writes_over_a_newer_nightly_a_later_refresh_or_a_reserved_key(
    dynamodb_client: Any,
) -> None:
    table = f"refresh_{uuid.uuid4().hex[:8]}"
    dynamodb.ensure_table(dynamodb_client, table)
    night = dt.date(2026, 5, 31)

    def put(user: str, version: str, until: str | None = None) -> None:
        item = {"user_id": {"S": user}, "model_version": {"S": version}, "items": {"L": []}}
        if until:
            item["refreshed_until"] = {"S": until}
        dynamodb_client.put_item(TableName=table, Item=item)

    put("older", "2026-05-30-aaa")
    put("served", "2026-05-31-bbb")
    put("newer-night", "2026-06-01-ccc")
    put("later-refresh", "2026-05-31-bbb", "2026-06-01T13:00:00Z")
    users = ["older", "served", "newer-night", "later-refresh", "unknown", "__popular__", "item#x", "__meta__"]
    recs = pa.table({"user_id": users, "rank": pa.array([1] * len(users), pa.int16()),
                     "item_id": ["i1"] * len(users), "score": pa.array([1.0] * len(users), pa.float32())})

    stats = dynamodb.publish_refreshed(
        dynamodb_client, table, recs, model_version="2026-05-31-bbb", served_run_date=night,
        refreshed_at=UNTIL, until=UNTIL, expires_at=2_000_000_000, threads=2)

    assert sorted(stats["written_users"]) == ["older", "served", "unknown"]
    assert (stats["kept_newer"], stats["reserved_skipped"]) == (2, 3)
    got = {u: dynamodb_client.get_item(TableName=table, Key={"user_id": {"S": u}}).get("Item") for u in users}
    assert got["newer-night"]["model_version"]["S"] == "2026-06-01-ccc" and not got["newer-night"]["items"]["L"]
    assert got["later-refresh"]["refreshed_until"]["S"] == "2026-06-01T13:00:00Z"
    assert got["served"]["refreshed_at"]["S"] == got["served"]["refreshed_until"]["S"] == "2026-06-01T12:00:00Z"
    assert got["served"]["items"]["L"][0]["M"]["item_id"]["S"] == "i1"
    assert got["__popular__"] is None and got["item#x"] is None and got["__meta__"] is None


def test_parse_until_reads_iso_instants_as_utc_and_names_the_form_it_wants() -> None:
    want = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
    assert parse_until("2026-06-01T12:00:00Z") == want
    assert parse_until("2026-06-01T14:00:00.700+02:00") == want
    assert parse_until("2026-06-01T12:00:00") == want
    assert parse_until(None, now=dt.datetime(2026, 6, 1, 12, 0, 0, 999, tzinfo=dt.UTC)) == want
    with pytest.raises(ValueError, match="expected e.g. 2026-06-01T12:00:00Z"):
        parse_until("noon")


def test_refresh_until_is_the_param_else_the_data_interval_end() -> None:
    end = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
    assert refresh_until({"params": {"until": "2026-06-01T12:00:00Z"}, "data_interval_end": None}) == end
    assert refresh_until({"params": {"until": None}, "data_interval_end": end}) == end
    assert refresh_until({"params": {}, "dag_run": SimpleNamespace()}) <= dt.datetime.now(dt.UTC)


def test_collect_events_reads_a_postgresql_source_through_the_row_checks(
    postgres_database: str, dynamodb_client: Any, dynamodb_endpoint: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from recsys import datasets
    from recsys.io import lake
    from recsys.stages.refresh import collect_events
    from tests.test_postgres_source import load_table

    at = [NIGHT_END + dt.timedelta(hours=h) for h in (-2, 1, 2, 3, 13)]  # the night, the morning, the afternoon
    load_table(postgres_database, pa.table({
        "user_id": ["u1", "u1", "u2", "u3", "u4"], "item_id": ["a", "b", "c", "d", "e"],
        "event_type": ["View", "View", "Teleport", "View", "View"],
        "event_ts": pa.array(at, pa.timestamp("us", tz="UTC")), "event_id": ["e1", "e2", "e3", "e4", "e5"]}),
        "events")
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_SOURCE", postgres_database)
    table = f"refresh_{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env({
        "RECSYS_HOME": str(tmp_path / "home"), "RECSYS_SOURCE": "postgres://recsys_source",
        "RECSYS_SOURCE_QUERY": "select * from events", "RECSYS_DYNAMODB_ENDPOINT": dynamodb_endpoint,
        "RECSYS_TABLE": table, "RECSYS_MAX_BAD_SHARE": "0.5"})
    dynamodb.ensure_table(dynamodb_client, table)
    dynamodb.mark_served(dynamodb_client, table, run_date=NIGHT_END.date() - dt.timedelta(days=1),
                         model_version="2026-05-31-abc")
    lake.write_lake_json(settings.lake, datasets.CHAMPION, {"model_version": "2026-05-31-abc",
                                                            "run_date": "2026-05-31"})

    collected = collect_events(settings, UNTIL.date(), UNTIL)

    assert (collected["rows"], collected["rows_kept"], collected["reasons"]) == (3, 2, {"unknown_event_type": 1})
    kept = lake.read_partition(settings.lake, datasets.REFRESH_EVENTS, UNTIL.date())
    assert kept["event_id"].to_pylist() == ["e2", "e4"]  # not the night's event, not the afternoon's
    quarantined = lake.read_partition(settings.lake, datasets.REFRESH_QUARANTINE, UNTIL.date())
    assert quarantined["event_id"].to_pylist() == ["e3"]
